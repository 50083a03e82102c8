"""metrics.jsonl holds each step once when a run resumes; wandb without network: an online run falls back to
an offline wandb run at once, and says so once."""
from __future__ import annotations

import json
import socket
import time

import pytest

from conftest import run_train
from dqt.logger import Logger, read_metrics, unreachable

TOY = ("task=gym:toy_env:Combo-v0", "num_agents=1", "demos=0", "episode_length=1", "action_repeat=1", "bins=8",
       "num_envs=4", "seed_steps=40", "batch_size=16", "replay_size=1000", "model.dim=16", "model.depth=1",
       "model.heads=2", "pretrain_updates=10", "eval_every=100", "eval_episodes=8", "log_every=100",
       "checkpoint_every=100", "threads=1", "progress=false", "train_steps=100")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def test_a_resumed_run_drops_the_rows_it_will_log_again_and_a_line_cut_short(tmp_path):
    rows = [{"env_steps": step, kind: 0.5} for step in (100, 200, 300) for kind in ("eval/return", "train/loss")]
    cut = '{"env_steps": 400, "eval/ret'  # the last line of an agent killed while writing it
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + cut)
    logger = Logger(str(tmp_path), {"wandb": {"mode": "disabled"}, "progress": False}, True, 400, initial_steps=200)
    logger.log({"env_steps": 300, "eval/return": 1.0})
    logger.file.close()
    assert read_metrics(tmp_path) == rows[:4] + [{"env_steps": 300, "eval/return": 1.0}]
    Logger(str(tmp_path), {"wandb": {"mode": "disabled"}, "progress": False}, True, 400).file.close()
    assert read_metrics(tmp_path) == []  # a run that starts over
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]  # no temporary file left


def test_probe_reports_a_closed_port_and_an_unknown_host_quickly():
    start = time.monotonic()
    assert unreachable(f"http://127.0.0.1:{_closed_port()}", 3.0)
    assert unreachable("https://no-such-host.invalid", 3.0)
    assert time.monotonic() - start < 6.5


@pytest.mark.slow
def test_wandb_online_without_network_trains_on_offline_wandb_and_says_so_once(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}"
    start = time.monotonic()
    result = run_train(*TOY, "wandb.mode=online", f"hydra.run.dir={tmp_path}",
                       env={"WANDB_MODE": None, "WANDB_API_KEY": None, "WANDB_BASE_URL": url})
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("dqt: run directory")]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"dqt: wandb is unavailable ({url}: Connection refused)"), lines[0]
    assert "wandb sync" in lines[0] and "metrics.jsonl" in lines[0]
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 2  # the eval and the train row at step 100
    assert elapsed < 30
