"""One agent's replay: whole episodes stored contiguously in a ring of rows.

An episode of T transitions takes T + 1 rows (the last holds only the final observation), so the
bootstrap state s_{t+m} is the row `offset` rows ahead and next observations are never stored twice.
n-step sums and Monte-Carlo returns are computed once, when the episode is added, from raw rewards: the
learner maps them into its value range (`algorithm.ValueMap`) when it samples, so the map can be set after
the first episodes are stored.
"""
from __future__ import annotations

import torch

from dqt.algorithm import nstep_returns
from dqt.errors import RunError


class EpisodeReplay:
    """Ring buffer of rows; episodes are added whole and sampled as transitions in pairs (see `sample`)."""

    def __init__(self, capacity: int, obs_dim: int, action_dims: int, bins: int, n_step: int, discount: float,
                 n_step_cut: bool = False, one_step: bool = False):
        self.capacity, self.n_step, self.discount = capacity, n_step, discount
        self.n_step_cut = n_step_cut  # end n-step windows before exploratory steps (`algorithm.nstep_returns`)
        self.one_step = one_step  # batches also carry the 1-step backup's r_t and s_{t+1} (`n_step_bound`)
        bin_dtype = torch.uint8 if bins <= 256 else torch.int16 if bins <= 32768 else torch.int32
        self.obs = torch.zeros(capacity, obs_dim, dtype=torch.float32)
        self.bins = torch.zeros(capacity, action_dims, dtype=bin_dtype)
        self.nstep_return = torch.zeros(capacity, dtype=torch.float32)
        self.bootstrap_discount = torch.zeros(capacity, dtype=torch.float32)
        self.mc_return = torch.zeros(capacity, dtype=torch.float32)
        self.reward = torch.zeros(capacity, dtype=torch.float32)  # r_t, the 1-step return (`n_step_bound`)
        self.offset = torch.zeros(capacity, dtype=torch.uint8 if n_step < 256 else torch.int32)
        self.to_end = torch.zeros(capacity, dtype=torch.int32)  # steps from the row to the episode's end
        self.terminated = torch.zeros(capacity, dtype=torch.bool)  # the episode ended in a terminal state
        self.sampleable = torch.zeros(capacity, dtype=torch.bool)
        self.cursor = 0
        self.transitions_added = 0
        self._valid_rows: torch.Tensor | None = None  # cache of sampleable.nonzero(), reset on add

    def __len__(self) -> int:
        return int(self.sampleable.sum())

    def bytes_per_row(self) -> int:
        """Memory of one row across all arrays."""
        arrays = (self.obs, self.bins, self.nstep_return, self.bootstrap_discount, self.mc_return, self.reward,
                  self.offset, self.to_end, self.terminated, self.sampleable)
        return sum(a[0].numel() * a.element_size() for a in arrays)

    def add_episode(self, obs: torch.Tensor, bins: torch.Tensor, rewards: torch.Tensor, terminated: bool,
                    explored: torch.Tensor | None = None) -> None:
        """Store an episode: obs [T+1, obs_dim] (incl. final), bins [T, d], raw rewards [T]; explored [T] bool,
        the steps whose action was not the greedy one (used with `n_step_cut`; None: none were)."""
        T = rewards.shape[0]
        rows = T + 1
        if rows > self.capacity:
            raise ValueError(f"an episode of {T} steps does not fit a replay of {self.capacity} rows")
        # the collector checks the env's float64 data; this catches what the float32 cast overflows
        if not (torch.isfinite(obs).all() and torch.isfinite(rewards).all()):
            raise RunError("replay refused an episode with a non-finite observation or reward (a value beyond "
                           "float32's range?)")
        if self.cursor + rows > self.capacity:  # keep episodes contiguous: wrap, dropping the tail rows
            self.sampleable[self.cursor:] = False
            self.cursor = 0
        R, bootstrap, steps, mc = nstep_returns(rewards, terminated, self.n_step, self.discount,
                                                explored if self.n_step_cut else None)
        span = slice(self.cursor, self.cursor + rows)
        self.sampleable[span] = False  # rows of overwritten episodes only ever point forward, never in here
        self.obs[span] = obs
        s = slice(self.cursor, self.cursor + T)
        self.bins[s] = bins.to(self.bins.dtype)
        self.nstep_return[s], self.bootstrap_discount[s], self.mc_return[s] = R, bootstrap, mc
        self.reward[s] = rewards.float()
        self.offset[s] = steps.to(self.offset.dtype)
        self.to_end[s] = torch.arange(T, 0, -1, dtype=torch.int32)
        self.terminated[s] = terminated
        self.sampleable[s] = True
        self.cursor += rows
        self.transitions_added += T
        self._valid_rows = None

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """A batch of stored transitions, drawn in pairs.

        The first ceil(B/2) rows are uniform draws (with replacement). Row B/2 + i holds the transition at
        row i's bootstrap state s_{t+m} when the episode has one there, else another uniform draw; every
        row is thus drawn with nearly equal probability. `successor[i]` is the batch row whose state is
        row i's s_{t+m} (-1 if none): the learner reads the networks' values at s_{t+m} off the forward
        passes it runs on the batch anyway. Short subsequences, as R2D2 and TD-MPC2 sample them.
        """
        if self._valid_rows is None:
            self._valid_rows = self.sampleable.nonzero().squeeze(1)
        valid = self._valid_rows
        if valid.numel() == 0:
            raise RuntimeError("replay is empty: no finished episode yet")
        first = batch_size - batch_size // 2
        draws = valid[torch.randint(valid.numel(), (batch_size,), generator=generator)]
        anchors, second = draws[:first], draws[first:]
        anchors_next = anchors + self.offset[anchors].long()
        paired = self.sampleable[anchors_next[: second.numel()]]  # s_{t+m} is a stored transition, not a final obs
        index = torch.cat([anchors, torch.where(paired, anchors_next[: second.numel()], second)])
        successor = torch.full((batch_size,), -1, dtype=torch.long)
        successor[: second.numel()] = torch.where(paired, torch.arange(first, batch_size), -1)
        next_index = index + self.offset[index].long()
        batch = {
            "obs": self.obs[index],
            "bins": self.bins[index].long(),
            "nstep_return": self.nstep_return[index],
            "bootstrap_discount": self.bootstrap_discount[index],
            "next_obs": self.obs[next_index],
            "mc_return": self.mc_return[index],
            "steps": self.offset[index].long(),
            "to_end": self.to_end[index].long(),
            "terminated": self.terminated[index],
            "successor": successor,
        }
        if self.one_step:  # the 1-step backup (`n_step_bound`): r_t and s_{t+1}, the next row, terminal at the end
            batch.update(reward=self.reward[index], next1_obs=self.obs[index + 1],
                         terminal1=self.terminated[index] & (self.to_end[index] == 1))
        return batch

    def state_dict(self) -> dict:
        """Everything needed to restore the buffer (tensors and counters)."""
        return {k: v for k, v in vars(self).items()
                if not k.startswith("_") and isinstance(v, (torch.Tensor, int, float))}

    def load_state_dict(self, state: dict) -> None:
        """Restore from `state_dict()`; shapes must match the configured buffer."""
        for key, value in state.items():
            current = getattr(self, key)
            if isinstance(current, torch.Tensor) and current.shape != value.shape:
                raise ValueError(f"replay {key} has shape {tuple(value.shape)} in the checkpoint, "
                                 f"{tuple(current.shape)} in the config")
        state = {"n_step_cut": False, **state}  # checkpoints before n_step_cut: windows were never cut
        state.pop("one_step", None)  # what batches carry is this run's config (n_step_bound), not the checkpoint's
        if "reward" not in state:  # checkpoints before n_step_bound: r_t was not kept (only sums); 1-step windows hold it
            if self.one_step and self.n_step != 1 and bool(state["sampleable"].any()):
                raise ValueError("this checkpoint's replay predates n_step_bound and kept no 1-step rewards; "
                                 "resume it with the dqt it was written by")
            state = {**state, "reward": state["nstep_return"].clone()}
        for key in ("capacity", "n_step", "discount", "n_step_cut"):  # stored sums were computed with these
            if state[key] != getattr(self, key):
                raise ValueError(f"replay {key} is {state[key]} in the checkpoint, {getattr(self, key)} in the config")
        for key, value in state.items():
            setattr(self, key, value)
        self._valid_rows = None


