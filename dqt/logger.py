"""Rank 0's outputs: metrics.jsonl (the metrics stream), wandb, the progress bar and the learning curve."""
from __future__ import annotations

import json
import math
import os
import socket
import sys
import threading
import urllib.parse
from pathlib import Path

METRICS_FILE = "metrics.jsonl"
CURVE_FILE = "learning_curve.png"


def read_metrics(run_dir: str | Path) -> list[dict]:
    """All rows of a run's metrics.jsonl."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def drop_rows_after(run_dir: str | Path, env_steps: int) -> None:
    """Keep only metrics.jsonl's rows up to `env_steps` (a run resumed or restarted from there logs the later
    steps again), and no line cut short by a killed process; the file is replaced atomically."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["env_steps"] <= env_steps:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            pass
    tmp = path.with_name(f".{METRICS_FILE}.tmp{os.getpid()}")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)


def plot_learning_curve(run_dir: str | Path) -> Path | None:
    """Write learning_curve.png (eval success rate and return against env steps per agent)."""
    rows = [r for r in read_metrics(run_dir) if "eval/return" in r]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["env_steps"] for r in rows]
    has_success = any("eval/success_rate" in r for r in rows)
    fig, axes = plt.subplots(1, 2 if has_success else 1, figsize=(10 if has_success else 5, 3.5), squeeze=False)
    axes = axes[0]
    if has_success:
        axes[0].plot(steps, [r.get("eval/success_rate", math.nan) for r in rows], marker="o")
        axes[0].set_ylim(-0.02, 1.02)
        axes[0].set_ylabel("eval success rate")
    axes[-1].plot(steps, [r["eval/return"] for r in rows], marker="o", color="tab:orange")
    axes[-1].set_ylabel("eval return")
    for ax in axes:
        ax.set_xlabel("env steps per agent")
        ax.grid(alpha=0.3)
    fig.suptitle(Path(run_dir).name)
    fig.tight_layout()
    out = Path(run_dir) / CURVE_FILE
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


class Logger:
    """Writes rows on rank 0 only; other ranks get a Logger that does nothing. A run starting at
    `initial_steps` (0, or the step it resumes from) first drops metrics.jsonl's rows after that step."""

    def __init__(self, run_dir: str, cfg: dict, enabled: bool, total_steps: int, initial_steps: int = 0):
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self.wandb = None
        self.bar = None
        if not enabled:
            return
        drop_rows_after(self.run_dir, initial_steps)  # each step once, whether the run starts over or resumes
        self.file = open(self.run_dir / METRICS_FILE, "a", buffering=1)
        if cfg["wandb"]["mode"] != "disabled":
            self.wandb = _start_wandb(cfg, self.run_dir)
        if cfg["progress"]:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=initial_steps, unit="step", dynamic_ncols=True,
                            file=sys.stderr, mininterval=1.0)

    def log(self, row: dict) -> None:
        """Append one row to metrics.jsonl and send it to wandb."""
        if not self.enabled:
            return
        self.file.write(json.dumps(row) + "\n")
        if self.wandb is not None:
            try:
                self.wandb.log(row, step=row["env_steps"])
            except Exception as error:  # a dashboard must never stop training
                print(f"dqt: wandb logging failed, continuing without it: {error}", file=sys.stderr)
                self.wandb = None

    def progress(self, env_steps: int, refresh: bool = False, **postfix) -> None:
        """Move the progress bar to `env_steps` and show `postfix`; `refresh` redraws it now, for a bar
        whose step count is not moving (tqdm otherwise redraws only when steps are added)."""
        if self.bar is not None:
            self.bar.update(env_steps - self.bar.n)
            self.bar.set_postfix(postfix, refresh=refresh)

    def close(self) -> None:
        """Flush, finish wandb and draw the learning curve."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        self.file.close()
        plot_learning_curve(self.run_dir)
        if self.wandb is not None:
            try:
                self.wandb.finish()
            except Exception:
                pass


WANDB_PROBE_TIMEOUT_S = 3.0


def _start_wandb(cfg: dict, run_dir: Path):
    """wandb.init in the configured mode; never blocks or stops training.

    Online, the wandb server is probed first (a TCP connect of at most 3 s): without it the run logs to
    an offline wandb run at once, which `wandb sync` uploads later, instead of waiting for wandb.init to
    time out. Any other failure leaves metrics.jsonl as the only record.
    """
    mode = cfg["wandb"]["mode"]
    offline = (f"logging to an offline wandb run instead (upload it later: wandb sync {run_dir}/wandb/offline-run-*); "
               "metrics.jsonl has every row")
    try:
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        if mode == "online":
            url = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
            problem = unreachable(url, WANDB_PROBE_TIMEOUT_S)
            if problem:
                print(f"dqt: wandb is unavailable ({url}: {problem}); {offline}", file=sys.stderr)
                mode = "offline"
        try:
            return _init_wandb(wandb, cfg, run_dir, mode)
        except Exception as error:
            if mode != "online":
                raise
            print(f"dqt: wandb.init failed ({_describe(error)}); {offline}", file=sys.stderr)
            return _init_wandb(wandb, cfg, run_dir, "offline")
    except Exception as error:
        print(f"dqt: wandb.init failed ({_describe(error)}); training continues, metrics.jsonl has every row",
              file=sys.stderr)
        return None


def _init_wandb(wandb, cfg: dict, run_dir: Path, mode: str):
    # init_timeout: a server that accepts the probe's connection but does not answer still costs at most 20 s
    return wandb.init(project=cfg["wandb"]["project"], group=cfg["wandb"]["group"], name=cfg["wandb"]["name"],
                      tags=list(cfg["wandb"].get("tags") or []), mode=mode, dir=str(run_dir), config=cfg,
                      settings=wandb.Settings(init_timeout=20, console="off"))


def _describe(error: Exception) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def unreachable(url: str, timeout: float) -> str | None:
    """Why a TCP connection to `url`'s host and port fails within `timeout` seconds (name lookup included),
    or None when it succeeds."""
    parts = urllib.parse.urlsplit(url)
    address = (parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            socket.create_connection(address, timeout=timeout).close()
            outcome.append(None)
        except OSError as error:
            outcome.append(error.strerror or str(error) or type(error).__name__)

    # in a thread: a name lookup has no timeout of its own
    probe = threading.Thread(target=connect, daemon=True)
    probe.start()
    probe.join(timeout)
    return outcome[0] if outcome else f"no connection within {timeout:g} s"
