"""Environments keyed by task name: `mw-<name>` (MetaWorld v3, MT1) or `gym:<id>` (any Box/Box env).

The trainer sees only `Task`: it never learns which suite an env came from. Every agent (rank) and
every sub-env gets its own seed from `env_seed`, so no two see the same goals.
"""
from __future__ import annotations

import functools
import re
import warnings
from dataclasses import dataclass
from typing import Callable

import gymnasium as gym
import numpy as np

from dqt.errors import ConfigError
from dqt.envs.wrappers import ActionRepeat, RewardNoise

MW_PREFIX, GYM_PREFIX = "mw-", "gym:"
# Scripted experts whose class name does not follow Sawyer<TaskInCamelCase>V3Policy.
_EXPERT_ALIASES = {"peg-insert-side": "SawyerPegInsertionSideV3Policy"}

# Noise from MetaWorld's scripted experts and from casting its float64 spaces to float32.
warnings.filterwarnings("ignore", message=".*Constant\\(s\\) may be too high.*")
warnings.filterwarnings("ignore", message=".*precision lowered by casting to float32.*")


def env_seed(seed: int, rank: int, index: int, num_envs: int) -> int:
    """Seed of sub-env `index` of agent `rank`: distinct for every (rank, index) pair."""
    return seed * 1_000_000 + rank * num_envs + index


def goals_seed(seed: int, rank: int) -> int:
    """Seed of agent `rank`'s MetaWorld goal set (50 goals), distinct from every env seed."""
    return seed * 1_000_000 + 500_000 + rank


def eval_seed(seed: int) -> int:
    """Seed of the evaluation envs: the same on every rank so the agents split one set of goals."""
    return seed * 1_000_000 + 999_999


# The names usable as `mw-<name>`: MetaWorld 3.1.1's v3 tasks (`ALL_V3_ENVIRONMENTS`, in its order, without
# "-v3"), written out so that a task name is checked, and a bad one refused, without importing MetaWorld and MuJoCo
# (tests/test_envs.py compares the two)
METAWORLD_TASKS = (
    "assembly", "basketball", "bin-picking", "box-close", "button-press-topdown", "button-press-topdown-wall",
    "button-press", "button-press-wall", "coffee-button", "coffee-pull", "coffee-push", "dial-turn", "disassemble",
    "door-close", "door-lock", "door-open", "door-unlock", "hand-insert", "drawer-close", "drawer-open",
    "faucet-open", "faucet-close", "hammer", "handle-press-side", "handle-press", "handle-pull-side", "handle-pull",
    "lever-pull", "pick-place-wall", "pick-out-of-hole", "pick-place", "plate-slide", "plate-slide-side",
    "plate-slide-back", "plate-slide-back-side", "peg-insert-side", "peg-unplug-side", "soccer", "stick-push",
    "stick-pull", "push", "push-wall", "push-back", "reach", "reach-wall", "shelf-place", "sweep-into", "sweep",
    "window-open", "window-close",
)


def _expert_class(name: str):
    import metaworld.policies as policies

    wanted = _EXPERT_ALIASES.get(name, "Sawyer" + "".join(p.capitalize() for p in name.split("-")) + "V3Policy")
    return getattr(policies, wanted, None)


@dataclass
class Task:
    """A task's spaces and how to build its envs: each env yields float32 obs and takes actions in [-1, 1]."""

    name: str
    obs_dim: int
    action_dim: int
    build: Callable[..., gym.Env]  # (seed, goals_seed=None) -> one wrapped env
    max_reward_per_step: float | None  # per agent step, when the suite bounds it (MetaWorld)
    goals: int | None = None  # number of fixed evaluation goals (MetaWorld MT1: 50)
    expert: Callable[[], Callable[[np.ndarray], np.ndarray]] | None = None

    def make_vector_env(self, seeds: list[int], goals_seed: int | None = None,
                        noise: dict | None = None) -> gym.vector.SyncVectorEnv:
        """One sub-env per seed, all drawing goals from one goal set (MetaWorld); finished sub-envs reset in
        the same step (final obs in info). `noise` (RewardNoise's mean, std, reads, reduce) wraps every
        sub-env outside action repeat, so noise is drawn once per agent step, from the sub-env's seed."""
        def build(seed: int) -> gym.Env:
            env = self.build(seed, goals_seed)
            return RewardNoise(env, **noise, seed=seed) if noise else env

        return gym.vector.SyncVectorEnv([lambda s=s: build(s) for s in seeds],
                                        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)

    def set_goal(self, env: gym.Env, goal: int) -> None:
        """Fix `env` (built with eval_seed) to evaluation goal `goal` until changed (MetaWorld only)."""
        tasks = env.get_wrapper_attr("tasks")
        env.get_wrapper_attr("toggle_sample_tasks_on_reset")(False)
        env.unwrapped.set_task(tasks[goal % len(tasks)])


