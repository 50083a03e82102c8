"""Elastic restarts (max_restarts): a job whose agent is killed continues from its last complete checkpoint
generation with each step once in metrics.jsonl; a job stopped by a RunError is not retried; agents whose launcher
is killed stop with it."""
from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from pathlib import Path

import pytest

from conftest import newest_checkpoint, run_train, start_train, wait_for_generation
from dqt import generations
from dqt.logger import read_metrics

pytestmark = pytest.mark.slow

TOY = ("demos=0", "episode_length=1", "action_repeat=1", "bins=8", "num_envs=4", "seed_steps=40", "batch_size=16",
       "replay_size=1000", "updates_per_step=0.25", "model.dim=16", "model.depth=1", "model.heads=2",
       "eval_every=100", "eval_episodes=8", "log_every=100", "checkpoint_every=100", "threads=1", "progress=false",
       "wandb.mode=disabled", "num_agents=2")


def _stat(proc: Path) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (state, parent pid, ...); the name may hold spaces."""
    return (proc / "stat").read_text().rsplit(")", 1)[1].split()


def agent_pids(launcher: int) -> list[int]:
    """The agents process `launcher` runs: its children in dqt.train (torchrun) or in multiprocessing's
    spawn_main (dqt-train's elastic launcher, whose other child is multiprocessing's resource tracker)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            parent = int(_stat(proc)[1])
            command = (proc / "cmdline").read_bytes()
            if parent == launcher and (b"spawn_main" in command or b"dqt.train" in command):
                pids.append(int(proc.name))
        except (OSError, ValueError, IndexError):  # not a process, or one that has just exited
            pass
    return sorted(pids)


# dqt-train's own launcher, and torchrun, which runs dqt.train again in each restarted agent
TORCHRUN = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max_restarts=1")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the agents in /proc")
@pytest.mark.parametrize("launcher", [(), TORCHRUN], ids=["dqt-train", "torchrun"])
def test_a_killed_agent_is_restarted_from_the_last_complete_generation(tmp_path, launcher):
    run_dir, train_steps = tmp_path / "run", 500
    # 2 ms per env step: the run outlasts the moment of the kill on any machine
    job = start_train(*TOY, "task=gym:toy_env:SlowCombo-v0", "max_restarts=1", f"train_steps={train_steps}",
                      f"hydra.run.dir={run_dir}", stderr=tmp_path / "stderr", launcher=launcher,
                      env={"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1", "OMP_NUM_THREADS": "1"})
    try:
        wait_for_generation(job, run_dir, 100, tmp_path / "stderr")
        os.kill(agent_pids(job.pid)[0], signal.SIGKILL)
        # no generation completes once an agent is gone: this is the newest the restart can find
        newest = generations.complete(run_dir)[0].step
        assert job.wait(timeout=300) == 0, (tmp_path / "stderr").read_text()[-3000:]
    finally:
        if job.poll() is None:  # a failed test leaves no agent behind
            for pid in agent_pids(job.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            job.kill()
            job.wait()
    stderr = (tmp_path / "stderr").read_text()

    resumed = re.findall(r"dqt: restart 1: resuming from step (\d+)", stderr)
    assert resumed == [str(newest)] and newest < train_steps, stderr[-3000:]  # at most one interval repeated
    rows = read_metrics(run_dir)
    every = list(range(100, train_steps + 1, 100))
    assert [r["env_steps"] for r in rows if "eval/return" in r] == every  # each step once, up to the end
    assert [r["env_steps"] for r in rows if "train/loss" in r] == every
    assert (run_dir / "learning_curve.png").exists()
    for rank in (0, 1):  # the counters carried on as if uninterrupted
        final = newest_checkpoint(run_dir, rank)
        assert final["counters"]["env_steps"] == train_steps
        assert final["learner"]["updates"] == (train_steps - 40) * 0.25
        assert final["replay"]["transitions_added"] == train_steps


def test_a_run_error_is_not_retried(tmp_path):
    # agent 1's env returns NaN at its step 5: every restart would meet it again, and say so again
    result = run_train(*TOY, "task=gym:toy_env:NaNRewardAgent1-v0", "max_restarts=1", "train_steps=100",
                       f"hydra.run.dir={tmp_path}")
    assert result.returncode == 3, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "returned reward=nan" in lines[0], result.stderr  # said once, by the first attempt
    assert "returned reward=nan" in (tmp_path / "STOPPED").read_text()


def _running(pid: int) -> bool:
    """Whether process `pid` exists and has not exited (a zombie waits only to be reaped)."""
    try:
        return _stat(Path(f"/proc/{pid}"))[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the agents in /proc")
def test_agents_stop_when_their_launcher_alone_is_killed(tmp_path):
    # kill -9 of the launcher's pid only (an OOM kill, a supervisor that signals one pid): an agent left running
    # would go on writing into the run directory, beside the run that resumes it
    run_dir = tmp_path / "run"
    job = start_train(*TOY, "task=gym:toy_env:SlowCombo-v0", "train_steps=500", f"hydra.run.dir={run_dir}",
                      stderr=tmp_path / "stderr", new_session=True, env={"OMP_NUM_THREADS": "1"})
    try:
        wait_for_generation(job, run_dir, 100, tmp_path / "stderr")
        agents = agent_pids(job.pid)
        assert len(agents) == 2, (tmp_path / "stderr").read_text()[-3000:]
        job.kill()
        job.wait()
        deadline = time.monotonic() + 60
        while any(_running(pid) for pid in agents) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_running(pid) for pid in agents), (tmp_path / "stderr").read_text()[-3000:]
        # 2 ms per env step: the run outlasts the kill on any machine, so agents that went on would reach 500
        assert generations.complete(run_dir)[0].step < 500
    finally:  # a failed test leaves no process behind
        with contextlib.suppress(ProcessLookupError):
            os.killpg(job.pid, signal.SIGKILL)
        job.wait()
