"""Tests of dqt.collector: what a collector stores and reports when its envs' rewards are noisy, and bad
data from an env (NaN/Inf reward or observation): caught before replay, named in one line, or dropped; a
collector restored from its state continues its episodes exactly."""
from __future__ import annotations

import io
import json
import math
import threading

import gymnasium as gym
import numpy as np
import pytest
import torch

import toy_env  # noqa: F401  (registers toy_env:Combo-v0 and the bad-data variants)
from conftest import newest_checkpoint, run_train
from dqt.algorithm import from_bins, to_bins
from dqt.collector import ColoredNoise, Collector, env_eps, explore, powerlaw_noise
from dqt.envs import make_task
from dqt.errors import RunError
from dqt.replay import EpisodeReplay

ENVS, STEPS = 4, 25


def _collect(noise: dict | None) -> tuple[Collector, list, torch.Tensor]:
    # Combo episodes last one step: every reward arrives with a reset, its clean value in final_info.
    task = make_task("gym:toy_env:Combo-v0", action_repeat=1, episode_length=1)
    replay = EpisodeReplay(1000, task.obs_dim, task.action_dim, bins=4, n_step=1, discount=0.9)
    collector = Collector(task.make_vector_env(list(range(ENVS)), noise=noise), replay, 4, 1)
    generator = torch.Generator().manual_seed(0)
    for _ in range(STEPS):
        collector.step(torch.randint(4, (ENVS, task.action_dim), generator=generator))
    episodes, sums = collector.drain()
    return collector, episodes, sums


def test_noisy_rewards_are_stored_and_clean_ones_reported():
    collector, episodes, sums = _collect({"mean": 0.0, "std": 1.0, "reads": 1, "reduce": "median"})
    noisy_sum, noisy_sq, clean_sum, clean_sq, count = sums.tolist()
    assert count == ENVS * STEPS == len(episodes)
    returns = np.array([ret for ret, _ in episodes])
    assert set(returns) <= {0.0, 1.0}  # episode returns are what the env paid
    assert clean_sum == clean_sq == returns.sum() > 0
    # replay holds the noisy rewards, raw (one-step episodes: the n-step return is the reward; float32)
    stored = collector.replay.nstep_return[collector.replay.sampleable].double()
    assert stored.sum().item() == pytest.approx(noisy_sum, abs=1e-4)
    assert (stored ** 2).sum().item() == pytest.approx(noisy_sq, rel=1e-6)
    assert abs(noisy_sum - clean_sum) > 1.0 and noisy_sq > clean_sq  # the noise is there
    # the reward range (the value map's, for gym: tasks) is that of the stored, noisy rewards
    assert collector.reward_range == pytest.approx([stored.min().item(), stored.max().item()], abs=1e-6)
    assert collector.reward_range[0] < 0.0 and collector.reward_range[1] > 1.0
    assert collector.drain()[1].sum().item() == 0  # drained


def test_without_noise_the_clean_reward_is_the_stored_one():
    _, episodes, sums = _collect(None)
    noisy_sum, noisy_sq, clean_sum, clean_sq, count = sums.tolist()
    assert (noisy_sum, noisy_sq) == (clean_sum, clean_sq) == (sum(r for r, _ in episodes),) * 2


def test_without_noise_the_reward_range_is_the_envs():
    collector, _, _ = _collect(None)
    assert collector.reward_range == [0.0, 1.0]


