"""Checkpoint generations on disk: layout, manifests, verification and pruning.

    <run>/checkpoints/step_000010000/agent0.pt ... agent<N-1>.pt, MANIFEST.json

A generation is complete only when its MANIFEST.json exists: rank 0 writes it last, after every agent's
file is on disk, with each file's size and sha256. A directory without a manifest is a generation that
was being written when the run stopped, and is ignored. Standard library only, so that dqt-train checks
a run directory before it imports torch.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

CHECKPOINT_DIR = "checkpoints"
MANIFEST = "MANIFEST.json"
KEEP = 2  # complete generations kept: the newest, and the one before it in case the newest is damaged
_STEP_DIR = re.compile(r"step_(\d+)$")


@dataclass(frozen=True)
class Generation:
    """One complete generation: the agents' files as its manifest lists them."""

    step: int
    path: Path
    files: list[dict]  # per rank: {"file", "size", "sha256"}

    @property
    def num_agents(self) -> int:
        return len(self.files)

    def agent_file(self, rank: int) -> Path:
        return self.path / self.files[rank]["file"]


def generation_dir(run_dir: str | Path, step: int) -> Path:
    """Directory of the generation written at `step` env steps per agent."""
    return Path(run_dir) / CHECKPOINT_DIR / f"step_{step:09d}"


def agent_file(gen_dir: Path, rank: int) -> Path:
    """Agent `rank`'s file in a generation directory."""
    return gen_dir / f"agent{rank}.pt"


def describe(path: Path) -> dict:
    """The manifest entry of a written file: name, size and sha256."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"file": path.name, "size": path.stat().st_size, "sha256": digest.hexdigest()}


def write_manifest(gen_dir: Path, step: int, files: list[dict]) -> None:
    """Mark a generation complete (atomically: temporary file, fsync, rename, fsync the directory)."""
    tmp = gen_dir / f".{MANIFEST}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump({"step": step, "num_agents": len(files), "files": files}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, gen_dir / MANIFEST)
    sync_dir(gen_dir)


def sync_dir(path: Path) -> None:
    """fsync a directory, so that renames inside it survive a crash of the machine."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read(gen_dir: Path, step: int) -> Generation | None:
    try:
        manifest = json.loads((gen_dir / MANIFEST).read_text())
        files = manifest["files"]
        if manifest["step"] != step or not all({"file", "size", "sha256"} <= set(f) for f in files):
            return None
    except (OSError, ValueError, KeyError, TypeError):  # missing or damaged manifest: not complete
        return None
    return Generation(step, gen_dir, files)


def _step_dirs(run_dir: str | Path) -> list[tuple[int, Path]]:
    root = Path(run_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return sorted(found, reverse=True)


def complete(run_dir: str | Path) -> list[Generation]:
    """The run's complete generations, newest first."""
    return [g for step, path in _step_dirs(run_dir) if (g := _read(path, step)) is not None]


def verify(generation: Generation, rank: int) -> str | None:
    """Why agent `rank`'s file does not match the manifest (missing, size, sha256), or None if it does."""
    entry = generation.files[rank]
    path = generation.agent_file(rank)
    try:
        size = path.stat().st_size
    except OSError as error:
        return f"cannot read it: {error.strerror}"
    if size != entry["size"]:
        return f"{size} bytes, the manifest says {entry['size']}"
    if describe(path)["sha256"] != entry["sha256"]:
        return "its sha256 differs from the manifest's"
    return None


def holds_checkpoints(run_dir: str | Path) -> bool:
    """True when the run directory holds any checkpoint (a generation, complete or not, or an old-layout file)."""
    root = Path(run_dir) / CHECKPOINT_DIR
    return bool(_step_dirs(run_dir)) or any(root.glob("agent*.pt"))


def prune(run_dir: str | Path, keep: int = KEEP) -> None:
    """Delete all but the newest `keep` complete generations, and unfinished ones older than the newest."""
    kept = complete(run_dir)[:keep]
    if not kept:
        return
    keep_dirs = {g.path for g in kept}
    for step, path in _step_dirs(run_dir):
        # an unfinished generation newer than the newest complete one is left alone: rewriting it is
        # how a run resumed from an older generation gets there again
        if path not in keep_dirs and step < kept[0].step:
            shutil.rmtree(path, ignore_errors=True)


def abandon(generation: Generation) -> None:
    """Make a complete generation incomplete (remove its manifest): a resumed run has left its history."""
    (generation.path / MANIFEST).unlink(missing_ok=True)
