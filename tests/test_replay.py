"""Tests of dqt.replay.EpisodeReplay with hand-made episodes.

Observations encode where they came from: obs[t] = [100 * episode + t, T], so every sampled transition
can be checked against its episode and step without re-deriving anything with dqt's code.
"""

from __future__ import annotations

import io

import pytest
import torch

from dqt.replay import EpisodeReplay, sample_mixed


def _episode(episode: int, T: int, rewards: list[float] | None = None):
    obs = torch.tensor([[100.0 * episode + t, float(T)] for t in range(T + 1)])
    bins = torch.tensor([[t % 5, (2 * t + episode) % 5] for t in range(T)])
    r = torch.tensor(rewards if rewards is not None else [0.0] * T)
    return obs, bins, r


def _replay(capacity: int, n_step: int = 3, discount: float = 0.5) -> EpisodeReplay:
    return EpisodeReplay(capacity, obs_dim=2, action_dims=2, bins=5, n_step=n_step, discount=discount)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# rewards [1, 2, 3, 4], n = 3, gamma = 0.5 (hand-worked in test_algorithm.py)
R = {0: 2.75, 1: 4.5, 2: 5.0, 3: 4.0}
MC = {0: 3.25, 1: 4.5, 2: 5.0, 3: 4.0}
NEXT_T = {0: 3, 1: 4, 2: 4, 3: 4}  # t + min(3, 4 - t)


@pytest.mark.parametrize("terminated, bootstrap", [
    (False, {0: 0.125, 1: 0.125, 2: 0.25, 3: 0.5}),
    (True, {0: 0.125, 1: 0.0, 2: 0.0, 3: 0.0}),
])
def test_sampled_transitions_match_the_episode(terminated, bootstrap):
    replay = _replay(capacity=20)
    obs, bins, rewards = _episode(7, 4, [1.0, 2.0, 3.0, 4.0])
    replay.add_episode(obs, bins, rewards, terminated)
    assert len(replay) == 4
    assert replay.transitions_added == 4
    batch = replay.sample(64, _gen(0))
    seen = set()
    for i in range(64):
        ep, t = divmod(int(batch["obs"][i, 0]), 100)
        assert ep == 7 and 0 <= t < 4
        seen.add(t)
        assert batch["next_obs"][i].tolist() == [700.0 + NEXT_T[t], 4.0]
        assert batch["bins"][i].tolist() == [t % 5, (2 * t + 7) % 5]
        assert batch["nstep_return"][i].item() == R[t]
        assert batch["bootstrap_discount"][i].item() == bootstrap[t]
        assert batch["mc_return"][i].item() == MC[t]
        assert batch["steps"][i].item() == NEXT_T[t] - t
        assert batch["to_end"][i].item() == 4 - t
        assert batch["terminated"][i].item() == terminated
    assert seen == {0, 1, 2, 3}  # the final observation (t = 4) is never sampled as a transition
    assert batch["bins"].dtype == torch.long


