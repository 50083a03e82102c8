"""Exact resume: a job killed with SIGKILL after a checkpoint and continued with resume=true logs the same
metrics.jsonl rows, training metrics and evaluations, as the same run uninterrupted (time columns aside)."""
from __future__ import annotations

import contextlib
import os
import signal

import pytest
import torch

from conftest import newest_checkpoint, run_train, start_train, wait_for_generation
from dqt import generations
from dqt.bench import policy
from dqt.logger import read_metrics

pytestmark = pytest.mark.slow

# Drift: episodes of up to 8 agent steps (2 env steps each) drawing from the env's RNG at every step, rewards
# with noise (RewardNoise's own generator), 2 ms per env step so the kill lands mid-run. Logs, evaluations and
# checkpoints fall on different steps: a checkpoint holds a half-filled log window and episodes in progress.
DRIFT = ("task=gym:toy_env:SlowDrift-v0", "num_agents=2", "demos=0", "episode_length=8", "action_repeat=2", "bins=8",
         "num_envs=4", "seed_steps=40", "batch_size=16", "replay_size=1000", "updates_per_step=0.25", "model.dim=16",
         "model.depth=1", "model.heads=2", "noise.std=0.1", "eval_every=80", "eval_episodes=4", "log_every=60",
         "checkpoint_every=100", "train_steps=300", "threads=1", "progress=false", "wandb.mode=disabled",
         "model.critics=2",  # two critics under DDP: both train, are checkpointed and replayed
         "explore.color=1")  # pink exploration noise: the checkpoint falls mid-series, which must go on
TIME_COLUMNS = ("time_s",)  # and every */..._per_s column: wall clock, never equal


def without_time(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIME_COLUMNS and not k.endswith("_per_s")} for row in rows]


def test_a_killed_job_resumed_logs_the_rows_of_the_uninterrupted_run(tmp_path):
    whole, split, train_steps = tmp_path / "whole", tmp_path / "split", 300
    env = {"OMP_NUM_THREADS": "1"}
    # the uninterrupted run alongside, each job in a process group of its own
    uninterrupted = start_train(*DRIFT, f"hydra.run.dir={whole}", stderr=tmp_path / "whole.stderr", env=env,
                                new_session=True)
    job = start_train(*DRIFT, f"hydra.run.dir={split}", stderr=tmp_path / "stderr", new_session=True, env=env)
    try:
        wait_for_generation(job, split, 100, tmp_path / "stderr")
        os.killpg(job.pid, signal.SIGKILL)  # the whole job: launcher and both agents, as kill -9 of a batch job
        job.wait(timeout=60)
        assert uninterrupted.wait(timeout=240) == 0, (tmp_path / "whole.stderr").read_text()[-3000:]
    finally:  # a failed test leaves no process behind
        for group in (job, uninterrupted):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group.pid, signal.SIGKILL)
            group.wait()
    assert generations.complete(split)[0].step < train_steps  # killed mid-run
    saved = newest_checkpoint(split, 0)
    assert saved["collector"]["episodes"]["ep_length"].gt(0).any()  # episodes were in progress
    assert saved["accumulators"]["sums"][-1] > 0  # and a log window half filled

    resumed = run_train(*DRIFT, "resume=true", f"hydra.run.dir={split}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "fresh episodes" not in resumed.stderr, resumed.stderr

    expected, got = without_time(read_metrics(whole)), without_time(read_metrics(split))
    assert [r["env_steps"] for r in expected if "eval/return" in r] == [80, 160, 240, 300]
    assert [r["env_steps"] for r in expected if "train/loss" in r] == [60, 120, 180, 240, 300]
    assert got == expected

    # dqt-bench policy replays the final evaluation from the final checkpoint: 2 agents, 2 episodes each, up to 8
    # steps of -distance rewards, so any other seed, episode id, batch or action would move the mean return
    report = policy.replay(whole)
    final = [r for r in expected if "eval/return" in r][-1]
    assert report["step"] == 300 and [e["episode"] for e in report["episodes"]] == [0, 1, 2, 3]
    assert sum(e["return"] for e in report["episodes"]) / 4 == pytest.approx(final["eval/return"], rel=1e-12)
    assert sum(e["success"] for e in report["episodes"]) / 4 == pytest.approx(final["eval/success_rate"], abs=1e-12)
    assert all(1 <= len(e["bins"]) <= 8 for e in report["episodes"])
    # both critics trained apart and were checkpointed; the replay above used their mean's greedy bins
    weights = newest_checkpoint(whole, 0)["learner"]["model"]
    assert {k.split(".")[1] for k in weights if k.startswith("members.")} == {"0", "1"}
    assert not torch.equal(weights["members.0.advantage.weight"], weights["members.1.advantage.weight"])


# MetaWorld, one agent with 2 envs: episodes of 10 agent steps, a checkpoint every 50 steps, learning from step 20
# (in-process: two agents resuming together through the launcher are the SIGKILL test above and
# tests/test_checkpoint.py, on toy envs; MetaWorld's own state restored: tests/test_snapshot.py)
METAWORLD = ("task=mw-reach", "num_agents=1", "demos=0", "episode_length=10", "action_repeat=2", "bins=8", "num_envs=2",
             "seed_steps=20", "batch_size=16", "replay_size=1000", "updates_per_step=0.25", "model.dim=16",
             "model.depth=1", "model.heads=2", "eval_every=40", "eval_episodes=2", "log_every=30",
             "checkpoint_every=50", "train_steps=100", "threads=1", "progress=false", "wandb.mode=disabled")


def test_a_metaworld_run_resumed_from_its_middle_generation_logs_the_same_rows(tmp_path):
    # MuJoCo state, the model's per-episode changes, MetaWorld's goal and counters; the interruption is the
    # state a kill after step 50's generation leaves (the later generation incomplete, rows after it logged)
    first = run_train(*METAWORLD, f"hydra.run.dir={tmp_path}")
    assert first.returncode == 0, first.stderr[-3000:]
    uninterrupted = without_time(read_metrics(tmp_path))
    (generations.generation_dir(tmp_path, 100) / generations.MANIFEST).unlink()
    assert newest_checkpoint(tmp_path, 0)["collector"]["episodes"]["ep_length"].gt(0).all()  # mid-episode

    resumed = run_train(*METAWORLD, "resume=true", f"hydra.run.dir={tmp_path}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "fresh episodes" not in resumed.stderr, resumed.stderr
    assert [r["env_steps"] for r in uninterrupted if "eval/return" in r] == [40, 80, 100]
    assert without_time(read_metrics(tmp_path)) == uninterrupted
