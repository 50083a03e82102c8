"""Two nodes on one machine: two launch/multinode.sh launchers (one agent each) meet through c10d
rendezvous on 127.0.0.1 and train as one job with one run directory."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, TESTS, newest_checkpoint
from dqt import generations

pytestmark = pytest.mark.slow

TOY = ("task=gym:toy_env:Combo-v0", "demos=0", "episode_length=1", "action_repeat=1", "bins=8", "num_envs=4",
       "seed_steps=40", "batch_size=16", "replay_size=1000", "model.dim=16", "model.depth=1", "model.heads=2",
       "pretrain_updates=10", "eval_every=100", "eval_episodes=8", "log_every=100", "checkpoint_every=100",
       "train_steps=100", "threads=1", "progress=false", "wandb.mode=disabled")
TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_launchers_form_one_job_through_c10d_rendezvous(tmp_path):
    port, run_dir = _free_port(), tmp_path / "run"
    env = {key: value for key, value in os.environ.items() if key not in TORCHRUN_VARS}
    env.update(PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
               PATH=os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]]),  # this venv's torchrun
               NNODES="2", NPROC_PER_NODE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_ADDR="127.0.0.1",
               RDZV_ID=f"test-{port}", RUN_DIR=str(run_dir), OMP_NUM_THREADS="1")
    nodes = [subprocess.Popen(["bash", str(ROOT / "launch" / "multinode.sh"), *TOY], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
             for _ in range(2)]
    try:
        outputs = [node.communicate(timeout=90)[0] for node in nodes]
    finally:
        for node in nodes:  # a launcher and its agents, if the rendezvous or the run hangs
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)
    for node, output in zip(nodes, outputs):
        assert node.returncode == 0, output[-3000:]

    assert [p.name for p in tmp_path.iterdir()] == ["run"]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["env_steps"] == 100 and rows[-1]["total_env_steps"] == 200  # two agents, one stream
    assert "agent1/episode_return" in rows[-1]
    newest = generations.complete(run_dir)[0]
    assert newest.step == 100 and newest.num_agents == 2
    first, second = newest_checkpoint(run_dir, 0), newest_checkpoint(run_dir, 1)
    for name, tensor in first["learner"]["model"].items():
        assert torch.equal(tensor, second["learner"]["model"][name]), name  # one model, trained together
