"""`dqt-report DIR...` / `python -m dqt.report`: learning curves, tables and verdicts from run directories.

A run directory holds `metrics.jsonl` and `.hydra/config.yaml`. Runs whose configs are equal except for the
seed (and keys that do not change what is learned, IGNORED) form a cell; the cells of one `wandb.group` form
a study. For every study the report draws the cells' learning curves (mean and 95% t-interval over seeds,
against env steps per agent and against total env steps) and tabulates final score, area under the curve,
steps to a success of 0.8, roughness and wall time. It then checks the original study's claims against
the cells (`verdicts`), with the rule used written under each verdict.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from dqt.logger import METRICS_FILE, read_metrics

REPORT_FILE = "report.md"
THRESHOLD = 0.8  # success rate that counts as "learned" (steps to threshold)
FINAL_EVALS = 3  # the final score of a seed is the mean of its last evaluations

# Keys that do not change what a run learns: they never split runs into different cells.
IGNORED = ("seed", "resume", "progress", "threads", "device", "max_restarts", "log_every", "checkpoint_every",
           "wandb.mode", "wandb.project", "wandb.name", "wandb.tags")
# Keys that may be missing from runs of older versions of dqt, with the value they had then.
DEFAULTS = {"noise.mean": 0.0, "noise.std": 0.0, "noise.reads": 1, "noise.reduce": "median", "lr_schedule": "linear",
            "aggregation": "mean", "bad_data": "error", "model.critic_backup": "min", "model.levels": 1,
            "within_step": "target", "explore.optimism": 0.0, "explore.color": 0.0}

# t_{0.975, df}: the two-sided 95% quantile of Student's t for df = n - 1 degrees of freedom.
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
        20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048,
        29: 2.045, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}


def t975(df: int) -> float:
    """Student's t quantile for a 95% two-sided interval; between table rows the smaller df (wider interval)."""
    if df < 1:
        return math.nan
    if df > 120:
        return 1.96
    return T975[max(d for d in T975 if d <= df)]


@dataclass(frozen=True)
class Estimate:
    """Mean over seeds and the half-width of its 95% t-interval (nan with fewer than two seeds)."""

    mean: float
    half: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half

    @property
    def high(self) -> float:
        return self.mean + self.half


def estimate(values: list[float]) -> Estimate:
    """mean ± t_{0.975, n-1} · sd / sqrt(n), sd with n - 1 in the denominator."""
    n = len(values)
    if n == 0:
        return Estimate(math.nan, math.nan, 0)
    mean = sum(values) / n
    if n == 1:
        return Estimate(mean, math.nan, 1)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return Estimate(mean, t975(n - 1) * sd / math.sqrt(n), n)


# --------------------------------------------------------------------------------------------------
# runs and cells


@dataclass
class Run:
    """One run directory: its flattened config and its evaluation rows."""

    path: Path
    config: dict[str, Any]
    evals: list[dict]  # sorted by env_steps, one row per env_steps
    wall_s: float  # the training loop's time_s at the last row


@dataclass
class Cell:
    """The runs of one configuration, one per seed."""

    study: str
    config: dict[str, Any]
    runs: list[Run]
    label: str = ""
    summary: Summary | None = None  # set by write_report, for the study's metric


def find_run_dirs(dirs: list[Path]) -> list[Path]:
    """Every directory at any depth below `dirs` that holds metrics.jsonl and .hydra/config.yaml."""
    found = []
    for top in dirs:
        for here, subdirs, files in os.walk(top):
            subdirs[:] = sorted(d for d in subdirs if d not in (".hydra", "wandb", "checkpoints"))
            if METRICS_FILE in files and (Path(here) / ".hydra" / "config.yaml").is_file():
                found.append(Path(here))
    return sorted(set(found))


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists become tuples so that configs can be compared and hashed."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
    return flat


