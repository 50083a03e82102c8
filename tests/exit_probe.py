"""An agent for tests/test_distributed.py: it records that it finished, and registers an exit handler that
records the interpreter's teardown (a module of its own, so the launcher's spawned processes can import it)."""
import atexit
from pathlib import Path

import torch.distributed as dist


def agent(out: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    atexit.register(lambda: (Path(out) / f"teardown{rank}").touch())
    dist.destroy_process_group()
    (Path(out) / f"done{rank}").touch()
