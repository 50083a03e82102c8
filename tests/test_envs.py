"""Tests of dqt.envs: the task factory, MetaWorld seeding and time limits, gym action rescaling, env seeds."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from dqt.config import ConfigError
from dqt.envs import METAWORLD_TASKS, check_task, env_seed, eval_seed, make_task


@pytest.fixture(scope="module")
def door_unlock():
    return make_task("mw-door-unlock", action_repeat=2, episode_length=5)


def test_metaworld_task_spaces(door_unlock):
    assert door_unlock.name == "mw-door-unlock"
    assert (door_unlock.obs_dim, door_unlock.action_dim) == (39, 4)
    assert door_unlock.max_reward_per_step == 20.0  # 10 per env step x action_repeat 2
    assert door_unlock.goals == 50
    assert door_unlock.expert is not None


def test_metaworld_env_obs_and_time_limit(door_unlock):
    env = door_unlock.build(3)
    obs, _ = env.reset()
    assert obs.dtype == np.float32 and obs.shape == (39,)
    zero = np.zeros(4, dtype=np.float32)
    for step in range(1, 6):
        obs, reward, terminated, truncated, info = env.step(zero)
        assert obs.dtype == np.float32 and obs.shape == (39,)
        assert not terminated
        assert truncated == (step == 5), f"agent step {step}"
        assert "success" in info
    assert env.unwrapped.curr_path_length == 10  # 5 agent steps x action_repeat 2 env steps
    env.close()


def _goal(task, seed: int) -> np.ndarray:
    env = task.build(seed)
    goal = env.reset()[0][-3:].copy()
    env.close()
    return goal


def test_metaworld_seed_fixes_the_goals(door_unlock):
    first, again, other = _goal(door_unlock, 1), _goal(door_unlock, 1), _goal(door_unlock, 2)
    assert np.array_equal(first, again)
    assert not np.allclose(first, other)


def test_env_seeds_are_distinct():
    seeds = [env_seed(1, rank, index, 8) for rank, index in itertools.product(range(4), range(8))]
    assert len(set(seeds)) == 32
    assert eval_seed(1) not in seeds
    other_base = {env_seed(2, rank, index, 8) for rank, index in itertools.product(range(4), range(8))}
    assert not other_base & set(seeds)


def test_gym_task_spaces_and_action_rescaling():
    task = make_task("gym:Pendulum-v1", action_repeat=1, episode_length=100)
    assert (task.obs_dim, task.action_dim) == (3, 1)
    assert task.max_reward_per_step is None and task.goals is None and task.expert is None
    env = task.build(0)
    env.reset()
    env.unwrapped.state = np.array([0.0, 0.0])  # upright, at rest: sin(theta) = 0, so only the torque acts
    obs, reward, *_ = env.step(np.array([1.0], dtype=np.float32))
    # Pendulum: thdot' = thdot + (3 g / 2l sin th + 3 u / (m l^2)) dt = 3 * u * 0.05, and the cost uses
    # 0.001 u^2. Action 1.0 rescaled to u = 2.0 (the env's high): thdot' = 0.3, reward = -0.004.
    assert obs.dtype == np.float32
    assert obs[2] == np.float32(0.3)
    assert reward == pytest.approx(-0.004, rel=1e-6)
    env.reset()
    env.unwrapped.state = np.array([0.0, 0.0])
    obs, *_ = env.step(np.array([-0.5], dtype=np.float32))  # u = -1.0: thdot' = -0.15
    assert obs[2] == np.float32(-0.15)
    env.close()


def test_the_written_out_task_names_are_metaworlds_own():
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    assert METAWORLD_TASKS == tuple(name.removesuffix("-v3") for name in ALL_V3_ENVIRONMENTS)


def test_unknown_metaworld_task_lists_the_tasks():
    with pytest.raises(ConfigError, match="door-unlock") as error:
        make_task("mw-nonexistent")
    assert "mw-nonexistent" in str(error.value)
    assert "\n" not in str(error.value)


def test_a_metaworld_name_with_its_version_is_told_the_name_without_it():
    for name in ("mw-door-unlock-v3", "mw-pick-place-v2"):
        with pytest.raises(ConfigError) as error:
            make_task(name)
        unversioned = name.rsplit("-v", 1)[0]
        assert str(error.value) == (f"task={name!r} is not allowed: MetaWorld tasks are named without their "
                                    f"version (always v3): task={unversioned}")


def test_unknown_suite_lists_the_tasks():
    with pytest.raises(ConfigError, match="door-unlock"):
        make_task("door-unlock")


def test_unknown_gym_env():
    with pytest.raises(ConfigError, match="NoSuchEnv-v0"):
        make_task("gym:NoSuchEnv-v0")


def test_metaworld_episode_longer_than_500_env_steps():
    with pytest.raises(ConfigError, match="episode_length=300"):
        make_task("mw-door-unlock", action_repeat=2, episode_length=300)


def test_demos_need_an_expert():
    with pytest.raises(ConfigError, match="demos=1"):
        check_task("gym:Pendulum-v1", demos=1)
    assert check_task("gym:Pendulum-v1", demos=0).obs_dim == 3
    assert check_task("mw-door-unlock", demos=1).expert is not None


def test_reward_noise_is_drawn_once_per_agent_step_outside_action_repeat():
    noise = {"mean": 0.0, "std": 1.0, "reads": 1, "reduce": "median"}
    action = np.full((1, 1), 0.3, dtype=np.float32)
    added = {}
    for repeat in (1, 3):
        task = make_task("gym:Pendulum-v1", action_repeat=repeat, episode_length=10)
        noisy, clean = task.make_vector_env([5], noise=noise), task.make_vector_env([5])
        noisy.reset(), clean.reset()
        _, reward, *_, info = noisy.step(action)
        _, clean_reward, *_ = clean.step(action)
        assert info["clean_reward"][0] == clean_reward[0]  # the env's own reward, summed over the repeats
        added[repeat] = reward[0] - clean_reward[0]
        noisy.close(), clean.close()
    # one draw per agent step from the sub-env's seed, however many env steps the agent step took
    assert added[1] == pytest.approx(added[3], abs=1e-12) and added[1] != 0


def test_auto_values_follow_the_suite():
    from dqt.envs import auto_values

    # MetaWorld: the original study's learner (lr 1e-3 decayed linearly) on the value map of its reward bound
    assert auto_values("mw-door-unlock") == {"action_repeat": 2, "episode_length": 100, "num_envs": 32,
                                             "eval_episodes": 50, "discount": 0.98, "reward_scale": "map",
                                             "mc_lower_bound": True, "n_step_bound": False, "lr": 1e-3,
                                             "lr_schedule": "linear", "excess_weight": 1.0, "explore.kind": "eps",
                                             "model.critics": 1, "target_clip": False}
    # gym: the env's own time limit (Pendulum-v1 registers 200), no action repeat, raw rewards with the n-step
    # return as a lower bound on the 1-step backup (no MC bound: with rewards < 0 and time limits a return-to-go
    # is no lower bound), constant 3e-4, Gaussian noise on the greedy action, targets clipped to what the rewards allow
    assert auto_values("gym:Pendulum-v1") == {"action_repeat": 1, "episode_length": 200, "num_envs": 4,
                                              "eval_episodes": 10, "discount": 0.99, "reward_scale": 1.0,
                                              "mc_lower_bound": False, "n_step_bound": True, "lr": 3e-4,
                                              "lr_schedule": "constant", "excess_weight": 0.0,
                                              "explore.kind": "gaussian", "model.critics": 2, "target_clip": True}


def test_success_is_reported_only_by_envs_that_report_it(door_unlock):
    import torch

    from dqt.collector import evaluate
    from dqt.model import QTransformer

    pendulum = make_task("gym:Pendulum-v1", action_repeat=2, episode_length=3)
    env = pendulum.build(0)
    env.reset(seed=0)
    assert "success" not in env.step(np.zeros(1, dtype=np.float32))[4]  # ActionRepeat adds none of its own
    model = QTransformer(pendulum.obs_dim, pendulum.action_dim, bins=3, dim=8, depth=1, heads=2)
    successes, returns, count, reported = evaluate(pendulum, model, [pendulum.build(1)], [0, 1], 3, 0, torch.device("cpu"))
    assert (successes, count, reported) == (0.0, 2, 0)
    env = door_unlock.build(0)
    env.reset()
    assert env.step(np.zeros(4, dtype=np.float32))[4]["success"] == 0.0
