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