def load_run(path: Path) -> Run:
    """Read one run directory; raises ValueError with the reason when it cannot be used."""
    from omegaconf import OmegaConf

    try:
        raw = OmegaConf.load(path / ".hydra" / "config.yaml")
        try:
            tree = OmegaConf.to_container(raw, resolve=True)
        except Exception:  # an interpolation that only resolves inside hydra: compare it as written
            tree = OmegaConf.to_container(raw, resolve=False)
        rows = read_metrics(path)
    except Exception as error:
        raise ValueError(f"cannot read it ({type(error).__name__}: {error})") from None
    evals = {r["env_steps"]: r for r in rows if "eval/return" in r}  # a resumed run may repeat a row: keep the last
    if not evals:
        raise ValueError("no evaluation rows in metrics.jsonl")
    config = {**DEFAULTS, **flatten(tree)}
    if config.get("num_agents") is None:  # null = torchrun's world size: the rows know it
        first = rows[0]
        config["num_agents"] = first["total_env_steps"] // first["env_steps"] if first.get("env_steps") else 2
    wall = max((r.get("time_s", 0.0) for r in rows), default=0.0)
    return Run(path, config, [evals[s] for s in sorted(evals)], wall)


def group_cells(runs: list[Run]) -> list[Cell]:
    """Cells: runs with equal configs except IGNORED keys; study = wandb.group; labels = keys that differ."""
    cells: dict[tuple, Cell] = {}
    for run in runs:
        config = {k: v for k, v in run.config.items() if k not in IGNORED}
        key = tuple(sorted((k, _canon(v)) for k, v in config.items()))
        study = str(config.get("wandb.group") or "runs")
        cells.setdefault(key, Cell(study, config, [])).runs.append(run)
    ordered = []
    for study in sorted({c.study for c in cells.values()}):
        members = [c for c in cells.values() if c.study == study]
        keys = list(dict.fromkeys(k for c in members for k in c.config))
        differ = [k for k in keys if len({_canon(c.config.get(k, "<missing>")) for c in members}) > 1]
        for cell in members:
            cell.label = " ".join(f"{k}={show(cell.config.get(k))}" for k in differ) or "all runs"
        ordered += sorted(members, key=lambda c: [_sort_key(c.config.get(k)) for k in differ])
    return ordered


def _canon(value: Any) -> str:
    """A config value in a form where equal values compare equal: noise.std=1 is noise.std=1.0."""
    if _is_number(value):
        return repr(float(value))
    if isinstance(value, tuple):
        return "(" + ",".join(_canon(v) for v in value) + ")"
    return repr(value)


def _sort_key(value: Any) -> tuple:
    """Numbers in numeric order, before anything else in the order of its text."""
    return (0, value, "") if _is_number(value) else (1, 0, show(value))


def show(value: Any) -> str:
    """A config value as a user writes it on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return "[" + ",".join(show(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# --------------------------------------------------------------------------------------------------
# per-seed numbers and per-cell summaries


def metric_of(runs: list[Run]) -> str:
    """eval/success_rate when every run reports it, else eval/return."""
    has = all(all("eval/success_rate" in r for r in run.evals) for run in runs)
    return "eval/success_rate" if has else "eval/return"


def curve(run: Run, metric: str) -> tuple[list[int], list[float]]:
    """(env steps per agent, score) of a run's evaluations."""
    return [r["env_steps"] for r in run.evals], [float(r[metric]) for r in run.evals]


def final_score(scores: list[float]) -> float:
    """Mean of the last FINAL_EVALS evaluations."""
    last = scores[-FINAL_EVALS:]
    return sum(last) / len(last)


def area(steps: list[int], scores: list[float]) -> float:
    """Area under the curve (trapezoids over env steps per agent) divided by its width: the mean score."""
    if len(steps) == 1:
        return scores[0]
    total = sum((steps[i + 1] - steps[i]) * (scores[i + 1] + scores[i]) / 2 for i in range(len(steps) - 1))
    return total / (steps[-1] - steps[0])


def roughness(scores: list[float]) -> float:
    """Mean absolute change between consecutive evaluations (0 for a single one); lower is smoother."""
    if len(scores) < 2:
        return 0.0
    return sum(abs(b - a) for a, b in zip(scores, scores[1:])) / (len(scores) - 1)


