"""End-to-end learning through the public entry point."""
from __future__ import annotations

import json

import pytest

from conftest import run_train
from dqt.bench import policy

pytestmark = pytest.mark.slow


def test_toy_env_needing_joint_dimensions_is_learned(tmp_path, capsys):
    result = run_train(
        "task=gym:toy_env:Combo-v0", "num_agents=1", "demos=0", "bins=4", "episode_length=1", "action_repeat=1",
        "num_envs=8", "train_steps=2400", "seed_steps=200", "pretrain_updates=0", "updates_per_step=0.5", "batch_size=128",
        "model.dim=32", "model.depth=1", "model.heads=2", "discount=0.9", "conservative_weight=0.5", "conservative_rows=all", "lr_schedule=constant",
        "explore.kind=eps", "explore.eps=0.3", "eval_every=1200", "eval_episodes=200", "checkpoint_every=100000",
        # 1,100 updates in all: evaluate the online net, as the default average (a horizon of 2,000 updates)
        # would still be mostly early weights (README: Why eval_ema)
        "eval_ema=0", "wandb.mode=disabled", "progress=false", f"hydra.run.dir={tmp_path}",
        # 1,100 updates need MetaWorld's rate: at the `gym:` auto 3e-4 this toy was at 0.56 at the end, with 1e-3 at 1.00
        "lr=0.001", "model.critics=1",
        "threads=1",  # two intra-op threads on a core that another process holds ran it 10x slower (timed out)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/success_rate" in r]
    assert evals[-1]["env_steps"] == 2400
    assert evals[-1]["eval/episodes"] == 200
    assert evals[-1]["eval/success_rate"] >= 0.95, evals
    assert (tmp_path / "learning_curve.png").exists()
    assert (tmp_path / ".hydra" / "config.yaml").exists()

    # dqt-bench policy: the final checkpoint's greedy policy, replayed (exactness: tests/test_exact_resume.py)
    report = policy.replay(tmp_path)
    assert report["step"] == 2400 and [e["episode"] for e in report["episodes"]] == list(range(200))
    assert sum(e["success"] for e in report["episodes"]) / 200 == pytest.approx(evals[-1]["eval/success_rate"], abs=1e-12)
    assert all(len(e["bins"]) == 1 for e in report["episodes"])  # Combo's episodes are one step long
    assert sum(share for _, share in report["actions"]) == pytest.approx(1.0)
    assert len(report["actions"]) >= 4  # four contexts, each with its own chain of quarters: one action cannot do

    # a damaged checkpoint is refused in one line, exit 3
    agent_file = tmp_path / "checkpoints" / "step_000002400" / "agent0.pt"
    agent_file.write_bytes(agent_file.read_bytes()[:1000])
    with pytest.raises(SystemExit) as exit_info:
        policy.main([str(tmp_path)])
    assert exit_info.value.code == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"dqt-bench policy: checkpoint {agent_file} is unusable: 1000 bytes"), err
