"""Real multi-process runs: agents as torchrun ranks (elastic launch from dqt-train, and torchrun itself)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, TESTS, newest_checkpoint, run_train

pytestmark = pytest.mark.slow


def _checkpoint(run_dir, rank):
    return newest_checkpoint(run_dir, rank)


def test_two_metaworld_agents_end_identical_with_different_envs(tmp_path):
    result = run_train(
        "num_agents=2", "task=mw-door-unlock", "train_steps=320", "seed_steps=80", "demos=1", "num_envs=2",
        "updates_per_step=0.25", "pretrain_updates=20", "batch_size=32", "eval_every=320", "eval_episodes=2", "log_every=160",
        "checkpoint_every=320", "progress=false", f"hydra.run.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    first, second = _checkpoint(tmp_path, 0), _checkpoint(tmp_path, 1)
    assert first["learner"]["updates"] == second["learner"]["updates"] == 80  # 20 + (320 - 80) * 0.25
    assert first["learner"]["scheduler"]["last_epoch"] == 60  # the LR schedule counts online updates only
    # the demos (both envs finish their first episode together: 2 x 100 steps) are kept apart from the
    # agents' own episodes (160 steps per env: one finished episode each)
    assert first["demo_replay"]["transitions_added"] == 200 and first["replay"]["transitions_added"] == 200
    for part in ("model", "target"):
        for name, tensor in first["learner"][part].items():
            assert torch.equal(tensor, second["learner"][part][name]), f"{part}.{name} differs across ranks"
    # Each rank collected its own data from its own seeded envs.
    rows = first["replay"]["transitions_added"]
    assert rows == second["replay"]["transitions_added"]
    assert not torch.equal(first["replay"]["obs"][:rows], second["replay"]["obs"][:rows])

    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["env_steps"] for r in lines if "train/loss" in r] == [160, 320]
    assert all(r["total_env_steps"] == 2 * r["env_steps"] for r in lines)
    final = [r for r in lines if "eval/return" in r][-1]
    assert final["eval/episodes"] == 2 and final["env_steps"] == 320
    assert "agent0/episode_return" in lines[-1] and "agent1/episode_return" in lines[-1]


def test_torchrun_ranks_share_one_run_dir(tmp_path):
    # Each rank resolves ${now:...} itself (microseconds differ): rank 0's directory must win, the others vanish.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    result = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node=2", "-m", "dqt.train",
         "task=gym:toy_env:Combo-v0", "demos=0", "episode_length=1", "action_repeat=1", "num_envs=4", "bins=8",
         "train_steps=200", "seed_steps=40", "batch_size=16", "model.dim=16", "model.depth=1", "model.heads=2",
         "eval_every=200", "eval_episodes=8", "log_every=100", "wandb.mode=disabled", "progress=false",
         f"hydra.run.dir={tmp_path}/run" + "_${now:%H%M%S%f}"],
        capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dirs = [p for p in tmp_path.iterdir()]
    assert len(run_dirs) == 1, run_dirs
    run_dir = run_dirs[0]
    assert sorted(p.name for p in (run_dir / "checkpoints" / "step_000000200").iterdir()) == [
        "MANIFEST.json", "agent0.pt", "agent1.pt"]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["total_env_steps"] == 400
    a, b = _checkpoint(run_dir, 0), _checkpoint(run_dir, 1)
    for name, tensor in a["learner"]["model"].items():
        assert torch.equal(tensor, b["learner"]["model"][name])


def test_num_agents_must_match_torchrun_world_size(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    result = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node=2", "-m", "dqt.train", "num_agents=3",
         "wandb.mode=disabled", f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert result.returncode != 0
    assert "num_agents=3 is not allowed under torchrun with 2 processes" in result.stderr


def test_launched_agents_that_finish_skip_the_interpreter_teardown(tmp_path):
    # gloo can abort an agent in the interpreter's teardown after its work is done (SIGABRT, which the launcher
    # counts as a failed job): a finished agent ends before the teardown, so an exit handler it registered
    # during its work never runs, and the launch still succeeds
    from dqt import distributed
    from exit_probe import agent

    distributed.launch(2, agent, (str(tmp_path),))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["done0", "done1"]