def steps_to(steps: list[int], scores: list[float], threshold: float = THRESHOLD) -> int | None:
    """Env steps per agent at the first evaluation with score >= threshold; None if never."""
    return next((s for s, v in zip(steps, scores) if v >= threshold), None)


@dataclass
class Summary:
    """A cell's numbers: each an estimate over seeds."""

    metric: str
    final: Estimate
    area: Estimate
    roughness: Estimate
    wall_min: Estimate
    steps: Estimate | None  # over the seeds that reached THRESHOLD; None when the metric is not success
    reached: int
    seeds: int
    last_steps: list[int] = field(default_factory=list)  # each seed's last evaluated env steps


def summarise(cell: Cell, metric: str) -> Summary:
    """Final score, area, roughness, wall time and steps to THRESHOLD, each as mean ± CI over seeds."""
    curves = [curve(run, metric) for run in cell.runs]
    reached = [s for s in (steps_to(*c) for c in curves) if s is not None]
    success = metric == "eval/success_rate"
    return Summary(
        metric=metric,
        final=estimate([final_score(v) for _, v in curves]),
        area=estimate([area(s, v) for s, v in curves]),
        roughness=estimate([roughness(v) for _, v in curves]),
        wall_min=estimate([run.wall_s / 60 for run in cell.runs]),
        steps=estimate([float(s) for s in reached]) if success else None,
        reached=len(reached) if success else 0,
        seeds=len(cell.runs),
        last_steps=[s[-1] for s, _ in curves],
    )


# --------------------------------------------------------------------------------------------------
# verdicts

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE, NOT_TESTED = "supported", "not supported", "inconclusive", "not tested"


def compare(a: Estimate, b: Estimate, higher: bool = True) -> int:
    """+1 if a is better than b with non-overlapping 95% intervals, -1 if worse, 0 if they overlap."""
    if math.isnan(a.half) or math.isnan(b.half):
        return 0
    if a.low > b.high:
        return 1 if higher else -1
    if b.low > a.high:
        return -1 if higher else 1
    return 0


def combine(outcomes: list[int]) -> str:
    """A claim over several comparisons: supported if every one supports it (+1), not supported if any
    contradicts it (-1), inconclusive otherwise."""
    if not outcomes:
        return NOT_TESTED
    if -1 in outcomes:
        return NOT_SUPPORTED
    return SUPPORTED if all(o == 1 for o in outcomes) else INCONCLUSIVE


def best_outcome(values: dict[str, Estimate], claimed: str, higher: bool = True) -> int:
    """+1 if `claimed` is best and its interval clears every other cell's, -1 if another cell is best and its
    interval clears the claimed one's, 0 otherwise."""
    sign = 1 if higher else -1
    best = max(values, key=lambda k: (sign * values[k].mean, k == claimed))
    if best == claimed:
        others = [compare(values[claimed], v, higher) for k, v in values.items() if k != claimed]
        return 1 if all(o == 1 for o in others) else 0
    return -1 if compare(values[best], values[claimed], higher) == 1 else 0


def families(cells: list[Cell], vary: tuple[str, ...]) -> list[list[Cell]]:
    """Groups of cells equal in every key but `vary` (cells of different studies never share a family)."""
    groups: dict[tuple, list[Cell]] = {}
    for cell in cells:
        key = tuple(sorted((k, _canon(v)) for k, v in cell.config.items() if k not in vary))
        groups.setdefault(key, []).append(cell)
    return list(groups.values())


@dataclass
class Verdict:
    """One claim: its verdict, the rule that decided it and the comparisons it rests on."""

    claim: str
    verdict: str
    rule: str
    evidence: list[str]


def fmt(e: Estimate | None, digits: int = 2, scale: float = 1.0) -> str:
    """'0.52 ± 0.07' (no ± with one seed)."""
    if e is None or e.n == 0:
        return "—"
    value = f"{e.mean * scale:,.{digits}f}"
    return value if math.isnan(e.half) else f"{value} ± {e.half * scale:,.{digits}f}"


