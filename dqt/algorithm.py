"""Q-Transformer's math in one place (Chebotar et al. 2023, "Q-Transformer: Scalable Offline Reinforcement
Learning via Autoregressive Q-Functions"), to be read against the paper.

Notation: d action dimensions, each discretised into `bins` bins; Q_i(s, a_{1:i}) is the model's output
at token i for bin a_i given the data's bins a_{1:i-1}. Returns are mapped so that Q lies in [0, 1]
(see `ValueMap`): the lowest attainable value is 0, which the conservative term pushes unseen bins to.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ValueMap:
    """The affine map Q' = scale * (Q - low) that puts values in [0, 1] whatever the reward's scale and sign.

    Applied to returns rather than to each reward, so it is exact for every episode: a reward r becomes
    scale * r - (1 - gamma) * scale * low, and a terminal state, worth 0 before, is worth -scale * low after.
    The greedy policy is unchanged (an affine map with scale > 0, terminal states included). With rewards
    r >= low * (1 - gamma) every mapped return is >= 0, so the lowest attainable value is 0, where the
    conservative term pushes unseen bins (Sec. 4.2), and a truncated Monte-Carlo return, whose missing
    tail is >= 0, is a true lower bound.
    """

    scale: float
    low: float

    @property
    def terminal(self) -> float:
        """The mapped value of a terminal state."""
        return -self.scale * self.low

    def unmap(self, mapped: float) -> float:
        """A mapped value back in reward units: Q = Q' / scale + low."""
        return mapped / self.scale + self.low

    def returns(self, raw: torch.Tensor, steps: torch.Tensor, terminated: torch.Tensor, discount: float) -> torch.Tensor:
        """Map raw discounted sums of `steps` rewards; where `terminated`, the sum ends in a terminal state.

        sum_k gamma^k (scale r_k - (1-gamma) scale low) = scale raw - scale low (1 - gamma^steps), plus
        gamma^steps * terminal when the window ends in the terminal state.
        """
        power = discount ** steps.to(raw.dtype)
        return self.scale * raw - self.scale * self.low * (1 - power) + torch.where(terminated, power * self.terminal, 0.0)

    def bounds(self, reward_low: float, reward_high: float, discount: float) -> tuple[float, float]:
        """The mapped values a policy can reach when every reward lies in [reward_low, reward_high].

        Every return, a terminal state's 0 included, lies in [min(r_lo, 0), max(r_hi, 0)] / (1 - gamma); a
        target outside the map of that range is overestimation (or underestimation) that no policy attains.
        """
        if discount >= 1.0 or not (math.isfinite(reward_low) and math.isfinite(reward_high)):
            return -math.inf, math.inf  # undiscounted returns have no such bound; no rewards seen: none known
        low, high = min(reward_low, 0.0) / (1 - discount), max(reward_high, 0.0) / (1 - discount)
        return self.scale * (low - self.low), self.scale * (high - self.low)


def value_map(reward_scale: float | str, discount: float, reward_low: float, reward_high: float) -> ValueMap:
    """The `ValueMap` for the `reward_scale` key.

    A number multiplies rewards (low = 0). `map` maps the value range [min(r_lo, 0), max(r_hi, 0)] / (1 - gamma)
    onto [0, 1], with [r_lo, r_hi] the per-step reward range: the suite's bound where it has one (MetaWorld:
    [0, 10 * action_repeat], which gives scale (1 - gamma) / r_max, low 0), else the rewards seen before
    learning starts, over all agents. 0 is always in the range so a terminal state maps into [0, 1].
    `max` multiplies rewards by 1 / max |r| over that range, so rewards within it land in [-1, 1] and a
    reward of 0 stays 0 (no shift).
    """
    if reward_scale == "max":
        seen = math.isfinite(reward_low) and math.isfinite(reward_high)
        largest = max(abs(reward_low), abs(reward_high)) if seen else 0.0
        return ValueMap(1.0 / largest if largest > 0 else 1.0, 0.0)  # nothing but zeros seen: rewards as they are
    if reward_scale != "map":
        return ValueMap(float(reward_scale), 0.0)
    low, high = min(reward_low, 0.0) / (1 - discount), max(reward_high, 0.0) / (1 - discount)
    span = high - low if high > low else 1.0 / (1 - discount)  # only zeros seen yet: assume |r| <= 1
    return ValueMap(1.0 / span, low)


