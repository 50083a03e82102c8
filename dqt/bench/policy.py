"""`dqt-bench policy RUN_DIR`: what a run's greedy policy does, read off its newest complete checkpoint.

Replays the run's evaluation with the checkpoint's policy (the weight average when the run had `eval_ema` > 0,
else the online model; the same envs, seeds, episode ids and batches as
the run's own evaluations, so at the run's final checkpoint it gives the final `eval/return`; runs on
CUDA evaluated there, this replays on CPU, which may differ in the last digits) and prints,
per episode, the return, length and success, then:
- the greedy actions' share of all steps, commonest first: a policy that barely depends on the state shows
  up as one or two actions at most of the steps;
- the model's value of the greedy action at each episode's first state, mapped (the [0, 1] scale Q is
  learned on) and in reward units (the value map undone), to hold against the returns.

    dqt-bench policy results/learning/reacher/seed1
    dqt-bench policy runs/mw-door-unlock/2026-11-26_01-00-00 --step 10000 --top 5
"""
from __future__ import annotations

import argparse
import collections
import statistics
import sys
from pathlib import Path

import numpy as np
import torch


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="dqt-bench policy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a run directory (its .hydra/config.yaml and checkpoints/)")
    parser.add_argument("--step", type=int, default=None, help="the generation at this step (default: the newest)")
    parser.add_argument("--top", type=int, default=3, help="how many of the commonest actions to show (>= 1)")
    args = parser.parse_args(argv)
    from dqt.errors import EXIT_CONFIG, EXIT_RUN, ConfigError, RunError

    try:
        if args.top < 1:
            raise ConfigError(f"--top={args.top} is not allowed: expected an integer >= 1")
        report = replay(args.run_dir, args.step)
    except (ConfigError, RunError) as error:
        print(f"dqt-bench policy: {error}", file=sys.stderr)
        sys.exit(EXIT_CONFIG if isinstance(error, ConfigError) else EXIT_RUN)
    print(format_report(report, args.top))


# Keys whose default changed after they were added: a saved config without one ran with its value then.
FORMER_VALUES = {"model.critics": 1, "n_step_bound": False, "target_clip": False}


def run_config(run_dir: Path) -> dict:
    """The run's config, validated, with keys added to dqt since the run at the values it ran with: `FORMER_VALUES`,
    else their defaults (conf/config.yaml)."""
    from omegaconf import OmegaConf

    from dqt.bench.common import config_defaults
    from dqt.config import validate
    from dqt.errors import ConfigError

    saved = run_dir / ".hydra" / "config.yaml"
    if not saved.exists():
        raise ConfigError(f"run_dir={run_dir} is not allowed: no .hydra/config.yaml there (expected a dqt run directory)")
    config = OmegaConf.load(saved)
    for key, value in FORMER_VALUES.items():
        if OmegaConf.select(config, key) is None:
            OmegaConf.update(config, key, value, force_add=True)
    return validate(OmegaConf.merge(config_defaults(), config))


def load_policy(run_dir: Path, step: int | None = None):
    """(cfg, task, generation, model, value_map) of the run's checkpoint at `step` (newest complete if None):
    the network its evaluations acted on, the weight average when the run had `eval_ema` > 0, else the online one."""
    from dqt import checkpoint, generations
    from dqt.algorithm import ValueMap
    from dqt.envs import make_task
    from dqt.errors import ConfigError, RunError
    from dqt.model import q_network
    from torch.optim.swa_utils import AveragedModel

    cfg = run_config(run_dir)
    found = {g.step: g for g in generations.complete(run_dir)}
    if not found:
        raise ConfigError(f"run_dir={run_dir} is not allowed: it has no complete checkpoint generation "
                          "(checkpoints/ is not committed with results: run it again to get one)")
    if step is not None and step not in found:
        raise ConfigError(f"--step={step} is not allowed: {run_dir} has complete checkpoint generations at {sorted(found)}")
    generation = found[max(found) if step is None else step]
    problem = generations.verify(generation, 0)  # DDP keeps every agent's weights the same: agent 0's will do
    task = make_task(cfg["task"], cfg["action_repeat"], cfg["episode_length"])
    model = q_network(task.obs_dim, task.action_dim, cfg["bins"], **cfg["model"])
    try:
        if problem:
            raise RunError(problem)
        state = checkpoint.load(generation.agent_file(0))
        model.load_state_dict(state["learner"]["model"])
        average = state["learner"].get("average")
        if average is not None and int(average["n_averaged"]) > 0:  # eval_ema: the run evaluated the average
            averaged = AveragedModel(model)
            averaged.load_state_dict(average)
            model = averaged.module
    except Exception as error:  # damaged file, or weights of another shape than the config's model
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RunError(f"checkpoint {generation.agent_file(0)} is unusable: {first}") from None
    model.eval()
    return cfg, task, generation, model, ValueMap(*state["learner"]["value_map"])