def verdict_scaling(cells: list[Cell]) -> list[Verdict]:
    """Claim 1: more agents learn faster per agent (1a), and 7 agents is best (1b)."""
    faster, best, evidence_a, evidence_b = [], [], [], []
    for family in families(cells, ("num_agents",)):
        if len({c.config["num_agents"] for c in family}) < 2:
            continue
        family = sorted(family, key=lambda c: c.config["num_agents"])
        for a, b in zip(family, family[1:]):
            sa, sb = a.summary, b.summary
            signs = {compare(sb.area, sa.area)}
            if sa.steps is not None and sb.steps is not None and sa.reached == sa.seeds and sb.reached == sb.seeds:
                signs.add(compare(sb.steps, sa.steps, higher=False))
            signs.discard(0)
            outcome = signs.pop() if len(signs) == 1 else 0
            faster.append(outcome)
            word = {1: "faster", -1: "slower", 0: "undecided"}[outcome]
            steps = (f", steps to {THRESHOLD}: {fmt(sa.steps, 0)} ({sa.reached}/{sa.seeds}) → {fmt(sb.steps, 0)} "
                     f"({sb.reached}/{sb.seeds})" if sa.steps is not None else "")
            evidence_a.append(f"{a.study}: N={a.config['num_agents']} → N={b.config['num_agents']}: area "
                              f"{fmt(sa.area)} → {fmt(sb.area)}{steps}: **{word}**")
        finals = {str(c.config["num_agents"]): c.summary.final for c in family}
        if "7" in finals:
            best.append(best_outcome(finals, "7"))
            scores = ", ".join(f"N={k}: {fmt(v)}" for k, v in finals.items())
            evidence_b.append(f"{family[0].study}: final score {scores}")
        else:
            evidence_b.append(f"{family[0].study}: no num_agents=7 cell (N = {', '.join(finals)})")
    return [
        Verdict("1a. More agents learn faster per agent", combine(faster),
                "Cells that differ only in num_agents, in increasing order of N; each step up in N is *faster* if "
                "the larger N has the larger area under the per-agent curve, or needs fewer steps per agent to "
                f"reach {THRESHOLD} success (compared only when every seed of both cells reached it), with "
                "non-overlapping 95% intervals and neither measure saying the opposite; *slower* the other way "
                "round. Supported if every step up is faster, not supported if any is slower, inconclusive "
                "otherwise.", evidence_a),
        Verdict("1b. Seven agents is best", combine(best),
                "Final score of the num_agents=7 cell against the other N of its family: supported if N=7 has the "
                "best mean and its interval lies above every other's; not supported if another N is best and its "
                "interval lies above N=7's; inconclusive if intervals overlap; not tested without an N=7 cell.",
                evidence_b),
    ]


def verdict_smoothing(cells: list[Cell]) -> list[Verdict]:
    """Claim 2: median smoothing of repeated reward reads helps at low noise."""
    outcomes, evidence = [], []
    for family in families(cells, ("noise.reads", "noise.reduce")):
        plain = [c for c in family if c.config.get("noise.reads") == 1]
        smoothed = [c for c in family if _is_number(c.config.get("noise.std")) and 0 < c.config["noise.std"] <= 1
                    and _is_number(c.config.get("noise.reads")) and c.config["noise.reads"] > 1
                    and c.config.get("noise.reduce") == "median"]
        if not plain:
            continue
        for cell in smoothed:
            s, p = cell.summary.final, plain[0].summary.final
            outcome = compare(s, p)
            outcomes.append(outcome)
            word = {1: "helps", -1: "hurts", 0: "undecided"}[outcome]
            evidence.append(f"{cell.study}: {cell.label}: final score {fmt(s)} against {fmt(p)} with noise.reads=1: "
                            f"**{word}**")
    return [Verdict("2. Median smoothing helps at low noise", combine(outcomes),
                    "Every cell with 0 < noise.std ≤ 1, noise.reads > 1 and noise.reduce=median against the cell equal "
                    "to it but for noise.reads=1: the smoothing helps if its final score's interval lies above, hurts "
                    "if below. Supported if it helps in every such pair, not supported if it hurts in any, "
                    "inconclusive otherwise; not tested without such pairs.", evidence)]


