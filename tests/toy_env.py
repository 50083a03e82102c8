"""A tiny env for tests: one step per episode with a context c in {0,1,2,3}; reward 1 only when the
action's quarters q_i (which quarter of [-1, 1] dimension i lands in) chain as q1 = q0 + c and
q2 = q1 + c (mod 4). Every first quarter has a right continuation, but no dimension is right on its
own: marginally every quarter of q1 and q2 is equally good, so only a head that conditions each
dimension on the ones before (the autoregressive Q-function) solves it. Random actions succeed 1/16.

Registered as `toy_env:Combo-v0`, usable as `task=gym:toy_env:Combo-v0` with tests/ on PYTHONPATH.
"""
from __future__ import annotations

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
