"""Checkpoints: one file per agent (its replay and RNG states differ), written atomically, loaded with
weights_only so that a checkpoint file cannot run code."""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

CHECKPOINT_DIR = "checkpoints"


def path_for(run_dir: str | Path, rank: int) -> Path:
    """Checkpoint file of agent `rank`."""
    return Path(run_dir) / CHECKPOINT_DIR / f"agent{rank}.pt"


def save(state: dict, path: Path) -> None:
    """torch.save to a temporary file, then rename: a crash never leaves a half-written checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load(path: Path) -> dict:
    """Load a checkpoint written by `save` (tensors and plain Python values only)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def rng_state() -> dict:
    """The states of Python's, NumPy's and torch's global generators."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "numpy": (kind, torch.from_numpy(key.astype(np.int64)), pos, has_gauss, gauss),
            "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    """Restore `rng_state()`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
