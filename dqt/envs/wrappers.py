"""Gymnasium wrappers shared by every task."""
from __future__ import annotations

import gymnasium as gym


class ActionRepeat(gym.Wrapper):
    """Repeat each action `repeat` times: rewards summed, `info['success']` true if reached in any repeat."""

    def __init__(self, env: gym.Env, repeat: int):
        super().__init__(env)
        self.repeat = repeat

    def step(self, action):
        total, success = 0.0, 0.0
        for _ in range(self.repeat):
            obs, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            success = max(success, float(info.get("success", 0.0)))
            if terminated or truncated:
                break
        info = dict(info)
        info["success"] = success
        return obs, total, terminated, truncated, info
