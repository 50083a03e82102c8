"""Robust gradient aggregation as DDP communication hooks.

Each rule is a hook of DDP's comm-hook shape, ``hook(state, bucket) -> Future[Tensor]``, usable on any
``DistributedDataParallel`` model, with its options in an :class:`AggregationState`::

    >>> # xdoctest: +SKIP
    >>> ddp_model.register_comm_hook(AggregationState(trim=0.25), trimmed_mean_hook)

- ``mean_hook``: the all-reduce average, what DDP does without a hook. Tolerates no faulty agent.
- ``median_hook``: the coordinate-wise median over agents (for an even number of agents the midpoint of
  the two middle values). Tolerates fewer than N/2 faulty agents.
- ``trimmed_mean_hook``: per coordinate, drop the ``floor(trim * N)`` largest and as many smallest values
  and average the rest. Tolerates ``floor(trim * N)`` faulty agents.

Cost. The robust rules move as many bytes as a ring all-reduce, ``2 (N - 1) / N`` of the bucket per
rank: an all-to-all hands each rank every agent's copy of its own ``1/N`` shard of coordinates, the rank
reduces that shard, and sends the result straight to every other rank. The statistic over the N copies
is a pruned sorting network (Batcher's odd-even merge sort) of elementwise ``torch.minimum`` /
``torch.maximum``, taken over cache-sized blocks of coordinates: ``torch.sort`` or ``torch.median``
along a dimension this short is ~10-30x slower on CPU. The sharded path finishes its bucket before the
hook returns (see :func:`robust_all_reduce`), so only an all-reduce (``mean_hook``, and the robust rules
where they reduce to the mean) overlaps with the rest of the backward pass.

Non-finite gradients. Under ``median`` and ``trimmed_mean`` NaN counts as ``+inf``, so a tolerated
number of agents sending NaN or Inf lands at the extremes and is cut away: the aggregate stays finite.
Under ``mean`` NaN and Inf propagate into every rank's gradient; the trainer sees a non-finite gradient
norm and skips that optimizer step.

Faulty agents, for research and tests: a :class:`FaultSpec` in the state makes the listed ranks corrupt
their own bucket before communication (see :meth:`FaultSpec.corrupt_`).
"""

# No `from __future__ import annotations`: DDP checks a hook's annotations at runtime, as objects.
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

__all__ = [
    "DEFAULT_TRIM",
    "RULES",
    "FAULT_KINDS",
    "FaultSpec",
    "AggregationState",
    "mean_hook",
    "median_hook",
    "trimmed_mean_hook",
    "register",
    "tolerated_faults",
    "check_fault_tolerance",
    "coordinate_median",
    "coordinate_trimmed_mean",
    "mean_all_reduce",
    "median_all_reduce",
    "trimmed_mean_all_reduce",
    "robust_all_reduce",
]

DEFAULT_TRIM = 0.25
RULES = ("mean", "median", "trimmed_mean")
FAULT_KINDS = ("scale", "noise", "sign_flip", "nan")

Statistic = Callable[[torch.Tensor], torch.Tensor]

# torch 2.13 renamed all_gather_into_tensor (deprecated there, a warning per call); older torch lacks it.
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


# --------------------------------------------------------------------------------------------------
# Options


@dataclass(frozen=True)
class FaultSpec:
    """Ranks in ``agents`` corrupt their own gradients before communication.

    ``kind``: ``scale`` multiplies by ``magnitude``; ``noise`` adds Gaussian noise of std ``magnitude``
    (from a generator seeded with ``seed + rank``, so runs are reproducible); ``sign_flip`` multiplies by
    ``-magnitude``; ``nan`` fills with NaN.
    """

    agents: tuple[int, ...]
    kind: str
    magnitude: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {', '.join(FAULT_KINDS)}; got {self.kind!r}")
        object.__setattr__(self, "agents", tuple(int(a) for a in self.agents))

    def corrupt_(self, tensor: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Corrupt ``tensor`` in place as this fault's ``kind`` says and return it."""
        if self.kind == "scale":
            return tensor.mul_(self.magnitude)
        if self.kind == "sign_flip":
            return tensor.mul_(-self.magnitude)
        if self.kind == "nan":
            return tensor.fill_(math.nan)
        # Drawn on the CPU generator's device, then moved: a CPU generator cannot feed CUDA randn.
        noise = torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype)
        return tensor.add_(noise.to(tensor.device), alpha=self.magnitude)


