"""Tests of dqt.config: bad values through the real entry point, and `validate` on hydra-composed configs.

The entry-point table runs `python -m dqt.train` (what `dqt-train` calls) in a subprocess per row, two rows
at a time (two threads in one pytest process, or one row on each of two pytest-xdist workers). A refusal happens
before torch (or MetaWorld) is imported, so a row takes about a second.
"""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from conftest import ROOT, run_train
from dqt.config import ConfigError, validate

CONF_DIR = str(ROOT / "conf")
TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT")

# (overrides, how the one-line message starts after "dqt: "): each names the key and the value
BAD = [
    # out of range
    (["num_agents=0"], "num_agents=0 is not allowed"),
    (["train_steps=0"], "train_steps=0 is not allowed"),
    (["seed=-1"], "seed=-1 is not allowed"),
    (["eval_episodes=0"], "eval_episodes=0 is not allowed"),
    (["demos=-1"], "demos=-1 is not allowed"),
    (["seed_steps=-1"], "seed_steps=-1 is not allowed"),
    (["num_envs=0"], "num_envs=0 is not allowed"),
    (["bins=1"], "bins=1 is not allowed"),
    (["bins=100000"], "bins=100000 is not allowed"),
    (["n_step=0"], "n_step=0 is not allowed"),
    (["discount=0"], "discount=0 is not allowed"),
    (["discount=1.5"], "discount=1.5 is not allowed"),
    (["tau=0"], "tau=0 is not allowed"),
    (["eval_ema=1"], "eval_ema=1 is not allowed"),
    (["lr=-1"], "lr=-1 is not allowed"),
    (["lr_final=2"], "lr_final=2 is not allowed"),
    (["updates_per_step=0"], "updates_per_step=0 is not allowed"),
    (["reward_scale=0"], "reward_scale=0 is not allowed"),
    (["explore.eps=2"], "explore.eps=2 is not allowed"),
    (["aggregation_trim=0.5"], "aggregation_trim=0.5 is not allowed"),
    (["checkpoint_every=0"], "checkpoint_every=0 is not allowed"),
    (["threads=0"], "threads=0 is not allowed"),
    (["max_restarts=-1"], "max_restarts=-1 is not allowed"),
    # wrong type
    (["num_agents=abc"], "num_agents='abc' is not allowed"),
    (["train_steps=1.5"], "train_steps=1.5 is not allowed"),
    (["lr=true"], "lr=true is not allowed"),
    (["model.dueling=maybe"], "model.dueling='maybe' is not allowed"),
    (["wandb.project=''"], "wandb.project='' is not allowed"),
    # unknown enum value or task
    (["aggregation=bogus"], "aggregation='bogus' is not allowed"),
    (["faults.kind=bogus"], "faults.kind='bogus' is not allowed"),
    (["wandb.mode=bogus"], "wandb.mode='bogus' is not allowed"),
    (["explore.kind=bogus"], "explore.kind='bogus' is not allowed"),
    (["lr_schedule=cosine"], "lr_schedule='cosine' is not allowed"),
    (["device=tpu"], "device='tpu' is not allowed"),
    (["task=mw-nonexistent"], "task='mw-nonexistent' is not allowed"),
    (["task=door-unlock"], "task='door-unlock' is not allowed"),
    (["task=gym:NoSuchEnv-v0"], "task='gym:NoSuchEnv-v0' is not allowed"),
    # unknown key (hydra's own error, and keys added with +), unparsable or unresolvable value
    (["foo=1"], "foo=1 is not allowed"),
    (["+foo=1"], "foo=1 is not allowed"),
    (["model.foo=2"], "model.foo=2 is not allowed"),
    (["lr=[1"], "lr=[1 is not allowed"),
    (["lr=${oops}"], "lr=${oops} is not allowed"),
    # incompatible combinations
    (["faults.agents=[1]"], "faults.agents=[1] is not allowed"),  # num_agents=1: rank 1 does not exist
    (["num_agents=2", "faults.agents=[0,1]"], "faults.agents=[0, 1] is not allowed with num_agents=2"),
    (["demos=3"], "demos=3 is not allowed for task='gym:toy_env:Combo-v0'"),  # no scripted expert
    (["model.dim=128", "model.heads=3"], "model.heads=3 is not allowed"),
    (["bins=10", "model.levels=2"], "bins=10 is not allowed with model.levels=2"),
    (["train_steps=100", "seed_steps=200"], "seed_steps=200 is not allowed"),
    (["batch_size=512", "replay_size=256"], "batch_size=512 is not allowed with replay_size=256"),
    (["batch_size=16", "replay_size=50", "episode_length=100"], "replay_size=50 is not allowed with episode_length=100"),
    # episode_length=auto is resolved from the task before it is checked (Pendulum's time limit: 200)
    (["task=gym:Pendulum-v1", "episode_length=auto", "batch_size=16", "replay_size=50"],
     "replay_size=50 is not allowed with episode_length=200"),
    (["discount=1", "reward_scale=map"], "discount=1 is not allowed with reward_scale=map"),
    (["task=mw-door-unlock", "action_repeat=2", "episode_length=300"], "episode_length=300 is not allowed"),
    (["resume=true"], "resume=true is not allowed"),  # nothing to resume: the run directory does not exist
    (["lr_scale=log_n"], "lr_scale='log_n' is not allowed with num_agents=1"),  # lr * ln 1 = 0
    # keys that came with reward noise, lr schedules, demo replay and the `auto` values
    (["num_envs=-1"], "num_envs=-1 is not allowed"),
    (["episode_length=sometimes"], "episode_length='sometimes' is not allowed"),
    (["demo_share=2"], "demo_share=2 is not allowed"),
    (["noise.std=-1"], "noise.std=-1 is not allowed"),
    (["noise.reduce=mode"], "noise.reduce='mode' is not allowed"),
    (["noise.reads=0"], "noise.reads=0 is not allowed"),
    (["noise.agents=[1]"], "noise.agents=[1] is not allowed"),  # num_agents=1: rank 1 does not exist
    (["lr_plateau.factor=1"], "lr_plateau.factor=1 is not allowed"),
    (["lr_scale=bogus"], "lr_scale='bogus' is not allowed"),
    (["wandb.tags=['']"], "wandb.tags=[''] is not allowed"),
    (["+noise.foo=1"], "noise.foo=1 is not allowed"),
]

