"""dqt-bench learn: the multi-seed learning benchmark. Runs a task x seed grid through `dqt-train` (as a
user would, default keys plus the grid's own), as many runs side by side as the cores allow, and writes
table.md (final score mean ± 95% CI over seeds, steps to the target, wall time) next to every run's
metrics.jsonl, so the curves can be redrawn.

    dqt-bench learn                              # every benchmark, seeds as listed below
    dqt-bench learn --only door-unlock,hopper --seeds 1,2,3 --out results/learning
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from dqt.logger import read_metrics, plot_learning_curve


@dataclass(frozen=True)
class Benchmark:
    """One row of the table: a task, the keys that differ from the defaults, and the target it must reach."""

    name: str
    overrides: tuple[str, ...]
    metric: str  # eval/success_rate or eval/return
    threshold: float  # the target, reached by the final evaluation (`final`) or the first one (`first`)
    seeds: tuple[int, ...]
    agents: int
    goal: str  # what the issue asks, in words
    # met when: "stable" every seed's final >= threshold and no evaluation after its first >= threshold below
    # 0.8 (success rates); "every_seed" every seed reaches the threshold; "median" the median final does
    rule: str = "median"
    extra: tuple[str, ...] = field(default=())


GYM = ("demos=0", "num_agents=1")
BENCHMARKS = {
    b.name: b for b in (
        Benchmark("door-unlock", (), "eval/success_rate", 0.9, (1, 2, 3, 4, 5), 2,
                  "default config: final success >= 0.9 on every seed, none below 0.8 after the first >= 0.9", "stable"),
        Benchmark("door-unlock-scratch", ("demos=0", "num_agents=1", "train_steps=80000", "eval_every=4000"),
                  "eval/success_rate", 0.8, (1, 2, 3), 1, "demos=0, 1 agent: success >= 0.8 within 80k steps, every seed",
                  "every_seed"),
        Benchmark("inverted-pendulum", ("task=gym:InvertedPendulum-v5", *GYM, "train_steps=20000"),
                  "eval/return", 950.0, (1, 2, 3), 1, "median over seeds of the return at 20k steps >= 950"),
        Benchmark("reacher", ("task=gym:Reacher-v5", *GYM, "train_steps=50000", "eval_every=5000"),
                  "eval/return", -6.0, (1, 2, 3), 1, "median over seeds of the return at 50k steps >= -6"),
        Benchmark("hopper", ("task=gym:Hopper-v5", *GYM, "train_steps=100000", "eval_every=5000"),
                  "eval/return", 1500.0, (1, 2, 3), 1, "median over seeds of the return at 100k steps >= 1500"),
        # held out: a gymnasium task nothing was tuned on, with the gym rows' keys (random policy about -1,200; a
        # policy that swings up and holds the pole earns about -150 over random starts)
        Benchmark("pendulum", ("task=gym:Pendulum-v1", *GYM, "train_steps=20000"),
                  "eval/return", -200.0, (1, 2, 3), 1, "held out: median over seeds of the return at 20k steps >= -200"),
        Benchmark("inverted-double-pendulum", ("task=gym:InvertedDoublePendulum-v5", *GYM, "train_steps=50000",
                                               "eval_every=5000"),
                  "eval/return", 9100.0, (1, 2, 3), 1,
                  "held out: median over seeds of the return at 50k steps >= 9100 (gymnasium's reward_threshold)"),
        # held out: MetaWorld tasks nothing was tuned on, run as door-unlock's default run with only the task changed
        *(Benchmark(name, (f"task=mw-{name}",), "eval/success_rate", 0.9, (1, 2, 3), 2,
                    "held out, default config but the task: door-unlock's target", "stable")
          for name in ("drawer-open", "pick-place", "window-open")),
    )
}

# two-sided 95% Student t quantiles by degrees of freedom (1.96 beyond the table)
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t-interval (nan half-width for one value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, T95.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))


def summarise(bench: Benchmark, runs: dict[int, Path]) -> dict:
    """Per-seed finals and steps to threshold, and the verdict against the benchmark's goal."""
    finals, reached, stable, walls, missing, cut = [], [], [], [], [], {}
    for seed, run_dir in runs.items():
        evals = [r for r in read_metrics(run_dir) if bench.metric in r]
        if not evals:
            missing.append(seed)
            continue
        if not finished(run_dir):  # stopped before its end: its last evaluation, marked as such
            cut[seed] = evals[-1]["env_steps"]
        values = [r[bench.metric] for r in evals]
        finals.append(values[-1])
        first = next((i for i, v in enumerate(values) if v >= bench.threshold), None)
        reached.append(evals[first]["env_steps"] if first is not None else None)
        stable.append(first is None or min(values[first:]) >= 0.8)  # used for success rates only
        walls.append(evals[-1].get("time_s", math.nan))
    if not finals:
        return {"finals": [], "missing": missing}
    mean, half = mean_ci(finals)
    hits = [s for s in reached if s is not None]
    if bench.rule == "stable":
        passed = all(f >= bench.threshold for f in finals) and all(stable)
    elif bench.rule == "every_seed":
        passed = len(hits) == len(finals)
    else:
        passed = statistics.median(finals) >= bench.threshold
    return {"finals": finals, "mean": mean, "ci": half, "median": statistics.median(finals), "reached": reached,
            "hits": len(hits), "steps_mean": statistics.fmean(hits) if hits else math.nan, "wall": walls,
            "missing": missing, "cut": cut, "passed": passed and not missing and not cut}


