"""dqt-bench learner: one full update (targets, loss, backward, guarded step, EMA) against the
forward+backward of the online network alone, both on the same batch. Target: ratio <= 1.5.
Drawing a batch from replay is timed on its own and shown with and without it."""
from __future__ import annotations

import argparse
import sys

import torch

from dqt import algorithm
from dqt.bench.common import default_config, median_times
from dqt.config import token_bins
from dqt.learner import Learner
from dqt.model import q_network
from dqt.replay import EpisodeReplay, sample_mixed


def main(argv: list[str]) -> None:
    cfg = default_config()
    parser = argparse.ArgumentParser(prog="dqt-bench learner", description=__doc__)
    parser.add_argument("--batch-size", type=int, default=cfg["batch_size"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the default run gives each agent 1)")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--bins", type=int, default=cfg["bins"], help="bins per action dimension (the figures in the README: 256)")
    parser.add_argument("--double-q", choices=("true", "false"), default=str(cfg["double_q"]).lower(),
                        help="double-Q targets (costs one more 1-token forward of the online net)")
    parser.add_argument("--levels", type=int, default=1, help="model.levels: tokens per action dimension (coarse to fine; "
                        "--bins must be a power: --bins 256 --levels 4)")
    parser.add_argument("--critics", type=int, default=1, help="model.critics: independent networks, the lowest backs up (model.critic_backup=min)")
    parser.add_argument("--n-step-bound", choices=("true", "false"), default="false",
                        help="n_step_bound (the gym: learner's): two more 1-token forwards, of the target and online nets")
    parser.add_argument("--target-clip", choices=("true", "false"), default="false",
                        help="target_clip (the gym: learner's): the targets clamped and the share moved counted")
    parser.add_argument("--excess-weight", type=float, default=cfg["excess_weight"],
                        help="excess_weight (MetaWorld's learner: 1.0, the gym: learner's: 0)")
    parser.add_argument("--within-step", choices=("target", "online"), default=cfg["within_step"],
                        help="within_step: online takes the max over the next dimension from the update's own online Q")
    args = parser.parse_args(argv)
    try:
        token_bins(args.bins, args.levels)
    except ValueError as error:
        parser.error(str(error).replace("model.levels", "--levels").replace("bins=", "--bins "))
    cfg["bins"] = args.bins
    cfg["model"]["critics"], cfg["model"]["levels"] = args.critics, args.levels
    cfg["double_q"] = args.double_q == "true"
    cfg["n_step_bound"], cfg["target_clip"] = args.n_step_bound == "true", args.target_clip == "true"
    cfg["excess_weight"], cfg["within_step"] = args.excess_weight, args.within_step
    cfg["num_agents"] = 1  # one learner, no process group (the config's null means "decided at launch")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    obs_dim, dims, bins = 39, 4, cfg["bins"]
    replay = EpisodeReplay(20_000, obs_dim, dims, bins, cfg["n_step"], cfg["discount"], one_step=cfg["n_step_bound"])
    for _ in range(100):
        replay.add_episode(torch.randn(101, obs_dim), torch.randint(bins, (100, dims)), torch.rand(100) * 0.002, False)
    model = q_network(obs_dim, dims, bins, **cfg["model"])
    learner = Learner(model, model, cfg, total_updates=10_000)
    learner.reward_range = (0.0, 0.002)  # the rewards stored below: the clip has bounds to apply
    generator = torch.Generator().manual_seed(0)

    def sample() -> dict[str, torch.Tensor]:  # as the worker draws a batch without demos (its `demo` column included)
        return sample_mixed(replay, None, args.batch_size, 0.0, generator)

    batch = sample()
    tokens = model.action_tokens(batch["bins"])
    y = torch.rand(args.batch_size, model.tokens)

    def forward_backward():
        q = model(batch["obs"], tokens[:, :-1])
        total = algorithm.loss(q, tokens, y, cfg["conservative_weight"])[0]
        model.zero_grad(set_to_none=True)
        total.backward()

    def update():
        learner.update(batch)

    fb, up, draw = median_times([forward_backward, update, sample], args.repeats)
    params = sum(p.numel() for p in model.parameters())
    print(f"model: {params:,} parameters (dim={cfg['model']['dim']}, depth={cfg['model']['depth']}, bins={bins}, "
          f"levels={args.levels}), "
          f"batch {args.batch_size}, {args.threads} thread(s), double_q={args.double_q}, critics={args.critics}, "
          f"n_step_bound={args.n_step_bound}, target_clip={args.target_clip}, excess_weight={args.excess_weight:g}")
    print(f"forward+backward (online net)   {fb * 1e3:8.2f} ms")
    print(f"full update step                {up * 1e3:8.2f} ms   ({1 / up:.1f} updates/s)")
    print(f"ratio update / forward+backward {up / fb:8.2f}   (target <= 1.5)")
    print(f"sampling a batch from replay    {draw * 1e3:8.2f} ms   (ratio with it: {(up + draw) / fb:.2f})")


if __name__ == "__main__":
    main(sys.argv[1:])