# Put first so that a row's own override wins (hydra applies overrides in order). They shrink the run so
# that a bad value dqt wrongly accepted would end in a short run, not a long one.
GUARDS = ["wandb.mode=disabled", "task=gym:toy_env:Combo-v0", "num_agents=1", "train_steps=4", "seed_steps=0",
          "demos=0", "eval_episodes=1", "num_envs=1", "episode_length=1", "action_repeat=1", "threads=1",
          "progress=false"]


BAD_IDS = [" ".join(o) for o, _ in BAD]


@pytest.fixture(scope="module")
def refusal_runs(request, tmp_path_factory):
    """Starts the rows of BAD: row -> (run dir, future of its CompletedProcess). In one pytest process every
    collected row is queued at once and two run at a time; on a pytest-xdist worker a row starts when its test
    asks for it, as every worker collects every row but runs only its share (the workers side by side are the
    two at a time). A row that hangs fails its own test (TimeoutExpired from `.result()`), not the others."""
    root = tmp_path_factory.mktemp("refusals")
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=2)
    runs = {}

    def start(row: int):
        if row not in runs:
            run_dir = root / str(row) / "run"
            runs[row] = run_dir, pool.submit(run_train, f"hydra.run.dir={run_dir}", *GUARDS, *BAD[row][0],
                                             timeout=120, env={var: None for var in TORCHRUN_VARS})
        return runs[row]

    if not hasattr(request.config, "workerinput"):  # not a pytest-xdist worker
        for item in request.session.items:
            if (item.getparent(pytest.Module) is request.node and getattr(item, "originalname", None)
                    == "test_bad_value_is_refused_in_one_line_before_anything_is_written"):
                start(item.callspec.params["row"])
    try:
        yield start
    finally:  # a stopped or failed session does not wait for the rows still queued
        pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.slow  # a dqt-train process per row: first in the queue (conftest)
@pytest.mark.parametrize("row", range(len(BAD)), ids=BAD_IDS)
def test_bad_value_is_refused_in_one_line_before_anything_is_written(row, refusal_runs):
    overrides, message = BAD[row]
    run_dir, future = refusal_runs(row)
    result = future.result()
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr  # one line, so no traceback either
    assert lines[0].startswith(f"dqt: {message}"), result.stderr
    if overrides == ["task=mw-nonexistent"]:
        assert "door-unlock" in lines[0]  # what is allowed
    assert not run_dir.exists()  # nothing written, not even hydra's .hydra/


