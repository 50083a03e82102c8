"""Gymnasium wrappers shared by every task."""
from __future__ import annotations

import gymnasium as gym


class ActionRepeat(gym.Wrapper):
    """Repeat each action `repeat` times: rewards summed, `info['success']` true if reached in any repeat
    (reported only when the env reports success at all)."""

    def __init__(self, env: gym.Env, repeat: int):
        super().__init__(env)
        self.repeat = repeat

    def step(self, action):
        total, success = 0.0, None
        for _ in range(self.repeat):
            obs, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            if "success" in info:
                success = max(success or 0.0, float(info["success"]))
            if terminated or truncated:
                break
        if success is not None:
            info = {**info, "success": success}
        return obs, total, terminated, truncated, info
