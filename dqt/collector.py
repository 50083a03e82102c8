"""Acting in an agent's envs: greedy decode plus exploration, stepping the vector env, filling replay,
and greedy evaluation. Executed actions are always bin centres, so replay holds exactly what was done."""
from __future__ import annotations

import math

import numpy as np
import torch

from dqt.algorithm import from_bins, to_bins
from dqt.envs import Task, eval_seed
from dqt.envs.snapshot import SnapshotError, mismatch, restore, snapshot
from dqt.errors import RunError
from dqt.model import greedy_bins
from dqt.replay import EpisodeReplay


def explore(bins: torch.Tensor, n_bins: int, kind: str, std: float, eps: float | torch.Tensor,
            generator: torch.Generator, colored: ColoredNoise | None = None) -> torch.Tensor:
    """Exploration around greedy bins [num_envs, d]: Gaussian noise on the continuous action (white, or the
    next step of `colored`), or a random bin per dimension with probability eps (a number, or one per env
    [num_envs], `env_eps`)."""
    if kind == "gaussian":
        unit = colored.next() if colored is not None else torch.randn(bins.shape, generator=generator)
        return to_bins(from_bins(bins, n_bins) + unit * std, n_bins)
    random_bins = torch.randint(n_bins, bins.shape, generator=generator)
    eps = torch.as_tensor(eps, dtype=torch.float32)
    return torch.where(torch.rand(bins.shape, generator=generator) < eps.reshape(-1, 1), random_bins, bins)