# Values of the `auto` keys. MetaWorld keeps the original study's: 2 env steps per agent step, 100 agent steps
# (200 of MetaWorld's 500), 32 envs, one evaluation episode per goal, discount 0.98. gym: tasks keep the env's
# own episode (no action repeat, its time limit) so eval/return compares with published numbers, the usual
# discount 0.99 (episodes of 1000 single env steps: with 0.98 a pole that falls after 300 steps is worth as
# much as one that never falls), and fewer envs: replay takes whole episodes, so 32 envs of 1000-step
# episodes would hold back 32,000 steps of data.
# What the learner's `auto` keys stand for, per suite. MetaWorld keeps the original study's learner (lr 1e-3 decayed,
# n-step 3 backups, a random bin per dimension to explore) on the value map its bounded reward >= 0 allows, with the
# MC lower bound that map makes true. gym: tasks have rewards of any sign and scale and no demos: there the value
# map squeezes the differences between actions below what the network resolves (Reacher), a return-to-go is no
# lower bound (rewards < 0, time limits), an old behaviour's n-step sum (n = 2 already) drags Reacher's values to
# "keep still" while InvertedPendulum needs its faster propagation: the n-step return is kept as a lower bound on
# the 1-step backup only (`n_step_bound`); noise on the greedy action explores without throwing the pole.
# Raw rewards let values of 100-300 climb past any return (Hopper), so backups take the lower of two critics
# (results/learning/tried/README.md, seventh and eighth sessions); where the critics' min is not enough (InvertedDoublePendulum:
# Q climbed in a straight line past any return), targets are clipped to what the rewards seen allow (tenth session).
METAWORLD_AUTO = {"action_repeat": 2, "episode_length": 100, "num_envs": 32, "eval_episodes": 50, "discount": 0.98,
                  "reward_scale": "map", "mc_lower_bound": True, "n_step_bound": False, "lr": 1e-3,
                  "lr_schedule": "linear", "excess_weight": 1.0, "explore.kind": "eps", "model.critics": 1,
                  "target_clip": False}
GYM_AUTO = {"action_repeat": 1, "num_envs": 4, "eval_episodes": 10, "discount": 0.99,
            "reward_scale": 1.0, "mc_lower_bound": False, "n_step_bound": True, "lr": 3e-4,
            "lr_schedule": "constant", "excess_weight": 0.0, "explore.kind": "gaussian",
            "model.critics": 2, "target_clip": True}
GYM_DEFAULT_LIMIT = 1000  # for envs registered without a time limit


def auto_values(name: str) -> dict:
    """The values that `auto` stands for, per key, for task `name` (a gym: env is built once to read its limit)."""
    if name.startswith(GYM_PREFIX):
        try:
            probe = gym.make(name[len(GYM_PREFIX):], disable_env_checker=True)
        except Exception:
            return {**GYM_AUTO, "episode_length": GYM_DEFAULT_LIMIT}  # make_task reports the error
        limit = probe.spec.max_episode_steps if probe.spec is not None else None
        probe.close()
        return {**GYM_AUTO, "episode_length": limit or GYM_DEFAULT_LIMIT}
    return dict(METAWORLD_AUTO)


def _finish(env: gym.Env, action_repeat: int, episode_length: int) -> gym.Env:
    env = ActionRepeat(env, action_repeat)
    env = gym.wrappers.TimeLimit(env, episode_length)
    return gym.wrappers.DtypeObservation(env, np.float32)


@functools.lru_cache(maxsize=4)
def _goal_set(name: str, goals_seed: int):
    """MetaWorld's MT1 benchmark for one task: its 50 goals are fixed by `goals_seed` (slow to build: cached)."""
    import metaworld

    return metaworld.MT1(f"{name}-v3", seed=goals_seed)


