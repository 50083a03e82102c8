"""Checkpoint generations: complete only with a manifest, the last two kept, damaged files detected and
the previous generation used, every agent resuming from the same one."""
from __future__ import annotations

import json

import pytest
import torch
import torch.distributed as dist

from conftest import run_train
from dqt import checkpoint, generations
from dqt.errors import ConfigError, RunError
from dqt.train import check_run_dir, finished_at


@pytest.fixture
def group():
    """A process group of one, as a single in-process agent has."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _save(run_dir, step):
    return checkpoint.save({"step": step, "weights": torch.full((1000,), float(step))}, run_dir, step, 0, 1)


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_bytes(path):
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 8):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _not_a_checkpoint(path):
    # size and sha256 match (the manifest is rewritten), but torch.load cannot read it
    path.write_bytes(b"not a zip archive" * 10)
    manifest = json.loads((path.parent / generations.MANIFEST).read_text())
    manifest["files"][0] = generations.describe(path)
    (path.parent / generations.MANIFEST).write_text(json.dumps(manifest))


def test_a_generation_is_written_with_a_manifest_and_only_the_last_two_are_kept(tmp_path, group):
    for step in (100, 200, 300):
        _save(tmp_path, step)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_000000200", "step_000000300"]
    manifest = json.loads((tmp_path / "checkpoints" / "step_000000300" / "MANIFEST.json").read_text())
    agent0 = tmp_path / "checkpoints" / "step_000000300" / "agent0.pt"
    assert manifest["step"] == 300 and manifest["num_agents"] == 1
    assert manifest["files"] == [generations.describe(agent0)]  # file, size, sha256
    state, step = checkpoint.load_newest(tmp_path, 0, 1)
    assert step == 300 and state["step"] == 300


def test_a_generation_without_manifest_is_ignored(tmp_path, group, capfd):
    _save(tmp_path, 100)
    _save(tmp_path, 200)
    (tmp_path / "checkpoints" / "step_000000200" / "MANIFEST.json").unlink()  # as if the run died writing it
    assert [g.step for g in generations.complete(tmp_path)] == [100]
    state, step = checkpoint.load_newest(tmp_path, 0, 1)
    assert step == 100 and state["step"] == 100
    assert capfd.readouterr().err == ""  # an unfinished generation is not an error
    _save(tmp_path, 300)  # an unfinished generation older than the newest complete one is deleted
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_000000100", "step_000000300"]


@pytest.mark.parametrize("damage", [_truncate, _flip_bytes, _not_a_checkpoint])
def test_a_damaged_newest_file_is_reported_in_one_line_and_the_previous_generation_used(tmp_path, group, capfd,
                                                                                       damage):
    _save(tmp_path, 100)
    _save(tmp_path, 200)
    damaged = tmp_path / "checkpoints" / "step_000000200" / "agent0.pt"
    damage(damaged)
    state, step = checkpoint.load_newest(tmp_path, 0, 1)
    assert step == 100 and state["step"] == 100
    lines = capfd.readouterr().err.splitlines()
    assert len(lines) == 1 and str(damaged) in lines[0] and "unusable" in lines[0], lines
    # the rejected generation is no longer complete: a later resume does not try it again
    assert [g.step for g in generations.complete(tmp_path)] == [100]


def test_an_elastic_restart_without_a_complete_generation_starts_over(tmp_path, group):
    assert checkpoint.load_newest(tmp_path, 0, 1, missing_ok=True) == (None, 0)
    with pytest.raises(RunError, match=r"no checkpoint generation .* \(tried: none\)"):  # resume=true needs one
        checkpoint.load_newest(tmp_path, 0, 1)


def test_no_usable_generation_is_one_error(tmp_path, group, capfd):
    _save(tmp_path, 100)
    _truncate(tmp_path / "checkpoints" / "step_000000100" / "agent0.pt")
    with pytest.raises(RunError, match="no checkpoint generation .* is usable by all 1 agents .*step_000000100"):
        checkpoint.load_newest(tmp_path, 0, 1)


def test_check_run_dir_follows_the_generations(tmp_path, group):
    with pytest.raises(ConfigError, match="resume=true is not allowed: .* no complete checkpoint generation"):
        check_run_dir({"resume": True, "num_agents": 1}, str(tmp_path))
    _save(tmp_path, 100)
    check_run_dir({"resume": True, "num_agents": 1}, str(tmp_path))
    with pytest.raises(ConfigError, match="resume=true is not allowed with num_agents=2: .* written by 1 agents"):
        check_run_dir({"resume": True, "num_agents": 2}, str(tmp_path))
    with pytest.raises(ConfigError, match="resume=false is not allowed"):
        check_run_dir({"resume": False, "num_agents": 1}, str(tmp_path))
    (tmp_path / "checkpoints" / "step_000000100" / "MANIFEST.json").unlink()
    with pytest.raises(ConfigError, match="resume=true is not allowed"):  # only an unfinished generation
        check_run_dir({"resume": True, "num_agents": 1}, str(tmp_path))
    with pytest.raises(ConfigError, match="resume=false is not allowed"):  # ... which is still not overwritten
        check_run_dir({"resume": False, "num_agents": 1}, str(tmp_path))


def test_resume_auto_continues_a_complete_generation_and_knows_a_finished_run(tmp_path, group):
    auto = {"resume": "auto", "num_agents": 1, "train_steps": 200}
    check_run_dir(auto, str(tmp_path))  # nothing there: a new run
    assert finished_at(auto, str(tmp_path)) is None
    _save(tmp_path, 100)
    check_run_dir(auto, str(tmp_path))  # a generation before train_steps: continue it
    assert finished_at(auto, str(tmp_path)) is None
    with pytest.raises(ConfigError, match="resume=auto is not allowed with num_agents=2: .* written by 1 agents"):
        check_run_dir({**auto, "num_agents": 2}, str(tmp_path))
    _save(tmp_path, 200)
    assert finished_at(auto, str(tmp_path)) == 200
    (tmp_path / "checkpoints" / "step_000000200" / "MANIFEST.json").unlink()  # cut off while writing it
    assert finished_at(auto, str(tmp_path)) is None


TOY = ("task=gym:toy_env:Combo-v0", "demos=0", "episode_length=1", "action_repeat=1", "bins=8", "num_envs=4",
       "seed_steps=40", "updates_per_step=0.25", "batch_size=16", "replay_size=1000", "model.dim=16",
       "model.depth=1", "model.heads=2",
       "pretrain_updates=10", "eval_every=100", "eval_episodes=8", "log_every=100", "checkpoint_every=100",
       "threads=1", "progress=false", "wandb.mode=disabled")


@pytest.mark.slow
def test_two_agents_resume_together_from_the_previous_generation_when_one_file_is_damaged(tmp_path):
    first = run_train(*TOY, "num_agents=2", "train_steps=200", f"hydra.run.dir={tmp_path}")
    assert first.returncode == 0, first.stderr[-3000:]
    assert [g.step for g in generations.complete(tmp_path)] == [200, 100]
    damaged = tmp_path / "checkpoints" / "step_000000200" / "agent1.pt"
    _flip_bytes(damaged)

    resumed = run_train(*TOY, "num_agents=2", "train_steps=300", "resume=true", f"hydra.run.dir={tmp_path}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    lines = [line for line in resumed.stderr.splitlines() if "unusable" in line]
    assert len(lines) == 1 and str(damaged) in lines[0], resumed.stderr
    assert "Traceback" not in resumed.stderr
    # both agents went back to step 100: the resumed part evaluates at 200 again, which replaces the first row
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["env_steps"] for r in rows if "eval/return" in r] == [100, 200, 300]
    assert [g.step for g in generations.complete(tmp_path)] == [300, 200]
    for rank in (0, 1):
        assert generations.verify(generations.complete(tmp_path)[1], rank) is None  # step 200 was rewritten
