"""One gradient update of the Q-Transformer: targets, loss, backward (DDP aggregates), guarded step, EMA."""
from __future__ import annotations

import copy
import math

import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import AveragedModel

from dqt import algorithm


def scaled_lr(lr: float, scale: str, num_agents: int) -> float:
    """`lr_scale`: none (lr), inv_n (lr / N), log_n (lr * ln N, so N >= 2) or sqrt_n (lr * sqrt N)."""
    if scale == "none":
        return lr
    if scale == "inv_n":
        return lr / num_agents
    if scale == "log_n":
        return lr * math.log(num_agents)
    if scale == "sqrt_n":
        return lr * math.sqrt(num_agents)
    raise ValueError(f"unknown lr_scale {scale!r}")


def lr_factor(kind: str, t: int, total: int, final: float, num_agents: int) -> float:
    """The lr as a fraction of its initial value after `t` of `total` updates, for the curve schedules.

    With N = 1, ln N = 0: log and log_linear are constant then.
    """
    x = min(t, total) / total  # progress t/T
    if kind == "constant":
        return 1.0
    if kind == "linear":
        return 1.0 - (1.0 - final) * x
    if kind == "log":
        return 1.0 / (1.0 + math.log(num_agents) * x)
    if kind == "log_linear":
        return max(1.0 - math.log(num_agents) * x, final)
    if kind == "n_linear":
        return max(1.0 - num_agents * x, final)
    raise ValueError(f"unknown lr_schedule {kind!r}")


def make_scheduler(optimizer: torch.optim.Optimizer, kind: str, total_updates: int, final_fraction: float,
                   num_agents: int = 1, factor: float = 0.5, patience: int = 3):
    """A torch.optim.lr_scheduler for `lr_schedule`: LambdaLR for the curves over `total_updates` (stepped
    once per applied update), ReduceLROnPlateau for plateau (stepped with each evaluation's return)."""
    if kind == "plateau":
        # threshold 0: any return above the best so far is an improvement; the floor is lr_final of the start
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=factor, patience=patience, threshold=0.0,
            min_lr=[group["lr"] * final_fraction for group in optimizer.param_groups])
    total = max(1, total_updates)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda t: lr_factor(kind, t, total, final_fraction, num_agents))


def warmup_ema(decay: float):
    """An AveragedModel `multi_avg_fn`: the running mean of the weights seen so far until there are
    1 / (1 - decay) of them, then an exponential moving average with `decay` per update.

    An EMA started at the first weights would keep a share decay^t of them (0.61 after 1,000 updates at
    0.9995); the running mean weighs every update so far alike until the EMA's horizon is reached.
    """
    def average(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged) -> None:
        torch._foreach_lerp_(averaged, current, max(1.0 - decay, 1.0 / (float(num_averaged) + 1.0)))
    return average


