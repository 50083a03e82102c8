"""A tiny env for tests: one step per episode with a context c in {0,1,2,3}; reward 1 only when the
action's quarters q_i (which quarter of [-1, 1] dimension i lands in) chain as q1 = q0 + c and
q2 = q1 + c (mod 4). Every first quarter has a right continuation, but no dimension is right on its
own: marginally every quarter of q1 and q2 is equally good, so only a head that conditions each
dimension on the ones before (the autoregressive Q-function) solves it. Random actions succeed 1/16.

Registered as `toy_env:Combo-v0`, usable as `task=gym:toy_env:Combo-v0` with tests/ on PYTHONPATH.
"""
from __future__ import annotations

import time

import gymnasium as gym
import numpy as np

DIMS, CONTEXTS = 3, 4


def solved(context: int, action) -> bool:
    """True when the action's quarters chain by `context`."""
    quarter = np.clip(((np.asarray(action) + 1.0) * 2.0).astype(int), 0, 3)
    return bool(quarter[1] == (quarter[0] + context) % 4 and quarter[2] == (quarter[1] + context) % 4)


class Combo(gym.Env):
    observation_space = gym.spaces.Box(0.0, 1.0, (CONTEXTS,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (DIMS,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.context = int(self.np_random.integers(CONTEXTS))
        return np.eye(CONTEXTS, dtype=np.float32)[self.context], {}

    def step(self, action):
        success = solved(self.context, action)
        obs = np.eye(CONTEXTS, dtype=np.float32)[self.context]
        return obs, float(success), True, False, {"success": float(success)}


gym.register("Combo-v0", entry_point=Combo)


class BadCombo(Combo):
    """Combo whose env seeded `bad_seed` returns a NaN reward (or an Inf observation) at its step `bad_step`:
    with env_seed(seed=1, rank, index, num_envs=4) = 1000000 + 4 * rank + index, 1000002 is agent 0's sub-env 2
    and 1000006 agent 1's."""

    def __init__(self, bad_seed: int = 1_000_002, bad_step: int = 5, bad: str = "reward"):
        super().__init__()
        self.bad_seed, self.bad_step, self.bad, self.seed, self.steps = bad_seed, bad_step, bad, None, 0

    def reset(self, *, seed=None, options=None):
        self.seed = seed if seed is not None else self.seed
        return super().reset(seed=seed, options=options)

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        self.steps += 1
        if self.seed == self.bad_seed and self.steps == self.bad_step:
            if self.bad == "reward":
                reward = float("nan")
            else:
                obs = np.full_like(obs, np.inf)
        return obs, reward, terminated, truncated, info


gym.register("NaNReward-v0", entry_point=BadCombo)
gym.register("NaNRewardAgent1-v0", entry_point=BadCombo, kwargs={"bad_seed": 1_000_006})
gym.register("InfObs-v0", entry_point=BadCombo, kwargs={"bad": "obs"})


class SlowCombo(Combo):
    """Combo that takes `delay_s` per step: a run long enough for a test to act on it while it trains."""

    def __init__(self, delay_s: float = 0.002):
        super().__init__()
        self.delay_s = delay_s

    def step(self, action):
        time.sleep(self.delay_s)
        return super().step(action)


gym.register("SlowCombo-v0", entry_point=SlowCombo)


class Drift(gym.Env):
    """Episodes of many steps that draw from the env's own RNG at every step: a point pushed by the action
    towards a goal drawn at reset, with wind and observation noise from `np_random` and a step counter in the
    observation; reaching the goal ends the episode with success. For exact-resume tests: episodes are in
    progress at any checkpoint, and the env's RNG, position and counter are state a resume must carry over.
    `delay_s` per step makes a run long enough for a test to act on it while it trains."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (5,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def __init__(self, delay_s: float = 0.0):
        super().__init__()
        self.delay_s = delay_s

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.goal, self.pos, self.t = self.np_random.uniform(-1.0, 1.0, 2), np.zeros(2), 0
        return self._obs(), {}

    def step(self, action):
        if self.delay_s:
            time.sleep(self.delay_s)
        self.t += 1
        self.pos = self.pos + 0.3 * np.asarray(action, dtype=np.float64) + self.np_random.normal(0.0, 0.05, 2)
        distance = float(np.linalg.norm(self.pos - self.goal))
        return self._obs(), -distance, distance < 0.3, False, {"success": float(distance < 0.3)}

    def _obs(self) -> np.ndarray:
        seen = self.pos + self.np_random.normal(0.0, 0.01, 2)
        return np.concatenate([seen, self.goal, [self.t / 10]]).astype(np.float32)


gym.register("Drift-v0", entry_point=Drift)
gym.register("SlowDrift-v0", entry_point=Drift, kwargs={"delay_s": 0.002})
