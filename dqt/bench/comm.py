"""dqt-bench comm: one gradient aggregation across N gloo ranks on this machine, per rule, against the
mean all-reduce. Target: dqt's median <= 1.3x mean at 4 ranks on 4M floats; the naive gather-then-median
costs ~12x.

Every rank is a process with one torch thread; with more ranks than cores the ranks share cores, so
those rows measure the machine as much as the algorithm.
"""
import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dqt.aggregation import DEFAULT_TRIM, AggregationState, mean_hook, median_hook, trimmed_mean_hook

METHODS = ("mean", "gather+median", "dqt median", "dqt trimmed_mean")


def _gather_median(tensor: torch.Tensor) -> None:
    """The naive way: every rank gathers every full gradient, then takes the midpoint median."""
    n = dist.get_world_size()
    gathered = tensor.new_empty(n * tensor.numel())
    # torch 2.13 renamed all_gather_into_tensor (deprecated there) to all_gather_single.
    (getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor)(gathered, tensor)
    # torch.sort, not torch.median: torch.median returns the lower middle value for even n.
    s = gathered.view(n, -1).sort(dim=0).values
    tensor.copy_((s[(n - 1) // 2] + s[n // 2]) / 2)


class _Bucket:
    """What the hooks use of a dist.GradBucket, around a flat gradient."""

    def __init__(self, buffer: torch.Tensor) -> None:
        self._buffer = buffer

    def buffer(self) -> torch.Tensor:
        return self._buffer

    def index(self) -> int:
        return 0


def _aggregations(trim: float) -> dict[str, Callable[[torch.Tensor], None]]:
    # The hooks themselves, with a state kept across repeats as DDP keeps it across steps.
    state = AggregationState(trim=trim)
    return {
        "mean": lambda t: mean_hook(state, _Bucket(t)).wait(),
        "gather+median": _gather_median,
        "dqt median": lambda t: median_hook(state, _Bucket(t)).wait(),
        "dqt trimmed_mean": lambda t: trimmed_mean_hook(state, _Bucket(t)).wait(),
    }


def _rank(rank: int, n: int, init_file: str, sizes: list[int], repeats: int, trim: float, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=n)
    results = {}
    for size in sizes:
        source = torch.randn(size, generator=torch.Generator().manual_seed(rank))
        tensor = torch.empty_like(source)
        aggregations = _aggregations(trim)
        times: dict[str, list[float]] = {method: [] for method in aggregations}
        # Methods take turns within each repeat, so a load change on a shared machine hits them all, and
        # the order rotates, so no method always follows the heavy naive gather.
        names = list(aggregations)
        for repeat in range(repeats + 1):  # the first round warms up buffers and connections
            for method in names[repeat % len(names):] + names[: repeat % len(names)]:
                aggregate = aggregations[method]
                tensor.copy_(source)
                dist.barrier()
                start = time.perf_counter()
                aggregate(tensor)
                times[method].append(time.perf_counter() - start)
        for method, seconds in times.items():
            # An aggregation is done when its slowest rank is.
            slowest = torch.tensor(seconds[1:], dtype=torch.float64)
            dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
            results[f"{size}/{method}"] = statistics.median(slowest.tolist()) * 1e3
    if rank == 0:
        Path(out).write_text(json.dumps(results))
    dist.destroy_process_group()


def measure(n: int, sizes: list[int], repeats: int, trim: float) -> dict[str, float]:
    """Milliseconds per aggregation, keyed "size/method", median over repeats, on ``n`` spawned ranks."""
    with tempfile.TemporaryDirectory() as tmp:
        out = f"{tmp}/results.json"
        mp.start_processes(
            _rank, args=(n, f"{tmp}/init", sizes, repeats, trim, out), nprocs=n, start_method="spawn"
        )
        return json.loads(Path(out).read_text())


def _count(text: str) -> int:
    """"4M", "1.2M", "500k" or "4000000" as a number of floats."""
    scale = {"k": 1e3, "m": 1e6}.get(text[-1].lower(), 1)
    return int(float(text[:-1] if scale != 1 else text) * scale)


def _default_model_size() -> int:
    """Parameters of the Q-Transformer of conf/config.yaml on MetaWorld (39-d observations, 4 dimensions)."""
    from dqt.bench.common import default_config
    from dqt.model import q_network

    cfg = default_config()
    return sum(p.numel() for p in q_network(39, 4, cfg["bins"], **cfg["model"]).parameters())


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print one table row per (ranks, size, method)."""
    parser = argparse.ArgumentParser(prog="dqt-bench comm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", default="2,3,4,8", help="world sizes, comma-separated")
    parser.add_argument("--sizes", default=f"{_default_model_size()},4M",
                        help="gradient sizes in floats (k/M suffixes), comma-separated; default: the default "
                             "config's Q-Transformer and 4M floats")
    parser.add_argument("--repeats", type=int, default=8, help="timed runs per cell (median reported)")
    parser.add_argument("--trim", type=float, default=DEFAULT_TRIM, help="trimmed-mean fraction")
    args = parser.parse_args(argv)
    ranks = [int(r) for r in args.ranks.split(",")]
    sizes = [_count(s) for s in args.sizes.split(",")]

    cores = os.cpu_count() or 1
    print(f"gloo on localhost, {cores} cores, 1 torch thread per rank, median of {args.repeats} runs")
    print(f"{'ranks':>5} {'floats':>9} {'method':<17} {'ms':>9} {'x mean':>7}")
    for n in ranks:
        results = measure(n, sizes, args.repeats, args.trim)
        shared = "  (ranks > cores: oversubscribed)" if n > cores else ""
        for size in sizes:
            mean = results[f"{size}/mean"]
            for method in METHODS:
                ms = results[f"{size}/{method}"]
                print(f"{n:>5} {size:>9} {method:<17} {ms:>9.2f} {ms / mean:>7.2f}{shared}", flush=True)


if __name__ == "__main__":
    main()
