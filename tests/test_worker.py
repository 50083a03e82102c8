"""Tests of dqt.worker's pieces that need no process: pooling per-agent reward sums."""
from __future__ import annotations

import numpy as np
import pytest

from dqt.worker import mean_std


def test_reward_mean_and_std_pool_agents_exactly():
    rng = np.random.default_rng(0)
    agents = [rng.normal(3.0, 2.0, 40), rng.normal(-1.0, 0.5, 7), rng.normal(0.0, 5.0, 13)]  # unequal counts
    sums = np.sum([[r.sum(), r @ r, len(r)] for r in agents], axis=0)  # what train_row sums over agents
    every = np.concatenate(agents)
    assert mean_std(*sums) == pytest.approx((every.mean(), every.std()), rel=1e-12)
    assert mean_std(4.0, 8.0, 2.0) == (2.0, 0.0)  # two rewards of 2: no spread


def _train_row_on_two_ranks(rank: int, world_size: int) -> dict:
    # Rank 0's env reports success, rank 1's does not (nan); both carry reward sums and loss sums.
    import time

    import torch

    from dqt.algorithm import ValueMap
    from dqt.worker import TRAIN_KEYS, train_row

    class Stub:
        updates, skipped_steps = 10, 0
        value_map = ValueMap(0.5, -2.0)
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.25)

    sums = torch.tensor([float(rank + 1)] * len(TRAIN_KEYS) + [2.0], dtype=torch.float64)
    episodes = [(1.0, 1.0), (3.0, 0.0)] if rank == 0 else [(5.0, float("nan"))]
    rewards = torch.tensor([[6.0, 20.0, 4.0, 10.0, 4.0], [-2.0, 6.0, 2.0, 2.0, 2.0]][rank], dtype=torch.float64)
    window = {"start": time.perf_counter() - 1.0, "steps": 0, "updates": 0}
    return train_row(sums, episodes, rewards, Stub(), world_size, window, 8)


@pytest.mark.slow
def test_train_row_pools_rewards_episodes_and_reported_success_over_agents(tmp_path):
    from conftest import run_world

    rows = run_world(_train_row_on_two_ranks, 2, tmp_path)
    rates = ("train/env_steps_per_s", "train/updates_per_s")  # each rank's own clock
    rows = [{k: v for k, v in row.items() if k not in rates} for row in rows]
    assert rows[0] == rows[1]
    row = rows[0]
    # losses: (1 + 2) / (2 + 2) per key; rewards pooled over 6 steps: stored 4 / 6, clean 6 / 6
    assert row["train/loss"] == pytest.approx(0.75)
    assert (row["train/reward_mean"], row["train/reward_std"]) == pytest.approx(mean_std(4.0, 26.0, 6.0))
    assert (row["train/clean_reward_mean"], row["train/clean_reward_std"]) == pytest.approx(mean_std(6.0, 12.0, 6.0))
    # three episodes, two with a reported success
    assert row["train/episode_return"] == pytest.approx(3.0) and row["train/episodes"] == 3
    assert row["train/success_rate"] == pytest.approx(0.5)
    assert row["agent0/success_rate"] == pytest.approx(0.5) and "agent1/success_rate" not in row
    assert row["agent1/episode_return"] == pytest.approx(5.0)
    assert (row["train/value_scale"], row["train/value_low"]) == (0.5, -2.0)  # the learner's map, as it holds it


def test_window_sums_from_a_checkpoint_written_before_a_train_key_was_added():
    import torch

    from dqt.worker import TRAIN_KEYS, window_sums

    assert torch.equal(window_sums(None), torch.zeros(len(TRAIN_KEYS) + 1, dtype=torch.float64))
    current = torch.arange(1.0, len(TRAIN_KEYS) + 2, dtype=torch.float64)
    assert torch.equal(window_sums(current), current)
    older = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 7.0], dtype=torch.float64)  # five keys and a count of 7 updates
    assert window_sums(older).tolist() == [1.0, 2.0, 3.0, 4.0, 5.0] + [0.0] * (len(TRAIN_KEYS) - 5) + [7.0]
