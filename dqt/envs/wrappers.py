"""Gymnasium wrappers shared by every task."""
from __future__ import annotations

import gymnasium as gym
import numpy as np

NOISE_STREAM = 1  # spawn key of the reward-noise stream under an env seed


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


class RewardNoise(gym.Wrapper):
    """Add Gaussian noise N(mean, std²) to every step's reward; the clean reward goes to `info['clean_reward']`.

    With `reads` > 1 the reward is read `reads` times, each read with its own noise, and the reads are
    reduced by `reduce` (median or mean): the original study's median smoothing. mean = std = 0 is off:
    the reward passes through unchanged. `seed` may be the env's own seed: the noise draws from a child
    stream of it, never from the env's stream.
    """

    def __init__(self, env: gym.Env, mean: float = 0.0, std: float = 0.0, reads: int = 1, reduce: str = "median",
                 seed: int = 0):
        super().__init__(env)
        if reduce not in ("median", "mean"):
            raise ValueError(f"reduce must be median or mean, not {reduce!r}")
        self.mean, self.std, self.reads, self.reduce = mean, std, reads, reduce
        self.rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(NOISE_STREAM,)))

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        info = dict(info)
        info["clean_reward"] = float(reward)
        if self.mean != 0 or self.std != 0:
            reads = float(reward) + self.rng.normal(self.mean, self.std, self.reads)
            reward = float(np.median(reads) if self.reduce == "median" else reads.mean())
        return obs, reward, terminated, truncated, info
