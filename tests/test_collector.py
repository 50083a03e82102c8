"""Tests of dqt.collector: what a collector stores and reports when its envs' rewards are noisy."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import toy_env  # noqa: F401  (registers toy_env:Combo-v0)
from dqt.collector import Collector
from dqt.envs import make_task
from dqt.replay import EpisodeReplay

ENVS, STEPS = 4, 25


def _collect(noise: dict | None) -> tuple[Collector, list, torch.Tensor]:
    # Combo episodes last one step: every reward arrives with a reset, its clean value in final_info.
    task = make_task("gym:toy_env:Combo-v0", action_repeat=1, episode_length=1)
    replay = EpisodeReplay(1000, task.obs_dim, task.action_dim, bins=4, n_step=1, discount=0.9)
    collector = Collector(task.make_vector_env(list(range(ENVS)), noise=noise), replay, 4, 1)
    generator = torch.Generator().manual_seed(0)
    for _ in range(STEPS):
        collector.step(torch.randint(4, (ENVS, task.action_dim), generator=generator))
    episodes, sums = collector.drain()
    return collector, episodes, sums


def test_noisy_rewards_are_stored_and_clean_ones_reported():
    collector, episodes, sums = _collect({"mean": 0.0, "std": 1.0, "reads": 1, "reduce": "median"})
    noisy_sum, noisy_sq, clean_sum, clean_sq, count = sums.tolist()
    assert count == ENVS * STEPS == len(episodes)
    returns = np.array([ret for ret, _ in episodes])
    assert set(returns) <= {0.0, 1.0}  # episode returns are what the env paid
    assert clean_sum == clean_sq == returns.sum() > 0
    # replay holds the noisy rewards, raw (one-step episodes: the n-step return is the reward; float32)
    stored = collector.replay.nstep_return[collector.replay.sampleable].double()
    assert stored.sum().item() == pytest.approx(noisy_sum, abs=1e-4)
    assert (stored ** 2).sum().item() == pytest.approx(noisy_sq, rel=1e-6)
    assert abs(noisy_sum - clean_sum) > 1.0 and noisy_sq > clean_sq  # the noise is there
    # the reward range (the value map's, for gym: tasks) is that of the stored, noisy rewards
    assert collector.reward_range == pytest.approx([stored.min().item(), stored.max().item()], abs=1e-6)
    assert collector.reward_range[0] < 0.0 and collector.reward_range[1] > 1.0
    assert collector.drain()[1].sum().item() == 0  # drained


def test_without_noise_the_clean_reward_is_the_stored_one():
    _, episodes, sums = _collect(None)
    noisy_sum, noisy_sq, clean_sum, clean_sq, count = sums.tolist()
    assert (noisy_sum, noisy_sq) == (clean_sum, clean_sq) == (sum(r for r, _ in episodes),) * 2



def test_without_noise_the_reward_range_is_the_envs():
    collector, _, _ = _collect(None)
    assert collector.reward_range == [0.0, 1.0]