def verdict_schedule(cells: list[Cell]) -> list[Verdict]:
    """Claim 3: the log-curve learning-rate decay is the best (3a) and the smoothest (3b) schedule."""
    best, smooth, evidence_a, evidence_b = [], [], [], []
    for family in families(cells, ("lr_schedule",)):
        schedules = {str(c.config["lr_schedule"]): c.summary for c in family}
        if len(schedules) < 2 or "log" not in schedules:
            continue
        study = family[0].study
        best.append(best_outcome({k: s.final for k, s in schedules.items()}, "log"))
        smooth.append(best_outcome({k: s.roughness for k, s in schedules.items()}, "log", higher=False))
        evidence_a.append(f"{study}: final score " + ", ".join(f"{k}: {fmt(s.final)}" for k, s in schedules.items()))
        evidence_b.append(f"{study}: roughness " + ", ".join(f"{k}: {fmt(s.roughness, 3)}"
                                                             for k, s in schedules.items()))
    rule = ("Cells that differ only in lr_schedule and include lr_schedule=log. {what}: supported if log has the best "
            "mean and its interval clears every other schedule's; not supported if another schedule is best and its "
            "interval clears log's; inconclusive if they overlap; not tested without a log cell.")
    return [
        Verdict("3a. Log decay is the best schedule", combine(best), rule.format(what="Final score, higher is better"),
                evidence_a),
        Verdict("3b. Log decay is the smoothest schedule", combine(smooth), rule.format(
            what="Roughness (mean absolute change of the score between consecutive evaluations, per seed), lower is "
                 "smoother"), evidence_b),
    ]


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def verdicts(cells: list[Cell]) -> list[Verdict]:
    """The original study's claims, each checked against the cells that test it."""
    checks: list[Callable] = [verdict_scaling, verdict_smoothing, verdict_schedule]
    return [v for check in checks for v in check(cells)]


# --------------------------------------------------------------------------------------------------
# figures and report


def plot_study(study: str, cells: list[Cell], metric: str, out: Path) -> Path:
    """Two panels, x = env steps per agent and total env steps; each cell's mean and 95% band over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    colors = plt.get_cmap("tab10" if len(cells) <= 10 else "tab20")
    for i, cell in enumerate(cells):
        by_step: dict[int, list[float]] = {}
        for run in cell.runs:
            for s, v in zip(*curve(run, metric)):
                by_step.setdefault(s, []).append(v)
        steps = sorted(by_step)
        est = [estimate(by_step[s]) for s in steps]
        mean = [e.mean for e in est]
        low = [e.low if e.n > 1 else e.mean for e in est]
        high = [e.high if e.n > 1 else e.mean for e in est]
        agents = cell.config["num_agents"]
        for ax, xs in zip(axes, (steps, [s * agents for s in steps])):
            color = colors(i % colors.N)
            ax.plot(xs, mean, color=color, marker=".", label=f"{cell.label} (n={len(cell.runs)})")
            ax.fill_between(xs, low, high, color=color, alpha=0.2, linewidth=0)
    name = "eval success rate" if metric == "eval/success_rate" else "eval return"
    axes[0].set_ylabel(f"{name} (mean, 95% CI over seeds)")
    axes[0].set_xlabel("env steps per agent")
    axes[1].set_xlabel("total env steps (all agents)")
    for ax in axes:
        ax.grid(alpha=0.3)
    if metric == "eval/success_rate":
        axes[0].set_ylim(-0.02, 1.02)
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.suptitle(f"study: {study}")
    fig.tight_layout()
    path = out / f"curves_{re.sub(r'[^A-Za-z0-9_.-]+', '_', study)}.png"
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def table(cells: list[Cell]) -> list[str]:
    """One study's table in markdown."""
    success = cells[0].summary.metric == "eval/success_rate"
    score = "success rate" if success else "return"
    lines = [f"| cell | seeds | final {score} | area (mean {score}) | steps to {THRESHOLD} per agent | reached | "
             "roughness | wall time (min) |", "|---|---|---|---|---|---|---|---|"]
    for cell in cells:
        s = cell.summary
        reached = f"{s.reached}/{s.seeds}" if success else "—"
        lines.append(f"| {cell.label} | {s.seeds} | {fmt(s.final)} | {fmt(s.area)} | {fmt(s.steps, 0)} | {reached} | "
                     f"{fmt(s.roughness, 3)} | {fmt(s.wall_min, 1)} |")
    return lines