def test_wrap_overwrites_the_oldest_episode():
    replay = _replay(capacity=10)  # three episodes of 4 steps need 15 rows: the third overwrites the first
    for ep in (1, 2, 3):
        replay.add_episode(*_episode(ep, 4), terminated=False)
    assert len(replay) == 8
    batch = replay.sample(200, _gen(1))
    episodes = (batch["obs"][:, 0] // 100).long()
    assert set(episodes.tolist()) == {2, 3}
    assert torch.equal((batch["next_obs"][:, 0] // 100).long(), episodes)
    t = batch["obs"][:, 0] % 100
    assert torch.equal(batch["next_obs"][:, 0] % 100, torch.clamp(t + 3, max=4.0))


def test_wrap_with_uneven_episodes():
    # capacity 12, n = 3, row layout worked by hand:
    #   ep1 T=4 -> rows 0-4;  ep2 T=5 -> rows 5-10;  ep3 T=3 does not fit in row 11: wraps to rows 0-3
    #   (ep1's steps gone);  ep4 T=2 -> rows 4-6, overwriting ep2's steps 0 and 1 (rows 5, 6).
    replay = _replay(capacity=12)
    for ep, T in ((1, 4), (2, 5), (3, 3)):
        replay.add_episode(*_episode(ep, T), terminated=False)
    assert len(replay) == 8  # ep3 steps 0-2, ep2 steps 0-4
    replay.add_episode(*_episode(4, 2), terminated=False)
    assert len(replay) == 8  # ep3 steps 0-2, ep4 steps 0-1, ep2 steps 2-4
    batch = replay.sample(500, _gen(2))
    pairs = set()
    for i in range(500):
        ep, t = divmod(int(batch["obs"][i, 0]), 100)
        T = int(batch["obs"][i, 1])
        pairs.add((ep, t))
        assert batch["next_obs"][i].tolist() == [100.0 * ep + min(t + 3, T), float(T)]
    assert pairs == {(3, 0), (3, 1), (3, 2), (4, 0), (4, 1), (2, 2), (2, 3), (2, 4)}


def test_episode_longer_than_capacity_is_rejected():
    with pytest.raises(ValueError):
        _replay(capacity=4).add_episode(*_episode(0, 4), terminated=False)


def test_empty_replay_cannot_sample():
    with pytest.raises(RuntimeError):
        _replay(capacity=4).sample(1)


def test_bytes_per_row():
    # obs 39 x 4 bytes + bins 4 x uint8 + four float32 scalars + uint8 offset + int32 to_end + two bools
    # = 156 + 4 + 16 + 1 + 4 + 2
    replay = EpisodeReplay(8, obs_dim=39, action_dims=4, bins=256, n_step=3, discount=0.98)
    assert replay.bytes_per_row() == 183
    # 257 bins no longer fit uint8: int16 bins, 4 x 2 bytes
    assert EpisodeReplay(8, obs_dim=39, action_dims=4, bins=257, n_step=3, discount=0.98).bytes_per_row() == 187


def test_sample_carries_the_one_step_backup():
    # a terminated episode of 3 steps, rewards 1, 2, 4; n = 3: rows 0..2 hold r_t, s_{t+1} is the next row,
    # and only the last step's s_{t+1} is terminal
    replay = EpisodeReplay(8, obs_dim=1, action_dims=1, bins=3, n_step=3, discount=0.5, one_step=True)
    obs = torch.tensor([[10.0], [11.0], [12.0], [13.0]])
    replay.add_episode(obs, torch.zeros(3, 1, dtype=torch.long), torch.tensor([1.0, 2.0, 4.0]), terminated=True)
    batch = replay.sample(64, torch.Generator().manual_seed(0))
    t = (batch["obs"][:, 0] - 10).long()
    assert torch.equal(batch["reward"], torch.tensor([1.0, 2.0, 4.0])[t])
    assert torch.equal(batch["next1_obs"][:, 0], batch["obs"][:, 0] + 1)
    assert torch.equal(batch["terminal1"], t == 2)
    assert torch.equal(batch["nstep_return"], torch.tensor([1 + 1 + 1.0, 2 + 2.0, 4.0])[t])  # the n-step sums stay


def test_state_dict_round_trip_gives_identical_samples():
    replay = _replay(capacity=12)
    for ep, T in ((1, 4), (2, 5), (3, 3)):
        replay.add_episode(*_episode(ep, T, [float(ep + t) for t in range(T)]), terminated=ep == 2)
    buffer = io.BytesIO()
    torch.save(replay.state_dict(), buffer)  # the checkpoint path: saved, then loaded weights_only
    buffer.seek(0)
    restored = _replay(capacity=12)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert len(restored) == len(replay) == 8
    a, b = replay.sample(32, _gen(3)), restored.sample(32, _gen(3))
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # The cursor is restored too: the next episode lands in the same rows of both buffers.
    for buf in (replay, restored):
        buf.add_episode(*_episode(4, 2, [1.0, 2.0]), terminated=True)
    a, b = replay.sample(32, _gen(4)), restored.sample(32, _gen(4))
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert restored.transitions_added == 14


@pytest.mark.parametrize("key, other", [("n_step", {"n_step": 5}), ("discount", {"discount": 0.9})])
def test_load_state_dict_rejects_other_return_settings(key, other):
    # Stored n-step sums and bootstrap discounts were computed with the checkpoint's n_step and discount;
    # a buffer configured otherwise must not silently adopt them (nor mix them with its own).
    saved = _replay(capacity=12)
    saved.add_episode(*_episode(1, 4, [1.0, 2.0, 3.0, 4.0]), terminated=False)
    configured = EpisodeReplay(12, obs_dim=2, action_dims=2, bins=5, **{"n_step": 3, "discount": 0.5, **other})
    with pytest.raises(ValueError, match=key):
        configured.load_state_dict(saved.state_dict())


def test_n_step_cut_uses_the_episodes_exploration_flags():
    # rewards [1, 2, 3, 4], explored [F, F, T, F], n = 3, gamma = 0.5 (hand-worked in test_algorithm.py):
    # windows [2, 1, 2, 1]; without n_step_cut the flags are ignored: windows [3, 3, 2, 1]
    explored = torch.tensor([False, False, True, False])
    for cut, steps, R in ((True, [2, 1, 2, 1], [2.0, 2.0, 5.0, 4.0]), (False, [3, 3, 2, 1], [2.75, 4.5, 5.0, 4.0])):
        replay = EpisodeReplay(20, obs_dim=2, action_dims=2, bins=5, n_step=3, discount=0.5, n_step_cut=cut)
        replay.add_episode(*_episode(7, 4, [1.0, 2.0, 3.0, 4.0]), terminated=False, explored=explored)
        batch = replay.sample(64, _gen(0))
        t = (batch["obs"][:, 0] % 100).long()
        assert batch["steps"].tolist() == [steps[i] for i in t.tolist()]
        assert batch["nstep_return"].tolist() == [R[i] for i in t.tolist()]
        assert batch["next_obs"][:, 0].tolist() == [700.0 + i + steps[i] for i in t.tolist()]
    # a checkpoint's sums were made with its setting: a buffer with the other one refuses them
    saved = EpisodeReplay(12, obs_dim=2, action_dims=2, bins=5, n_step=3, discount=0.5, n_step_cut=True)
    with pytest.raises(ValueError, match="n_step_cut"):
        _replay(capacity=12).load_state_dict(saved.state_dict())
    older = _replay(capacity=12).state_dict()
    del older["n_step_cut"]  # written before the key: its windows were never cut
    _replay(capacity=12).load_state_dict(older)


def test_load_state_dict_rejects_other_shapes():
    small, large = _replay(capacity=8), _replay(capacity=12)
    with pytest.raises(ValueError, match="shape"):
        large.load_state_dict(small.state_dict())


def test_sampled_pairs_hold_the_bootstrap_state_as_a_transition():
    replay = _replay(capacity=30)  # n = 3
    replay.add_episode(*_episode(1, 4), terminated=False)
    replay.add_episode(*_episode(2, 9), terminated=False)
    batch = replay.sample(301, _gen(5))  # odd: 151 anchors, 150 partner rows
    successor = batch["successor"]
    assert successor.shape == (301,) and successor.dtype == torch.long
    assert (successor[150:] == -1).all()  # partner rows and the unpartnered last anchor
    episode, t = (batch["obs"][:, 0] // 100).long(), (batch["obs"][:, 0] % 100).long()
    T = batch["obs"][:, 1].long()
    for i in range(150):
        # paired exactly when s_{t+3} is a stored transition (not the final observation of the episode)
        assert (successor[i] >= 0) == (t[i] + 3 < T[i]), (i, t[i], T[i])
        if successor[i] >= 0:
            j = int(successor[i])
            assert j == 151 + i
            assert torch.equal(batch["obs"][j], batch["next_obs"][i])
            assert episode[j] == episode[i] and t[j] == t[i] + 3
    assert 0 < int((successor >= 0).sum()) < 150
    # every transition still turns up, partner rows included
    assert {(int(e), int(s)) for e, s in zip(episode[151:], t[151:])} == \
        {(1, s) for s in range(4)} | {(2, s) for s in range(9)}


@pytest.mark.parametrize("share, from_demos", [(0.5, 8), (0.25, 4), (0.0, 0), (1.0, 16)])
def test_mixed_batches_take_a_fixed_share_from_the_demos(share, from_demos):
    online, demos = _replay(capacity=40), _replay(capacity=40)
    for ep in (1, 2):
        online.add_episode(*_episode(ep, 6), terminated=False)
    demos.add_episode(*_episode(9, 6), terminated=True)
    batch = sample_mixed(online, demos, 16, share, _gen(3))
    episodes = (batch["obs"][:, 0] // 100).long()
    assert (episodes == 9).sum().item() == from_demos and episodes[:from_demos].eq(9).all()
    assert batch["terminated"].sum().item() == from_demos
    assert batch["demo"].tolist() == [True] * from_demos + [False] * (16 - from_demos)
    # every pair still points at the row holding its bootstrap state, across the concatenation
    for i, j in enumerate(batch["successor"].tolist()):
        if j >= 0:
            assert torch.equal(batch["obs"][j], batch["next_obs"][i])


def test_mixed_batches_use_the_only_replay_that_holds_episodes():
    online, demos = _replay(capacity=40), _replay(capacity=40)
    demos.add_episode(*_episode(9, 6), terminated=False)
    assert (sample_mixed(online, demos, 8, 0.5, _gen(0))["obs"][:, 0] // 100).eq(9).all()  # pretraining: demos only
    online.add_episode(*_episode(1, 6), terminated=False)
    assert (sample_mixed(online, None, 8, 0.5, _gen(0))["obs"][:, 0] // 100).eq(1).all()  # demos=0
    empty = _replay(capacity=40)
    assert (sample_mixed(online, empty, 8, 0.5, _gen(0))["obs"][:, 0] // 100).eq(1).all()


def test_one_step_fields_only_when_asked_and_old_checkpoints_still_load():
    obs, bins, rewards = torch.tensor([[1.0], [2.0], [3.0]]), torch.zeros(2, 1, dtype=torch.long), torch.ones(2)
    plain = EpisodeReplay(8, obs_dim=1, action_dims=1, bins=3, n_step=3, discount=0.5)
    plain.add_episode(obs, bins, rewards, terminated=False)
    assert "reward" not in plain.sample(4, torch.Generator().manual_seed(0))
    old = {k: v for k, v in plain.state_dict().items() if k not in ("reward", "one_step")}  # before n_step_bound
    EpisodeReplay(8, obs_dim=1, action_dims=1, bins=3, n_step=3, discount=0.5).load_state_dict(old)
    with pytest.raises(ValueError, match="predates n_step_bound"):  # r_t cannot be recovered from 3-step sums
        EpisodeReplay(8, obs_dim=1, action_dims=1, bins=3, n_step=3, discount=0.5, one_step=True).load_state_dict(old)
