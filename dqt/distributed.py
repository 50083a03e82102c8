"""Processes, devices and process groups: one process per agent.

Under torchrun the ranks come from the environment; outside it, `launch` starts the agents through
PyTorch's elastic launcher (the same machinery as torchrun). The NCCL path is a switch of backend and
device only: every behaviour is the same under gloo on CPU.
"""
from __future__ import annotations

import atexit
import contextlib
import gc
import logging
import os
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist

from dqt.errors import EXIT_RUN, RunError

EXIT_PEER_LOST = 4  # an agent whose peer exited: it stops without a word, the peer said why
PEER_LOST_GRACE_S = 5.0
# gloo's words when the process at the other end of a connection has exited
_PEER_LOST = ("Connection closed by peer", "Connection reset by peer")


@dataclass
class Context:
    """Where this agent runs."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def under_torchrun() -> bool:
    """True when torchrun (or the elastic launcher) started this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def restart_count() -> int:
    """How often the elastic launcher (torchrun's `--max-restarts`, or `launch`) has restarted this worker group."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0))


def choose_device(requested: str, local_rank: int, local_world_size: int) -> tuple[torch.device, str]:
    """(device, backend): NCCL when every local rank has its own GPU, gloo on CPU otherwise."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if requested == "cuda" and gpus < local_world_size:
        raise RuntimeError(f"device=cuda needs one GPU per agent on this node: {local_world_size} agents, {gpus} GPUs "
                           "(use device=auto to fall back to CPU/gloo)")
    if requested == "cpu" or gpus < local_world_size:
        return torch.device("cpu"), "gloo"
    return torch.device("cuda", local_rank), "nccl"


def setup(requested_device: str) -> Context:
    """Join (or create, for a single in-process agent) the default process group."""
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    device, backend = choose_device(requested_device, local_rank, local_world_size)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        if under_torchrun():
            dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
        else:  # one agent in this process: a group of one keeps DDP and the hooks on the same code path
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    return Context(rank, local_rank, world_size, local_world_size, device, backend)


def teardown() -> None:
    """Leave the process group.

    DDP's reducer and the hooks' futures sit in reference cycles; left to the collector at interpreter exit,
    gloo's threads free their tensors after Python is gone and the agent aborts (SIGABRT) after finishing
    its work, which an elastic launcher reads as a failure. So they are collected first.
    """
    if dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def exit_without_finalizing() -> None:
    """End an agent process whose work is done (its files closed, its process group left) with exit code 0.

    The interpreter's own shutdown is skipped: in it gloo's C++ threads can still free tensors after Python
    is gone, and the agent aborts (SIGABRT, "terminate called without an active exception") after finishing,
    which a launcher reads as a failed job. Collecting DDP's cycles before leaving the group (teardown) made
    that rare, not impossible (CI met it twice). Nothing is left to run at this point but that teardown.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _launched_agent(entrypoint: Callable[..., Any], *args: Any) -> Any:
    """An agent process of `launch`: run `entrypoint`, and once it has returned, end the process with
    `exit_without_finalizing` at exit, after the launcher has been handed the return value."""
    result = entrypoint(*args)
    atexit.register(exit_without_finalizing)
    return result


@contextlib.contextmanager
def one_line_errors(ctx: Context) -> Iterator[None]:
    """Around an agent's work: a RunError becomes its one line on stderr and exit code EXIT_RUN; losing a
    peer (which reports its own error) becomes a quiet exit, so no agent prints a traceback for it."""
    try:
        yield
    except RunError as error:
        if ctx.is_main or not error.every_agent:
            print(f"dqt: {error}", file=sys.stderr, flush=True)
        sys.exit(EXIT_RUN)
    except RuntimeError as error:
        if ctx.world_size == 1 or not any(words in str(error) for words in _PEER_LOST):
            raise
        # Let the launcher see the agent that failed first and stop this one: it then reports that agent
        # as the root cause (torchrun's "first observed failure"), not this one.
        time.sleep(PEER_LOST_GRACE_S)
        sys.exit(EXIT_PEER_LOST)


class _QuietReportedFailures(logging.Filter):
    """Drops the launcher's traceback for an agent that exited with a one-line reason of its own, and the
    notes on stopping the other agents after it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("Terminating process"):
            return False
        reported = str(record.msg).startswith("failed (exitcode") and record.args
        return not (reported and record.args[0] in (EXIT_RUN, EXIT_PEER_LOST))


def launch(num_agents: int, entrypoint: Callable[..., Any], args: tuple, max_restarts: int = 0) -> None:
    """Run `entrypoint(*args)` in `num_agents` local processes via torch.distributed's elastic launcher."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # Elastic restarts with gloo fail in connectFullMesh when the rendezvous TCP store is shared.
    os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=num_agents,
        run_id=f"dqt-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=max_restarts,
        monitor_interval=0.2,
        start_method="spawn",
    )
    quiet = _QuietReportedFailures()
    logs = [logging.getLogger(name) for name in ("torch.distributed.elastic.multiprocessing.api",
                                                 "torch.multiprocessing.spawn")]
    for log in logs:
        log.addFilter(quiet)
    try:
        elastic_launch(config, _launched_agent)(entrypoint, *args)
    except ChildFailedError as error:
        if {failure.exitcode for failure in error.failures.values()} <= {EXIT_RUN, EXIT_PEER_LOST}:
            raise SystemExit(EXIT_RUN) from None  # the agent that stopped has said why, in one line
        raise
    finally:
        for log in logs:
            log.removeFilter(quiet)