class Walk(gym.Env):
    """Episodes of `length` steps (time limit); at its step `bad_step` the env returns a NaN reward or an
    Inf observation."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def __init__(self, bad_step: int | None, bad: str):
        self.bad_step, self.bad, self.steps = bad_step, bad, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.steps += 1
        obs, reward = np.full(2, self.steps, np.float32), 1.0
        if self.steps == self.bad_step:
            if self.bad == "reward":
                reward = float("nan")
            else:
                obs[1] = np.inf
        return obs, reward, False, False, {}


def _collector(bad_data: str, bad: str, bad_env: int = 1, bad_step: int = 5, length: int = 3):
    envs = gym.vector.SyncVectorEnv(
        [lambda i=i: gym.wrappers.TimeLimit(Walk(bad_step if i == bad_env else None, bad), length) for i in range(3)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    replay = EpisodeReplay(100, 2, 1, 4, n_step=1, discount=0.9)
    return Collector(envs, replay, 4, length, "task=walk, agent 0", bad_data), replay


@pytest.mark.parametrize("bad, what", [("reward", "reward=nan"), ("obs", "a non-finite observation")])
def test_bad_data_error_names_the_env_and_step_before_anything_reaches_replay(bad, what):
    collector, replay = _collector("error", bad)
    bins = torch.zeros(3, 1, dtype=torch.long)
    for _ in range(4):
        collector.step(bins)
    with pytest.raises(RunError) as error:
        collector.step(bins)
    assert str(error.value).startswith(f"task=walk, agent 0, sub-env 1 returned {what} at its step 5;")
    assert "\n" not in str(error.value)
    assert replay.transitions_added == 9  # the first episode of each env (3 steps), nothing after
    assert torch.isfinite(replay.obs).all() and torch.isfinite(replay.nstep_return).all()


@pytest.mark.parametrize("bad", ["reward", "obs"])
def test_bad_data_drop_drops_the_whole_episode_and_counts_its_steps(bad):
    collector, replay = _collector("drop", bad)
    bins = torch.zeros(3, 1, dtype=torch.long)
    for _ in range(9):  # three episodes per env; env 1's second episode (steps 4-6) holds the bad step 5
        collector.step(bins)
    assert collector.dropped_steps == 3
    assert replay.transitions_added == 27 - 3
    episodes, sums = collector.drain()
    assert len(episodes) == 9 - 1
    assert sums[4].item() == 27 - (bad == "reward")  # the NaN reward is not counted in the logged reward sums
    assert collector.reward_range == [1.0, 1.0]  # nor in the range the value map is made from
    assert torch.isfinite(replay.obs).all() and torch.isfinite(replay.nstep_return).all()
    assert torch.isfinite(collector.obs).all()  # what the policy acts on


def test_replay_refuses_a_non_finite_episode():
    replay = EpisodeReplay(100, 2, 1, 4, n_step=1, discount=0.9)
    with pytest.raises(RunError, match="non-finite"):
        replay.add_episode(torch.zeros(3, 2), torch.zeros(2, 1, dtype=torch.long), torch.tensor([1.0, float("inf")]),
                           False)
    assert replay.transitions_added == 0


def _drift(replay: EpisodeReplay | None = None) -> Collector:
    # episodes of up to 8 steps that draw from the env's RNG at every step, with noisy rewards
    task = make_task("gym:toy_env:Drift-v0", action_repeat=2, episode_length=8)
    replay = replay or EpisodeReplay(1000, task.obs_dim, task.action_dim, 4, n_step=2, discount=0.9)
    envs = task.make_vector_env([1, 2, 3], noise={"mean": 0.0, "std": 0.5, "reads": 1, "reduce": "median"})
    return Collector(envs, replay, 4, 8)


def _through_a_checkpoint(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_a_restored_collector_continues_its_episodes_exactly():
    generator = torch.Generator().manual_seed(0)
    original = _drift()
    for _ in range(11):
        original.step(torch.randint(4, (3, 2), generator=generator))
    state = _through_a_checkpoint({"collector": original.state_dict(), "replay": original.replay.state_dict()})
    assert state["collector"]["episodes"]["ep_length"].gt(0).any()  # episodes in progress
    assert state["collector"]["finished"]  # and finished ones not yet drained

    # built as a resumed run builds it, from the same seeds: its envs have reset, their episodes are fresh
    resumed = _drift()
    resumed.replay.load_state_dict(state["replay"])
    assert resumed.load_state_dict(state["collector"]) is None
    for _ in range(20):
        bins = torch.randint(4, (3, 2), generator=generator)
        original.step(bins)
        resumed.step(bins)
    (episodes, sums), (resumed_episodes, resumed_sums) = original.drain(), resumed.drain()
    assert episodes == resumed_episodes and torch.equal(sums, resumed_sums)
    assert torch.equal(original.obs, resumed.obs)
    mine, theirs = original.replay.state_dict(), resumed.replay.state_dict()
    assert all(torch.equal(v, theirs[k]) if isinstance(v, torch.Tensor) else v == theirs[k] for k, v in mine.items())


class LockedWalk(Walk):
    """Walk holding a lock: state an env snapshot cannot hold."""

    def __init__(self):
        super().__init__(None, "reward")
        self.lock = threading.Lock()


def test_envs_a_snapshot_cannot_hold_start_fresh_episodes_and_keep_the_counts():
    def collector() -> Collector:
        envs = gym.vector.SyncVectorEnv([lambda: gym.wrappers.TimeLimit(LockedWalk(), 3) for _ in range(3)],
                                        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
        return Collector(envs, EpisodeReplay(100, 2, 1, 4, n_step=1, discount=0.9), 4, 3)

    original = collector()
    for _ in range(4):
        original.step(torch.zeros(3, 1, dtype=torch.long))
    state = _through_a_checkpoint(original.state_dict())
    assert state["episodes"] is None and "LockedWalk.lock is a _thread.lock" in state["why"]
    resumed = collector()
    assert resumed.load_state_dict(state) == state["why"]
    assert (resumed.steps, resumed.reward_range) == (4, [1.0, 1.0])
    assert repr(resumed.finished) == repr(original.finished) != "[]"  # success is nan: Walk does not report it
    assert resumed.ep_length.eq(0).all()  # the envs' fresh episodes


TOY = ("demos=0", "episode_length=1", "action_repeat=1", "bins=8", "num_envs=4", "seed_steps=40", "batch_size=16",
       "replay_size=1000", "model.dim=16", "model.depth=1", "model.heads=2", "pretrain_updates=10", "eval_every=100",
       "eval_episodes=8", "log_every=100", "checkpoint_every=100", "threads=1", "progress=false", "wandb.mode=disabled",
       "train_steps=100")


@pytest.mark.slow
@pytest.mark.parametrize("agents, task, agent", [(1, "NaNReward-v0", 0), (2, "NaNRewardAgent1-v0", 1)])
def test_a_nan_reward_stops_the_run_with_one_line_naming_the_env(tmp_path, agents, task, agent):
    result = run_train(*TOY, f"num_agents={agents}", f"task=gym:toy_env:{task}", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 3, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr  # no traceback, from this agent or the others
    assert lines[0].startswith(f"dqt: task=gym:toy_env:{task}, agent {agent}, sub-env 2 returned reward=nan at its "
                               "step 5;"), lines[0]


@pytest.mark.slow
def test_bad_data_drop_finishes_the_run_and_counts_the_dropped_step(tmp_path):
    result = run_train(*TOY, "num_agents=1", "task=gym:toy_env:InfObs-v0", "bad_data=drop", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["train/dropped_steps"] == 1  # a one-step episode
    state = newest_checkpoint(tmp_path, 0)
    assert state["replay"]["transitions_added"] == 99
    assert all(torch.isfinite(w).all() for w in state["learner"]["model"].values())


def test_eps_exploration_redraws_each_dimension_with_probability_eps():
    """explore.kind=eps (the default): each dimension independently takes a uniformly random bin with
    probability eps, so it differs from the greedy bin with probability eps * (bins - 1) / bins."""
    greedy = torch.full((50_000, 4), 5)
    chosen = explore(greedy, 11, kind="eps", std=0.2, eps=0.1, generator=torch.Generator().manual_seed(0))
    changed = (chosen != greedy).double()
    assert abs(changed.mean().item() - 0.1 * 10 / 11) < 0.003  # 200k draws: sd of the mean 0.0006
    assert abs((changed[:, 0] * changed[:, 1]).mean().item() - (0.1 * 10 / 11) ** 2) < 0.001  # independent
    counts = torch.bincount(chosen[chosen != 5], minlength=11).double()
    assert counts[5] == 0 and (counts.sum() / 10 - counts[torch.arange(11) != 5]).abs().max() < 0.1 * counts.sum() / 10
    same = explore(greedy, 11, kind="eps", std=0.2, eps=0.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(same, greedy)


def test_spread_gives_each_sub_env_its_own_eps():
    # N = 2 agents x 3 envs = 6, spread 5: exponent 1 + 5 i / 5 = 1 + i, so eps 0.5 gives 0.5^(1+i):
    # agent 0 envs 0..2 -> i = 0, 1, 2 -> 0.5, 0.25, 0.125; agent 1 -> i = 3, 4, 5 -> 0.0625, 0.03125, 0.015625
    assert env_eps(0.5, 5.0, 0, 3, 2).tolist() == [0.5, 0.25, 0.125]
    assert env_eps(0.5, 5.0, 1, 3, 2).tolist() == [0.0625, 0.03125, 0.015625]
    assert env_eps(0.1, 0.0, 1, 3, 2).tolist() == [torch.tensor(0.1).item()] * 3  # spread 0: eps everywhere
    assert env_eps(0.1, 7.0, 0, 1, 1).tolist() == [torch.tensor(0.1).item()]  # a single env keeps eps
    # explore draws each env's dimensions with its own eps: env 0 always, env 1 never, env 2 half the time
    greedy = torch.full((3, 20_000), 5)
    chosen = explore(greedy, 11, "eps", 0.2, torch.tensor([1.0, 0.0, 0.5]), torch.Generator().manual_seed(0))
    changed = (chosen != greedy).double().mean(1)
    assert abs(changed[0].item() - 10 / 11) < 0.01 and changed[1].item() == 0.0
    assert abs(changed[2].item() - 0.5 * 10 / 11) < 0.015  # 20k draws: sd 0.0035
    # the same eps for every env as a tensor draws exactly what the number does (runs with spread 0 unchanged)
    as_number = explore(greedy, 11, "eps", 0.2, 0.1, torch.Generator().manual_seed(1))
    assert torch.equal(as_number, explore(greedy, 11, "eps", 0.2, env_eps(0.1, 0.0, 0, 3, 1), torch.Generator().manual_seed(1)))


def test_gaussian_exploration_moves_the_continuous_action_and_snaps_it_to_a_bin():
    greedy = torch.full((50_000, 2), 5)  # bin 5 of 11 is action 0.0; bins are 0.2 apart
    chosen = explore(greedy, 11, kind="gaussian", std=0.2, eps=0.1, generator=torch.Generator().manual_seed(0))
    # rounding to the nearest centre: |noise| < 0.1 keeps bin 5, P = erf(0.5 / sqrt 2) = 0.3829
    assert abs((chosen == 5).double().mean().item() - 0.3829) < 0.005
    assert torch.equal(explore(greedy, 11, kind="gaussian", std=0.0, eps=0.1, generator=torch.Generator()), greedy)


def test_exploration_flags_reach_the_replays_n_step_windows():
    # One Drift env, 6-step episodes (a time limit), n = 3 with n_step_cut: step 2's action is marked
    # explored, so (hand-worked as in test_algorithm.py) the windows are m_t = [2, 1, 3, 3, 2, 1].
    task = make_task("gym:toy_env:Drift-v0", action_repeat=1, episode_length=6)
    replay = EpisodeReplay(100, task.obs_dim, task.action_dim, bins=5, n_step=3, discount=0.5, n_step_cut=True)
    collector = Collector(task.make_vector_env([3]), replay, 5, 6)
    zero = torch.full((1, task.action_dim), 2)  # the middle bin: no push
    for t in range(6):
        collector.step(zero, torch.tensor([t == 2]))
        if t == 3:  # an episode in progress keeps its flags through a checkpoint
            state = collector.state_dict()
            assert state["episodes"]["ep_explored"][0, :4].tolist() == [False, False, True, False]
    assert replay.transitions_added == 6  # the goal was not reached: the whole episode is stored
    assert replay.offset[:6].tolist() == [2, 1, 3, 3, 2, 1]
    # without flags (demonstrations) no window is cut
    collector.step(zero)
    assert not collector.ep_explored[0, 0]


def _correlation(color: float, length: int, lag: int) -> float:
    """powerlaw_noise's correlation at `lag` by hand: the coefficients' variances (amplitude^2 = f^-color, the
    lowest frequency's for f = 0; twice for the real-only f = 0 and f = 1/2) weight cos(2 pi f lag)."""
    numerator = denominator = 0.0
    for k in range(length // 2 + 1):
        f = k / length
        power = max(f, 1 / length) ** -color * (2 if k == 0 or 2 * k == length else 4)
        numerator += power * math.cos(2 * math.pi * f * lag)
        denominator += power
    return numerator / denominator


@pytest.mark.parametrize("color", [0.0, 1.0, 2.0])
def test_colored_noise_has_unit_variance_and_the_correlations_its_spectrum_implies(color):
    noise = powerlaw_noise(color, (20_000,), 50, torch.Generator().manual_seed(0))
    assert noise.shape == (20_000, 50) and noise.dtype == torch.float32
    noise = noise.double()
    variance = noise.pow(2).mean(0)  # per step, over the series: every step has variance 1
    assert variance.sub(1).abs().max() < 0.06  # 20k draws: sd 0.01
    for lag in (1, 5, 25):
        measured = (noise[:, lag:] * noise[:, :-lag]).mean().item()
        assert abs(measured - _correlation(color, 50, lag)) < 0.015, lag
    if color == 0:  # white: no correlation at any lag, by the hand formula too
        assert all(abs(_correlation(0.0, 50, lag)) < 1e-12 for lag in (1, 5, 25))
    else:  # pink and red: a push lasts
        assert _correlation(color, 50, 1) > 0.5


def test_colored_noise_reads_one_step_of_each_series_per_call_and_goes_on_after_a_restore():
    colored = ColoredNoise(1.0, num_envs=3, action_dim=2, length=4, generator=torch.Generator().manual_seed(7))
    steps = torch.stack([colored.next() for _ in range(6)], -1)  # [3, 2, 6]: a new series of 4 after 4 steps
    expected_generator = torch.Generator().manual_seed(7)
    first, second = (powerlaw_noise(1.0, (3, 2), 4, expected_generator) for _ in range(2))
    assert torch.equal(steps, torch.cat([first, second[..., :2]], -1))

    restored = ColoredNoise(1.0, 3, 2, 4, torch.Generator().manual_seed(99))
    restored.load_state_dict(colored.state_dict())
    assert torch.equal(restored.next(), second[..., 2]) and torch.equal(restored.next(), second[..., 3])


def test_gaussian_exploration_with_colored_noise_moves_the_action_by_std_times_the_series():
    colored = ColoredNoise(2.0, num_envs=1, action_dim=3, length=5, generator=torch.Generator().manual_seed(3))
    copy = ColoredNoise(2.0, 1, 3, 5, torch.Generator().manual_seed(3))
    greedy = torch.tensor([[5, 0, 10]])
    for _ in range(5):
        chosen = explore(greedy, 11, "gaussian", 0.3, 0.1, torch.Generator(), colored)
        assert torch.equal(chosen, to_bins(from_bins(greedy, 11) + copy.next() * 0.3, 11))