def test_the_table_covers_thirty_distinct_refusals():
    assert len({m.split(" is not allowed")[0] for _, m in BAD}) >= 30


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
    (["lr_schedule=cosine"], "lr_schedule='cosine' is not allowed: expected one of auto, constant, linear, log, log_linear"),
    (["lr_scale=inv"], "lr_scale='inv' is not allowed: expected one of none, inv_n, log_n, sqrt_n"),
    (["num_agents=1", "lr_scale=log_n"], "lr_scale='log_n' is not allowed with num_agents=1"),
    (["lr_plateau.factor=1"], "lr_plateau.factor=1 is not allowed: expected a number > 0, < 1"),
    (["lr_plateau.patience=-1"], "lr_plateau.patience=-1 is not allowed: expected an integer >= 0"),
    (["wandb.tags=[scaling,7]"], "wandb.tags=['scaling', 7] is not allowed"),
    (["wandb.tags=scaling"], "wandb.tags='scaling' is not allowed"),
    (["resume=maybe"], "resume='maybe' is not allowed: expected true, false or auto"),
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


LEARNER_KEYS = ("reward_scale", "mc_lower_bound", "n_step_bound", "lr", "lr_schedule", "excess_weight", "target_clip")


def _learner(cfg: dict) -> list:
    return [cfg[k] for k in LEARNER_KEYS] + [cfg["explore"]["kind"], cfg["model"]["critics"]]


def test_learner_auto_values_follow_the_suite_and_numbers_win():
    metaworld = validate(_compose())
    assert _learner(metaworld) == ["map", True, False, 1e-3, "linear", 1.0, False, "eps", 1]
    gym = validate(_compose("task=gym:Pendulum-v1", "demos=0", "num_agents=1"))
    assert _learner(gym) == [1.0, False, True, 3e-4, "constant", 0.0, True, "gaussian", 2]
    # a value given is kept on either suite, `map` included
    given = ("reward_scale=map", "mc_lower_bound=true", "n_step_bound=false", "lr=0.001", "lr_schedule=linear",
             "excess_weight=0.5", "explore.kind=eps", "model.critics=1", "target_clip=false")
    kept = validate(_compose("task=gym:Pendulum-v1", "demos=0", "num_agents=1", *given))
    assert _learner(kept) == ["map", True, False, 1e-3, "linear", 0.5, False, "eps", 1]
    given = ("reward_scale=2", "mc_lower_bound=false", "n_step_bound=true", "lr=0.0003", "lr_schedule=log",
             "excess_weight=0", "explore.kind=gaussian", "model.critics=3", "target_clip=true")
    kept = validate(_compose(*given))
    assert _learner(kept) == [2, False, True, 3e-4, "log", 0, True, "gaussian", 3]


@pytest.mark.parametrize("override, allowed", [
    ("n_step_bound=often", "auto, true or false"),
    ("mc_lower_bound=maybe", "auto, true or false"),
    ("target_clip=sometimes", "auto, true or false"),
    ("lr_schedule=cosine", "one of auto, constant"),
    ("lr=0", "auto or a number > 0"),
    ("excess_weight=-1", "auto or a number >= 0"),
    ("reward_scale=scaled", "auto, map, max or a number > 0"),
    ("explore.kind=boltzmann", "one of auto, gaussian, eps"),
    ("model.critics=0", "auto or an integer >= 1"),
    ("model.critic_backup=max", "one of min, mean"),
])
def test_learner_auto_keys_name_what_they_allow(override, allowed):
    with pytest.raises(ConfigError) as error:
        validate(_compose(override))
    assert allowed in str(error.value)


def test_levels_take_bins_that_are_a_power_of_the_token_bins():
    assert validate(_compose("bins=27", "model.levels=3"))["model"]["levels"] == 3
    assert validate(_compose("bins=256", "model.levels=4"))["bins"] == 256  # the study's 256 as 4 tokens of 4
    for bins, levels in ((10, 2), (256, 3), (2, 2)):
        with pytest.raises(ConfigError) as error:
            validate(_compose(f"bins={bins}", f"model.levels={levels}"))
        assert str(error.value).startswith(f"bins={bins} is not allowed with model.levels={levels}: expected")
    with pytest.raises(ConfigError) as error:
        validate(_compose("model.levels=0"))
    assert str(error.value).startswith("model.levels=0 is not allowed")


