"""One agent's process: set-up, then one loop read top to bottom — act, learn, evaluate, log, checkpoint."""
from __future__ import annotations

import math
import os
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from dqt import aggregation, checkpoint, distributed
from dqt.algorithm import ValueMap, value_map
from dqt.collector import ColoredNoise, Collector, collect_demos, env_eps, eval_share, evaluate, explore, make_eval_envs
from dqt.envs import env_seed, eval_seed, goals_seed, make_task
from dqt.errors import EXIT_RUN, RunError
from dqt.learner import Learner
from dqt.logger import Logger
from dqt.model import greedy_bins, q_network
from dqt.replay import EpisodeReplay, sample_mixed

STOPPED_FILE = "STOPPED"
TRAIN_KEYS = ("train/loss", "train/td_loss", "train/conservative_loss", "train/q_data", "train/grad_norm",
              "train/target_clipped")


def window_sums(saved: torch.Tensor | None) -> torch.Tensor:
    """The log window's sums of TRAIN_KEYS and its update count (last); from a checkpoint's `saved` sums if given.
    A checkpoint written before a key was added to TRAIN_KEYS has none for it: 0 (the count stays last)."""
    sums = torch.zeros(len(TRAIN_KEYS) + 1, dtype=torch.float64)
    if saved is not None:
        sums[:len(saved) - 1], sums[-1] = saved[:-1], saved[-1]
    return sums


def run(cfg: dict, run_dir: str) -> None:
    """Entry point of every agent process (torchrun, the elastic launcher, or in-process for one agent).

    An elastic restart resumes the run (see train). A RunError is recorded in run_dir/STOPPED: the restarts
    of the same job then stop at once, as the same data or files would stop them again.
    """
    ctx = distributed.setup(cfg["device"])
    try:
        with distributed.one_line_errors(ctx):
            if ctx.is_main and not distributed.restart_count():  # a new job: an earlier job's record is stale
                (Path(run_dir) / STOPPED_FILE).unlink(missing_ok=True)
            run_dir = shared_run_dir(run_dir, ctx)  # collective: no agent gets further before the unlink
            stopped = Path(run_dir) / STOPPED_FILE
            if distributed.restart_count() and stopped.exists():
                sys.exit(EXIT_RUN)  # the attempt that stopped has said why
            try:
                train(cfg, run_dir, ctx)
            except RunError as error:
                stopped.write_text(f"{error}\n")
                raise
    finally:
        distributed.teardown()


def shared_run_dir(own_dir: str | None, ctx: distributed.Context) -> str:
    """Rank 0's run directory, on every rank (under torchrun each rank's hydra may have made its own)."""
    box = [own_dir]
    dist.broadcast_object_list(box, src=0)
    chosen = box[0]
    if own_dir and own_dir != chosen and not ctx.is_main:
        own = Path(own_dir)
        if own.is_dir() and {p.name for p in own.iterdir()} <= {".hydra"}:
            shutil.rmtree(own, ignore_errors=True)  # this rank's stray hydra dir holds nothing but its config
    return chosen