def sample_mixed(online: EpisodeReplay, demos: EpisodeReplay | None, batch_size: int, demo_share: float,
                 generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """A batch with a fixed share drawn from the demonstrations (RLPD's symmetric sampling, Ball et al. 2023).

    round(demo_share * batch_size) rows come from `demos` and the rest from `online`, so the agents' own data
    never washes the demonstrations out of the batch; all rows come from whichever replay is the only one
    holding episodes. Each part keeps its own pairs (`successor` is shifted to the concatenated rows);
    `demo` [B] marks the rows drawn from the demonstrations.
    """
    has_demos, has_online = demos is not None and len(demos) > 0, len(online) > 0
    from_demos = batch_size if not has_online else round(batch_size * demo_share) if has_demos else 0
    parts = [(replay, n) for replay, n in ((demos, from_demos), (online, batch_size - from_demos)) if n > 0]
    batches = [replay.sample(n, generator) for replay, n in parts]
    demo = torch.arange(batch_size) < from_demos  # demo rows come first
    if len(batches) == 1:
        return {**batches[0], "demo": demo}
    first, second = batches
    shifted = torch.where(second["successor"] >= 0, second["successor"] + first["successor"].numel(), -1)
    return {**{key: torch.cat([first[key], shifted if key == "successor" else second[key]]) for key in first},
            "demo": demo}
