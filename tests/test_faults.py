"""Faulty agents through the trainer: robust rules keep learning, mean skips non-finite steps."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import newest_checkpoint, run_train

pytestmark = pytest.mark.slow

TOY = ("task=gym:toy_env:Combo-v0", "demos=0", "bins=4", "episode_length=1", "action_repeat=1", "num_envs=4",
       "seed_steps=100", "pretrain_updates=0", "updates_per_step=0.5", "batch_size=64", "model.dim=32",
       "model.depth=1", "model.heads=2", "discount=0.9", "conservative_weight=0.5", "conservative_rows=all", "lr_schedule=constant", "explore.kind=eps",
       "explore.eps=0.3", "eval_episodes=200", "checkpoint_every=100000", "progress=false", "wandb.mode=disabled",
       "eval_ema=0",  # ~1,000 updates: the online net; the default average (horizon 2,000 updates) would lag
       # the learner these tests were written with (the `gym:` auto values before they became raw rewards, 3e-4 and the
       # n-step bound): what they check is the aggregation, not the suite's defaults
       "reward_scale=map", "mc_lower_bound=true", "n_step_bound=false", "lr=0.001", "model.critics=1")


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_median_learns_with_one_of_three_agents_scaling_its_gradients_by_1e6(tmp_path):
    # three agents, not four: on two cores a fourth agent only adds time, and the median of three already
    # has to leave the one scaled value out at every coordinate
    result = run_train(*TOY, "num_agents=3", "train_steps=2000", "eval_every=2000", "log_every=2000",
                       "aggregation=median", "faults.agents=[1]", "faults.kind=scale", "faults.magnitude=1e6",
                       f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "dqt: warning" not in result.stderr  # 1 of 3 is within what the median tolerates
    rows = _rows(tmp_path)
    assert rows[-1]["train/skipped_steps"] == 0
    assert [r for r in rows if "eval/success_rate" in r][-1]["eval/success_rate"] >= 0.9


def test_nan_agent_skips_every_mean_step_but_no_trimmed_mean_step(tmp_path):
    # trim 0.34 of 3 agents drops one value at each end: floor(0.34 * 3) = 1 (0.25 would drop none)
    common = (*TOY, "num_agents=3", "train_steps=200", "eval_every=200", "log_every=200", "faults.agents=[2]",
              "faults.kind=nan", "aggregation_trim=0.34")
    mean_dir, trimmed_dir = tmp_path / "mean", tmp_path / "trimmed"
    mean = run_train(*common, "aggregation=mean", f"hydra.run.dir={mean_dir}")
    assert mean.returncode == 0, mean.stderr[-3000:]
    assert "dqt: warning: 1 of 3 agents are faulty but rule 'mean'" in mean.stderr  # the mean tolerates no faulty agent
    assert _rows(mean_dir)[-1]["train/skipped_steps"] == 50  # every one of (200 - 100) * 0.5 updates
    weights = newest_checkpoint(mean_dir, 0)["learner"]["model"]
    assert all(torch.isfinite(w).all() for w in weights.values())

    trimmed = run_train(*common, "aggregation=trimmed_mean", f"hydra.run.dir={trimmed_dir}")
    assert trimmed.returncode == 0, trimmed.stderr[-3000:]
    assert "dqt: warning" not in trimmed.stderr  # trim 0.34 of 3 tolerates one faulty agent
    assert _rows(trimmed_dir)[-1]["train/skipped_steps"] == 0
