"""Tests of dqt.algorithm against hand-worked numbers (every expectation is a literal computed on paper).

Values are chosen to be exact in binary (halves, quarters, eighths) wherever the arithmetic allows, so
most comparisons are exact.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from dqt import algorithm
from dqt.learner import Learner
from dqt.model import QTransformer

# --------------------------------------------------------------------------------------------------
# nstep_returns: rewards [1, 2, 3, 4], gamma = 0.5


REWARDS = torch.tensor([1.0, 2.0, 3.0, 4.0])
# mc_t = r_t + 0.5 mc_{t+1}: mc_3 = 4, mc_2 = 3 + 2 = 5, mc_1 = 2 + 2.5 = 4.5, mc_0 = 1 + 2.25 = 3.25
MC = [3.25, 4.5, 5.0, 4.0]


def _check(out, R, bootstrap, offset, mc):
    got_R, got_bootstrap, got_offset, got_mc = out
    assert got_R.dtype == torch.float32 and got_bootstrap.dtype == torch.float32 and got_mc.dtype == torch.float32
    assert torch.equal(got_R, torch.tensor(R))
    assert torch.equal(got_bootstrap, torch.tensor(bootstrap))
    assert got_offset.tolist() == offset
    assert torch.equal(got_mc, torch.tensor(mc))


def test_nstep_returns_n3_truncated():
    # R_0 = 1 + 0.5*2 + 0.25*3 = 2.75; R_1 = 2 + 1.5 + 1 = 4.5; R_2 = 3 + 2 = 5; R_3 = 4
    # windows m = min(3, 4 - t) = [3, 3, 2, 1]; bootstrap gamma^m = [1/8, 1/8, 1/4, 1/2]
    out = algorithm.nstep_returns(REWARDS, terminated=False, n=3, discount=0.5)
    _check(out, [2.75, 4.5, 5.0, 4.0], [0.125, 0.125, 0.25, 0.5], [3, 3, 2, 1], MC)


def test_nstep_returns_n3_terminated():
    # t + m >= T = 4 for t = 1, 2, 3: those windows end in the terminal state and do not bootstrap.
    out = algorithm.nstep_returns(REWARDS, terminated=True, n=3, discount=0.5)
    _check(out, [2.75, 4.5, 5.0, 4.0], [0.125, 0.0, 0.0, 0.0], [3, 3, 2, 1], MC)


def test_nstep_returns_n1():
    out = algorithm.nstep_returns(REWARDS, terminated=False, n=1, discount=0.5)
    _check(out, [1.0, 2.0, 3.0, 4.0], [0.5, 0.5, 0.5, 0.5], [1, 1, 1, 1], MC)
    out = algorithm.nstep_returns(REWARDS, terminated=True, n=1, discount=0.5)
    _check(out, [1.0, 2.0, 3.0, 4.0], [0.5, 0.5, 0.5, 0.0], [1, 1, 1, 1], MC)


def test_nstep_returns_n_longer_than_episode():
    # n = 10 > T = 2, rewards [2, 4], gamma 0.5: m = [2, 1], R = [2 + 2, 4], mc = [4, 4]
    out = algorithm.nstep_returns(torch.tensor([2.0, 4.0]), terminated=False, n=10, discount=0.5)
    _check(out, [4.0, 4.0], [0.25, 0.5], [2, 1], [4.0, 4.0])
    out = algorithm.nstep_returns(torch.tensor([2.0, 4.0]), terminated=True, n=10, discount=0.5)
    _check(out, [4.0, 4.0], [0.0, 0.0], [2, 1], [4.0, 4.0])


def test_nstep_returns_cut_before_exploratory_steps():
    # explored = [F, F, T, F]: step 2's action was random. Windows m = min(3, 4 - t, first k >= 1 with
    # explored[t + k]): t = 0: k = 2 -> m = 2; t = 1: k = 1 -> m = 1; t = 2: its own exploration does not cut,
    # nothing after it is explored -> m = 2; t = 3: m = 1.
    # R_0 = 1 + 0.5*2 = 2; R_1 = 2; R_2 = 3 + 2 = 5; R_3 = 4; bootstrap gamma^m = [1/4, 1/2, 1/4, 1/2]
    explored = torch.tensor([False, False, True, False])
    out = algorithm.nstep_returns(REWARDS, terminated=False, n=3, discount=0.5, explored=explored)
    _check(out, [2.0, 2.0, 5.0, 4.0], [0.25, 0.5, 0.25, 0.5], [2, 1, 2, 1], MC)
    # terminated: only windows reaching T = 4 (t = 2, 3) end in the terminal state; the cut ones bootstrap
    out = algorithm.nstep_returns(REWARDS, terminated=True, n=3, discount=0.5, explored=explored)
    _check(out, [2.0, 2.0, 5.0, 4.0], [0.25, 0.5, 0.0, 0.0], [2, 1, 2, 1], MC)
    # nothing explored: the plain windows; every step explored: one-step returns (the MC return never changes)
    out = algorithm.nstep_returns(REWARDS, terminated=False, n=3, discount=0.5, explored=torch.zeros(4, dtype=torch.bool))
    _check(out, [2.75, 4.5, 5.0, 4.0], [0.125, 0.125, 0.25, 0.5], [3, 3, 2, 1], MC)
    out = algorithm.nstep_returns(REWARDS, terminated=True, n=3, discount=0.5, explored=torch.ones(4, dtype=torch.bool))
    _check(out, [1.0, 2.0, 3.0, 4.0], [0.5, 0.5, 0.5, 0.0], [1, 1, 1, 1], MC)


# --------------------------------------------------------------------------------------------------
# targets: d = 2 dimensions, 3 bins, batch of 2

TARGET_Q = torch.tensor([
    [[0.125, 0.5, 0.25], [0.375, 0.875, 0.5]],  # dim-1 max 0.875 (dim-0 max 0.5 must not be used)
    [[0.75, 0.0, 0.625], [0.25, 0.125, 0.8125]],  # dim-1 max 0.8125
])
TARGET_Q_NEXT_FIRST = torch.tensor([[0.5, 0.25, 0.75], [1.0, 2.0, 3.0]])  # maxes 0.75, 3.0
NSTEP_RETURN = torch.tensor([0.5, 0.25])
BOOTSTRAP = torch.tensor([0.5, 0.0])  # row 1: the episode terminated inside the window
MC_RETURN = torch.tensor([0.9375, 0.5])


class _QAsFeatures:
    """A stand-in target head whose features are already the Q-values of its one critic: backup_values(f) = f."""

    @staticmethod
    def backup_values(features):
        return features

    @staticmethod
    def head_at(features, bins):
        return features.gather(-1, bins.unsqueeze(-1)).squeeze(-1)


def _targets(target_q, target_q_next_first, nstep, bootstrap, mc, mc_lower_bound, online_q=None, online_next=None):
    head = _QAsFeatures()
    return algorithm.targets(algorithm.greedy_values(head, target_q[:, 1:], None if online_q is None else online_q[:, 1:]),
                             algorithm.greedy_values(head, target_q_next_first, online_next),
                             nstep, bootstrap, mc, mc_lower_bound)


def test_targets_without_mc_bound():
    y = _targets(TARGET_Q, TARGET_Q_NEXT_FIRST, NSTEP_RETURN, BOOTSTRAP, MC_RETURN, mc_lower_bound=False)
    # y[:, 0] = max_b target_q[:, 1, b]; y[:, 1] = R + disc * max_b next_first: 0.5 + 0.5*0.75, 0.25 + 0*3
    assert torch.equal(y, torch.tensor([[0.875, 0.875], [0.8125, 0.25]]))


def test_targets_with_mc_bound():
    y = _targets(TARGET_Q, TARGET_Q_NEXT_FIRST, NSTEP_RETURN, BOOTSTRAP, MC_RETURN, mc_lower_bound=True)
    # row 0: G = 0.9375 lifts both; row 1: G = 0.5 lifts only the last dimension (0.25), not 0.8125
    assert torch.equal(y, torch.tensor([[0.9375, 0.9375], [0.8125, 0.5]]))


def test_n_step_bound_takes_the_larger_of_the_one_step_and_n_step_backups():
    within = torch.tensor([[0.3], [0.6]])
    # n-step: R + gamma^m V(s_{t+m}) = 1 + 0.25 * 2 = 1.5 and -1 + 0.25 * 2 = -0.5
    # 1-step: r + gamma V(s_{t+1}) = 0.5 + 0.5 * 1 = 1.0 and 0.5 + 0.5 * 2 = 1.5; a terminal s_{t+1}: r alone
    args = (within, torch.tensor([2.0, 2.0]), torch.tensor([1.0, -1.0]), torch.tensor([0.25, 0.25]),
            torch.tensor([0.0, 0.0]), False)
    one_step = (torch.tensor([0.5, 0.5]), torch.tensor([0.5, 0.5]), torch.tensor([1.0, 2.0]))
    assert torch.equal(algorithm.targets(*args), torch.tensor([[0.3, 1.5], [0.6, -0.5]]))
    assert torch.equal(algorithm.targets(*args, one_step=one_step), torch.tensor([[0.3, 1.5], [0.6, 1.5]]))
    terminal = (torch.tensor([0.5, 0.5]), torch.tensor([0.5, 0.0]), torch.tensor([1.0, 2.0]))
    assert torch.equal(algorithm.targets(*args, one_step=terminal), torch.tensor([[0.3, 1.5], [0.6, 0.5]]))


def test_targets_are_clipped_to_the_value_bounds():
    # unclipped (test_targets_with_mc_bound): [[0.9375, 0.9375], [0.8125, 0.5]]; bounds [0.625, 0.875]
    y = _targets(TARGET_Q, TARGET_Q_NEXT_FIRST, NSTEP_RETURN, BOOTSTRAP, MC_RETURN, mc_lower_bound=True)
    clipped, share = algorithm.clip_targets(y, (0.625, 0.875))
    assert torch.equal(clipped, torch.tensor([[0.875, 0.875], [0.8125, 0.625]]))
    assert share.item() == 0.75  # three of the four moved; a target on a bound is not counted
    assert algorithm.clip_targets(clipped, (0.625, 0.875))[1].item() == 0.0


def test_value_bounds_are_the_mapped_range_of_returns_the_rewards_allow():
    # gamma = 0.5: returns lie in [min(r_lo, 0), max(r_hi, 0)] / (1 - gamma) = [-2, 4] for rewards in [-1, 2];
    # the map scale 0.125, low -4 sends them to [0.125 * (-2 + 4), 0.125 * (4 + 4)] = [0.25, 1]
    vmap = algorithm.ValueMap(scale=0.125, low=-4.0)
    assert vmap.bounds(-1.0, 2.0, 0.5) == (0.25, 1.0)
    # rewards that never cross 0 still allow a terminal state's 0: [0, 4] -> [0.5, 1]
    assert vmap.bounds(0.5, 2.0, 0.5) == (0.5, 1.0)
    # the map `value_map` makes from the same rewards sends them to exactly [0, 1]
    assert algorithm.value_map("map", 0.5, -1.0, 2.0).bounds(-1.0, 2.0, 0.5) == (0.0, 1.0)
    # no bound without discounting, nor before any reward has been seen (the collector's empty range)
    assert vmap.bounds(-1.0, 2.0, 1.0) == (-math.inf, math.inf)
    assert vmap.bounds(math.inf, -math.inf, 0.5) == (-math.inf, math.inf)


def test_targets_three_dimensions_use_the_next_dimension():
    target_q = torch.tensor([[[9.0, 0.0], [1.0, 2.0], [3.0, 0.5]]])  # d = 3, bins = 2
    y = _targets(target_q, torch.tensor([[0.0, 4.0]]), torch.tensor([1.0]), torch.tensor([0.25]),
                 torch.tensor([0.0]), mc_lower_bound=False)
    assert torch.equal(y, torch.tensor([[2.0, 3.0, 2.0]]))  # 1 + 0.25 * 4 = 2


def test_double_q_targets_value_the_online_argmax_with_the_target_net():
    target_q = torch.tensor([[[9.0, 0.0, 0.0], [1.0, 2.0, 3.0]]])  # d = 2, bins = 3
    online_q = torch.tensor([[[0.0, 0.0, 0.0], [5.0, 0.0, 1.0]]])  # online prefers bin 0 of dimension 2
    next_target = torch.tensor([[4.0, 8.0, 2.0]])
    next_online = torch.tensor([[0.0, 0.0, 7.0]])  # online prefers bin 2 at the bootstrap state
    y = _targets(target_q, next_target, torch.tensor([1.0]), torch.tensor([0.5]), torch.tensor([0.0]),
                 mc_lower_bound=False, online_q=online_q, online_next=next_online)
    # dimension 1: target's value of bin 0 of dimension 2 = 1 (not the max 3); last: 1 + 0.5 * 2 = 2 (not 1 + 4)
    assert torch.equal(y, torch.tensor([[1.0, 2.0]]))


# --------------------------------------------------------------------------------------------------
# loss: B = 2, d = 2, bins = 3

Q = torch.tensor([
    [[1.0, 2.0, 3.0], [0.5, -1.0, 4.0]],
    [[0.0, 0.0, 2.0], [1.0, 0.0, 0.0]],
])
DATA_BINS = torch.tensor([[1, 2], [0, 1]])
Y = torch.tensor([[1.5, 3.0], [1.0, 0.5]])
# q_data = [[2, 4], [0, 0]]; errors [[0.5, 1], [-1, -0.5]] -> squares [[0.25, 1], [1, 0.25]], mean 0.625
TD = 0.3125  # 0.5 * 0.625
# mean over the two non-data bins of q^2: [[(1+9)/2, (0.25+1)/2], [(0+4)/2, (1+0)/2]] = [[5, 0.625], [2, 0.5]]
CONSERVATIVE = 1.015625  # 0.5 * (5 + 0.625 + 2 + 0.5) / 4
Q_DATA_MEAN = 1.5  # (2 + 4 + 0 + 0) / 4


def test_loss_by_hand():
    total, td, conservative, q_data = algorithm.loss(Q, DATA_BINS, Y, conservative_weight=0.5)
    assert td.item() == TD
    assert conservative.item() == CONSERVATIVE
    assert total.item() == 0.8203125  # 0.3125 + 0.5 * 1.015625
    assert q_data.item() == Q_DATA_MEAN


def test_loss_weight_zero_is_td_only():
    total, td, conservative, _ = algorithm.loss(Q, DATA_BINS, Y, conservative_weight=0.0)
    assert total.item() == TD and conservative.item() == CONSERVATIVE


def test_conservative_term_is_zero_when_q_is_zero_off_data():
    gen = torch.Generator().manual_seed(0)
    data_bins = torch.randint(7, (5, 3), generator=gen)
    q = torch.zeros(5, 3, 7).scatter(-1, data_bins.unsqueeze(-1), torch.randn(5, 3, 1, generator=gen) + 3.0)
    y = torch.zeros(5, 3)
    total, td, conservative, _ = algorithm.loss(q, data_bins, y, conservative_weight=2.0)
    assert conservative.item() == 0.0
    assert td.item() > 0.0
    assert total.item() == td.item()


def test_conservative_term_on_chosen_rows_weighs_as_their_share_of_the_batch():
    # the same per-row penalties as above; only row 1 chosen: its penalty summed, divided by B = 2
    rows = torch.tensor([False, True])
    per_row = [algorithm.loss(Q[i:i + 1], DATA_BINS[i:i + 1], Y[i:i + 1], 0.0)[2].item() for i in range(2)]
    _, _, conservative, _ = algorithm.loss(Q, DATA_BINS, Y, 1.0, rows)
    assert conservative.item() == per_row[1] / 2
    assert algorithm.loss(Q, DATA_BINS, Y, 1.0, torch.tensor([False, False]))[2].item() == 0.0
    assert algorithm.loss(Q, DATA_BINS, Y, 1.0, torch.tensor([True, True]))[2].item() == CONSERVATIVE


# excess over the data bin, own rows only: row 0: dim 0 bins [1, 3] above 2 -> [0, 1], dim 1 none above 4;
# row 1: dim 0 [0, 2] above 0 -> [0, 2], dim 1 [1, 0] above 0 -> [1, 0]; per row 1/2 mean_d sum excess^2 / 2:
# row 0 0.5 * (1/2 + 0) / 2 = 0.125, row 1 0.5 * (4/2 + 1/2) / 2 = 0.625
EXCESS = (0.125, 0.625)


def test_excess_term_by_hand_on_the_rows_outside_the_conservative_term():
    total, td, conservative, _ = algorithm.loss(Q, DATA_BINS, Y, 0.5, torch.tensor([False, False]), excess_weight=2.0)
    assert conservative.item() == sum(EXCESS) / 2 and total.item() == TD + 2.0 * sum(EXCESS) / 2
    # row 0 under the conservative term, row 1 under the excess term, each weighing as half the batch
    total, _, conservative, _ = algorithm.loss(Q, DATA_BINS, Y, 0.5, torch.tensor([True, False]), excess_weight=2.0)
    row0_conservative = 0.5 * (5 + 0.625) / 2
    assert conservative.item() == row0_conservative / 2 + EXCESS[1] / 2
    assert total.item() == TD + 0.5 * row0_conservative / 2 + 2.0 * EXCESS[1] / 2
    # every row under the conservative term (rows=None), or weight 0: the excess term is off
    assert algorithm.loss(Q, DATA_BINS, Y, 0.5, None, excess_weight=2.0)[2].item() == CONSERVATIVE
    assert algorithm.loss(Q, DATA_BINS, Y, 0.5, torch.tensor([False, False]))[2].item() == 0.0


def test_excess_term_pushes_only_the_bins_above_the_data_bin_down():
    q = Q.clone().requires_grad_(True)
    total, *_ = algorithm.loss(q, DATA_BINS, DATA_BINS.new_zeros(2, 2).float(), 0.0, torch.tensor([False, False]),
                               excess_weight=1.0)
    (total - 0.5 * (q.gather(-1, DATA_BINS.unsqueeze(-1)).squeeze(-1)).pow(2).mean()).backward()  # drop the TD term
    # d/dq of mean_B 1/2 mean_d sum_b excess^2 / 2 = excess / (B * d * 2) = excess / 8; data bins get nothing
    expected = torch.tensor([[[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]], [[0.0, 0.0, 2.0], [1.0, 0.0, 0.0]]]) / 8
    assert torch.equal(q.grad, expected)


def test_loss_gradient_flows_into_q_only():
    q = Q.clone().requires_grad_(True)
    y = Y.clone().requires_grad_(True)
    total, *_ = algorithm.loss(q, DATA_BINS, y, conservative_weight=0.5)
    total.backward()
    assert y.grad is None
    # d td / d q_data = (q_data - y) / (B d) = error / 4; d cons / d q_b = w * 0.5 * 2 q_b / (bins-1) / (B d)
    # = 0.5 * q_b / 2 / 4 = q_b / 16 on non-data bins
    expected = torch.tensor([
        [[1.0 / 16, 0.5 / 4, 3.0 / 16], [0.5 / 16, -1.0 / 16, 1.0 / 4]],
        [[-1.0 / 4, 0.0, 2.0 / 16], [1.0 / 16, -0.5 / 4, 0.0]],
    ])
    torch.testing.assert_close(q.grad, expected, rtol=0, atol=1e-7)


# --------------------------------------------------------------------------------------------------
# The learner's loss depends on the rewards (through the last dimension's target)

LEARNER_CFG = {"lr": 1e-3, "weight_decay": 0.0, "lr_schedule": "constant", "lr_final": 0.1, "lr_scale": "none",
               "num_agents": 1, "lr_plateau": {"factor": 0.5, "patience": 3}, "mc_lower_bound": True,
               "target_clip": False, "n_step_bound": False, "excess_weight": 0.0,
               "conservative_weight": 0.5, "grad_clip": 10.0, "tau": 0.005, "within_step": "target", "double_q": True, "discount": 0.5,
               "conservative_rows": "all", "eval_ema": 0.0}


def _batch(nstep_return: torch.Tensor) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    obs, next_obs = torch.randn(4, 3, generator=gen), torch.randn(4, 3, generator=gen)
    next_obs[0] = obs[2]  # row 0's bootstrap state is row 2's state, as replay.sample pairs them
    return {
        "obs": obs,
        "bins": torch.randint(5, (4, 2), generator=gen),
        "nstep_return": nstep_return,
        "bootstrap_discount": torch.tensor([0.5, 0.5, 0.0, 0.25]),
        "next_obs": next_obs,
        "mc_return": torch.zeros(4),
        "steps": torch.ones(4, dtype=torch.long),
        "to_end": torch.tensor([3, 2, 1, 4]),
        "terminated": torch.tensor([False, False, True, False]),
        "successor": torch.tensor([2, -1, -1, -1]),
        "demo": torch.tensor([True, True, False, False]),
    }


def _learner_loss(model: QTransformer, nstep_return: torch.Tensor) -> float:
    module = copy.deepcopy(model)
    learner = Learner(module, module, LEARNER_CFG, total_updates=10)
    return learner.update(_batch(nstep_return))["train/loss"]


def test_rewards_change_the_loss():
    torch.manual_seed(0)
    model = QTransformer(obs_dim=3, action_dims=2, bins=5, dim=16, depth=1, heads=2)
    base = _learner_loss(model, torch.tensor([0.1, 0.2, 0.3, 0.4]))
    same = _learner_loss(model, torch.tensor([0.1, 0.2, 0.3, 0.4]))
    other = _learner_loss(model, torch.tensor([0.1, 0.2, 0.9, 0.4]))
    assert math.isfinite(base)
    assert same == base
    assert other != base


@pytest.mark.parametrize("double_q", [False, True])
def test_values_at_paired_bootstrap_states_equal_their_own_forward(double_q):
    torch.manual_seed(0)
    model = QTransformer(obs_dim=3, action_dims=2, bins=5, dim=16, depth=1, heads=2)
    with torch.no_grad():
        model.advantage.weight.mul_(10.0)  # spread the bins so a wrong value shows
    learner = Learner(model, model, {**LEARNER_CFG, "double_q": double_q}, total_updates=10)
    batch = _batch(torch.tensor([0.1, 0.2, 0.3, 0.4]))
    q = model(batch["obs"], batch["bins"][:, :-1]).detach()
    paired = learner.targets(batch, q)
    alone = learner.targets({**batch, "successor": torch.full((4,), -1)}, q)
    # the same values from a 2-token and a 1-token forward: equal up to summation order
    torch.testing.assert_close(paired, alone, rtol=0, atol=1e-6)
    wrong = learner.targets({**batch, "successor": torch.tensor([1, -1, -1, -1])}, q)
    assert not torch.allclose(wrong[0], alone[0], rtol=0, atol=1e-4)  # a wrong pairing would show


def test_online_greedy_values_pick_by_the_mean_and_back_up_the_lowest_critic():
    # critics A = [1, 6, 2], B = [3, 1, 4]: mean [2, 3.5, 3] picks bin 1, where A has 1 and B 6 -> min 1, mean 3.5
    # (the max of the per-bin minima [1, 1, 2] would be 2: the pick is the mean's, the value the min's)
    q = torch.tensor([[[1.0, 6.0, 2.0], [3.0, 1.0, 4.0]]])  # [1, critics, bins]
    assert algorithm.online_greedy_values(q, "min").tolist() == [1.0]
    assert algorithm.online_greedy_values(q, "mean").tolist() == [3.5]
    assert algorithm.online_greedy_values(q[:, :1], "min").tolist() == [6.0]  # one critic: its own max


def test_within_step_online_values_the_next_dimension_by_the_online_net_only():
    torch.manual_seed(0)
    model = QTransformer(obs_dim=3, action_dims=2, bins=5, dim=16, depth=1, heads=2)
    cfg = {**LEARNER_CFG, "mc_lower_bound": False}
    by_target = Learner(model, model, cfg, total_updates=10)
    by_online = Learner(model, model, {**cfg, "within_step": "online"}, total_updates=10)
    by_online.target.load_state_dict(by_target.target.state_dict())
    with torch.no_grad():  # the online net moves away from the (shared) target net
        model.advantage.weight.mul_(10.0)
    batch = _batch(torch.tensor([0.1, 0.2, 0.3, 0.4]))
    q = model(batch["obs"], batch["bins"][:, :-1]).detach()  # [4, 2, 5]
    y_target, y_online = by_target.targets(batch, q), by_online.targets(batch, q)
    assert torch.equal(y_online[:, 0], q[:, 1].max(-1).values)  # the online net's own max over dimension 2's bins
    assert not torch.allclose(y_target[:, 0], y_online[:, 0], rtol=0, atol=1e-3)  # the target net's differs
    assert torch.equal(y_online[:, 1], y_target[:, 1])  # the backup across steps is the same


def test_within_step_changes_nothing_with_one_action_dimension():
    # one token per step: no max inside a step, so the targets are the same to the bit
    torch.manual_seed(0)
    model = QTransformer(obs_dim=3, action_dims=1, bins=5, dim=16, depth=1, heads=2)
    batch = {**_batch(torch.tensor([0.1, 0.2, 0.3, 0.4])), "bins": torch.tensor([[0], [4], [2], [1]])}
    q = model(batch["obs"], batch["bins"][:, :-1]).detach()
    y = [Learner(model, model, {**LEARNER_CFG, "within_step": w}, total_updates=10).targets(batch, q)
         for w in ("target", "online")]
    assert y[0].shape == (4, 1) and torch.equal(y[0], y[1])


def test_learner_with_levels_is_the_learner_of_the_token_sequence():
    # model.levels=2, bins 9 = 3^2 per dimension: the learner must see exactly what a one-level model over
    # 2 x 2 = 4 "dimensions" of 3 bins sees when the batch holds the tokens (same weights, same shapes)
    torch.manual_seed(0)
    coarse_to_fine = QTransformer(obs_dim=3, action_dims=2, bins=9, dim=16, depth=1, heads=2, levels=2)
    flat = QTransformer(obs_dim=3, action_dims=4, bins=3, dim=16, depth=1, heads=2)
    flat.load_state_dict(coarse_to_fine.state_dict())
    batch = _batch(torch.tensor([0.1, 0.2, 0.3, 0.4]))
    batch["bins"] = torch.tensor([[0, 8], [4, 5], [7, 1], [3, 6]])
    tokens = torch.tensor([[0, 0, 2, 2], [1, 1, 1, 2], [2, 1, 0, 1], [1, 0, 2, 0]])  # bin = 3 * first + second
    assert torch.equal(coarse_to_fine.action_tokens(batch["bins"]), tokens)
    q = coarse_to_fine(batch["obs"], tokens[:, :-1]).detach()
    assert q.shape == (4, 4, 3)
    ours = Learner(coarse_to_fine, coarse_to_fine, LEARNER_CFG, total_updates=10)
    theirs = Learner(flat, flat, LEARNER_CFG, total_updates=10)
    assert torch.equal(ours.targets(batch, q), theirs.targets({**batch, "bins": tokens}, q))
    assert ours.update(batch) == theirs.update({**batch, "bins": tokens})
    for mine, other in zip(coarse_to_fine.parameters(), flat.parameters()):
        assert torch.equal(mine, other)


# --------------------------------------------------------------------------------------------------
# Action discretisation


def test_tokens_are_the_bins_digits_most_significant_first():
    # 27 = 3^3 bins: 14 = 1*9 + 1*3 + 2, 5 = 0*9 + 1*3 + 2, 0 and 26 the ends; dimension 0's tokens come first
    bins = torch.tensor([[14, 5], [0, 26]])
    assert algorithm.to_tokens(bins, 3, 3).tolist() == [[1, 1, 2, 0, 1, 2], [0, 0, 0, 2, 2, 2]]
    assert algorithm.from_tokens(torch.tensor([[1, 1, 2, 0, 1, 2]]), 3, 3).tolist() == [[14, 5]]
    assert torch.equal(algorithm.to_tokens(bins, 27, 1), bins)  # one level: the bins themselves


@pytest.mark.parametrize("token_bins, levels", [(2, 4), (3, 2), (4, 3)])
def test_tokens_round_trip_every_bin_and_the_first_picks_a_contiguous_slice(token_bins, levels):
    every = torch.arange(token_bins ** levels).reshape(-1, 1).repeat(1, 2)
    tokens = algorithm.to_tokens(every, token_bins, levels)
    assert tokens.shape == (token_bins ** levels, 2 * levels)
    assert tokens.min() == 0 and tokens.max() == token_bins - 1
    assert torch.equal(algorithm.from_tokens(tokens, token_bins, levels), every)
    # the coarse token splits the bins (evenly spaced actions) into token_bins runs of neighbours
    assert torch.equal(tokens[:, 0], every[:, 0] // token_bins ** (levels - 1))


def test_to_bins_ends_and_centre():
    assert algorithm.to_bins(torch.tensor([-1.0, 1.0, 0.0]), 5).tolist() == [0, 4, 2]
    assert algorithm.to_bins(torch.tensor([-3.0, 7.0]), 5).tolist() == [0, 4]  # clamped to [-1, 1]
    assert algorithm.to_bins(torch.tensor([0.0]), 5).dtype == torch.long


def test_from_bins_is_bin_centre():
    assert algorithm.from_bins(torch.arange(5), 5).tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0]


def test_to_bins_picks_nearest_centre():
    # centres of 5 bins: -1, -0.5, 0, 0.5, 1
    x = torch.tensor([-0.9, -0.7, -0.3, -0.2, 0.2, 0.3, 0.7, 0.8, 0.99])
    nearest = [-1.0, -0.5, -0.5, 0.0, 0.0, 0.5, 0.5, 1.0, 1.0]
    assert algorithm.from_bins(algorithm.to_bins(x, 5), 5).tolist() == nearest


@pytest.mark.parametrize("bins", [2, 3, 5, 256, 1000])
def test_bin_index_round_trip_is_exact(bins):
    index = torch.arange(bins)
    assert torch.equal(algorithm.to_bins(algorithm.from_bins(index, bins), bins), index)


# --------------------------------------------------------------------------------------------------
# ValueMap: returns of any scale and sign mapped into [0, 1], exactly, terminal states included


def test_value_map_auto_metaworld_is_the_old_reward_scale():
    # rewards in [0, 20]: scale (1 - 0.98) / 20 = 0.001, nothing shifted (0.98 is not exact in binary)
    vmap = algorithm.value_map("map", 0.98, 0.0, 20.0)
    assert vmap.scale == pytest.approx(0.001, rel=1e-12, abs=0) and vmap.low == 0.0 and vmap.terminal == 0.0


def test_value_map_explicit_number_only_multiplies():
    assert algorithm.value_map(3, 0.98, -5.0, 7.0) == algorithm.ValueMap(3.0, 0.0)


def test_value_map_max_divides_by_the_largest_absolute_reward_seen():
    # rewards seen in [-4, 2] (any discount): multiply by 1/4, nothing shifted, a terminal state stays 0
    vmap = algorithm.value_map("max", 0.99, -4.0, 2.0)
    assert vmap == algorithm.ValueMap(0.25, 0.0) and vmap.terminal == 0.0
    assert algorithm.value_map("max", 0.5, 0.5, 2.0) == algorithm.ValueMap(0.5, 0.0)
    assert algorithm.value_map("max", 0.98, 0.0, 20.0) == algorithm.ValueMap(0.05, 0.0)  # MetaWorld's bound, repeat 2
    # InvertedPendulum's reward of 1 every step leaves rewards exactly as they are
    assert algorithm.value_map("max", 0.99, 1.0, 1.0) == algorithm.ValueMap(1.0, 0.0)


def test_value_map_max_with_nothing_or_only_zeros_seen_leaves_rewards_alone():
    assert algorithm.value_map("max", 0.99, 0.0, 0.0) == algorithm.ValueMap(1.0, 0.0)
    # no reward seen on any agent: the worker's all-reduced range is (inf, -inf)
    assert algorithm.value_map("max", 0.99, math.inf, -math.inf) == algorithm.ValueMap(1.0, 0.0)


def test_value_map_with_nothing_but_zeros_seen_assumes_unit_rewards():
    assert algorithm.value_map("map", 0.5, 0.0, 0.0) == algorithm.ValueMap(0.5, 0.0)  # span 1 / (1 - 0.5)


def test_value_map_of_constant_positive_reward_with_terminations():
    # reward 1 every step (InvertedPendulum), gamma 0.5: values in [0, 2], scale 1/2; falling (terminal) is 0
    vmap = algorithm.value_map("map", 0.5, 1.0, 1.0)
    assert vmap == algorithm.ValueMap(0.5, 0.0) and vmap.terminal == 0.0


def test_negative_rewards_and_termination_map_to_hand_computed_returns():
    # Episode rewards [-2, -4], then a terminal state; gamma 0.5, n = 1. Range [-4, -2] -> values
    # [-4 / 0.5, 0] = [-8, 0]: scale 1/8, low -8. Mapped reward r' = r/8 + 0.5 -> [0.25, 0]; terminal
    # state 0 -> 1. Mapped values: V(s1) = 0 + 0.5 * 1 = 0.5 (= (-4 + 8) / 8), V(s0) = 0.25 + 0.5 * 0.5 = 0.5.
    vmap = algorithm.value_map("map", 0.5, -4.0, -2.0)
    assert vmap == algorithm.ValueMap(0.125, -8.0) and vmap.terminal == 1.0
    R, bootstrap, steps, mc = algorithm.nstep_returns(torch.tensor([-2.0, -4.0]), True, n=1, discount=0.5)
    assert R.tolist() == [-2.0, -4.0] and bootstrap.tolist() == [0.5, 0.0] and mc.tolist() == [-4.0, -4.0]
    # one-step targets: t=0 bootstraps (r'_0 = 0.25), t=1 ends in the terminal state (0 + 0.5 * 1)
    assert vmap.returns(R, steps, bootstrap == 0, 0.5).tolist() == [0.25, 0.5]
    # Monte-Carlo returns to the end (2 and 1 steps), both ending in the terminal state: V(s0), V(s1)
    to_end = torch.tensor([2, 1])
    assert vmap.returns(mc, to_end, torch.tensor([True, True]), 0.5).tolist() == [0.5, 0.5]
    # truncated instead: the missing tail (>= 0 after the map) is dropped, a lower bound: 0.25 + 0.5 * 0, 0
    assert vmap.returns(mc, to_end, torch.tensor([False, False]), 0.5).tolist() == [0.25, 0.0]


def test_learner_targets_use_the_value_map():
    torch.manual_seed(0)
    model = QTransformer(obs_dim=3, action_dims=2, bins=5, dim=16, depth=1, heads=2)
    learner = Learner(model, model, {**LEARNER_CFG, "mc_lower_bound": False}, total_updates=10)
    batch = _batch(torch.tensor([0.1, 0.2, 0.3, 0.4]))
    q = model(batch["obs"], batch["bins"][:, :-1]).detach()
    plain = learner.targets(batch, q)
    learner.value_map = algorithm.ValueMap(2.0, -1.0)  # R' = 2 R + 2 (1 - 0.5^1) (+ 0.5^1 * 2 where terminated)
    mapped = learner.targets(batch, q)
    shift = torch.tensor([1.0, 1.0, 2.0, 1.0])  # row 2's window ends in the terminal state
    expected_last = plain[:, -1] + batch["nstep_return"] + shift  # 2 R + shift + bootstrap value (unchanged)
    torch.testing.assert_close(mapped[:, -1], expected_last, rtol=0, atol=1e-6)
    assert torch.equal(mapped[:, 0], plain[:, 0])  # within a step nothing is mapped: the max is already a value


def test_learner_n_step_bound_on_one_step_windows_changes_nothing():
    # with 1-step windows the n-step backup is the 1-step one: the bound's extra forward at s_{t+1} must read
    # the same values the successor rows give, so y = max(x, x) = x; a larger r_t then lifts only the last dimension
    torch.manual_seed(0)
    model = QTransformer(obs_dim=3, action_dims=2, bins=5, dim=16, depth=1, heads=2)
    gamma = LEARNER_CFG["discount"]
    batch = _batch(torch.tensor([0.1, 0.2, 0.3, 0.4]))
    batch["bootstrap_discount"] = torch.tensor([gamma, gamma, 0.0, gamma])  # one step each, row 2 terminal
    batch.update(reward=batch["nstep_return"].clone(), next1_obs=batch["next_obs"].clone(),
                 terminal1=torch.tensor([False, False, True, False]))
    q = model(batch["obs"], batch["bins"][:, :-1]).detach()
    plain = Learner(model, model, {**LEARNER_CFG, "mc_lower_bound": False}, total_updates=10).targets(batch, q)
    bound = Learner(model, model, {**LEARNER_CFG, "mc_lower_bound": False, "n_step_bound": True},
                    total_updates=10).targets(batch, q)
    torch.testing.assert_close(bound, plain, rtol=0, atol=1e-6)
    batch["reward"] = batch["reward"] + 10.0
    lifted = Learner(model, model, {**LEARNER_CFG, "mc_lower_bound": False, "n_step_bound": True},
                     total_updates=10).targets(batch, q)
    torch.testing.assert_close(lifted[:, -1], plain[:, -1] + 10.0, rtol=0, atol=1e-5)
    assert torch.equal(lifted[:, 0], plain[:, 0])


def test_learner_clips_targets_to_the_rewards_seen_only_with_target_clip():
    torch.manual_seed(0)
    model = QTransformer(obs_dim=3, action_dims=2, bins=5, dim=16, depth=1, heads=2)
    batch = _batch(torch.tensor([0.1, 0.2, 0.3, 0.4]))
    q = model(batch["obs"], batch["bins"][:, :-1]).detach()
    plain = Learner(model, model, {**LEARNER_CFG, "mc_lower_bound": False}, total_updates=10)
    clipped = Learner(model, model, {**LEARNER_CFG, "mc_lower_bound": False, "target_clip": True}, total_updates=10)
    # rewards in [0, 0.25] at gamma 0.5 allow raw values in [0, 0.5]; the map Q' = Q + 0.5 sends them to [0.5, 1]
    for learner in (plain, clipped):
        learner.value_map, learner.reward_range = algorithm.ValueMap(1.0, -0.5), (0.0, 0.25)
    unclipped = plain.targets(batch, q)
    assert unclipped.max() > 1.0 and unclipped.min() < 0.5  # the test would show nothing otherwise
    assert torch.equal(clipped.targets(batch, q), unclipped.clamp(0.5, 1.0))
    # train/target_clipped: the share of targets the clip moved (0 without the clip)
    outside = ((unclipped < 0.5) | (unclipped > 1.0)).float().mean().item()
    assert 0 < outside < 1 and clipped.update(batch)["train/target_clipped"] == outside
    assert plain.update(batch)["train/target_clipped"] == 0.0


def test_unmap_undoes_the_value_map():
    # scale 0.125, low -4: a mapped 0 is the lowest value (-4), a mapped 1 is -4 + 8 = 4, 0.25 is -2
    vmap = algorithm.ValueMap(scale=0.125, low=-4.0)
    assert [vmap.unmap(q) for q in (0.0, 1.0, 0.25)] == [-4.0, 4.0, -2.0]