def write_report(dirs: list[Path], out: Path) -> Path:
    """Find the runs under `dirs`, write report.md and the figures into `out`; ValueError if there are none."""
    paths = find_run_dirs(dirs)
    runs, skipped = [], []
    for path in paths:
        try:
            runs.append(load_run(path))
        except ValueError as error:
            skipped.append(f"{path}: {error}")
    if not runs:
        where = ", ".join(str(d) for d in dirs)
        reason = f" ({len(skipped)} skipped: {skipped[0]})" if skipped else ""
        raise ValueError(f"no runs under {where}: a run directory holds {METRICS_FILE} and .hydra/config.yaml{reason}")
    cells = group_cells(runs)
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# dqt report", "", f"{len(runs)} runs in {len(cells)} cells, read from " +
             ", ".join(f"`{d}`" for d in dirs) + ".", "",
             f"Each number is a mean over seeds ± the half-width of its 95% t-interval (t_0.975,n-1 · sd / √n; "
             f"no interval with one seed). *Final*: the mean of a seed's last {FINAL_EVALS} evaluations. *Area*: the "
             "area under a seed's curve over env steps per agent divided by its width (its mean score). *Steps to "
             f"{THRESHOLD}*: env steps per agent at a seed's first evaluation with success ≥ {THRESHOLD}, over the "
             "seeds that reached it. *Roughness*: mean absolute change between consecutive evaluations. *Wall time*: the "
             "training loop's time_s at the last row (start-up excluded).", ""]
    for study in sorted({c.study for c in cells}):
        members = [c for c in cells if c.study == study]
        metric = metric_of([r for c in members for r in c.runs])
        for cell in members:
            cell.summary = summarise(cell, metric)
        figure = plot_study(study, members, metric, out)
        lines += [f"## Study `{study}`", "", f"![learning curves of {study}]({figure.name})", "", *table(members)]
        short = [f"{run.path} (last evaluation at {run.evals[-1]['env_steps']:,} env steps, the cell's others at "
                 f"{max(c.summary.last_steps):,})" for c in members for run in c.runs
                 if run.evals[-1]["env_steps"] < max(c.summary.last_steps)]
        if short:
            lines += ["", "Runs that ended early (still running, or failed): " + "; ".join(short)]
        lines.append("")
    lines += ["## Verdicts on the original study's claims", ""]
    for v in verdicts(cells):
        lines += [f"### {v.claim}: **{v.verdict}**", "", f"Rule: {v.rule}", ""]
        lines += [f"- {e}" for e in v.evidence] or ["- no cells test this claim"]
        lines.append("")
    if skipped:
        lines += ["## Skipped directories", "", *[f"- {s}" for s in skipped], ""]
    path = out / REPORT_FILE
    path.write_text("\n".join(lines).rstrip("\n") + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    """Console entry point: `dqt-report DIR... [--out DIR]`; exit code 2 with one line when there is no run."""
    parser = argparse.ArgumentParser(prog="dqt-report", description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="directories searched (at any depth) for run directories")
    parser.add_argument("--out", type=Path, default=None,
                        help="where report.md and the figures go (default: the first DIR)")
    args = parser.parse_args(argv)
    missing = [d for d in args.dirs if not d.is_dir()]
    if missing:
        print(f"dqt-report: {missing[0]} is not a directory", file=sys.stderr)
        return 2
    try:
        path = write_report(args.dirs, args.out or args.dirs[0])
    except ValueError as error:
        print(f"dqt-report: {error}", file=sys.stderr)
        return 2
    print(f"dqt-report: wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