def train(cfg: dict, run_dir: str, ctx: distributed.Context) -> None:
    """The training loop of one agent."""
    # the cores this process may run on: under SLURM (cgroups, taskset) fewer than the node has
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(cfg["threads"] or max(1, cores // ctx.local_world_size))
    torch.manual_seed(cfg["seed"])  # same initial weights everywhere (DDP also broadcasts rank 0's)
    rank, agents, num_envs, device = ctx.rank, ctx.world_size, cfg["num_envs"], ctx.device
    generator = torch.Generator().manual_seed(cfg["seed"] * 1000 + rank)

    task = make_task(cfg["task"], cfg["action_repeat"], cfg["episode_length"])
    noise = {k: v for k, v in cfg["noise"].items() if k != "agents"}
    noisy = cfg["noise"]["agents"] == "all" or rank in cfg["noise"]["agents"]
    envs = task.make_vector_env([env_seed(cfg["seed"], rank, i, num_envs) for i in range(num_envs)],
                                goals_seed(cfg["seed"], rank), noise if noisy else None)
    eval_envs = make_eval_envs(task, cfg["seed"], cfg["eval_episodes"], agents)
    model = q_network(task.obs_dim, task.action_dim, cfg["bins"], **cfg["model"]).to(device)
    ddp = DDP(model, device_ids=[device] if device.type == "cuda" else None)
    faults = aggregation.FaultSpec(tuple(cfg["faults"]["agents"]), cfg["faults"]["kind"], cfg["faults"]["magnitude"],
                                   seed=cfg["seed"])
    hooks = None
    if cfg["aggregation"] != "mean" or faults.agents:
        hooks = aggregation.register(ddp, cfg["aggregation"], cfg["aggregation_trim"],
                                     faults if faults.agents else None)
    warning = aggregation.check_fault_tolerance(cfg["aggregation"], agents, cfg["aggregation_trim"], len(faults.agents))
    if warning and ctx.is_main:
        print(f"dqt: warning: {warning}", file=sys.stderr)
    replay = EpisodeReplay(cfg["replay_size"], task.obs_dim, task.action_dim, cfg["bins"], cfg["n_step"], cfg["discount"],
                           cfg["n_step_cut"], cfg["n_step_bound"])
    # demonstrations live apart, so a fixed share of every batch comes from them (sample_mixed)
    demo_replay = EpisodeReplay((cfg["demos"] + num_envs) * (cfg["episode_length"] + 1), task.obs_dim, task.action_dim,
                                cfg["bins"], cfg["n_step"], cfg["discount"], one_step=cfg["n_step_bound"]
                                ) if cfg["demos"] > 0 else None
    # the LR schedule counts online updates: pretraining is not part of the run's horizon
    learner = Learner(ddp, model, cfg, int((cfg["train_steps"] - cfg["seed_steps"]) * cfg["updates_per_step"]))
    exploration = cfg["explore"]
    eps = env_eps(exploration["eps"], exploration["spread"], rank, num_envs, agents)  # per sub-env
    colored = (ColoredNoise(exploration["color"], num_envs, task.action_dim, cfg["episode_length"], generator)
               if exploration["color"] else None)  # else white noise; the config allows a color with gaussian only
    collector = Collector(envs, replay, cfg["bins"], cfg["episode_length"], f"task={cfg['task']}, agent {rank}",
                          cfg["bad_data"])

    counters = {"env_steps": 0, "update_debt": 0.0, "learning": False, "pretrained": False, "time_s": 0.0,
                "next_eval": cfg["eval_every"], "next_log": cfg["log_every"], "next_checkpoint": cfg["checkpoint_every"]}
    state, restart = None, distributed.restart_count()
    if cfg["resume"] or restart:
        # the newest generation every agent can load: resume=true needs one (train.py checked), an elastic
        # restart starts over without one
        state, step = checkpoint.load_newest(run_dir, rank, agents, missing_ok=not cfg["resume"])
        if restart and ctx.is_main:
            print(f"dqt: restart {restart}: " + (f"resuming from step {step}" if state is not None else
                  "no complete checkpoint generation yet, starting over"), file=sys.stderr, flush=True)
    if state is not None:
        learner.load_state_dict(state["learner"])
        replay.load_state_dict(state["replay"])
        if demo_replay is not None:
            demo_replay.load_state_dict(state["demo_replay"])
        counters.update(state["counters"])
        # the episodes in progress and every sub-env's state, when the envs can be snapshotted; the rewards
        # seen so far either way (a run resumed before learning starts still maps values from all of them)
        if "collector" in state:
            why = collector.load_state_dict(state["collector"])
        else:  # written before checkpoints held the collector
            collector.dropped_steps = state.get("dropped_steps", 0)
            collector.reward_range = list(state.get("reward_range", collector.reward_range))
            why = "the checkpoint was written by a dqt that did not save them"
        if why and ctx.is_main:
            print(f"dqt: the envs start fresh episodes at step {step}, so the resumed run is not the uninterrupted "
                  f"one: {why}", file=sys.stderr, flush=True)
        checkpoint.set_rng_state(state["rng"])
        generator.set_state(state["generator"])
        if hooks is not None and state.get("aggregation") is not None:
            hooks.load_state_dict(state["aggregation"])
        if colored is not None and state.get("colored_noise") is not None:
            colored.load_state_dict(state["colored_noise"])
    elif demo_replay is not None:
        collect_demos(collector, demo_replay, task.expert, cfg["demos"], cfg["demo_noise"],
                      env_seed(cfg["seed"], rank, 0, 1))

    def save_checkpoint() -> None:
        checkpoint.save({"learner": learner.state_dict(), "replay": replay.state_dict(), "counters": counters,
                         "demo_replay": demo_replay.state_dict() if demo_replay is not None else None,
                         "rng": checkpoint.rng_state(), "generator": generator.get_state(),
                         "num_agents": agents, "collector": collector.state_dict(),
                         "accumulators": {"sums": sums.clone(), "last_success": last_success},
                         "aggregation": hooks.state_dict() if hooks is not None else None,
                         "colored_noise": colored.state_dict() if colored is not None else None},
                        run_dir, counters["env_steps"], rank, agents)

    logger = Logger(run_dir, cfg, ctx.is_main, cfg["train_steps"], counters["env_steps"])
    window = {"start": time.perf_counter(), "steps": counters["env_steps"], "updates": learner.updates}
    # the training metrics of the current log window: a checkpoint between two rows carries them over
    sums, last_success = window_sums(None), float("nan")
    if state is not None and "accumulators" in state:
        sums, last_success = window_sums(state["accumulators"]["sums"]), state["accumulators"]["last_success"]
    started = time.perf_counter() - counters["time_s"]

    while counters["env_steps"] < cfg["train_steps"]:
        # learning starts once seed_steps are done and every agent has a finished episode in replay; the
        # value map is fixed then, from the rewards seen so far on every agent
        if not counters["learning"] and counters["env_steps"] >= cfg["seed_steps"]:
            counters["learning"] = all_agents(len(replay) > 0 or demo_replay is not None)
            if counters["learning"]:
                learner.value_map = shared_value_map(cfg, task.max_reward_per_step, collector.reward_range)

        # act: random bins during the seed steps, then greedy decode plus exploration
        if counters["env_steps"] < cfg["seed_steps"]:
            bins = torch.randint(cfg["bins"], (num_envs, task.action_dim), generator=generator)
            explored = torch.ones(num_envs, dtype=torch.bool)
        else:
            obs = collector.obs.to(device)
            acting = greedy_bins(model, obs, exploration["optimism"]).cpu()
            bins = explore(acting, cfg["bins"], exploration["kind"], exploration["std"], eps, generator, colored)
            # explored = not the greedy bins (n_step_cut reads it), which optimism moves off as noise does
            greedy = greedy_bins(model, obs).cpu() if exploration["optimism"] and cfg["n_step_cut"] else acting
            explored = (bins != greedy).any(dim=1)
        collector.step(bins, explored)
        counters["env_steps"] += num_envs

        # learn: updates_per_step per env step after the seed steps; every agent makes the same number
        # of updates (they are collective through DDP)
        if counters["learning"]:
            if cfg["target_clip"]:  # its range: the rewards this agent has stored so far, and the suite's bound
                learner.reward_range = (collector.reward_range[0], max(collector.reward_range[1],
                                                                      task.max_reward_per_step or -math.inf))
            if not counters["pretrained"] and demo_replay is not None:
                # once, when learning starts: offline updates on the demonstrations alone, so the agents act
                # on a policy learned from them before they add their own data
                for left in range(cfg["pretrain_updates"], 0, -1):
                    batch = sample_mixed(replay, demo_replay, cfg["batch_size"], 1.0, generator)
                    stats = learner.update({k: v.to(device) for k, v in batch.items()}, scheduled=False)
                    sums += torch.tensor([stats[k] for k in TRAIN_KEYS] + [1.0], dtype=torch.float64)
                    if left % 100 == 0:  # a long run of updates with no env step: show it moving
                        logger.progress(counters["env_steps"], refresh=True, updates_left=left)
            counters["pretrained"] = True
            counters["update_debt"] += num_envs * cfg["updates_per_step"]
            while counters["update_debt"] >= 1.0:
                batch = sample_mixed(replay, demo_replay, cfg["batch_size"], cfg["demo_share"], generator)
                stats = learner.update({k: v.to(device) for k, v in batch.items()})
                sums += torch.tensor([stats[k] for k in TRAIN_KEYS] + [1.0], dtype=torch.float64)
                counters["update_debt"] -= 1.0

        counters["time_s"] = time.perf_counter() - started
        done = counters["env_steps"] >= cfg["train_steps"]
        base = {"env_steps": counters["env_steps"], "total_env_steps": counters["env_steps"] * agents,
                "updates": learner.updates}
        if counters["env_steps"] >= counters["next_eval"] or done:
            mine = eval_share(rank, cfg["eval_episodes"], agents)
            result = torch.tensor(evaluate(task, learner.policy, eval_envs, mine, cfg["bins"], eval_seed(cfg["seed"]), device),
                                  dtype=torch.float64)
            dist.all_reduce(result)
            successes, returns, count, reported = result.tolist()
            learner.evaluated(returns / count)  # lr_schedule=plateau: rank 0 decides, every rank follows
            row = {**base, "time_s": round(counters["time_s"], 2), "eval/return": returns / count,
                   "eval/episodes": int(count)}
            if reported > 0:  # only envs that report info["success"] have a success rate
                row["eval/success_rate"] = last_success = successes / reported
            logger.log(row)
            counters["next_eval"] += cfg["eval_every"]
        if counters["env_steps"] >= counters["next_log"] or done:
            logger.log({**base, "time_s": round(counters["time_s"], 2),
                        **train_row(sums, *collector.drain(), learner, agents, window, counters["env_steps"],
                                    collector.dropped_steps)})
            sums.zero_()
            window = {"start": time.perf_counter(), "steps": counters["env_steps"], "updates": learner.updates}
            counters["next_log"] += cfg["log_every"]
        # collective (all agents write one generation): the test reads only counters that are equal on
        # every agent, as env_steps grows by num_envs per loop everywhere and all resume from one generation
        if counters["env_steps"] >= counters["next_checkpoint"] or done:
            counters["next_checkpoint"] += cfg["checkpoint_every"]  # first: a resumed run must not save at once
            save_checkpoint()
        elapsed = max(1e-9, time.perf_counter() - window["start"])
        logger.progress(counters["env_steps"], sps=f"{(counters['env_steps'] - window['steps']) / elapsed:.0f}",
                        ups=f"{(learner.updates - window['updates']) / elapsed:.1f}", success=f"{last_success:.2f}")

    logger.close()
    envs.close()


def shared_value_map(cfg: dict, max_reward_per_step: float | None, reward_range: list[float]) -> ValueMap:
    """The value map every agent uses: the suite's reward bound, else the reward range seen on any agent."""
    if max_reward_per_step is not None:
        low, high = 0.0, max_reward_per_step
    else:
        bounds = torch.tensor([-reward_range[0], reward_range[1]], dtype=torch.float64)
        dist.all_reduce(bounds, op=dist.ReduceOp.MAX)
        low, high = -bounds[0].item(), bounds[1].item()
    return value_map(cfg["reward_scale"], cfg["discount"], low, high)


def all_agents(flag: bool) -> bool:
    """True when `flag` holds on every agent."""
    value = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def train_row(sums: torch.Tensor, episodes: list[tuple[float, float]], rewards: torch.Tensor, learner: Learner,
              agents: int, window: dict, env_steps: int, dropped_steps: int = 0) -> dict:
    """Training metrics of the last window: losses averaged over agents, per-step rewards pooled over agents,
    episode stats per agent too. `rewards` are the collector's reward sums (see Collector.reward_sums);
    `dropped_steps` is this agent's count of transitions dropped for non-finite data, over the whole run."""
    reported = [s for _, s in episodes if s == s]  # success is nan where the env does not report it
    ep = torch.tensor([sum(r for r, _ in episodes), sum(reported), len(reported), len(episodes)], dtype=torch.float64)
    mine = torch.cat([sums, torch.tensor([dropped_steps], dtype=torch.float64), rewards, ep])
    gathered = [torch.zeros_like(mine) for _ in range(agents)]
    dist.all_gather(gathered, mine)
    table = torch.stack(gathered)  # [agents, keys]
    updates = table[:, len(TRAIN_KEYS)].sum().item()
    row: dict = {}
    if updates > 0:
        for j, key in enumerate(TRAIN_KEYS):
            row[key] = table[:, j].sum().item() / updates
    elapsed = max(1e-9, time.perf_counter() - window["start"])
    row["train/env_steps_per_s"] = (env_steps - window["steps"]) / elapsed
    row["train/updates_per_s"] = (learner.updates - window["updates"]) / elapsed
    row["train/skipped_steps"] = learner.skipped_steps
    row["train/dropped_steps"] = int(table[:, len(TRAIN_KEYS) + 1].sum().item())  # all agents, whole run
    row["train/lr"] = learner.optimizer.param_groups[0]["lr"]
    if learner.updates > 0:  # Q in reward units is q / value_scale + value_low, the map fixed when learning starts
        row["train/value_scale"], row["train/value_low"] = learner.value_map.scale, learner.value_map.low
    noisy, noisy_sq, clean, clean_sq, steps = table[:, len(TRAIN_KEYS) + 2:-4].sum(0).tolist()
    if steps > 0:
        row["train/reward_mean"], row["train/reward_std"] = mean_std(noisy, noisy_sq, steps)
        row["train/clean_reward_mean"], row["train/clean_reward_std"] = mean_std(clean, clean_sq, steps)
    ep_return, ep_success, ep_reported, ep_count = table[:, -4], table[:, -3], table[:, -2], table[:, -1]
    if ep_count.sum() > 0:
        row["train/episode_return"] = (ep_return.sum() / ep_count.sum()).item()
        if ep_reported.sum() > 0:
            row["train/success_rate"] = (ep_success.sum() / ep_reported.sum()).item()
        row["train/episodes"] = int(ep_count.sum().item())
        for agent in range(agents):
            if ep_count[agent] > 0:
                row[f"agent{agent}/episode_return"] = (ep_return[agent] / ep_count[agent]).item()
            if ep_reported[agent] > 0:
                row[f"agent{agent}/success_rate"] = (ep_success[agent] / ep_reported[agent]).item()
    return row


def mean_std(total: float, total_sq: float, count: float) -> tuple[float, float]:
    """Mean and (population) standard deviation from a sum, a sum of squares and a count."""
    mean = total / count
    return mean, math.sqrt(max(0.0, total_sq / count - mean * mean))  # rounding can make it a hair below 0
