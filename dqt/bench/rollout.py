"""dqt-bench rollout: collection speed (greedy decode + exploration + env + replay) against the raw
simulator with random actions on the same vector env, and replay bytes per stored transition.
Target: ratio >= 0.8."""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from dqt.algorithm import reward_scale
from dqt.bench.common import default_config
from dqt.collector import Collector, explore
from dqt.envs import env_seed, make_task
from dqt.model import QTransformer, greedy_bins
from dqt.replay import EpisodeReplay


def main(argv: list[str]) -> None:
    cfg = default_config()
    parser = argparse.ArgumentParser(prog="dqt-bench rollout", description=__doc__)
    parser.add_argument("--task", default=cfg["task"])
    parser.add_argument("--num-envs", type=int, default=cfg["num_envs"])
    parser.add_argument("--steps", type=int, default=8000, help="agent steps per measurement (per sub-env total)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    task = make_task(args.task, cfg["action_repeat"], cfg["episode_length"])
    envs = task.make_vector_env([env_seed(0, 0, i, args.num_envs) for i in range(args.num_envs)])
    vector_steps = max(1, args.steps // args.num_envs)

    envs.reset()
    start = time.perf_counter()
    for _ in range(vector_steps):
        envs.step(np.random.uniform(-1, 1, (args.num_envs, task.action_dim)).astype(np.float32))
    raw = vector_steps * args.num_envs * cfg["action_repeat"] / (time.perf_counter() - start)

    bins = cfg["bins"]
    replay = EpisodeReplay(cfg["replay_size"], task.obs_dim, task.action_dim, bins, cfg["n_step"], cfg["discount"])
    torch.manual_seed(0)  # the policy's actions change the simulator's cost (contacts): fix them
    model = QTransformer(task.obs_dim, task.action_dim, bins, **cfg["model"])
    collector = Collector(envs, replay, bins, reward_scale("auto", cfg["discount"], task.max_reward_per_step),
                          cfg["episode_length"])
    generator = torch.Generator().manual_seed(0)
    sim_seconds = 0.0
    step = envs.step

    def timed_step(actions):  # the simulator's share of collection, on the policy's own trajectories
        nonlocal sim_seconds
        begin = time.perf_counter()
        out = step(actions)
        sim_seconds += time.perf_counter() - begin
        return out

    envs.step = timed_step
    start = time.perf_counter()
    for _ in range(vector_steps):
        chosen = explore(greedy_bins(model, collector.obs), bins, generator=generator, **cfg["explore"])
        collector.step(chosen)
    elapsed = time.perf_counter() - start
    env_steps = vector_steps * args.num_envs * cfg["action_repeat"]
    collect = env_steps / elapsed

    per_transition = replay.bytes_per_row() * (cfg["episode_length"] + 1) / cfg["episode_length"]
    print(f"task {args.task}, {args.num_envs} envs, action_repeat {cfg['action_repeat']}, {args.threads} thread(s)")
    print(f"raw simulator, random actions     {raw:8.0f} env steps/s")
    print(f"collection (decode + env + replay) {collect:8.0f} env steps/s")
    print(f"ratio collection / raw            {collect / raw:8.2f}   (target >= 0.8)")
    print(f"simulator share of collection     {sim_seconds / elapsed:8.2f}   (the rest is decode, exploration, "
          f"replay; the policy's trajectories simulate at {env_steps / sim_seconds:.0f} env steps/s)")
    print(f"replay memory per transition      {per_transition:8.1f} bytes "
          f"({replay.bytes_per_row()} per row, episodes of {cfg['episode_length']} steps take one extra row)")
