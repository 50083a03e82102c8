"""Tests of dqt.config: bad values through the real entry point, and `validate` on hydra-composed configs.

The entry-point table runs `python -m dqt.train` (what `dqt-train` calls) in a subprocess per row: each
one imports torch and MetaWorld (a few seconds), so the table stays at about twenty rows.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from dqt.config import ConfigError, validate

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT")

# (overrides, how the one-line message starts after "dqt: ")
BAD = [
    (["num_agents=0"], "num_agents=0 is not allowed"),
    (["num_agents=abc"], "num_agents='abc' is not allowed"),
    (["train_steps=0"], "train_steps=0 is not allowed"),
    (["eval_episodes=0"], "eval_episodes=0 is not allowed"),
    (["demos=-1"], "demos=-1 is not allowed"),
    (["seed_steps=-1"], "seed_steps=-1 is not allowed"),
    (["bins=1"], "bins=1 is not allowed"),
    (["discount=0"], "discount=0 is not allowed"),
    (["discount=1.5"], "discount=1.5 is not allowed"),
    (["lr=-1"], "lr=-1 is not allowed"),
    (["task=mw-nonexistent"], "task='mw-nonexistent' is not allowed"),
    (["task=gym:Pendulum-v1", "demos=3"], "demos=3 is not allowed"),
    (["aggregation=bogus"], "aggregation='bogus' is not allowed"),
    (["aggregation_trim=0.5"], "aggregation_trim=0.5 is not allowed"),
    (["faults.kind=bogus"], "faults.kind='bogus' is not allowed"),
    (["faults.agents=[5]", "num_agents=2"], "faults.agents=[5] is not allowed"),
    (["wandb.mode=bogus"], "wandb.mode='bogus' is not allowed"),
    (["explore.kind=bogus"], "explore.kind='bogus' is not allowed"),
    (["model.dim=128", "model.heads=3"], "model.heads=3 is not allowed"),
    (["resume=true"], "resume=true is not allowed"),  # the run directory is empty: no checkpoints
    (["lr_scale=log_n"], "lr_scale='log_n' is not allowed with num_agents=1"),  # lr * ln 1 = 0
]


# Put first so that a row's own override wins (hydra applies overrides in order). Besides keeping wandb
# off, they shrink the run so that a bad value dqt wrongly accepts ends in a short run, not a long one.
GUARDS = ["wandb.mode=disabled", "num_agents=1", "train_steps=1", "seed_steps=0", "demos=0", "eval_episodes=1"]


def _run_train(overrides: list[str], run_dir: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}
    command = [sys.executable, "-m", "dqt.train", f"hydra.run.dir={run_dir}", *GUARDS, *overrides]
    return subprocess.run(command, cwd=run_dir.parent, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("overrides, message", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_value_is_one_line_naming_the_key(overrides, message, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    result = _run_train(overrides, run_dir)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines, "nothing on stderr"
    assert lines[-1].startswith(f"dqt: {message}"), result.stderr
    assert sum(line.startswith("dqt:") for line in lines) == 1, result.stderr
    if overrides == ["task=mw-nonexistent"]:
        assert "door-unlock" in lines[-1]
    assert not (run_dir / "checkpoints").exists()


# --------------------------------------------------------------------------------------------------
# validate() on configs composed the way hydra composes them for dqt-train


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_defaults_validate_with_two_agents():
    cfg = validate(_compose())
    assert isinstance(cfg, dict)
    assert cfg["num_agents"] == 2
    assert cfg["faults"]["agents"] == []


def test_unset_num_agents_follows_torchrun_world_size():
    assert validate(_compose("demos=0"), world_size=3)["num_agents"] == 3
    assert validate(_compose("demos=0", "num_agents=3"), world_size=3)["num_agents"] == 3


def test_num_agents_must_match_torchrun_world_size():
    with pytest.raises(ConfigError, match="num_agents=2") as error:
        validate(_compose("num_agents=2"), world_size=3)
    assert "3" in str(error.value)


@pytest.mark.parametrize("overrides, message", [
    (["lr=true"], "lr=true is not allowed"),  # booleans are not numbers
    (["bins=[4,8]"], "bins=[4, 8] is not allowed"),
    (["train_steps=1000", "seed_steps=1001"], "seed_steps=1001 is not allowed"),
    (["faults.agents=[0,0]"], "faults.agents=[0, 0] is not allowed"),
    (["reward_scale=0"], "reward_scale=0 is not allowed"),
    (["noise.std=-1"], "noise.std=-1 is not allowed: expected a number >= 0"),
    (["noise.mean=nan"], "noise.mean=nan is not allowed: expected a number"),
    (["noise.reads=0"], "noise.reads=0 is not allowed: expected an integer >= 1"),
    (["noise.reads=1.5"], "noise.reads=1.5 is not allowed"),
    (["noise.reduce=mode"], "noise.reduce='mode' is not allowed: expected one of median, mean"),
    (["noise.agents=some"], "noise.agents='some' is not allowed: expected all or a list of distinct ranks"),
    (["noise.agents=[1,1]"], "noise.agents=[1, 1] is not allowed"),
    (["num_agents=2", "noise.agents=[2]"], "noise.agents=[2] is not allowed: expected ranks below num_agents=2"),
    (["lr_schedule=cosine"], "lr_schedule='cosine' is not allowed: expected one of constant, linear, log, log_linear"),
    (["lr_scale=inv"], "lr_scale='inv' is not allowed: expected one of none, inv_n, log_n, sqrt_n"),
    (["num_agents=1", "lr_scale=log_n"], "lr_scale='log_n' is not allowed with num_agents=1"),
    (["lr_plateau.factor=1"], "lr_plateau.factor=1 is not allowed: expected a number > 0, < 1"),
    (["lr_plateau.patience=-1"], "lr_plateau.patience=-1 is not allowed: expected an integer >= 0"),
    (["wandb.tags=[scaling,7]"], "wandb.tags=['scaling', 7] is not allowed"),
    (["wandb.tags=scaling"], "wandb.tags='scaling' is not allowed"),
])
def test_validate_rejects(overrides, message):
    with pytest.raises(ConfigError) as error:
        validate(_compose(*overrides))
    assert str(error.value).startswith(message)
    assert "\n" not in str(error.value)


def test_discount_one_with_auto_reward_scale_is_rejected():
    # reward_scale=auto is (1 - discount) / max reward: 0 at discount=1, so every stored reward would be 0.
    with pytest.raises(ConfigError) as error:
        validate(_compose("reward_scale=auto", "discount=1"))
    assert "discount=1" in str(error.value)


def test_wandb_tags_are_a_list_of_strings():
    assert validate(_compose())["wandb"]["tags"] == []
    assert validate(_compose("wandb.tags=[scaling,cpu]"))["wandb"]["tags"] == ["scaling", "cpu"]


def test_num_agents_explicit_outside_torchrun():
    cfg = validate(_compose("num_agents=3", "faults.agents=[2]", "aggregation=median"))
    assert cfg["num_agents"] == 3 and cfg["faults"]["agents"] == [2] and cfg["aggregation"] == "median"


def test_noise_keys_accept_their_forms():
    cfg = validate(_compose("num_agents=2", "noise.agents=[1]", "noise.std=10", "noise.reads=5", "noise.reduce=mean"))
    assert cfg["noise"] == {"mean": 0, "std": 10, "agents": [1], "reads": 5, "reduce": "mean"}
    assert validate(_compose())["noise"]["agents"] == "all"


def test_lr_keys_accept_their_forms():
    cfg = validate(_compose("num_agents=2", "lr_schedule=plateau", "lr_scale=log_n", "lr_plateau.factor=0.1",
                            "lr_plateau.patience=0"))
    assert (cfg["lr_schedule"], cfg["lr_scale"], cfg["lr_plateau"]) == ("plateau", "log_n", {"factor": 0.1, "patience": 0})
    assert validate(_compose())["lr_scale"] == "none"