def test_discount_one_is_allowed_with_gym_auto_reward_scale():
    # gym: auto is raw rewards (scale 1), which need no 1 - discount; `map` still does
    assert validate(_compose("task=gym:Pendulum-v1", "demos=0", "num_agents=1", "discount=1"))["discount"] == 1
    with pytest.raises(ConfigError) as error:
        validate(_compose("task=gym:Pendulum-v1", "demos=0", "num_agents=1", "discount=1", "reward_scale=map"))
    assert str(error.value).startswith("discount=1 is not allowed with reward_scale=map")
    # `max` only multiplies (1 / max |r|), so it needs no 1 - discount either
    given = ("task=gym:Pendulum-v1", "demos=0", "num_agents=1", "discount=1", "reward_scale=max")
    assert validate(_compose(*given))["reward_scale"] == "max"


def test_updates_per_step_auto_is_half_with_demos_and_one_without():
    assert validate(_compose())["updates_per_step"] == 0.5  # default: demos=50
    assert validate(_compose("demos=0"))["updates_per_step"] == 1.0
    assert validate(_compose("demos=0", "updates_per_step=0.25"))["updates_per_step"] == 0.25
    with pytest.raises(ConfigError) as error:
        validate(_compose("updates_per_step=often"))
    assert str(error.value) == "updates_per_step='often' is not allowed: expected auto or a number > 0"


def test_resume_is_true_false_or_auto():
    assert [validate(_compose(f"resume={value}"))["resume"] for value in ("true", "false", "auto")] == [True, False, "auto"]


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


def test_conservative_rows_all_is_accepted_with_the_default_excess_weight():
    # the excess term acts on the rows the conservative term leaves out; with `all` there are none, and the
    # algorithm's own test shows it is then off (tests/test_algorithm.py), so the combination is not refused
    cfg = validate(_compose("conservative_rows=all"))
    assert (cfg["conservative_rows"], cfg["excess_weight"]) == ("all", 1.0)


def test_checking_a_config_loads_no_torch_or_metaworld():
    # a refused command line takes about half a second because torch is imported only once the config is accepted
    # (README: Reliability); dqt.config keeps its own copy of the model's choices for that reason, and dqt.envs
    # its own list of MetaWorld's tasks, so a bad MetaWorld name loads neither MetaWorld nor MuJoCo
    check = ("import sys, dqt.config, dqt.envs\n"
             "try:\n    dqt.envs.make_task('mw-nonexistent')\nexcept dqt.config.ConfigError:\n    pass\n"
             "loaded = sorted(m for m in ('torch', 'metaworld', 'mujoco') if m in sys.modules)\n"
             "import dqt.model\nassert dqt.config.CRITIC_BACKUPS == dqt.model.CRITIC_BACKUPS\nprint(loaded)")
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_optimism_needs_two_critics():
    from dqt.config import ConfigError, validate

    assert validate(_compose("task=gym:Pendulum-v1", "demos=0", "explore.optimism=1.0"))["explore"]["optimism"] == 1.0  # gym: 2 critics
    with pytest.raises(ConfigError, match=r"^explore.optimism=1.0 is not allowed with model.critics=1: .*critics >= 2"):
        validate(_compose("explore.optimism=1.0"))  # MetaWorld: one critic
    with pytest.raises(ConfigError, match=r"^explore.optimism=-1.0 is not allowed"):
        validate(_compose("explore.optimism=-1.0"))


def test_color_is_the_gaussian_noises_and_between_0_and_4():
    cfg = validate(_compose("task=gym:Pendulum-v1", "demos=0", "explore.color=1"))  # gym: gaussian by auto
    assert cfg["explore"]["color"] == 1.0 and cfg["explore"]["kind"] == "gaussian"
    assert validate(_compose("explore.kind=gaussian", "explore.color=2"))["explore"]["color"] == 2.0
    with pytest.raises(ConfigError, match=r"^explore.color=1.0 is not allowed with explore.kind=eps: .*kind=gaussian$"):
        validate(_compose("explore.color=1.0"))  # MetaWorld: eps by auto
    for bad in ("-1", "5"):
        with pytest.raises(ConfigError, match=rf"^explore.color={bad}(.0)? is not allowed"):
            validate(_compose("task=gym:Pendulum-v1", "demos=0", f"explore.color={bad}"))
