"""Tests of dqt.envs.wrappers.RewardNoise: the noise's statistics, median and mean of several reads, seeding.

Statistical checks draw N agent steps with a fixed seed (so they are deterministic) and allow 5 standard
errors: the mean of N draws has standard error std/sqrt(N), a sample std about std/sqrt(2N).
"""
from __future__ import annotations

import math

import gymnasium as gym
import numpy as np

from dqt.envs.wrappers import RewardNoise

N = 20_000
REWARD = 0.1 + 0.2  # not exactly 0.3: any rounding on the way would show


class Constant(gym.Env):
    """Pays REWARD every step and never ends."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        return np.zeros(1, np.float32), {}

    def step(self, action):
        return np.zeros(1, np.float32), REWARD, False, False, {}


def added_noise(steps: int = N, seed: int = 7, **noise) -> np.ndarray:
    """What RewardNoise added to the reward of each of `steps` agent steps."""
    env = RewardNoise(Constant(), seed=seed, **noise)
    env.reset()
    out = np.empty(steps)
    for i in range(steps):
        _, reward, _, _, info = env.step(np.zeros(1, np.float32))
        assert info["clean_reward"] == REWARD
        out[i] = reward - info["clean_reward"]
    return out


def test_noise_has_the_requested_mean_and_std():
    noise = added_noise(mean=0.5, std=2.0)
    assert abs(noise.mean() - 0.5) < 5 * 2.0 / math.sqrt(N)
    assert abs(noise.std() - 2.0) < 5 * 2.0 / math.sqrt(2 * N)


def test_median_of_reads_has_the_spread_of_a_median():
    k, std = 25, 2.0
    noise = added_noise(mean=0.0, std=std, reads=k, reduce="median")
    # the median of k normals, drawn apart from the wrapper, and its large-k std sigma * sqrt(pi / 2k)
    # (at k = 25 the exact value is 0.9% below it)
    separate = np.median(np.random.default_rng(123).normal(0.0, std, (N, k)), axis=1).std()
    assert abs(noise.std() / separate - 1) < 0.04
    assert abs(noise.std() / (std * math.sqrt(math.pi / (2 * k))) - 1) < 0.04
    assert abs(noise.mean()) < 5 * noise.std() / math.sqrt(N)


def test_mean_of_reads_divides_the_std_by_sqrt_reads():
    k, std = 25, 2.0
    noise = added_noise(mean=0.0, std=std, reads=k, reduce="mean")
    assert abs(noise.std() - std / math.sqrt(k)) < 5 * (std / math.sqrt(k)) / math.sqrt(2 * N)


def test_median_keeps_a_nonzero_mean_as_bias():
    noise = added_noise(steps=2000, mean=1.5, std=2.0, reads=9, reduce="median")
    assert abs(noise.mean() - 1.5) < 5 * 2.0 / math.sqrt(2000)


def test_noise_off_leaves_the_reward_exactly():
    env = RewardNoise(Constant(), mean=0.0, std=0.0, reads=5, seed=1)
    env.reset()
    for _ in range(3):
        _, reward, _, _, info = env.step(np.zeros(1, np.float32))
        assert reward == REWARD and info["clean_reward"] == REWARD


def test_seeds_give_their_own_noise():
    first, again = added_noise(steps=50, seed=3, std=1.0), added_noise(steps=50, seed=3, std=1.0)
    other = added_noise(steps=50, seed=4, std=1.0)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)
    # not the stream an env seeded with the same seed draws from (gymnasium seeds np_random with it)
    assert not np.allclose(first, np.random.default_rng(3).normal(0.0, 1.0, 50))
