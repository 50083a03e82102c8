"""A tiny env for tests: one step per episode, reward 1 only when every action dimension lands in the
quarter of [-1, 1] that the observed context asks for. Random actions succeed 1/4^3 = 1.6% of the time,
so solving it needs the autoregressive head to get several dimensions right together.

Registered as `toy_env:Combo-v0`, usable as `task=gym:toy_env:Combo-v0` with tests/ on PYTHONPATH.
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np

DIMS, CONTEXTS = 3, 4
# TARGET[c, i]: the quarter (0..3 from -1 to 1) that dimension i must land in under context c.
TARGET = np.array([[0, 3, 1], [2, 0, 3], [3, 1, 0], [1, 2, 2]])


class Combo(gym.Env):
    observation_space = gym.spaces.Box(0.0, 1.0, (CONTEXTS,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (DIMS,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.context = int(self.np_random.integers(CONTEXTS))
        return np.eye(CONTEXTS, dtype=np.float32)[self.context], {}

    def step(self, action):
        quarter = np.clip(((np.asarray(action) + 1.0) * 2.0).astype(int), 0, 3)
        success = bool(np.all(quarter == TARGET[self.context]))
        obs = np.eye(CONTEXTS, dtype=np.float32)[self.context]
        return obs, float(success), True, False, {"success": float(success)}


gym.register("Combo-v0", entry_point=Combo)
