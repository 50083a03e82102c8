"""dqt-bench rollout: collection speed (greedy decode + exploration + env + replay) against the raw
simulator with random actions on the same kind of vector env, and replay bytes per stored transition.
Target: ratio >= 0.8.

The simulator's cost depends on where the arm goes: constant actions of -1 simulate ~25% slower than
uniform random ones (contacts, joint limits). So the ratio is measured on the same kind of trajectories:
the collector runs the full greedy decode for every step, then executes a uniformly random bin per
dimension (epsilon-greedy with epsilon = 1). The untrained policy's own actions (the default
exploration) are measured too and reported with the simulator's speed on them.

This machine's speed drifts by 20-30% within seconds, so the three measurements take turns every vector
step, on identical vector envs, and every figure is the median over rounds.
"""
from __future__ import annotations

import argparse
import sys
import statistics
import time

import numpy as np
import torch

from dqt.bench.common import default_config
from dqt.collector import Collector, explore
from dqt.envs import env_seed, make_task
from dqt.model import greedy_bins, q_network
from dqt.replay import EpisodeReplay


def main(argv: list[str]) -> None:
    cfg = default_config()
    parser = argparse.ArgumentParser(prog="dqt-bench rollout", description=__doc__)
    parser.add_argument("--task", default=cfg["task"])
    parser.add_argument("--num-envs", type=int, default=cfg["num_envs"])
    parser.add_argument("--steps", type=int, default=1600, help="agent steps per round (all sub-envs together)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--bins", type=int, default=cfg["bins"], help="bins per action dimension (the figures in the README: 256)")
    args = parser.parse_args(argv)
    cfg["bins"] = args.bins
    torch.set_num_threads(args.threads)

    task = make_task(args.task, cfg["action_repeat"], cfg["episode_length"])
    seeds = [env_seed(0, 0, i, args.num_envs) for i in range(args.num_envs)]
    raw_envs = task.make_vector_env(seeds)
    raw_envs.reset()
    bins = cfg["bins"]
    torch.manual_seed(0)  # the untrained policy, and so its trajectories, depend on these weights: fix them
    model = q_network(task.obs_dim, task.action_dim, bins, **cfg["model"])
    random_bins = dict(kind="eps", std=0.0, eps=1.0)
    runs = {"random": (_TimedCollector(task, seeds, bins, cfg), random_bins),
            "policy": (_TimedCollector(task, seeds, bins, cfg), cfg["explore"])}
    generator, rng = torch.Generator().manual_seed(0), np.random.default_rng(0)
    vector_steps = max(1, args.steps // args.num_envs)
    env_steps = vector_steps * args.num_envs * cfg["action_repeat"]
    raw, rates, sim_rates = [], {name: [] for name in runs}, {name: [] for name in runs}
    for _ in range(args.rounds):
        raw_seconds, seconds = 0.0, dict.fromkeys(runs, 0.0)
        for timed, _ in runs.values():
            timed.sim_seconds = 0.0
        for _ in range(vector_steps):  # the three take turns every vector step, so drift hits them alike
            start = time.perf_counter()
            raw_envs.step(rng.uniform(-1, 1, (args.num_envs, task.action_dim)).astype(np.float32))
            raw_seconds += time.perf_counter() - start
            for name, (timed, explore_cfg) in runs.items():
                start = time.perf_counter()
                chosen = explore(greedy_bins(model, timed.collector.obs), bins, explore_cfg["kind"], explore_cfg["std"],
                                 explore_cfg["eps"], generator)
                timed.collector.step(chosen)
                seconds[name] += time.perf_counter() - start
        raw.append(env_steps / raw_seconds)
        for name, (timed, _) in runs.items():
            rates[name].append(env_steps / seconds[name])
            sim_rates[name].append(env_steps / timed.sim_seconds)

    median = statistics.median
    ratios = [c / r for c, r in zip(rates["random"], raw)]
    replay = runs["random"][0].collector.replay
    per_transition = replay.bytes_per_row() * (cfg["episode_length"] + 1) / cfg["episode_length"]
    print(f"task {args.task}, {args.num_envs} envs, action_repeat {cfg['action_repeat']}, {args.threads} thread(s), "
          f"{args.rounds} rounds of {env_steps} env steps each (medians over rounds)")
    print(f"raw simulator, random actions                 {median(raw):8.0f} env steps/s")
    print(f"collection, greedy decode + random bins       {median(rates['random']):8.0f} env steps/s "
          f"(the simulator inside it: {median(sim_rates['random']):.0f} env steps/s)")
    print(f"ratio collection / raw                        {median(ratios):8.2f}   (target >= 0.8; rounds "
          f"{min(ratios):.2f}-{max(ratios):.2f})")
    print(f"collection, untrained policy + {cfg['explore']['kind']} exploration {median(rates['policy']):6.0f} env steps/s "
          f"(its trajectories simulate at {median(sim_rates['policy']):.0f} env steps/s)")
    print(f"replay memory per transition                  {per_transition:8.1f} bytes "
          f"({replay.bytes_per_row()} per row, episodes of {cfg['episode_length']} steps take one extra row)")


class _TimedCollector:
    """A Collector on its own vector env that also counts the seconds spent inside the simulator."""

    def __init__(self, task, seeds: list[int], bins: int, cfg: dict):
        envs = task.make_vector_env(seeds)
        replay = EpisodeReplay(cfg["replay_size"], task.obs_dim, task.action_dim, bins, cfg["n_step"],
                               cfg["discount"])
        self.collector = Collector(envs, replay, bins, cfg["episode_length"])
        self.sim_seconds = 0.0
        step = envs.step

        def timed_step(actions):
            begin = time.perf_counter()
            out = step(actions)
            self.sim_seconds += time.perf_counter() - begin
            return out

        envs.step = timed_step


if __name__ == "__main__":
    main(sys.argv[1:])