def _metaworld_task(name: str, action_repeat: int, episode_length: int) -> Task:
    from metaworld.wrappers import RandomTaskSelectWrapper

    def build(seed: int, goals_seed: int | None = None) -> gym.Env:
        # The same env stack as gym.make("Meta-World/MT1", ...), with the 50-goal benchmark built once per
        # goal set instead of once per env. MetaWorld ignores reset(seed=...): env.seed sets the RNG that
        # picks each episode's goal, so sub-envs sharing a goal set still see different goals.
        benchmark = _goal_set(name, seed if goals_seed is None else goals_seed)
        env = benchmark.train_classes[f"{name}-v3"]()
        env.seed(seed)
        env = RandomTaskSelectWrapper(env, list(benchmark.train_tasks))
        env.action_space.seed(seed)
        return _finish(env, action_repeat, episode_length)

    expert_cls = _expert_class(name)
    return Task(
        name=f"{MW_PREFIX}{name}",
        obs_dim=39,
        action_dim=4,
        build=build,
        max_reward_per_step=10.0 * action_repeat,  # v2 rewards are in [0, 10] per env step
        goals=50,
        expert=(lambda: expert_cls().get_action) if expert_cls else None,
    )


def _gym_task(env_id: str, action_repeat: int, episode_length: int) -> Task:
    def build(seed: int, goals_seed: int | None = None) -> gym.Env:
        env = gym.make(env_id, disable_env_checker=True)
        env = gym.wrappers.RescaleAction(env, -1.0, 1.0)
        env.reset(seed=seed)
        env.action_space.seed(seed)
        return _finish(env, action_repeat, episode_length)

    probe = gym.make(env_id, disable_env_checker=True)
    obs_space, act_space = probe.observation_space, probe.action_space
    probe.close()
    if not (isinstance(obs_space, gym.spaces.Box) and isinstance(act_space, gym.spaces.Box)):
        raise ConfigError(f"task=gym:{env_id} is not allowed: expected an env with Box observations and Box actions")
    if len(obs_space.shape) != 1 or len(act_space.shape) != 1:
        raise ConfigError(f"task=gym:{env_id} is not allowed: expected flat (1-d) observation and action spaces")
    if not (np.all(np.isfinite(act_space.low)) and np.all(np.isfinite(act_space.high))):
        raise ConfigError(f"task=gym:{env_id} is not allowed: expected bounded actions")
    return Task(
        name=f"{GYM_PREFIX}{env_id}",
        obs_dim=int(obs_space.shape[0]),
        action_dim=int(act_space.shape[0]),
        build=build,
        max_reward_per_step=None,
    )


def make_task(name: str, action_repeat: int = 2, episode_length: int = 100) -> Task:
    """Build the `Task` for a task name; raises ConfigError for an unknown or unusable one."""
    if name.startswith(MW_PREFIX):
        short = name[len(MW_PREFIX):]
        if short not in METAWORLD_TASKS:
            unversioned = re.sub(r"-v\d+$", "", short)  # MetaWorld's own env names end in -v3: dqt's do not
            if unversioned in METAWORLD_TASKS:
                raise ConfigError(f"task={name!r} is not allowed: MetaWorld tasks are named without their "
                                  f"version (always v3): task={MW_PREFIX}{unversioned}")
            raise ConfigError(f"task={name!r} is not allowed: expected mw-<name> with <name> one of "
                              + ", ".join(METAWORLD_TASKS) + ", or gym:<env id>")
        if episode_length * action_repeat > 500:
            raise ConfigError(f"episode_length={episode_length} is not allowed with action_repeat={action_repeat}: "
                              "MetaWorld episodes end at 500 env steps (episode_length * action_repeat <= 500)")
        return _metaworld_task(short, action_repeat, episode_length)
    if name.startswith(GYM_PREFIX):
        env_id = name[len(GYM_PREFIX):]
        try:
            return _gym_task(env_id, action_repeat, episode_length)
        except ConfigError:
            raise
        except Exception as error:  # gymnasium's own errors: unknown id, failed module import
            first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ConfigError(f"task={name!r} is not allowed: gymnasium cannot make {env_id!r} ({first_line})")
    raise ConfigError(f"task={name!r} is not allowed: expected mw-<name> with <name> one of "
                      + ", ".join(METAWORLD_TASKS) + ", or gym:<env id>")


def check_task(name: str, demos: int, action_repeat: int = 2, episode_length: int = 100) -> Task:
    """make_task plus the checks that depend on other keys (demos need a scripted expert)."""
    task = make_task(name, action_repeat, episode_length)
    if demos > 0 and task.expert is None:
        why = "gym: tasks have no scripted expert" if name.startswith(GYM_PREFIX) else f"MetaWorld has no scripted expert for {name}"
        raise ConfigError(f"demos={demos} is not allowed for task={name!r}: expected 0 ({why})")
    return task
