"""Checkpoints: every agent writes its own file (its replay and RNG states differ) into one generation per
step; rank 0 marks the generation complete with a manifest once every file is on disk (dqt/generations.py).

Files are written atomically and fsynced, and loaded with weights_only so that a checkpoint cannot run
code. Resuming checks each file against the manifest and falls back to the previous complete generation
when any agent's file is damaged; the agents always resume from the same generation.
"""
from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from dqt import generations
from dqt.errors import RunError


def save(state: dict, run_dir: str | Path, step: int, rank: int, world_size: int) -> Path:
    """Write this agent's file of generation `step`; collective: every agent calls it at the same step.

    Every agent decides to checkpoint from counters that are equal on all of them (see worker.py), and
    the manifest records the step each agent reports, so a disagreement stops the run instead of
    mixing steps in one generation. Returns the generation's directory.
    """
    gen_dir = generations.generation_dir(run_dir, step)
    if rank == 0:  # rewriting a generation (a resumed run reaching it again): incomplete until rewritten
        (gen_dir / generations.MANIFEST).unlink(missing_ok=True)
    dist.barrier()
    path = generations.agent_file(gen_dir, rank)
    _write(state, path)
    entry = {**generations.describe(path), "step": step}
    entries = [None] * world_size if rank == 0 else None
    dist.gather_object(entry, entries, dst=0)  # returns on rank 0 once every agent's file is written
    if rank == 0:
        steps = sorted({e["step"] for e in entries})
        if len(steps) > 1:
            raise RunError(f"the agents checkpointed at different steps {steps}: {gen_dir} is left incomplete")
        generations.write_manifest(gen_dir, step, [{k: e[k] for k in ("file", "size", "sha256")} for e in entries])
        generations.prune(run_dir)
    return gen_dir


def _write(state: dict, path: Path) -> None:
    """torch.save to a temporary file, fsync, rename: a crash never leaves a half-written file under `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    generations.sync_dir(path.parent)


def load(path: Path) -> dict:
    """Load one agent's file (tensors and plain Python values only)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def load_newest(run_dir: str | Path, rank: int, world_size: int, missing_ok: bool = False) -> tuple[dict | None, int]:
    """(this agent's state, step) from the newest generation that every agent can load; collective.

    Each agent checks its own file (size and sha256 against the manifest, then torch.load); a damaged
    file is reported in one line and every agent moves to the previous complete generation. With
    `missing_ok`, a run without any complete generation gives (None, 0) instead of a RunError.
    """
    box = [[g.step for g in generations.complete(run_dir)] if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)  # rank 0's list: every agent walks the same generations
    if missing_ok and not box[0]:
        return None, 0
    mine = {g.step: g for g in generations.complete(run_dir)}
    tried = []
    for step in box[0]:
        gen, state, problem = mine.get(step), None, None
        path = generations.agent_file(generations.generation_dir(run_dir, step), rank)
        if gen is None:
            problem = "this agent sees no manifest for it (is the run directory on a shared filesystem?)"
        elif gen.num_agents != world_size:
            problem = f"its generation was written by {gen.num_agents} agents, this run has {world_size}"
        else:
            problem = generations.verify(gen, rank)
            if problem is None:
                try:
                    state = load(path)
                except Exception as error:  # truncated zip, unpickling error: the file is unusable
                    problem = f"torch.load failed: {_first_line(error)}"
        if problem:
            print(f"dqt: checkpoint {path} is unusable ({problem}); resuming from the previous complete "
                  "generation", file=sys.stderr, flush=True)
        tried.append(path.parent.name)
        if _everyone(problem is None):
            if rank == 0:  # the newer generations were rejected: a later resume must not pick them up
                for newer in generations.complete(run_dir):
                    if newer.step > step:
                        generations.abandon(newer)
            return state, step
    raise RunError(f"cannot resume: no checkpoint generation in {Path(run_dir) / generations.CHECKPOINT_DIR} is "
                   f"usable by all {world_size} agents (tried: {', '.join(tried) or 'none'})", every_agent=True)


def _everyone(flag: bool) -> bool:
    value = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


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