def table(results: dict[str, tuple[Benchmark, dict]]) -> str:
    """The markdown table the README quotes."""
    lines = ["| benchmark | agents | seeds | final (mean ± 95% CI) | median | per seed | target | reached (steps per agent) | "
             "loop time per run | met |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, (bench, s) in results.items():
        if not s["finals"]:
            lines.append(f"| {name} | {bench.agents} | 0 | no evaluations | | | | | | no |")
            continue
        fmt = (lambda v: f"{v:.2f}") if bench.metric.endswith("success_rate") else (lambda v: f"{v:.1f}")
        ci = "" if math.isnan(s["ci"]) else f" ± {fmt(s['ci'])}"
        reached = ", ".join("—" if r is None else f"{r // 1000}k" for r in s["reached"])
        cut = "".join(f" (seed {seed} stopped at {steps // 1000}k)" for seed, steps in s.get("cut", {}).items())
        wall = statistics.fmean(s["wall"])
        lines.append(f"| {name} | {bench.agents} | {len(s['finals'])} | {fmt(s['mean'])}{ci} | {fmt(s['median'])} | "
                     f"{', '.join(fmt(v) for v in s['finals'])}{cut} | {bench.metric.split('/')[1]} ≥ {bench.threshold:g} | "
                     f"{s['hits']}/{len(s['finals'])}: {reached} | {wall / 60:.1f} min | "
                     f"{'yes' if s['passed'] else 'no'} |")
    return "\n".join(lines)


def finished(run_dir: Path) -> bool:
    """True when the run's last evaluation is at its train_steps."""
    config = run_dir / ".hydra" / "config.yaml"
    evals = [r for r in read_metrics(run_dir) if "eval/return" in r]
    if not config.exists() or not evals:
        return False
    from omegaconf import OmegaConf

    return evals[-1]["env_steps"] >= OmegaConf.load(config)["train_steps"]


def continues(run_dir: Path, overrides: list[str]) -> bool:
    """True when a cut-off run was started with these overrides (its resume= aside), so that `resume=auto`
    continues it from its newest complete checkpoint generation, exactly as if it had not stopped (README:
    Reliability), or starts it over where it stopped before its first one."""
    recorded = run_dir / ".hydra" / "overrides.yaml"
    if not recorded.exists():
        return False
    from omegaconf import OmegaConf

    def keys(items):
        return [o for o in items if not o.startswith("resume=")]

    return keys(OmegaConf.to_container(OmegaConf.load(recorded))) == keys(overrides)


_STOP: list[int] = []  # the signal that asked the benchmark to stop, if any


def _note_stop(signum, frame):
    # only noted: raising here could land between a run's start and its entry in `running`, and leave it behind
    _STOP.append(signum)


def _stop_runs(running: list) -> None:
    """Terminate every running run's process group (its agent processes too), SIGKILL what outlives 60 s."""
    for proc, _, _ in running:
        _signal_group(proc, signal.SIGTERM)
    for proc, _, _ in running:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()


def _signal_group(proc: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(proc.pid, signum)  # each run leads its own session (start_new_session): the group is the run's
    except ProcessLookupError:
        pass


def _run_queue(queue: list, running: list, chosen: list[Benchmark], slots: int, extra: list[str]) -> None:
    """Start the queued runs as slots (one per agent) free up, until all have ended; `running` is the caller's,
    so whoever stops this knows which runs are still going."""
    used = 0
    while queue or running:
        while queue and (used + queue[0][0].agents <= slots or not running):
            bench, seed, run_dir = queue.pop(0)
            if finished(run_dir):
                print(f"{run_dir}: done, kept", file=sys.stderr)  # a stopped benchmark picks up where it was
                continue
            # one core per agent: runs side by side must not fight over threads
            overrides = [*bench.overrides, f"seed={seed}", "progress=false", "wandb.mode=disabled", "threads=1", *extra]
            if continues(run_dir, overrides):  # cut off before its end: go on from its newest complete checkpoint
                print(f"{run_dir}: cut off, continued", file=sys.stderr)
            elif run_dir.exists():  # started with other keys: run it again from the start
                shutil.rmtree(run_dir)
            run_dir.parent.mkdir(parents=True, exist_ok=True)
            resume = [] if any(o.startswith("resume=") for o in extra) else ["resume=auto"]
            command = [sys.executable, "-m", "dqt.train", *overrides, *resume, f"hydra.run.dir={run_dir}"]
            log = open(run_dir.parent / f"seed{seed}.log", "w")
            print(" ".join(command[2:]), file=sys.stderr)
            # a session of its own: a Ctrl-C reaches the benchmark only, which then stops every run itself
            running.append((subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True),
                            run_dir, time.perf_counter()))
            used += bench.agents
        time.sleep(1.0)
        if _STOP:
            raise SystemExit(128 + _STOP[0])
        for proc, run_dir, began in list(running):
            if proc.poll() is not None:
                running.remove((proc, run_dir, began))
                used -= next(b.agents for b in chosen if b.name == run_dir.parent.name)
                status = "ok" if proc.returncode == 0 else f"FAILED (exit {proc.returncode}, see {run_dir}.log)"
                print(f"{run_dir}: {status} in {(time.perf_counter() - began) / 60:.1f} min", file=sys.stderr)
                plot_learning_curve(run_dir)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="dqt-bench learn", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated: " + ", ".join(BENCHMARKS))
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default: each benchmark's own)")
    parser.add_argument("--out", default="bench-learn", help="directory for the runs and table.md")
    parser.add_argument("--jobs", type=int, default=None, help="runs side by side (default: cores / agents per run)")
    parser.add_argument("--extra", default="", help="extra dqt-train overrides for every run, space-separated")
    parser.add_argument("--table-only", action="store_true", help="write table.md from the runs in --out, start none")
    args = parser.parse_args(argv)
    unknown = [n for n in args.only.split(",") if n not in BENCHMARKS]
    if unknown:
        print(f"dqt-bench learn: --only={','.join(unknown)} is not allowed: expected names among "
              f"{', '.join(BENCHMARKS)}", file=sys.stderr)
        sys.exit(2)
    out = Path(args.out)
    chosen = [BENCHMARKS[n] for n in args.only.split(",")]
    cores = os.cpu_count() or 1
    queue = []
    for bench in chosen:
        seeds = tuple(int(s) for s in args.seeds.split(",")) if args.seeds else bench.seeds
        for seed in seeds:
            queue.append((bench, seed, out / bench.name / f"seed{seed}"))
    if args.table_only:
        queue = []
    running: list[tuple[subprocess.Popen, Path, float]] = []
    started = time.perf_counter()
    _STOP.clear()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _note_stop)
    try:
        _run_queue(queue, running, chosen, args.jobs or cores, args.extra.split())
    finally:  # stopped (kill, Ctrl-C, an error): no run may go on training unwatched on the cores
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        _stop_runs(running)

    results = {}
    for bench in chosen:
        runs = {int(p.name.removeprefix("seed")): p for p in sorted((out / bench.name).glob("seed*")) if p.is_dir()}
        results[bench.name] = (bench, summarise(bench, runs))
    header = (f"Measured {datetime.date.today()} on {platform.node() or 'this machine'} ({cores} cores, "
              f"{platform.processor() or platform.machine()}, CPU only); `dqt-bench learn --only {args.only}"
              f"{' --seeds ' + args.seeds if args.seeds else ''}{' --extra ' + repr(args.extra) if args.extra else ''}`, "
              + ("table from the runs already there." if args.table_only
                 else f"{(time.perf_counter() - started) / 60:.0f} min in all."))
    goals = "\n".join(f"- **{b.name}** (`{' '.join(b.overrides) or 'default config'}`): {b.goal}" for b, _ in results.values())
    text = f"{header}\n\n{table(results)}\n\nTargets:\n{goals}\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(text)
    (out / "summary.json").write_text(json.dumps({n: s for n, (_, s) in results.items()}, indent=1))
    print(text)


if __name__ == "__main__":
    main(sys.argv[1:])
