"""Tests of dqt.envs.snapshot: an env restored from a snapshot (through torch.save and a weights_only load) into a
freshly built env continues exactly as the original, for every kind of state the module names."""
from __future__ import annotations

import io
import threading
from collections import namedtuple

import gymnasium as gym
import numpy as np
import pytest
import torch

import toy_env  # noqa: F401  (registers toy_env:Drift-v0)
from dqt.envs import make_task
from dqt.envs.snapshot import SnapshotError, mismatch, restore, snapshot
from dqt.envs.wrappers import RewardNoise


def through_a_checkpoint(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return np.array_equal(np.asarray(a), np.asarray(b), equal_nan=np.asarray(a).dtype.kind == "f")


def assert_continues_exactly(build, action_dim: int, before: int = 13, after: int = 40) -> None:
    """Step an env into its second episode, restore its snapshot into an env built with another seed, and step
    both with the same actions through several episode ends: every obs, reward, flag and info is equal."""
    original, fresh = build(5), build(6)
    original.reset()
    fresh.reset()
    rng = np.random.default_rng(0)
    for _ in range(before):
        _, _, terminated, truncated, _ = original.step(rng.uniform(-1, 1, action_dim))
        if terminated or truncated:
            original.reset()
    restore(fresh, through_a_checkpoint(snapshot(original)))
    ends = 0
    for step in range(after):
        action = rng.uniform(-1, 1, action_dim)
        mine, theirs = original.step(action), fresh.step(action)
        assert all(same(a, b) for a, b in zip(mine, theirs)), f"step {step} after the restore differs"
        if mine[2] or mine[3]:
            ends += 1
            assert same(original.reset()[0], fresh.reset()[0])
    assert ends >= 2  # the restored env's resets (its RNG) were exercised too


@pytest.mark.parametrize("name", [
    "gym:toy_env:Drift-v0",  # the env's own RNG and counters, RewardNoise's generator
    "gym:Pendulum-v1",  # classic control
    "gym:Ant-v5",  # MuJoCo: reads a body's position (computed, not state) before it steps
    "mw-door-lock",  # MetaWorld: moves bodies in its model at reset, keeps views of MuJoCo's memory
])
def test_a_restored_env_continues_exactly(name):
    task = make_task(name, 2 if name.startswith("mw-") else 1, 10)
    assert_continues_exactly(lambda seed: RewardNoise(task.build(seed, 7), std=0.5, seed=seed), task.action_dim)


Pair = namedtuple("Pair", "left right")


class Aliased(gym.Env):
    """State in shapes a generic snapshot must keep: views of one array, one generator in two places, a named
    tuple, a legacy RandomState, a cached value made after the env was built."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (3,), np.float64)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def __init__(self, seed: int):
        self.memory = np.zeros(4)
        self.head, self.tail = self.memory[:3], self.memory[1:]  # overlapping views
        self.rng = self.other = np.random.default_rng(seed)
        self.legacy = np.random.RandomState(seed)
        self.pair, self.scale = Pair(1, "a"), np.float32(0.5)

    def reset(self, *, seed=None, options=None):
        return self.head.copy(), {}

    def step(self, action):
        self.memory += self.rng.normal(size=4) * self.scale + self.legacy.uniform()
        self.tail[0] += self.other.uniform()  # the same generator, through its other name
        if self.memory[0] > 1.0:
            self.cached = self.memory.sum()
        return self.head.copy(), float(getattr(self, "cached", 0.0)), False, False, {}


def test_views_generators_and_named_tuples_keep_their_identity():
    assert_continues_exactly(lambda seed: gym.wrappers.TimeLimit(Aliased(seed), 6), 1)
    env = Aliased(1)
    restore(env, through_a_checkpoint(snapshot(Aliased(2))))
    assert env.rng is env.other and env.pair == Pair(1, "a") and type(env.scale) is np.float32
    env.memory[1] = 7.0
    assert env.head[1] == env.tail[0] == 7.0


class Locked(Aliased):
    def __init__(self, seed: int):
        super().__init__(seed)
        self.lock = threading.Lock()


def test_state_a_snapshot_cannot_hold_is_named():
    with pytest.raises(SnapshotError, match=r"Locked\.lock is a _thread\.lock"):
        snapshot(gym.wrappers.TimeLimit(Locked(1), 6))


def test_a_snapshot_of_other_wrappers_is_refused_before_anything_changes():
    task = make_task("gym:toy_env:Drift-v0", 1, 10)
    state = through_a_checkpoint(snapshot(RewardNoise(task.build(1), std=0.5, seed=1)))
    env = task.build(2)
    before = env.unwrapped.goal.copy()
    assert "RewardNoise" in mismatch(env, state)
    with pytest.raises(SnapshotError, match="wrappers"):
        restore(env, state)
    assert np.array_equal(env.unwrapped.goal, before)