@dataclass
class AggregationState:
    """Options of the aggregation hooks, passed as ``state`` to ``register_comm_hook``.

    ``process_group``: the group to aggregate over (None: the default group). ``trim``: the fraction
    ``trimmed_mean_hook`` cuts from each end, in [0, 0.5). ``fault``: fault injection, or None.

    Persisting across steps: the noise generator of a faulty rank (so the noise differs per step and
    is reproducible per run), and per bucket a receive buffer for the robust rules, about the bucket's
    size: one more copy of the gradients in memory, kept because page-faulting a fresh buffer that
    large on every step is a sizeable fraction of the transfer on CPU. A hook given ``state=None``
    uses default options and allocates afresh each step.
    """

    process_group: dist.ProcessGroup | None = None
    trim: float = DEFAULT_TRIM
    fault: FaultSpec | None = None
    _generator: torch.Generator | None = field(default=None, init=False, repr=False)
    _scratch: dict[int, torch.Tensor] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        _check_trim(self.trim)

    def scratch(self, bucket: dist.GradBucket) -> torch.Tensor:
        """The receive buffer of ``bucket``, kept across steps; reallocated if the bucket outgrew it."""
        buffer = bucket.buffer()
        numel = _received_numel(buffer.numel(), dist.get_world_size(self.process_group))
        cached = self._scratch.get(bucket.index())
        fits = cached is not None and cached.numel() >= numel and cached.dtype == buffer.dtype
        if not fits or cached.device != buffer.device:
            cached = self._scratch[bucket.index()] = buffer.new_empty(numel)
        return cached

    def state_dict(self) -> dict:
        """What a checkpoint keeps: the noise generator's state (None until a faulty rank first draws)."""
        return {"generator": self._generator.get_state() if self._generator is not None else None}

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()`: the noise continues where the checkpointed run left it."""
        if state["generator"] is not None:
            self._generator = torch.Generator()
            self._generator.set_state(state["generator"])

    def inject_fault_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Corrupt ``tensor`` in place if this rank is a faulty agent; return it."""
        if self.fault is None:
            return tensor
        rank = dist.get_rank(self.process_group)
        if rank not in self.fault.agents:
            return tensor
        if self._generator is None:
            self._generator = torch.Generator().manual_seed(self.fault.seed + rank)
        return self.fault.corrupt_(tensor, self._generator)


def _check_trim(trim: float) -> None:
    if not 0.0 <= trim < 0.5:
        raise ValueError(f"trim must be in [0, 0.5); got {trim}")


def _trim_count(n: int, trim: float) -> int:
    # trim * n is computed in binary (0.29 * 100 == 28.999999999999996), and at least one value must
    # stay even when rounding pushes a trim just below 0.5 up to n / 2.
    return min(math.floor(trim * n + 1e-9), (n - 1) // 2)


# --------------------------------------------------------------------------------------------------
# Coordinate-wise statistics over the N rows of an [N, S] tensor


def _batcher_network(n: int) -> list[tuple[int, int]]:
    """Comparators (i, j), i < j, of Batcher's odd-even merge sort for ``n`` inputs."""
    size = 1 << max(n - 1, 0).bit_length()
    pairs = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    # Inputs n..size-1 are taken as +inf: a comparator touching them never moves a real value.
    return [(i, j) for i, j in pairs if j < n]


@functools.lru_cache(maxsize=None)
def _middle_plan(n: int, k: int) -> tuple[tuple[int, int, bool, bool], ...]:
    """Comparators leaving sorted ranks k..n-k-1 in rows k..n-k-1, in some order: (i, j, min?, max?).

    Batcher's network walked backwards and pruned: the rules only sum the middle rows, so a comparator
    that merely swaps two middle rows (which no later comparator reads one by one) is dropped, and so
    is any output nothing reads.
    """
    middle = set(range(k, n - k))
    read: set[int] = set()  # rows a kept, later comparator reads one by one
    plan = []
    for i, j in reversed(_batcher_network(n)):
        if {i, j} <= middle and not read & {i, j}:
            continue
        want_min, want_max = i in middle or i in read, j in middle or j in read
        if want_min or want_max:
            plan.append((i, j, want_min, want_max))
            read |= {i, j}
    return tuple(reversed(plan))


def _middle_rows_(values: torch.Tensor, k: int) -> list[torch.Tensor]:
    """Per column, the values of sorted ranks k..n-k-1 of ``values`` [n, S], as rows in some order.

    Overwrites ``values``.
    """
    plan = _middle_plan(values.shape[0], k)
    # NaN would poison minimum/maximum; as +inf it sorts to the top and is trimmed like any outlier.
    # (torch.fmin skips NaN, but it is not vectorised: ~10x slower.) The sum is NaN whenever a value
    # is, and reading the values once costs half of rewriting them, which only a NaN makes necessary.
    if plan and torch.isnan(values.sum()):
        torch.nan_to_num_(values, nan=math.inf, posinf=math.inf, neginf=-math.inf)
    rows = list(values.unbind(0))
    spare = None
    for i, j, want_min, want_max in plan:
        a, b = rows[i], rows[j]
        if want_min and want_max:
            if spare is None:
                spare = torch.empty_like(a)
            torch.minimum(a, b, out=spare)
            torch.maximum(a, b, out=b)
            rows[i], spare = spare, a  # swapping buffers saves a copy per comparator
        elif want_min:
            torch.minimum(a, b, out=a)
        else:
            torch.maximum(a, b, out=b)
    return rows[k : len(rows) - k]


def _median_(values: torch.Tensor) -> torch.Tensor:
    rows = _middle_rows_(values, (values.shape[0] - 1) // 2)
    if len(rows) == 1:
        return rows[0]
    # Halving is exact, so this equals (lo + hi) / 2 and cannot overflow on large finite values.
    return rows[0].mul_(0.5).add_(rows[1], alpha=0.5)


def _trimmed_mean_(values: torch.Tensor, trim: float) -> torch.Tensor:
    n = values.shape[0]
    k = _trim_count(n, trim)
    rows = _middle_rows_(values, k)
    total = rows[0]
    for row in rows[1:]:
        total.add_(row)
    return total.div_(n - 2 * k)


def coordinate_median(values: torch.Tensor) -> torch.Tensor:
    """Median over dim 0 of ``values`` [N, ...]; for even N the midpoint of the two middle values."""
    return _median_(values.clone())


def coordinate_trimmed_mean(values: torch.Tensor, trim: float = DEFAULT_TRIM) -> torch.Tensor:
    """Mean over dim 0 of ``values`` [N, ...] after dropping the floor(trim*N) largest and smallest."""
    _check_trim(trim)
    return _trimmed_mean_(values.clone(), trim)


# --------------------------------------------------------------------------------------------------
# Collectives: the hooks' communication, callable on any contiguous tensor (the benchmark uses these)


def mean_all_reduce(
    tensor: torch.Tensor, process_group: dist.ProcessGroup | None = None
) -> torch.futures.Future[torch.Tensor]:
    """Average ``tensor`` over ranks in place, asynchronously; the future yields ``tensor``."""
    # Divide first, as torch's allreduce_hook does, so fp16 sums do not overflow.
    tensor.div_(dist.get_world_size(process_group))
    work = dist.all_reduce(tensor, group=process_group, async_op=True)
    return work.get_future().then(lambda _: tensor)


def _received_numel(numel: int, n: int) -> int:
    """Elements the all-to-all delivers to the rank owning the most coordinates (the last)."""
    base, tail = divmod(numel, n)
    return n * (base + tail)


_BLOCK_BYTES = 2 << 20  # 2 and 4 MiB measured alike at 4 ranks on 2 cores; 0.5 and 8 MiB slower


def _block_columns(n: int, element_size: int) -> int:
    """Columns of an [n, S] tensor that the statistic takes at a time (``_BLOCK_BYTES`` worth)."""
    return max(1, _BLOCK_BYTES // (n * element_size))


def robust_all_reduce(
    tensor: torch.Tensor,
    statistic: Statistic,
    process_group: dist.ProcessGroup | None = None,
    scratch: torch.Tensor | None = None,
) -> torch.futures.Future[torch.Tensor]:
    """Replace ``tensor`` in place by ``statistic`` over ranks, coordinate-wise; the future yields it.

    ``statistic`` maps an [N, S] tensor, which it may overwrite, to [S]. Rank r owns coordinates
    [r * B, (r + 1) * B) with B = numel // N, the last rank also the remaining numel % N. An all-to-all
    hands each rank every agent's copy of its coordinates, into ``scratch`` if it is large enough
    (else a fresh buffer); each rank then sends its reduced shard to every other rank. Bytes moved per
    rank equal a ring all-reduce's, and no step copies the whole tensor. The future is complete on
    return: see the comments below for why nothing is left to run asynchronously.
    """
    n = dist.get_world_size(process_group)
    flat = tensor.view(-1)
    base, tail = divmod(flat.numel(), n)
    if base == 0:
        # Fewer coordinates than ranks: a handful of floats, gathered whole.
        gathered = flat.new_empty(n * flat.numel())
        _all_gather(gathered, flat, group=process_group)
        flat.copy_(statistic(gathered.view(n, -1)))
        return _completed(tensor)

    rank = dist.get_rank(process_group)
    sizes = [base] * (n - 1) + [base + tail]  # the last rank also owns the remainder
    own = sizes[rank]
    if scratch is not None and scratch.numel() >= n * own:
        received = scratch[: n * own]
    else:
        received = flat.new_empty(n * own)
    # Synchronous on purpose: DDP runs hooks on the autograd thread, and waiting on a second gloo
    # collective inside a future's callback can deadlock once several buckets are in flight.
    dist.all_to_all_single(
        received, flat,
        output_split_sizes=[own] * n if tail else None,
        input_split_sizes=sizes if tail else None,
        group=process_group,
    )
    # The all-to-all is done with `flat`, so the results can land in it directly.
    reduced = flat[rank * base : rank * base + own]
    copies = received.view(n, own)
    # Block by block, so that a block's N rows stay in cache through the statistic's passes: with 4
    # ranks sharing 2 cores, this halves its time (measured 7.5-11 ms -> 3-4.7 ms per 1M coordinates).
    columns = _block_columns(n, received.element_size())
    for start in range(0, own, columns):
        reduced[start : start + columns] = statistic(copies[:, start : start + columns])
    # Every rank sends its reduced shard straight to every other: one round, where gloo's all-gather
    # is a ring of N - 1 rounds (measured at 4 ranks on 4M floats: 14-16 ms against 21-22 ms).
    transfers = []
    for step in range(1, n):
        to, source = (rank + step) % n, (rank - step) % n
        received_shard = flat[source * base : source * base + sizes[source]]
        transfers.append(dist.P2POp(dist.isend, reduced, group=process_group, group_peer=to))
        transfers.append(dist.P2POp(dist.irecv, received_shard, group=process_group, group_peer=source))
    # gloo's point-to-point work has no future, so the hook waits here and hands DDP a finished one.
    for work in dist.batch_isend_irecv(transfers) if transfers else ():
        work.wait()
    return _completed(tensor)


def _completed(tensor: torch.Tensor) -> torch.futures.Future[torch.Tensor]:
    done = torch.futures.Future()
    done.set_result(tensor)
    return done


def median_all_reduce(
    tensor: torch.Tensor,
    process_group: dist.ProcessGroup | None = None,
    scratch: torch.Tensor | None = None,
) -> torch.futures.Future[torch.Tensor]:
    """Replace ``tensor`` in place by its coordinate-wise median over ranks, asynchronously."""
    if dist.get_world_size(process_group) <= 2:
        # The median of two values is their mean, and all-reduce is the fastest way there.
        return mean_all_reduce(tensor, process_group)
    return robust_all_reduce(tensor, _median_, process_group, scratch)


def trimmed_mean_all_reduce(
    tensor: torch.Tensor,
    trim: float = DEFAULT_TRIM,
    process_group: dist.ProcessGroup | None = None,
    scratch: torch.Tensor | None = None,
) -> torch.futures.Future[torch.Tensor]:
    """Replace ``tensor`` in place by its coordinate-wise trimmed mean over ranks, asynchronously."""
    _check_trim(trim)
    if _trim_count(dist.get_world_size(process_group), trim) == 0:
        # Nothing to cut: the rule is the mean, and all-reduce is the fastest way there.
        return mean_all_reduce(tensor, process_group)
    return robust_all_reduce(tensor, functools.partial(_trimmed_mean_, trim=trim), process_group, scratch)


# --------------------------------------------------------------------------------------------------
# Hooks


def mean_hook(
    state: AggregationState | None, bucket: dist.GradBucket
) -> torch.futures.Future[torch.Tensor]:
    """Average the bucket over ranks by all-reduce, after the state's fault injection.

    Example::
        >>> # xdoctest: +SKIP
        >>> ddp_model.register_comm_hook(AggregationState(), mean_hook)
    """
    state = state if state is not None else AggregationState()
    return mean_all_reduce(state.inject_fault_(bucket.buffer()), state.process_group)


def median_hook(
    state: AggregationState | None, bucket: dist.GradBucket
) -> torch.futures.Future[torch.Tensor]:
    """Replace the bucket by its coordinate-wise median over ranks (midpoint for even N).

    Example::
        >>> # xdoctest: +SKIP
        >>> ddp_model.register_comm_hook(AggregationState(), median_hook)
    """
    state = state if state is not None else AggregationState()
    tensor = state.inject_fault_(bucket.buffer())
    return median_all_reduce(tensor, state.process_group, state.scratch(bucket))


def trimmed_mean_hook(
    state: AggregationState | None, bucket: dist.GradBucket
) -> torch.futures.Future[torch.Tensor]:
    """Replace the bucket by its coordinate-wise ``state.trim``-trimmed mean over ranks.

    Example::
        >>> # xdoctest: +SKIP
        >>> ddp_model.register_comm_hook(AggregationState(trim=0.25), trimmed_mean_hook)
    """
    state = state if state is not None else AggregationState()
    tensor = state.inject_fault_(bucket.buffer())
    return trimmed_mean_all_reduce(tensor, state.trim, state.process_group, state.scratch(bucket))


_HOOKS = {"mean": mean_hook, "median": median_hook, "trimmed_mean": trimmed_mean_hook}


def _check_rule(rule: str) -> None:
    if rule not in RULES:
        raise ValueError(f"rule must be one of {', '.join(RULES)}; got {rule!r}")


def register(
    ddp_model: torch.nn.parallel.DistributedDataParallel,
    rule: str,
    trim: float = DEFAULT_TRIM,
    fault: FaultSpec | None = None,
    process_group: dist.ProcessGroup | None = None,
) -> AggregationState:
    """Register the hook of ``rule`` on ``ddp_model`` and return its state."""
    _check_rule(rule)
    state = AggregationState(process_group=process_group, trim=trim, fault=fault)
    if fault is not None:
        n = dist.get_world_size(process_group)
        outside = [a for a in fault.agents if not 0 <= a < n]
        if outside:
            raise ValueError(f"fault agents must be ranks in [0, {n}); got {outside}")
    ddp_model.register_comm_hook(state, _HOOKS[rule])
    return state


# --------------------------------------------------------------------------------------------------
# Fault tolerance


def tolerated_faults(rule: str, n: int, trim: float = DEFAULT_TRIM) -> int:
    """How many of ``n`` agents may be faulty without breaking ``rule``."""
    _check_rule(rule)
    _check_trim(trim)
    if rule == "mean":
        return 0
    if rule == "median":
        return (n - 1) // 2  # fewer than n / 2
    return _trim_count(n, trim)


def check_fault_tolerance(rule: str, n: int, trim: float, n_faulty: int) -> str | None:
    """A one-line warning if ``n_faulty`` of ``n`` agents exceed what ``rule`` tolerates, else None."""
    tolerated = tolerated_faults(rule, n, trim)
    if n_faulty <= tolerated:
        return None
    bound = {
        "mean": "none",
        "median": f"fewer than N/2, i.e. {tolerated}",
        "trimmed_mean": f"floor(trim*N) = floor({trim}*{n}) = {tolerated}",
    }[rule]
    return (
        f"{n_faulty} of {n} agents are faulty but rule {rule!r} tolerates {bound}: "
        f"the aggregated gradient is not robust"
    )
