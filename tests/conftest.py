"""Shared fixtures: the repository root and a subprocess runner for the real entry point."""
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
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
                "WANDB_MODE": "disabled", **(env or {})}
    full_env = {key: value for key, value in full_env.items() if value is not None}  # None: unset it
    return subprocess.run([sys.executable, "-m", "dqt.train", *overrides], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=ROOT)


def newest_checkpoint(run_dir: str | Path, rank: int) -> dict:
    """Agent `rank`'s state in the run's newest complete checkpoint generation."""
    import torch

    from dqt import generations

    return torch.load(generations.complete(run_dir)[0].agent_file(rank), weights_only=True)


@pytest.fixture
def train():
    return run_train
