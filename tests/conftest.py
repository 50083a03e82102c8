"""Shared fixtures: the repository root, a subprocess runner for the real entry point, gloo process worlds."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


def run_train(*overrides: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m dqt.train overrides...` as a user would run it; tests/ is importable for toy envs."""
    return subprocess.run([sys.executable, "-m", "dqt.train", *overrides], capture_output=True, text=True,
                          timeout=timeout, env=_train_env(env), cwd=ROOT)


def start_train(*overrides: str, stderr: Path, launcher: tuple[str, ...] = (), env: dict | None = None,
                new_session: bool = False) -> subprocess.Popen:
    """run_train without waiting, a test acts on the running job: `python [launcher] -m dqt.train overrides...`
    (launcher: e.g. `-m torch.distributed.run ...`), its stderr to the file `stderr`. `new_session`: the job and
    every process it starts form a process group of their own (id: the job's pid), which a test can kill whole."""
    with open(stderr, "w") as err:
        return subprocess.Popen([sys.executable, *launcher, "-m", "dqt.train", *overrides], stdout=subprocess.DEVNULL,
                                stderr=err, env=_train_env(env), cwd=ROOT, start_new_session=new_session)


def wait_for_generation(job: subprocess.Popen, run_dir: Path, step: int, stderr: Path, timeout: float = 240) -> None:
    """Block until checkpoint generation `step` of `run_dir` is complete (its manifest written); fail with the
    job's stderr if the job ends or the time runs out first."""
    import time

    from dqt import generations

    manifest = generations.generation_dir(run_dir, step) / generations.MANIFEST
    deadline = time.monotonic() + timeout
    while not manifest.exists():
        assert job.poll() is None and time.monotonic() < deadline, stderr.read_text()[-3000:]
        time.sleep(0.01)


def _train_env(env: dict | None) -> dict:
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
                "WANDB_MODE": "disabled", **(env or {})}
    return {key: value for key, value in full_env.items() if value is not None}  # None: unset it


def newest_checkpoint(run_dir: str | Path, rank: int) -> dict:
    """Agent `rank`'s state in the run's newest complete checkpoint generation."""
    import torch

    from dqt import generations

    return torch.load(generations.complete(run_dir)[0].agent_file(rank), weights_only=True)


def pytest_collection_modifyitems(items):
    """The slow tests (runs in processes of their own) first, the quick in-process ones after: two xdist
    workers then end together, the quick tests filling in, instead of one worker starting a minute-long run
    while the other has run dry."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: file order within each


@pytest.fixture
def train():
    return run_train


def _world_worker(rank: int, world_size: int, init_file: str, job, out_dir: str) -> None:
    import datetime

    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    # A short timeout turns a deadlocked collective into a test failure instead of a hang.
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=60))
    try:
        torch.save(job(rank, world_size), f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_world(job, world_size: int, tmp_dir: Path, preload: tuple[str, ...] = ("torch",)) -> list:
    """Run `job(rank, world_size)` in `world_size` gloo processes; return each rank's result (torch.save-able)."""
    import torch
    import torch.multiprocessing as mp

    # Forked from a server that imported `preload` once: importing torch takes seconds per process.
    mp.set_forkserver_preload(list(preload))
    mp.start_processes(_world_worker, args=(world_size, str(tmp_dir / "init"), job, str(tmp_dir)),
                       nprocs=world_size, start_method="forkserver")
    return [torch.load(tmp_dir / f"rank{r}.pt") for r in range(world_size)]