class Learner:
    """Holds the online network (possibly DDP-wrapped), its EMA target, the optimiser and scheduler."""

    def __init__(self, online: nn.Module, module: nn.Module, cfg: dict, total_updates: int):
        self.online = online  # what forward/backward go through (DDP on every rank)
        self.module = module  # the bare network, shared with `online`
        self.target = copy.deepcopy(module).requires_grad_(False)
        self.cfg = cfg
        lr = scaled_lr(cfg["lr"], cfg["lr_scale"], cfg["num_agents"])
        self.optimizer = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=cfg["weight_decay"], fused=True)
        self.scheduler = make_scheduler(self.optimizer, cfg["lr_schedule"], total_updates, cfg["lr_final"],
                                        cfg["num_agents"], **cfg["lr_plateau"])
        self.plateau = cfg["lr_schedule"] == "plateau"
        self.value_map = algorithm.ValueMap(1.0, 0.0)  # set by the worker when learning starts
        # the per-step reward range seen so far (the worker keeps it current): target_clip's bounds, none until set
        self.reward_range: tuple[float, float] = (math.inf, -math.inf)
        # share of the last targets the clip moved (a 0-d tensor once it acts): how often the bound acts, not only that it exists
        self.target_clipped: torch.Tensor | float = 0.0
        self.updates = 0
        self.skipped_steps = 0
        self._online_params = [p for p in module.parameters()]
        self._target_params = [p for p in self.target.parameters()]
        # Polyak averaging of the weights evaluation acts on: greedy policies of consecutive updates can differ
        # where action gaps are small (policy churn); their average changes slowly. Training acts on `online`.
        self.average = (AveragedModel(module, multi_avg_fn=warmup_ema(cfg["eval_ema"]))
                        if cfg["eval_ema"] > 0 else None)
        self._average_params = [] if self.average is None else [p for p in self.average.module.parameters()]

    def update(self, batch: dict[str, torch.Tensor], scheduled: bool = True) -> dict[str, float]:
        """One update on this agent's batch; returns scalar metrics (as floats).

        `scheduled=False` (pretraining) leaves the LR schedule where it is: it counts online updates only.
        """
        obs, tokens = batch["obs"], self.module.action_tokens(batch["bins"])  # levels = 1: the bins themselves
        q = self.online(obs, tokens[:, :-1], every_critic=True)  # [B, tokens, critics, token_bins]
        y = self.targets(batch, q.detach().mean(-2), tokens, q.detach())
        # the conservative term keeps Q inside the support of a fixed dataset (the paper's offline setting):
        # by default the demonstrations; on the agents' own data it would pull values towards 0 as they improve
        rows = None if self.cfg["conservative_rows"] == "all" else batch["demo"]
        critics = q.shape[-2]  # every critic learns the same targets: its own row per (token, critic)
        total, td, conservative, q_data = algorithm.loss(
            q.flatten(1, 2), tokens.repeat_interleave(critics, dim=1), y.repeat_interleave(critics, dim=1),
            self.cfg["conservative_weight"], rows, self.cfg["excess_weight"])

        self.optimizer.zero_grad(set_to_none=True)
        total.backward()  # DDP's communication hook aggregates the gradients across agents here
        max_norm = self.cfg["grad_clip"] if self.cfg["grad_clip"] > 0 else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self._online_params, max_norm))
        # Every rank holds the same aggregated gradient, so every rank takes the same decision.
        if math.isfinite(grad_norm):
            self.optimizer.step()
            if scheduled and not self.plateau:  # plateau steps on evaluations (evaluated)
                self.scheduler.step()
            with torch.no_grad():
                torch._foreach_lerp_(self._target_params, self._online_params, self.cfg["tau"])
            if scheduled and self.average is not None:  # from the first online update: pretraining is not averaged
                self._update_average()
        else:
            self.skipped_steps += 1
        self.updates += 1
        return {"train/loss": total.detach().item(), "train/td_loss": td.item(), "train/conservative_loss": conservative.item(),
                "train/q_data": q_data.item(), "train/grad_norm": grad_norm,
                "train/target_clipped": float(self.target_clipped)}

    @torch.no_grad()
    def _update_average(self) -> None:
        """`self.average.update_parameters(self.module)`, the same arithmetic without its per-call regrouping of
        the parameters and per-parameter checks (0.2-0.9 ms an update): the first call's weight is 1, a copy."""
        self.average.multi_avg_fn(self._average_params, self._online_params, self.average.n_averaged)
        self.average.n_averaged += 1

    @property
    def policy(self) -> nn.Module:
        """The network evaluation acts on: the weight average (`eval_ema` > 0) once it has begun, else the online one."""
        if self.average is None or int(self.average.n_averaged) == 0:
            return self.module
        return self.average.module

    def evaluated(self, eval_return: float) -> None:
        """lr_schedule=plateau: rank 0's scheduler decides on its `eval_return`, every rank takes rank 0's lr,
        so that all agents hold the same lr (the other ranks' schedulers are never stepped)."""
        if not self.plateau:
            return
        distributed = dist.is_initialized()
        if not distributed or dist.get_rank() == 0:
            self.scheduler.step(eval_return)
        if distributed:
            device = self._online_params[0].device
            lrs = torch.tensor([group["lr"] for group in self.optimizer.param_groups], dtype=torch.float64,
                               device=device)
            dist.broadcast(lrs, src=0)
            for group, lr in zip(self.optimizer.param_groups, lrs.tolist()):
                group["lr"] = lr

    @torch.inference_mode()  # targets carry no gradient; inference mode skips autograd bookkeeping
    def targets(self, batch: dict[str, torch.Tensor], online_q: torch.Tensor,
                tokens: torch.Tensor | None = None, online_every_critic: torch.Tensor | None = None) -> torch.Tensor:
        """Bellman targets [B, tokens] for `batch`, given the online net's Q [B, tokens, token_bins] on it and the
        batch's bins as the model's tokens (None: `action_tokens` of them; with levels = 1 tokens are dimensions).
        `within_step=online` values the next token from `online_every_critic` [B, tokens, critics, token_bins]
        (None: `online_q` as the one critic's).

        Values at the bootstrap state s_{t+m} come from the batch's own forward passes where `successor`
        names a row holding s_{t+m}; only the other rows cost a (one-token) forward.
        """
        if tokens is None:
            tokens = self.module.action_tokens(batch["bins"])
        obs, prefix, successor = batch["obs"], tokens[:, :-1], batch["successor"]
        double_q = self.cfg["double_q"]
        features = self.target.features(obs, prefix)
        alone, in_batch = successor < 0, successor.clamp(min=0)
        next_features = features[in_batch, 0]
        online_next = online_q[in_batch, 0] if double_q else None
        if alone.any():
            next_obs, no_prefix = batch["next_obs"][alone], prefix[alone, :0]
            next_features[alone] = self.target.features(next_obs, no_prefix)[:, 0]
            if double_q:
                online_next[alone] = self.module(next_obs, no_prefix)[:, 0]
        if self.cfg["within_step"] == "online":
            every = online_q.unsqueeze(-2) if online_every_critic is None else online_every_critic
            within_step = algorithm.online_greedy_values(every[:, 1:], getattr(self.module, "backup", "min"))
        else:
            within_step = algorithm.greedy_values(self.target, features[:, 1:], online_q[:, 1:] if double_q else None)
        across_step = algorithm.greedy_values(self.target, next_features, online_next)
        discount, bootstrap = self.cfg["discount"], batch["bootstrap_discount"]
        nstep_return = self.value_map.returns(batch["nstep_return"], batch["steps"], bootstrap == 0, discount)
        mc_return = self.value_map.returns(batch["mc_return"], batch["to_end"], batch["terminated"], discount)
        one_step = None
        if self.cfg["n_step_bound"]:  # the 1-step backup at s_{t+1}: one more first-token forward of each net
            next1_obs, no_prefix = batch["next1_obs"], prefix[:, :0]
            next1 = algorithm.greedy_values(self.target, self.target.features(next1_obs, no_prefix)[:, 0],
                                            self.module(next1_obs, no_prefix)[:, 0] if double_q else None)
            terminal1 = batch["terminal1"]
            one_step = (self.value_map.returns(batch["reward"], torch.ones_like(batch["steps"]), terminal1, discount),
                        torch.where(terminal1, 0.0, discount), next1)
        y = algorithm.targets(within_step, across_step, nstep_return, bootstrap, mc_return,
                              self.cfg["mc_lower_bound"], one_step)
        if self.cfg["target_clip"]:
            y, clipped = algorithm.clip_targets(y, self.value_map.bounds(*self.reward_range, discount))
            self.target_clipped = clipped  # read with the other metrics at the end of `update`: no sync mid-step
        return y

    def state_dict(self) -> dict:
        """Model, target, weight average, optimiser, scheduler and counters."""
        return {"model": self.module.state_dict(), "target": self.target.state_dict(),
                "average": None if self.average is None else self.average.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "updates": self.updates, "skipped_steps": self.skipped_steps,
                "value_map": [self.value_map.scale, self.value_map.low]}

    def load_state_dict(self, state: dict) -> None:
        """Restore from `state_dict()`."""
        self.module.load_state_dict(state["model"])
        self.target.load_state_dict(state["target"])
        if self.average is not None and state.get("average") is not None:  # checkpoints before eval_ema: none
            self.average.load_state_dict(state["average"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.updates, self.skipped_steps = state["updates"], state["skipped_steps"]
        self.value_map = algorithm.ValueMap(*state["value_map"])