def to_bins(action: torch.Tensor, bins: int) -> torch.Tensor:
    """Continuous actions in [-1, 1] -> nearest of `bins` evenly spaced bin centres (long)."""
    scaled = (action.clamp(-1.0, 1.0) + 1.0) * 0.5 * (bins - 1)
    return scaled.round().long()


def from_bins(index: torch.Tensor, bins: int) -> torch.Tensor:
    """Bin indices -> continuous actions in [-1, 1] (bin centres, both ends included)."""
    return index.float() * (2.0 / (bins - 1)) - 1.0


def to_tokens(bins: torch.Tensor, token_bins: int, levels: int) -> torch.Tensor:
    """Per-dimension bins [..., d] -> the tokens a coarse-to-fine decode chooses, [..., d * levels] (long).

    Bin b of `token_bins ** levels` is written in base `token_bins`, most significant digit first: dimension
    i's tokens are i * levels .. i * levels + levels - 1, the first picks one of `token_bins` equal slices of
    the dimension's bins, each next one a slice of that slice (Seo et al. 2024, coarse-to-fine Q-learning).
    levels = 1: the bins themselves.
    """
    if levels == 1:
        return bins
    return (bins.unsqueeze(-1) // _place_values(token_bins, levels, bins.device) % token_bins).flatten(-2)


def from_tokens(tokens: torch.Tensor, token_bins: int, levels: int) -> torch.Tensor:
    """The inverse of `to_tokens`: tokens [..., d * levels] -> per-dimension bins [..., d]."""
    if levels == 1:
        return tokens
    return (tokens.unflatten(-1, (-1, levels)) * _place_values(token_bins, levels, tokens.device)).sum(-1)


def _place_values(token_bins: int, levels: int, device: torch.device) -> torch.Tensor:
    """What one unit of each token is worth in bins, coarsest first: token_bins^(levels-1), ..., 1."""
    return token_bins ** torch.arange(levels - 1, -1, -1, device=device)


def nstep_returns(rewards: torch.Tensor, terminated: bool, n: int, discount: float,
                  explored: torch.Tensor | None = None):
    """n-step sums and bootstrap discounts for one stored episode of T rewards (Sec. 4.3, n-step returns).

    Returns (R [T], bootstrap_discount [T], offset [T], mc [T]) where R_t = sum_{k<m} gamma^k r_{t+k} with
    m = min(n, T - t) steps, the bootstrap state is t + m, its weight gamma^m is 0 when the episode
    terminated inside the window (a time-limit truncation still bootstraps), and mc_t is the discounted
    return-to-go of the episode (the Monte-Carlo lower bound of Sec. 4.2).

    explored [T] bool (optional): the steps whose action was not the greedy one. The window of step t then
    also ends before the first explored step after t, m = min(n, T - t, k) with k >= 1 the first such offset
    (Watkins' Q(lambda), Watkins 1989): the rewards summed are those of the greedy policy the backup values,
    not of an exploratory action that may have thrown the episode away (a random torque that topples a
    balancing pole). The action at t itself is the one being valued, explored or not.
    """
    T = rewards.shape[0]
    r = rewards.double()
    mc = _return_to_go(r, discount)
    steps = torch.clamp(T - torch.arange(T), max=n)
    if explored is not None:
        for k in range(1, min(n, T)):  # step t + k explored: m_t <= k (clamping keeps the nearest)
            steps[: T - k] = torch.where(explored[k:].bool(), steps[: T - k].clamp(max=k), steps[: T - k])
    powers = discount ** torch.arange(n, dtype=torch.float64)
    R = torch.zeros(T, dtype=torch.float64)
    for k in range(n):
        valid = steps > k
        R[valid] += powers[k] * r[torch.arange(T)[valid] + k]
    bootstrap = discount ** steps.double()
    if terminated:
        bootstrap[torch.arange(T) + steps >= T] = 0.0
    return R.float(), bootstrap.float(), steps, mc.float()


def _return_to_go(r: torch.Tensor, discount: float) -> torch.Tensor:
    """mc_t = sum_{k>=t} gamma^(k-t) r_k (float64)."""
    powers = discount ** torch.arange(r.shape[0], dtype=torch.float64)
    if r.shape[0] == 0 or powers[-1] > 1e-200:  # reversed cumulative sum of gamma^k r_k, rescaled by gamma^-t
        return (r * powers).flip(0).cumsum(0).flip(0) / powers
    mc, running = torch.zeros_like(r), 0.0  # gamma^T underflows: the plain backward recursion
    for t in range(r.shape[0] - 1, -1, -1):
        running = float(r[t]) + discount * running
        mc[t] = running
    return mc


def greedy_values(head, features: torch.Tensor, online_q: torch.Tensor | None = None) -> torch.Tensor:
    """The value a Bellman backup takes at each token: max_b Q_target(b) (Sec. 4.1, Eq. 1), or, given the
    online net's Q [..., bins] at the same inputs, double Q-learning's Q_target(argmax_b Q_online(b))
    (van Hasselt et al. 2016): the online net picks the bin, the target net values it.

    head: the target network (its `backup_values` gives every bin's Q, `head_at` one bin's, both the lowest of its
    critics: clipped double Q, Fujimoto et al. 2018; or their mean, `model.critic_backup`); features [..., dim]:
    the target network's features.
    Returns [...].
    """
    if online_q is None:
        return head.backup_values(features).amax(dim=-1)
    return head.head_at(features, online_q.argmax(dim=-1))


def online_greedy_values(q: torch.Tensor, backup: str = "min") -> torch.Tensor:
    """The within-step value from the online net's own Q (`within_step=online`), for q [..., critics, bins]: the bin
    the critics' mean ranks first (as acting ranks them), valued by their lowest Q there (`backup="min"`, clipped
    double Q) or their mean. Returns [...].

    Inside one step the backup y_i = max_b Q_{i+1}(s, a_{1:i}, b) has no discount and ends, d - 1 tokens on, at
    the across-step backup, which keeps the target net: token i's target depends only on tokens after it, so the
    chain has no loop for a target net to damp, and the online net's values spare every step's credit d - 1
    target-net lags (with `tau` 0.005, about 200 updates each).
    """
    pick = q.mean(-2).argmax(-1)
    at = q.gather(-1, pick[..., None, None].expand(*q.shape[:-1], 1)).squeeze(-1)  # [..., critics]
    return at.amin(-1) if backup == "min" else at.mean(-1)


def targets(next_dimension_value: torch.Tensor, next_state_value: torch.Tensor, nstep_return: torch.Tensor,
            bootstrap_discount: torch.Tensor, mc_return: torch.Tensor, mc_lower_bound: bool,
            one_step: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Bellman targets [B, d] (Sec. 4.1, Eq. 1; Sec. 4.2; Sec. 4.3), from `greedy_values` of the target net.

    next_dimension_value: [B, d-1], the value of dimension i+1 at (s_t, a_{1:i}); next_state_value: [B], the
    value of the first dimension at the bootstrap state s_{t+m}.
      i < d:  y_i = max_b Q_{i+1}(s_t, a_{1:i}, b)                     (maximise over the next dimension)
      i = d:  y_d = R_t^{(m)} + gamma^m (1 - done) max_b Q_1(s_{t+m}, b)  (n-step backup across time steps)
      MC:     y_i = max(y_i, G_t)                                          (Monte-Carlo lower bound)
      clip:   y_i = clamp(y_i, *value_bounds)      (`clip_targets`: values the rewards allow, `ValueMap.bounds`)
    With `one_step` = (r_t, gamma (0 at a terminal s_{t+1}), max_b Q_1(s_{t+1}, b)) the n-step backup is only a
    lower bound on the 1-step one (`n_step_bound`; optimality tightening, He et al. 2017):
      i = d:  y_d = max(r_t + gamma max_b Q_1(s_{t+1}, b), R_t^{(m)} + gamma^m max_b Q_1(s_{t+m}, b))
    acting optimally after any m - 1 steps of the behaviour is worth no more than acting optimally throughout,
    so an exploring behaviour's n-step sum can lift a value faster than 1-step backups do, and never pull it
    down to what an exploratory action threw away (deterministic dynamics; with noisy ones the max is optimistic).
    On rows the conservative term leaves out (the agents' own data) only `loss`'s excess term holds the maxima
    down; without it overestimation compounds through the backups (by up to 1 / (1 - gamma)) and Q climbs past
    anything a policy can reach; the clip stops that at the bound.
    """
    across_step = nstep_return + bootstrap_discount * next_state_value
    if one_step is not None:
        reward, discount, next1 = one_step
        across_step = torch.maximum(across_step, reward + discount * next1)
    y = torch.cat([next_dimension_value, across_step.unsqueeze(1)], dim=1)
    if mc_lower_bound:
        y = torch.maximum(y, mc_return.unsqueeze(1))
    return y


def clip_targets(y: torch.Tensor, value_bounds: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """`targets` clamped to `value_bounds` (`ValueMap.bounds`), and the share of them the clamp moved."""
    low, high = value_bounds
    return y.clamp(low, high), ((y < low) | (y > high)).float().mean()


def loss(q: torch.Tensor, data_bins: torch.Tensor, y: torch.Tensor, conservative_weight: float,
         conservative_rows: torch.Tensor | None = None, excess_weight: float = 0.0):
    """Conservative Q-Transformer objective (Sec. 4.2, Eq. 2), averaged over dimensions and the batch.

    q: [B, d, bins] online Q; data_bins: [B, d]; y: [B, d] targets (no gradient); conservative_rows: [B]
    bool, the rows the conservative term applies to (None: all).
      TD term:           1/2 (Q_i(s, a_{1:i}) - y_i)^2 on the data's bin
      conservative term: 1/2 mean over the other bins b != a_i of (Q_i(s, a_{1:i-1}, b) - 0)^2, summed over
                         the chosen rows and divided by B, so it weighs as their share of the batch
      excess term:       on the other rows (the agents' own data), 1/2 mean over b != a_i of
                         max(0, Q_i(b) - sg(Q_i(a_i)))^2, weight `excess_weight`: a bin the data never tried
                         may not stand above the bin it did, so the maxima of the backup cannot feed on
                         bins no data holds down (not in the paper: its conservative term has demos to act on)
    Returns (total loss, TD loss, conservative loss (both terms, unweighted), mean Q of data bins).
    """
    bins = q.shape[-1]
    q_data = q.gather(-1, data_bins.unsqueeze(-1)).squeeze(-1)
    td = 0.5 * (q_data - y.detach()).pow(2).mean()
    not_data = 1.0 - F.one_hot(data_bins, bins).to(q.dtype)
    per_row = 0.5 * ((q.pow(2) * not_data).sum(-1) / (bins - 1)).mean(-1)  # [B]
    if conservative_rows is not None:
        per_row = per_row * conservative_rows.to(q.dtype)
    conservative = per_row.mean()
    total = td + conservative_weight * conservative
    if excess_weight > 0 and conservative_rows is not None:  # None: every row is under the conservative term
        own = (~conservative_rows).to(q.dtype)
        excess = (q - q_data.detach().unsqueeze(-1)).clamp(min=0.0)  # exactly 0 at the data's own bin
        excess = (0.5 * (excess.pow(2).sum(-1) / (bins - 1)).mean(-1) * own).mean()
        conservative, total = conservative + excess, total + excess_weight * excess
    return total, td.detach(), conservative.detach(), q_data.detach().mean()
