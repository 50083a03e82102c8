"""dqt-bench policy's refusals (its replay is checked on real runs in test_learning and test_exact_resume)."""
from __future__ import annotations

import pytest

from dqt.bench import policy


@pytest.mark.parametrize("args, message", [
    (lambda d: [str(d)], lambda d: f"run_dir={d} is not allowed: no .hydra/config.yaml there (expected a dqt run directory)"),
    (lambda d: [str(d), "--top", "0"], lambda d: "--top=0 is not allowed: expected an integer >= 1"),
])
def test_refused_in_one_line_with_exit_2(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        policy.main(args(tmp_path))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"dqt-bench policy: {message(tmp_path)}"


def test_a_run_without_checkpoints_is_refused(tmp_path, capsys):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("task: gym:InvertedPendulum-v5\nnum_agents: 1\ndemos: 0\n")
    with pytest.raises(SystemExit) as exit_info:
        policy.main([str(tmp_path)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"dqt-bench policy: run_dir={tmp_path} is not allowed: it has no complete checkpoint generation "
        "(checkpoints/ is not committed with results: run it again to get one)")


def test_a_run_saved_before_a_key_existed_gets_the_value_it_ran_with(tmp_path):
    # a gym: run from before model.critics, n_step_bound and target_clip ran one network without the bound or the
    # clip, whatever auto is now
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("task: gym:Pendulum-v1\nnum_agents: 1\ndemos: 0\n"
                                                      "model:\n  dim: 32\n")
    cfg = policy.run_config(tmp_path)
    assert (cfg["model"]["critics"], cfg["n_step_bound"], cfg["target_clip"], cfg["model"]["dim"]) == (1, False, False, 32)
    assert cfg["model"]["levels"] == 1  # before model.levels: one token per dimension
    (tmp_path / ".hydra" / "config.yaml").write_text("task: gym:Pendulum-v1\nnum_agents: 1\ndemos: 0\n"
                                                      "n_step_bound: auto\ntarget_clip: auto\nmodel:\n  critics: auto\n")
    cfg = policy.run_config(tmp_path)
    assert (cfg["model"]["critics"], cfg["n_step_bound"], cfg["target_clip"]) == (2, True, True)  # saved keys are kept