def replay(run_dir: Path, step: int | None = None) -> dict:
    """Evaluate the checkpoint of `run_dir` at `step` (newest complete generation if None) as the run did."""
    from dqt.algorithm import from_bins
    from dqt.collector import eval_share, evaluate, make_eval_envs
    from dqt.envs import eval_seed

    cfg, task, generation, model, value_map = load_policy(run_dir, step)
    # the run's threads (the benchmark sets 1; with threads=null the run used its cores / agents, and a different
    # count may sum in another order and flip a near-tie between bins)
    torch.set_num_threads(cfg["threads"] or 1)

    agents, episodes = generation.num_agents, cfg["eval_episodes"]
    envs = make_eval_envs(task, cfg["seed"], episodes, agents)
    record: list[dict] = []
    for rank in range(agents):  # each agent's share as one batch, as the run's agents played them
        evaluate(task, model, envs, eval_share(rank, episodes, agents), cfg["bins"], eval_seed(cfg["seed"]),
                 torch.device("cpu"), record)
    record.sort(key=lambda e: e["episode"])
    first_obs = torch.as_tensor(np.stack([e["first_obs"] for e in record]), dtype=torch.float32)
    first_tokens = model.action_tokens(torch.tensor([e["bins"][0] for e in record]))
    with torch.inference_mode():  # the last token's Q at the greedy bins: the value of the whole greedy action
        q = model(first_obs, first_tokens[:, :-1])[:, -1].gather(-1, first_tokens[:, -1:]).squeeze(-1)
    counts = collections.Counter(b for e in record for b in e["bins"])
    steps = sum(counts.values())
    actions = [(tuple(round(float(a), 3) for a in from_bins(torch.tensor(b), cfg["bins"])), n / steps)
               for b, n in counts.most_common()]
    return {"run_dir": str(run_dir), "step": generation.step, "task": cfg["task"], "episodes": record,
            "actions": actions, "q_first": q.tolist(), "q_first_raw": [value_map.unmap(v) for v in q.tolist()]}


def format_report(report: dict, top: int) -> str:
    episodes = report["episodes"]
    lines = [f"{report['run_dir']}: {report['task']}, checkpoint at {report['step']} env steps per agent, "
             f"{len(episodes)} greedy episodes"]
    for e, q, raw in zip(episodes, report["q_first"], report["q_first_raw"]):
        success = "" if e["success"] is None else f"  success {e['success']:.0f}"
        lines.append(f"  episode {e['episode']:3d}  return {e['return']:10.2f}  steps {len(e['bins']):5d}{success}"
                     f"  Q(first state) {q:.4f} mapped, {raw:.2f} reward")
    returns = [e["return"] for e in episodes]
    lines.append(f"mean return {statistics.fmean(returns):.4f}" + (
        f", success rate {statistics.fmean(e['success'] for e in episodes):.4f}"
        if all(e["success"] is not None for e in episodes) else ""))
    lines.append(f"{len(report['actions'])} distinct greedy actions; the commonest, share of all steps:")
    lines += [f"  {action}  {share:.3f}" for action, share in report["actions"][:top]]
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])
