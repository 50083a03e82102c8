"""The study presets (conf/study/), the defences they sweep (conf/defence/) and the SLURM launcher config.

Every preset composes into a multirun of its grid, and every cell of every grid passes the trainer's
validation with the values the sweep gives it (noise.*, the lr schedules, the defences' aggregations).
"""
from __future__ import annotations

import itertools
import json
import math

import pytest
from hydra import compose, initialize_config_dir
from hydra.types import RunMode
from omegaconf import OmegaConf

from conftest import ROOT, run_train
from test_train import TOY

from dqt import report
from dqt.config import validate

CONF_DIR = str(ROOT / "conf")

# preset -> (runs = cells x seeds, seeds, the largest num_agents)
PRESETS = {
    "scaling": (3 * 3, 3, 4),
    "noise": (5 * 3, 3, 4),
    "lr": (6 * 3, 3, 2),
    "scaling_full": (4 * 3, 3, 11),
    "noise_full": (3 * 4 * 6 * 3, 3, 7),
    "lr_full": (4 * 6 * 3, 3, 11),
}


def _compose(*overrides: str, hydra: bool = True):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra)


@pytest.mark.parametrize("study", PRESETS)
def test_preset_composes_into_a_multirun_of_its_grid(study):
    cfg = _compose(f"+study={study}")
    runs, seeds, max_agents = PRESETS[study]
    params = cfg.hydra.sweeper.params
    assert cfg.hydra.mode == RunMode.MULTIRUN
    assert math.prod(len(str(values).split(",")) for values in params.values()) == runs
    assert len(str(params["seed"]).split(",")) == seeds
    agents = [int(n) for n in str(params.get("num_agents", cfg.num_agents)).split(",")]
    assert max(agents) == max_agents
    # started again after a stop, a study finds its runs where it left them (README: Studies)
    assert cfg.hydra.sweep.dir == f"multirun/{study}" and cfg.resume == "auto"
    assert OmegaConf.to_container(cfg.hydra.sweep)["subdir"] == "${hydra.job.override_dirname}"  # unresolved
    assert cfg.wandb.group == study and list(cfg.wandb.tags) == [study]
    if not study.endswith("_full"):
        assert cfg.train_steps <= 20000  # CPU scale: see the budget in the preset's comment
    else:
        assert cfg.train_steps == 300000


def test_scaling_preset_validates_on_this_trainer():
    for agents in (1, 2, 4):
        cfg = validate(_compose("+study=scaling", f"num_agents={agents}", hydra=False))
        assert cfg["num_agents"] == agents and cfg["wandb"]["tags"] == ["scaling"]


def _cells(study: str) -> list[list[str]]:
    """The overrides of every cell of `study`'s sweep (its grid without the seeds), seed 1 added."""
    params = _compose(f"+study={study}").hydra.sweeper.params
    axes = [[f"{key}={value}" for value in str(values).split(",")] for key, values in params.items() if key != "seed"]
    return [[*cell, "seed=1"] for cell in itertools.product(*axes)]


def _get(cfg: dict, key: str):
    for part in key.lstrip("+").split("."):
        cfg = cfg[part]
    return cfg


@pytest.mark.parametrize("study", PRESETS)
def test_every_cell_of_a_preset_validates_on_this_trainer(study):
    cells = _cells(study)
    assert len(cells) * PRESETS[study][1] == PRESETS[study][0]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        for cell in cells:
            cfg = validate(compose("config", overrides=[f"+study={study}", *cell]))
            for override in cell:
                key, value = override.split("=")
                if not key.startswith("+"):  # a config group (+defence) is checked below
                    assert str(_get(cfg, key)) == value, (study, cell)
            if study.startswith("noise"):
                defence = next(o.split("=")[1] for o in cell if o.startswith("+defence="))
                assert cfg["noise"]["agents"] == ([0] if defence.startswith("minority") else "all"), cell
                assert cfg["noise"]["std"] > 0 and cfg["num_agents"] == PRESETS[study][2]
            assert cfg["wandb"]["tags"] == [study]


def test_a_run_directory_is_named_by_its_cell_and_seed_only():
    # what the name leaves out does not change what is learned: a restart with other threads finds its runs
    assert list(_compose().hydra.job.config.override_dirname.exclude_keys) == [
        "study", *(key for key in report.IGNORED if key != "seed")]
    names = [_compose("+study=noise", f"+defence={defence}", f"seed={seed}", "threads=1", "resume=auto",
                      "wandb.mode=disabled").hydra.job.override_dirname
             for defence in ("none", "median") for seed in (1, 2)]
    assert names == ["+defence=none,seed=1", "+defence=none,seed=2", "+defence=median,seed=1", "+defence=median,seed=2"]


def test_a_run_directory_name_too_long_for_the_filesystem_is_refused_in_one_line(tmp_path):
    result = run_train("+study=scaling", *TOY, "seed=1", "train_steps=100", f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]  # one line, no traceback
    assert "longer than the filesystem allows" in result.stderr and "hydra.sweep.subdir=${hydra.job.num}" in result.stderr


@pytest.mark.parametrize("defence, aggregation, reads", [
    ("none", "mean", 1), ("smoothing", "mean", 5), ("median", "median", 1), ("minority", "mean", 1),
    ("minority_median", "median", 1), ("minority_trimmed", "trimmed_mean", 1),
])
def test_defences_set_the_aggregation_and_reads(defence, aggregation, reads):
    cfg = _compose("+study=noise", f"+defence={defence}")
    assert cfg.aggregation == aggregation and cfg.noise.reads == reads
    noisy = cfg.noise.agents  # the trainer's default: all
    assert noisy == "all" if not defence.startswith("minority") else list(noisy) == [0]  # 1 of the study's 4


def test_slurm_launcher_runs_one_dqt_train_per_job_on_one_node():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    launcher = _compose("+study=scaling_full", "hydra/launcher=slurm").hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node) == (1, 1) and launcher.cpus_per_task >= 11


@pytest.mark.slow
def test_a_preset_sweeps_through_submitit(tmp_path):
    """Two cells of the toy task through hydra/launcher=submitit_local (what hydra/launcher=slurm runs on a
    cluster): one agent, and two agents that dqt-train starts itself inside the job; dqt-report reads the sweep."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    result = run_train("+study=scaling", "hydra/launcher=submitit_local", *TOY, "num_agents=1,2", "seed=1",
                       "train_steps=100", "threads=1", f"hydra.sweep.dir={tmp_path}",
                       "hydra.sweep.subdir=${hydra.job.num}", timeout=240)  # TOY's overrides: too long a name
    assert result.returncode == 0, result.stderr[-3000:]
    for job, agents in (("0", 1), ("1", 2)):
        rows = [json.loads(line) for line in (tmp_path / job / "metrics.jsonl").read_text().splitlines()]
        assert rows[-1]["env_steps"] == 100 and rows[-1]["total_env_steps"] == 100 * agents
    text = report.write_report([tmp_path], tmp_path).read_text()
    assert "2 runs in 2 cells" in text and "| num_agents=1 | 1 |" in text and "| num_agents=2 | 1 |" in text
