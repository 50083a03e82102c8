"""dqt-bench learn's summary: finals, CIs, steps to target and verdicts follow from hand-made metrics."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dqt.bench.learn import BENCHMARKS, mean_ci, summarise, table


def _run(path, evals: list[tuple[int, float]], metric: str, train_steps: int | None = None):
    path.mkdir(parents=True)
    rows = [{"env_steps": s, "eval/return": v if metric == "eval/return" else 0.0, metric: v, "time_s": s / 100}
            for s, v in evals]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (path / ".hydra").mkdir()
    (path / ".hydra" / "config.yaml").write_text(f"train_steps: {evals[-1][0] if train_steps is None else train_steps}\n")
    return path


def test_mean_ci_is_the_t_interval():
    mean, half = mean_ci([1.0, 2.0, 3.0])  # sd 1, n 3, t(0.975, 2) = 4.303
    assert mean == 2.0 and half == 4.303 / math.sqrt(3)
    assert math.isnan(mean_ci([5.0])[1])


def test_door_unlock_needs_every_seed_final_and_no_fall_after_the_first_peak(tmp_path):
    bench = BENCHMARKS["door-unlock"]
    good = _run(tmp_path / "a", [(2000, 0.0), (4000, 0.92), (6000, 0.84), (8000, 0.96)], bench.metric)
    fell = _run(tmp_path / "b", [(2000, 0.0), (4000, 0.90), (6000, 0.70), (8000, 0.94)], bench.metric)
    summary = summarise(bench, {1: good})
    assert summary["passed"] and summary["finals"] == [0.96] and summary["reached"] == [4000]
    summary = summarise(bench, {1: good, 2: fell})
    assert not summary["passed"]  # 0.70 after the first >= 0.9
    assert summary["mean"] == 0.95 and summary["hits"] == 2


def test_scratch_needs_every_seed_to_reach_the_target_once(tmp_path):
    bench = BENCHMARKS["door-unlock-scratch"]
    late = _run(tmp_path / "a", [(40000, 0.2), (76000, 0.84), (80000, 0.74)], bench.metric)  # reached, then below
    never = _run(tmp_path / "b", [(40000, 0.2), (80000, 0.78)], bench.metric)
    assert summarise(bench, {1: late})["passed"]
    assert not summarise(bench, {1: late, 2: never})["passed"]


def test_held_out_metaworld_rows_are_door_unlocks_with_only_the_task_changed(tmp_path):
    door = BENCHMARKS["door-unlock"]
    for name in ("drawer-open", "pick-place", "window-open"):
        bench = BENCHMARKS[name]
        assert bench.overrides == (f"task=mw-{name}",)
        assert (bench.metric, bench.threshold, bench.agents, bench.rule) == (door.metric, 0.9, 2, "stable")
    fell = _run(tmp_path / "b", [(2000, 0.0), (4000, 0.92), (6000, 0.74), (20000, 1.0)], door.metric)
    assert not summarise(BENCHMARKS["pick-place"], {1: fell})["passed"]


def test_gym_targets_are_the_median_over_seeds(tmp_path):
    bench = BENCHMARKS["inverted-pendulum"]
    runs = {seed: _run(tmp_path / str(seed), [(10000, 500.0), (20000, final)], bench.metric)
            for seed, final in ((1, 1000.0), (2, 960.0), (3, 100.0))}
    summary = summarise(bench, runs)
    assert summary["median"] == 960.0 and summary["passed"]
    assert summary["reached"] == [20000, 20000, None] and summary["hits"] == 2
    row = table({"inverted-pendulum": (bench, summary)}).splitlines()[-1]
    assert "| 3 |" in row and "2/3: 20k, 20k, —" in row and row.endswith("| yes |")


def test_a_run_is_finished_only_when_its_last_evaluation_is_at_train_steps(tmp_path):
    from dqt.bench.learn import finished

    run = _run(tmp_path / "r", [(2000, 0.5), (4000, 0.7)], "eval/success_rate", train_steps=6000)
    assert not finished(run)
    (run / ".hydra" / "config.yaml").write_text("train_steps: 4000\n")
    assert finished(run)


def test_a_run_stopped_before_its_end_is_marked_and_fails_the_target(tmp_path):
    bench = BENCHMARKS["inverted-pendulum"]
    runs = {1: _run(tmp_path / "1", [(10000, 1000.0), (20000, 1000.0)], bench.metric),
            2: _run(tmp_path / "2", [(10000, 990.0)], bench.metric, train_steps=20000)}
    summary = summarise(bench, runs)
    assert summary["cut"] == {2: 10000} and summary["median"] == 995.0 and not summary["passed"]
    assert "(seed 2 stopped at 10k)" in table({"inverted-pendulum": (bench, summary)})


@pytest.mark.parametrize("module", [("dqt.bench", "learn"), ("dqt.bench.learn",), ("dqt.bench.learner",),
                                    ("dqt.bench.rollout",), ("dqt.bench.comm",)])
def test_every_benchmark_runs_as_a_module(module):
    # `python -m dqt.bench.learn` once imported the module, did nothing and exited 0
    result = subprocess.run([sys.executable, "-m", *module, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.startswith("usage: dqt-bench "), result.stderr


@pytest.mark.parametrize("learner", [[], ["--critics", "2", "--n-step-bound", "true", "--target-clip", "true",
                                               "--excess-weight", "0"]],
                         ids=["metaworld", "gym"])
def test_learner_benchmark_times_a_real_update(learner):
    # it once timed nothing: the worker's batches gained a `demo` column that its own batch lacked, and
    # Learner.update raised KeyError; --help alone (above) did not show it. The gym: learner's batches carry more.
    result = subprocess.run([sys.executable, "-m", "dqt.bench.learner", "--repeats", "2", "--batch-size", "16", *learner],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ratio update / forward+backward" in result.stdout
    assert ("critics=2, n_step_bound=true, target_clip=true, excess_weight=0" in result.stdout) == bool(learner)


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["kill", "ctrl-c"])
def test_stopping_the_benchmark_stops_its_runs(tmp_path, stop):
    # `kill` (SIGTERM) of dqt-bench learn once left its dqt-train runs training on the cores, unwatched; a Ctrl-C
    # (SIGINT to the benchmark alone here: its runs lead their own sessions) must stop them the same way
    bench = subprocess.Popen([sys.executable, "-m", "dqt.bench.learn", "--only", "inverted-pendulum", "--seeds", "1",
                              "--jobs", "1", "--out", str(tmp_path), "--extra", "train_steps=10000000"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    children = Path(f"/proc/{bench.pid}/task/{bench.pid}/children")
    run = None
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "inverted-pendulum" / "seed1" / ".hydra" / "config.yaml").exists():  # training started
            assert time.monotonic() < deadline and bench.poll() is None, bench.communicate()[1][-3000:]
            time.sleep(0.2)
        run = int(children.read_text().split()[0])
        os.kill(run, 0)  # alive: the run must be stopped by the benchmark, not have ended by itself
        bench.send_signal(stop)
        assert bench.wait(timeout=120) == 128 + stop, bench.communicate()[1][-3000:]
        with pytest.raises(ProcessLookupError):  # terminated and reaped by the benchmark, not left running
            os.kill(run, 0)
    finally:  # whatever failed, nothing of this test may go on running
        for kill, pid in ((os.killpg, bench.pid), (os.killpg, run), (os.kill, run)):  # the run: its group, or itself
            if pid is not None:
                try:
                    kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        bench.wait()


def test_a_cut_off_run_continues_only_with_the_keys_it_was_started_with(tmp_path):
    from dqt.bench.learn import continues

    run = tmp_path / "seed1"
    assert not continues(run, ["seed=1"])  # never started
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("- task=gym:Hopper-v5\n- seed=1\n- resume=auto\n- lr=1e-3\n")
    assert continues(run, ["task=gym:Hopper-v5", "seed=1", "lr=1e-3"])
    assert continues(run, ["task=gym:Hopper-v5", "seed=1", "resume=true", "lr=1e-3"])  # resume= aside
    assert not continues(run, ["task=gym:Hopper-v5", "seed=1"])  # other --extra keys
    assert not continues(run, ["task=gym:Hopper-v5", "seed=1", "lr=3e-4"])
    assert not continues(run, ["task=gym:Hopper-v5", "seed=2", "lr=1e-3"])


@pytest.mark.slow
def test_a_stopped_benchmark_continues_a_cut_off_run_from_its_checkpoint(tmp_path):
    # a stopped benchmark once started its cut-off runs over (Hopper: up to 90 min lost); with exact resume the
    # continued run must write the rows the uninterrupted one wrote
    tiny = "train_steps=48 seed_steps=16 eval_every=16 log_every=8 checkpoint_every=24 eval_episodes=1 num_envs=2"
    command = [sys.executable, "-m", "dqt.bench.learn", "--only", "inverted-pendulum", "--seeds", "1", "--jobs", "1",
               "--out", str(tmp_path), "--extra", tiny]
    run = tmp_path / "inverted-pendulum" / "seed1"
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    whole = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # cut it off just after its checkpoint at 24: the final generation and the rows after 32 gone, as a kill leaves it
    for generation in (run / "checkpoints").glob("step_*"):
        if int(generation.name.split("_")[1]) > 24:
            for f in generation.iterdir():
                f.unlink()
            generation.rmdir()
    kept = [r for r in whole if r["env_steps"] <= 32]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{run}: cut off, continued" in result.stderr
    again = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]

    def learned(rows):  # everything but the timings
        return [{k: v for k, v in r.items() if "time" not in k and "per_s" not in k} for r in rows]

    assert [r["env_steps"] for r in again] == [r["env_steps"] for r in whole]
    assert learned(again) == learned(whole)
    # continued, not started over with the same seed: the rows up to the checkpoint were kept, timings too
    assert [r for r in again if r["env_steps"] <= 24] == [r for r in whole if r["env_steps"] <= 24]