def powerlaw_noise(color: float, shape: tuple[int, ...], length: int, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise [*shape, length] of unit variance whose power spectrum falls as 1 / f^color along the last
    axis (Timmer & Koenig 1995): 0 white, 1 pink (Eberhard et al. 2023), 2 red.

    Random Fourier coefficients of amplitude f^(-color/2) (the lowest frequency, 1 / length, also for f = 0)
    go through an inverse real FFT. The real-only coefficients (f = 0, and f = 1/2 for an even length) get
    twice the variance, so that color = 0 is exactly white noise; the sum is divided by the standard deviation
    the coefficients imply, so every step has variance 1 whatever the color.
    """
    freqs = torch.fft.rfftfreq(length, dtype=torch.float64)
    freqs[0] = 1.0 / length
    amplitude = freqs ** (-color / 2)
    real_only = torch.zeros_like(amplitude, dtype=torch.bool)
    real_only[0] = True
    real_only[-1] = length % 2 == 0
    weight = torch.where(real_only, 2.0, 4.0)  # each coefficient's share of the variance, times length^2
    std = torch.sqrt((weight * amplitude ** 2).sum()) / length
    real = torch.randn((*shape, len(freqs)), generator=generator, dtype=torch.float64)
    imag = torch.randn((*shape, len(freqs)), generator=generator, dtype=torch.float64)
    real = torch.where(real_only, real * math.sqrt(2.0), real)
    imag = torch.where(real_only, 0.0, imag)
    series = torch.fft.irfft(torch.complex(real, imag) * amplitude, n=length) / std
    return series.float()


class ColoredNoise:
    """Exploration noise that is correlated in time (`explore.color`): each sub-env and action dimension reads
    its own series of `powerlaw_noise`, drawn `length` steps at a time (an episode's length), one step per
    `next()`. Its state is checkpointed, so a resumed run goes on with the same noise."""

    def __init__(self, color: float, num_envs: int, action_dim: int, length: int, generator: torch.Generator):
        self.color, self.shape, self.length, self.generator = color, (num_envs, action_dim), length, generator
        self.series, self.step = None, length  # drawn at the first `next()`

    def next(self) -> torch.Tensor:
        if self.step == self.length:
            self.series, self.step = powerlaw_noise(self.color, self.shape, self.length, self.generator), 0
        self.step += 1
        return self.series[..., self.step - 1]

    def state_dict(self) -> dict:
        return {"series": self.series, "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.series, self.step = state["series"], state["step"]


def env_eps(eps: float, spread: float, rank: int, num_envs: int, agents: int) -> torch.Tensor:
    """The eps of each of this agent's sub-envs [num_envs] (`explore.spread`, Ape-X, Horgan et al. 2018).

    Sub-env i of the N = agents * num_envs, counted over agents (i = rank * num_envs + j), explores with
    eps^(1 + spread * i / (N - 1)): the first with eps, the last with eps^(1 + spread), so some envs explore
    and others act almost greedily and replay also holds the long episodes a greedy policy reaches (a random
    torque every tenth step topples a balancing pole). spread = 0: eps everywhere.
    """
    total = agents * num_envs
    index = rank * num_envs + torch.arange(num_envs, dtype=torch.float64)
    exponent = 1.0 + spread * index / (total - 1) if total > 1 else torch.ones(num_envs, dtype=torch.float64)
    return (eps ** exponent).float()


class Collector:
    """Steps one agent's vector env and adds every finished episode to its replay.

    Episodes in progress live in per-env slots of preallocated tensors written once per step for all
    envs together; only finished episodes cost per-env work.

    Every step's rewards and observations are checked before they are kept. A NaN or Inf stops the run
    with a RunError naming the env and step (`bad_data="error"`), or taints that sub-env's episode, which
    is then dropped whole and counted in `dropped_steps` (`bad_data="drop"`): non-finite data never
    enters replay.
    """

    def __init__(self, envs, replay: EpisodeReplay, n_bins: int, episode_length: int, name: str = "env",
                 bad_data: str = "error"):
        self.envs, self.replay, self.n_bins = envs, replay, n_bins
        self.name, self.bad_data = name, bad_data  # name says which task and agent, in error messages
        self.num_envs = n = envs.num_envs
        self.steps = 0  # vector steps since this collector was built (demos included)
        self.dropped_steps = 0  # transitions of episodes dropped for non-finite data
        first_obs = envs.reset()[0]
        self.tainted = ~np.isfinite(first_obs).all(axis=1)  # per env: drop the episode in progress
        self._bad_data(self.tainted, np.zeros(n))
        self.obs = torch.as_tensor(np.nan_to_num(first_obs), dtype=torch.float32)
        self.ep_obs = torch.zeros(n, episode_length + 1, self.obs.shape[1])
        self.ep_bins = torch.zeros(n, episode_length, replay.bins.shape[1], dtype=torch.long)
        self.ep_explored = torch.zeros(n, episode_length, dtype=torch.bool)  # action not the greedy one
        self.ep_rewards = torch.zeros(n, episode_length, dtype=torch.float64)
        self.ep_length = torch.zeros(n, dtype=torch.long)
        self.ep_success = np.full(n, np.nan)  # nan until the env reports success
        self.ep_clean_return = np.zeros(n)  # what the env paid, before RewardNoise
        self.rows = torch.arange(n)
        self.finished: list[tuple[float, float]] = []  # (clean raw return, success) since the last drain
        # of every stored reward seen, noisy where RewardNoise is on (ValueMap for gym: tasks)
        self.reward_range = [float("inf"), float("-inf")]
        # per agent step since the last drain: stored (noisy) reward sum, sum of squares, clean sum, sum of
        # squares, count; sums rather than means so that train_row can pool agents exactly
        self.reward_sums = np.zeros(5)

    def step(self, bins: torch.Tensor, explored: torch.Tensor | None = None) -> None:
        """Execute the bin centres of `bins` [num_envs, d] in every sub-env; `explored` [num_envs] bool marks
        the envs whose bins are not the greedy ones (None: all are, as for demonstrations)."""
        actions = from_bins(bins, self.n_bins).numpy()
        next_obs, rewards, terminated, truncated, info = self.envs.step(actions)
        self.steps += 1
        done = np.logical_or(terminated, truncated)
        rewards = np.asarray(rewards, dtype=np.float64)
        next_ok = np.isfinite(next_obs).all(axis=1)  # for a finished episode: the next one's first obs
        step_ok = np.isfinite(rewards) & (next_ok | done)
        for i in np.flatnonzero(done):
            step_ok[i] &= bool(np.isfinite(np.asarray(info["final_obs"][i], dtype=np.float64)).all())
        if not (step_ok.all() and next_ok.all()):
            self._bad_data(~(step_ok & next_ok), rewards)
            self.tainted |= ~step_ok
            next_obs = np.nan_to_num(next_obs)  # what the policy acts on; tainted episodes are not stored
        clean = _clean_rewards(info, rewards, done)
        # only finite rewards count in the logged sums and in reward_range (the value map's input): with
        # bad_data=drop a non-finite one only reaches ep_rewards of an episode that is dropped
        finite = np.isfinite(rewards) & np.isfinite(clean)
        kept, kept_clean = (rewards, clean) if finite.all() else (rewards[finite], clean[finite])
        self.reward_sums += (kept.sum(), kept @ kept, kept_clean.sum(), kept_clean @ kept_clean, len(kept))
        self.ep_clean_return += clean
        if len(kept):
            self.reward_range = [min(self.reward_range[0], float(np.min(kept))),
                                 max(self.reward_range[1], float(np.max(kept)))]
        t = self.ep_length
        self.ep_obs[self.rows, t] = self.obs
        self.ep_bins[self.rows, t] = bins
        self.ep_explored[self.rows, t] = False if explored is None else explored
        self.ep_rewards[self.rows, t] = torch.from_numpy(rewards)
        self.ep_length += 1
        self.ep_success = np.fmax(self.ep_success, _masked(info, "success", self.num_envs))
        if done.any():
            final_success = _masked(info["final_info"], "success", self.num_envs)
            for i in np.flatnonzero(done):
                length = int(self.ep_length[i])
                if self.tainted[i]:
                    self.dropped_steps += length
                else:
                    self.ep_obs[i, length] = torch.as_tensor(np.asarray(info["final_obs"][i]), dtype=torch.float32)
                    stored = self.ep_rewards[i, :length]  # raw, noisy where RewardNoise is on
                    self.replay.add_episode(self.ep_obs[i, : length + 1], self.ep_bins[i, :length], stored.float(),
                                            bool(terminated[i]), self.ep_explored[i, :length])
                    success = float(np.fmax(self.ep_success[i], final_success[i]))
                    self.finished.append((float(self.ep_clean_return[i]), success))
                self.ep_length[i], self.ep_success[i], self.ep_clean_return[i] = 0, np.nan, 0.0
                self.tainted[i] = not next_ok[i]
        self.obs = torch.as_tensor(next_obs, dtype=torch.float32)

    def _bad_data(self, bad: np.ndarray, rewards: np.ndarray) -> None:
        """With bad_data=error, stop at the first env flagged in `bad`, naming it and the step."""
        if self.bad_data != "error" or not bad.any():
            return
        i = int(np.flatnonzero(bad)[0])
        what = f"reward={rewards[i]}" if not np.isfinite(rewards[i]) else "a non-finite observation"
        raise RunError(f"{self.name}, sub-env {i} returned {what} at its step {self.steps}; non-finite data never "
                       "enters replay, so the run stops (bad_data=drop drops such episodes and counts them in "
                       "train/dropped_steps)")

    def state_dict(self) -> dict:
        """Counters, the reward range, what `drain` has not yet handed out and, when every sub-env can be
        snapshotted (dqt.envs.snapshot), the episodes in progress with their envs' state; else `episodes` is
        None and `why` says which attribute of which env could not be saved."""
        state = {"steps": self.steps, "dropped_steps": self.dropped_steps, "reward_range": list(self.reward_range),
                 "finished": list(self.finished), "reward_sums": torch.from_numpy(self.reward_sums.copy()),
                 "episodes": None, "why": None}
        try:
            envs = [snapshot(env) for env in self.envs.envs]
        except SnapshotError as error:
            state["why"] = str(error)
            return state
        state["episodes"] = {
            "envs": envs, "obs": self.obs.clone(), "ep_obs": self.ep_obs.clone(), "ep_bins": self.ep_bins.clone(),
            "ep_explored": self.ep_explored.clone(),
            "ep_rewards": self.ep_rewards.clone(), "ep_length": self.ep_length.clone(),
            "ep_success": torch.from_numpy(self.ep_success.copy()),
            "ep_clean_return": torch.from_numpy(self.ep_clean_return.copy()),
            "tainted": torch.from_numpy(self.tainted.copy())}
        return state

    def load_state_dict(self, state: dict) -> str | None:
        """Restore `state_dict()` into a collector whose envs were just built and reset. Returns None when the
        episodes in progress continue exactly, else why the envs start fresh episodes instead."""
        self.steps, self.dropped_steps = state["steps"], state["dropped_steps"]
        self.reward_range = list(state["reward_range"])
        self.finished = [tuple(pair) for pair in state["finished"]]
        self.reward_sums = state["reward_sums"].numpy().copy()
        episodes = state["episodes"]
        if episodes is None:
            return state["why"]
        if len(episodes["envs"]) != self.num_envs or episodes["ep_obs"].shape != self.ep_obs.shape:
            return (f"the checkpoint holds {len(episodes['envs'])} envs' episodes of shape "
                    f"{tuple(episodes['ep_obs'].shape[1:])}, this run has {self.num_envs} of "
                    f"{tuple(self.ep_obs.shape[1:])}")
        for env, saved in zip(self.envs.envs, episodes["envs"]):
            problem = mismatch(env, saved)  # changes nothing: the envs still hold the fresh episodes
            if problem:
                return problem
        for i, (env, saved) in enumerate(zip(self.envs.envs, episodes["envs"])):
            try:
                restore(env, saved)
            except SnapshotError as error:  # half restored: no env to continue with
                raise RunError(f"{self.name}: cannot restore sub-env {i} from the checkpoint: {error}")
        self.obs = episodes["obs"].clone()
        for key in ("ep_obs", "ep_bins", "ep_rewards", "ep_length"):
            setattr(self, key, episodes[key].clone())
        # checkpoints before n_step_cut did not keep it: their episodes in progress count as greedy
        self.ep_explored = episodes.get("ep_explored", torch.zeros_like(self.ep_explored)).clone()
        self.ep_success = episodes["ep_success"].numpy().copy()
        self.ep_clean_return = episodes["ep_clean_return"].numpy().copy()
        self.tainted = episodes["tainted"].numpy().copy()
        return None

    def drain(self) -> tuple[list[tuple[float, float]], torch.Tensor]:
        """Since the last call: finished episodes' (clean raw return, success or nan where the env does not
        report it), and `reward_sums`."""
        out, sums = self.finished, torch.from_numpy(self.reward_sums)
        self.finished, self.reward_sums = [], np.zeros(5)
        return out, sums


def _masked(info: dict, key: str, n: int) -> np.ndarray:
    """info[key] from a vector env, nan where a sub-env did not report it."""
    if key not in info:
        return np.full(n, np.nan)
    return np.where(info.get(f"_{key}", np.ones(n, dtype=bool)), info[key], np.nan).astype(np.float64)


def _clean_rewards(info: dict, rewards: np.ndarray, done: np.ndarray) -> np.ndarray:
    """Rewards before RewardNoise (a finished sub-env reports it in final_info); `rewards` where not wrapped."""
    clean = rewards.copy()
    for source, rows in ((info, ~done), (info.get("final_info", {}), done)):
        if "clean_reward" in source:
            has = source["_clean_reward"] & rows
            clean[has] = source["clean_reward"][has]
    return clean


def collect_demos(collector: Collector, replay: EpisodeReplay, expert_factory, episodes: int, noise: float,
                  seed: int) -> None:
    """Run the scripted expert (with Gaussian action noise) until `episodes` episodes are in `replay`."""
    own_replay, collector.replay = collector.replay, replay
    experts = [expert_factory() for _ in range(collector.num_envs)]
    rng = np.random.default_rng(seed)
    start = len(collector.finished)
    while len(collector.finished) - start < episodes:
        obs = collector.obs.double().numpy()
        actions = np.stack([expert(o) for expert, o in zip(experts, obs)])
        actions = np.clip(actions + rng.normal(0.0, noise, actions.shape), -1.0, 1.0)
        collector.step(to_bins(torch.as_tensor(actions, dtype=torch.float32), collector.n_bins))
    collector.drain()
    collector.replay = own_replay


def eval_share(rank: int, episodes: int, agents: int) -> list[int]:
    """The evaluation episode ids agent `rank` plays: every N-th (MetaWorld: goal ids, split evenly)."""
    return list(range(rank, episodes, agents))


def make_eval_envs(task: Task, seed: int, episodes: int, agents: int) -> list:
    """One env per episode of an agent's largest share, each built with eval_seed(seed), so the greedy decode
    runs on a whole share as one batch. Every episode starts from reset(seed=...) (gym) or a fixed goal
    (MetaWorld), so envs reused from evaluation to evaluation play the same episodes as fresh ones."""
    return [task.build(eval_seed(seed), eval_seed(seed)) for _ in range(-(-episodes // agents))]


@torch.no_grad()
def evaluate(task: Task, model: torch.nn.Module, envs: list, episode_ids: list[int], n_bins: int,
             seed: int, device: torch.device, record: list | None = None) -> tuple[float, float, int, int]:
    """Greedy episodes with ids `episode_ids` (MetaWorld: goal ids).

    Returns (successes, return sum, episodes, episodes whose env reported success at all). `record`, if
    given, receives one dict per episode (id, return, success or None, first observation, greedy bins per
    step) for `dqt-bench policy`.
    """
    successes, returns, reported = 0.0, 0.0, 0
    for start in range(0, len(episode_ids), len(envs)):
        ids = episode_ids[start:start + len(envs)]
        active_envs = envs[: len(ids)]
        obs = []
        for env, episode in zip(active_envs, ids):
            if task.goals:
                task.set_goal(env, episode)
                obs.append(env.reset()[0])
            else:
                obs.append(env.reset(seed=seed + episode)[0])
        alive = [True] * len(ids)
        ep_return, ep_success = [0.0] * len(ids), [None] * len(ids)
        first_obs, ep_bins = list(obs), [[] for _ in ids]
        while any(alive):
            batch = torch.as_tensor(np.stack(obs), dtype=torch.float32, device=device)
            bins = greedy_bins(model, batch)
            actions = from_bins(bins, n_bins).cpu().numpy()
            for i, env in enumerate(active_envs):
                if not alive[i]:
                    continue
                if record is not None:
                    ep_bins[i].append(tuple(bins[i].tolist()))
                obs[i], reward, terminated, truncated, info = env.step(actions[i])
                ep_return[i] += float(reward)
                if "success" in info:
                    ep_success[i] = max(ep_success[i] or 0.0, float(info["success"]))
                alive[i] = not (terminated or truncated)
        if record is not None:
            record.extend({"episode": e, "return": r, "success": s, "first_obs": o, "bins": b}
                          for e, r, s, o, b in zip(ids, ep_return, ep_success, first_obs, ep_bins))
        successes += sum(s for s in ep_success if s is not None)
        reported += sum(s is not None for s in ep_success)
        returns += sum(ep_return)
    return successes, returns, len(episode_ids), reported
