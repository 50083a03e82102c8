"""Tests of dqt.learner's learning rate: the schedules at hand-computed points, lr_scale, plateau cuts,
resuming the scheduler, and one lr on every rank when rank 0's plateau decides; and the weight average
evaluation acts on (eval_ema)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from conftest import run_world
from dqt import checkpoint
from dqt.learner import Learner, make_scheduler, warmup_ema

T, FINAL = 100, 0.1
LN4 = math.log(4)

# (lr_schedule, N): {updates t: lr / initial lr} with T = 100 updates and lr_final = 0.1
SCHEDULES = {
    ("constant", 1): {0: 1.0, 50: 1.0, 100: 1.0},
    ("constant", 4): {0: 1.0, 50: 1.0, 100: 1.0},
    ("linear", 1): {0: 1.0, 10: 0.91, 50: 0.55, 100: 0.1, 120: 0.1},  # 1 - 0.9 t/T, then stays
    ("linear", 4): {0: 1.0, 10: 0.91, 50: 0.55, 100: 0.1},  # N plays no part
    ("log", 1): {0: 1.0, 50: 1.0, 100: 1.0},  # ln 1 = 0: constant
    ("log", 4): {0: 1.0, 10: 1 / (1 + 0.1 * LN4), 50: 1 / (1 + math.log(2)), 100: 1 / (1 + LN4)},
    ("log_linear", 1): {0: 1.0, 50: 1.0, 100: 1.0},
    ("log_linear", 4): {10: 1 - 0.1 * LN4, 50: 1 - math.log(2), 60: 1 - 0.6 * LN4, 70: 0.1, 100: 0.1},  # 0.03 -> floor
    ("n_linear", 1): {10: 0.9, 50: 0.5, 90: 0.1, 95: 0.1, 100: 0.1},  # 1 - t/T, floored at 0.1
    ("n_linear", 4): {10: 0.6, 20: 0.2, 25: 0.1, 50: 0.1},  # 1 - 4 t/T
}


@pytest.mark.parametrize("kind, n", SCHEDULES, ids=[f"{k}-N{n}" for k, n in SCHEDULES])
def test_schedule_lr_at_update_counts(kind, n):
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = make_scheduler(optimizer, kind, T, FINAL, n)
    got = {}
    for t in range(max(SCHEDULES[kind, n]) + 1):
        got[t] = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
    for t, expected in SCHEDULES[kind, n].items():
        assert got[t] == pytest.approx(expected, rel=1e-12), f"{kind} N={n} after {t} updates"


def _learner(schedule: str = "constant", scale: str = "none", n: int = 1, lr: float = 1.0, patience: int = 3,
             total: int = T) -> Learner:
    cfg = {"lr": lr, "weight_decay": 0.0, "lr_schedule": schedule, "lr_final": FINAL, "lr_scale": scale,
           "num_agents": n, "lr_plateau": {"factor": 0.5, "patience": patience}, "eval_ema": 0.0}
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    return Learner(model, model, cfg, total)


def test_lr_scale_with_four_agents():
    lrs = {scale: _learner(scale=scale, n=4, lr=1e-3).optimizer.param_groups[0]["lr"]
           for scale in ("none", "inv_n", "log_n", "sqrt_n")}
    assert lrs == pytest.approx({"none": 1e-3, "inv_n": 2.5e-4, "log_n": 1.3862943611198906e-3, "sqrt_n": 2e-3})
    learner = _learner("linear", "inv_n", n=4, lr=1e-3)
    for _ in range(50):
        learner.optimizer.step()
        learner.scheduler.step()
    assert learner.optimizer.param_groups[0]["lr"] == pytest.approx(2.5e-4 * 0.55)  # the schedule scales the scaled lr


# evaluation returns, and the lr after each evaluation (patience 3, factor 0.5, floor 0.1 of lr 1.0)
PLATEAU = [(1.0, 1.0), (2.0, 1.0), (2.0, 1.0), (1.0, 1.0), (0.5, 1.0),  # three without a higher return: kept
           (2.0, 0.5),  # the fourth: cut (equal is no improvement)
           (2.5, 0.5), (0, 0.5), (0, 0.5), (0, 0.5), (0, 0.25),  # a new best restarts the count
           *[(0, 0.25)] * 3, (0, 0.125), *[(0, 0.125)] * 3, (0, 0.1), *[(0, 0.1)] * 4]  # 0.0625 -> floor 0.1


def test_plateau_cuts_after_patience_evaluations_without_improvement():
    learner = _learner("plateau")
    for i, (value, lr) in enumerate(PLATEAU):
        learner.evaluated(value)
        assert learner.optimizer.param_groups[0]["lr"] == lr, f"evaluation {i}"


@pytest.mark.parametrize("schedule", ["n_linear", "plateau"])
def test_scheduler_state_survives_a_checkpoint(schedule, tmp_path):
    def advance(learner: Learner, steps: range) -> list[float]:
        lrs = []
        for i in steps:
            if schedule == "plateau":
                learner.evaluated(PLATEAU[i][0])
            else:
                learner.optimizer.step()
                learner.scheduler.step()
            lrs.append(learner.optimizer.param_groups[0]["lr"])
        return lrs

    whole = advance(_learner(schedule, n=2), range(len(PLATEAU)))
    first = _learner(schedule, n=2)
    half = advance(first, range(8))
    # written and loaded as the trainer writes and loads an agent's file (checkpoint.save adds the collective
    # generation bookkeeping around _write)
    checkpoint._write({"learner": first.state_dict()}, tmp_path / "agent0.pt")
    resumed = _learner(schedule, n=2)
    resumed.load_state_dict(checkpoint.load(tmp_path / "agent0.pt")["learner"])
    assert half + advance(resumed, range(8, len(PLATEAU))) == whole
    assert len(set(whole)) > 2  # the lr did move


def _plateau_on_two_ranks(rank: int, world_size: int) -> list[float]:
    # Rank 0 sees a worse second return and a better third; rank 1 the opposite. Only rank 0 decides.
    returns = {0: [1.0, 0.0, 5.0], 1: [1.0, 5.0, 0.0]}[rank]
    learner = _learner("plateau", patience=0, n=world_size)
    lrs = []
    for value in returns:
        learner.evaluated(value)
        lrs.append(learner.optimizer.param_groups[0]["lr"])
    return lrs


@pytest.mark.slow
def test_plateau_lr_is_rank_zeros_on_every_rank(tmp_path):
    ranks = run_world(_plateau_on_two_ranks, 2, tmp_path)
    assert ranks[0] == ranks[1] == [1.0, 0.5, 0.5]


def _toy_qlearner(**overrides) -> tuple[Learner, dict[str, torch.Tensor]]:
    """A Learner of a small QTransformer and one batch of 4 demo rows for it (cfg keys: `overrides`)."""
    from dqt.model import QTransformer

    torch.manual_seed(0)
    model = QTransformer(obs_dim=3, action_dims=2, bins=5, dim=16, depth=1, heads=2)
    cfg = {"lr": 1.0, "weight_decay": 0.0, "lr_schedule": "constant", "lr_final": FINAL, "lr_scale": "none",
           "num_agents": 1, "lr_plateau": {"factor": 0.5, "patience": 0}, "mc_lower_bound": True,
           "target_clip": False, "n_step_bound": False, "excess_weight": 0.0,
           "conservative_weight": 0.5, "conservative_rows": "demos", "grad_clip": 10.0, "tau": 0.005, "within_step": "target", "double_q": True,
           "discount": 0.5, "eval_ema": 0.0, **overrides}
    gen = torch.Generator().manual_seed(1)
    batch = {"obs": torch.randn(4, 3, generator=gen), "bins": torch.randint(5, (4, 2), generator=gen),
             "nstep_return": torch.rand(4, generator=gen), "bootstrap_discount": torch.full((4,), 0.5),
             "next_obs": torch.randn(4, 3, generator=gen), "mc_return": torch.zeros(4),
             "steps": torch.ones(4, dtype=torch.long), "to_end": torch.full((4,), 3),
             "terminated": torch.zeros(4, dtype=torch.bool), "successor": torch.full((4,), -1),
             "demo": torch.ones(4, dtype=torch.bool)}
    return Learner(model, model, cfg, 10), batch


@pytest.mark.parametrize("schedule", ["linear", "n_linear", "plateau"])
def test_pretraining_updates_leave_every_schedule_where_it_is(schedule):
    # Learner.update(scheduled=False), as pretraining calls it: the curves count online updates only, and
    # plateau moves only on evaluations whatever the update
    learner, batch = _toy_qlearner(lr_schedule=schedule, lr_scale="inv_n", num_agents=2)

    def lr() -> float:
        return learner.optimizer.param_groups[0]["lr"]

    for _ in range(5):
        learner.update(batch, scheduled=False)
    assert lr() == 0.5 and learner.updates == 5  # lr_scale inv_n with 2 agents, untouched by the schedule
    learner.update(batch)
    if schedule == "plateau":
        assert lr() == 0.5  # an update never steps plateau
        learner.evaluated(1.0), learner.evaluated(0.0)
        assert lr() == 0.25
    else:
        # one online update of T = 10: linear 1 - 0.9 / 10, n_linear (N = 2) 1 - 2 / 10
        assert lr() == pytest.approx(0.5 * {"linear": 0.91, "n_linear": 0.8}[schedule], rel=1e-12)


def test_warmup_ema_is_the_running_mean_then_an_ema():
    # decay 0.75: the mean of the first 1 / (1 - 0.75) = 4 weights, then EMA weight 0.25 (not 1/5)
    from torch.optim.swa_utils import AveragedModel

    model = nn.Linear(1, 1, bias=False)
    averaged = AveragedModel(model, multi_avg_fn=warmup_ema(0.75))
    got = []
    for value in (1.0, 3.0, 5.0, 7.0, 9.0):
        model.weight.data.fill_(value)
        averaged.update_parameters(model)
        got.append(averaged.module.weight.item())
    assert got == [1.0, 2.0, 3.0, 4.0, 4.0 + 0.25 * (9.0 - 4.0)]


def test_evaluation_acts_on_the_average_of_the_online_updates_only():
    # pretraining (scheduled=False) is not averaged: until the first online update evaluation acts on the
    # online net; after it the average is a copy of it, after the second their mean (eval_ema 0.5: horizon 2)
    learner, batch = _toy_qlearner(lr=0.1, eval_ema=0.5)
    model = learner.module

    def weights(net: nn.Module) -> torch.Tensor:
        return torch.cat([p.detach().flatten() for p in net.parameters()])

    learner.update(batch, scheduled=False)
    assert learner.policy is model
    learner.update(batch)
    first = weights(model)
    assert learner.policy is not model and torch.equal(weights(learner.policy), first)
    learner.update(batch)
    second = weights(model)
    assert not torch.equal(first, second)
    assert torch.allclose(weights(learner.policy), (first + second) / 2, rtol=0, atol=1e-7)

    # a checkpoint carries the average: a fresh learner loaded from it evaluates the same weights
    restored, _ = _toy_qlearner(lr=0.1, eval_ema=0.5)
    restored.load_state_dict(learner.state_dict())
    assert torch.equal(weights(restored.policy), weights(learner.policy))


def test_the_learners_average_is_averaged_models_own_to_the_last_bit():
    # Learner averages without AveragedModel.update_parameters (its per-call regrouping costs up to 0.9 ms an
    # update); the library's call on the same sequence of online weights must give the same tensors exactly,
    # through the copy, the running mean and past its horizon into the EMA (eval_ema 0.75: horizon 4)
    from torch.optim.swa_utils import AveragedModel

    learner, batch = _toy_qlearner(lr=0.1, eval_ema=0.75)
    library = AveragedModel(learner.module, multi_avg_fn=warmup_ema(0.75))
    for _ in range(7):
        learner.update(batch)
        library.update_parameters(learner.module)
        assert int(learner.average.n_averaged) == int(library.n_averaged)
        for ours, theirs in zip(learner.average.module.parameters(), library.module.parameters()):
            assert torch.equal(ours, theirs)


def test_two_equal_critics_learn_as_one():
    # model.critics=2 with both critics copies of one network: the loss (averaged over dimensions and critics), the
    # targets (min of equal values) and so every gradient equal half the one-critic learner's per critic (each
    # critic's TD term weighs 1/2); a learner that mixed up the critics' rows or targets would differ
    from dqt.model import Critics

    one, batch = _toy_qlearner(excess_weight=0.5, grad_clip=0.0)  # no clipping: the norms differ by sqrt 2
    model = Critics(2, obs_dim=3, action_dims=2, bins=5, dim=16, depth=1, heads=2)
    for member in model.members:
        member.load_state_dict(one.module.state_dict())
    two = Learner(model, model, one.cfg, 10)
    batch = {**batch, "demo": torch.tensor([True, False, True, False])}  # conservative and excess terms both act
    metrics = [learner.update(batch) for learner in (one, two)]  # update leaves the gradients in .grad
    for key in ("train/loss", "train/td_loss", "train/conservative_loss", "train/q_data"):
        assert metrics[1][key] == pytest.approx(metrics[0][key], rel=1e-5, abs=1e-7), key
    for member in model.members:
        for (name, p1), p2 in zip(one.module.named_parameters(), member.parameters()):
            torch.testing.assert_close(p2.grad, p1.grad / 2, rtol=0, atol=1e-6, msg=name)


def test_two_critics_back_up_the_lowest_value_at_the_bin_their_mean_picks():
    # distinct critics: every target is min over the target critics at the online mean's argmax (clipped double Q),
    # through each path of targets(): the next dimension, the bootstrap state from a batch row (successor) and from
    # next_obs, and the 1-step backup of n_step_bound; and every critic gets its own gradient
    from dqt.model import Critics

    _, batch = _toy_qlearner()
    torch.manual_seed(3)
    model = Critics(2, obs_dim=3, action_dims=2, bins=5, dim=16, depth=1, heads=2)
    with torch.no_grad():
        for member in model.members:
            member.advantage.weight.mul_(10.0)  # spread the bins so a wrong choice shows
    cfg = {**_toy_qlearner()[0].cfg, "mc_lower_bound": False, "n_step_bound": True, "grad_clip": 0.0}
    learner = Learner(model, model, cfg, 10)
    with torch.no_grad():  # the target critics differ from the online ones, so a mix-up of the two shows too
        for p in learner.target.parameters():
            p.add_(0.3 * torch.randn_like(p))
    gen = torch.Generator().manual_seed(2)
    batch = {**batch, "successor": torch.tensor([2, -1, 0, -1]), "next1_obs": torch.randn(4, 3, generator=gen),
             "reward": torch.tensor([0.5, -1.0, 2.0, 0.0]), "terminal1": torch.tensor([False, False, True, False])}
    obs, bins = batch["obs"], batch["bins"]
    with torch.no_grad():
        online = model(obs, bins[:, :-1])  # the mean of the online critics, [4, 2, 5]
        y = learner.targets(batch, online)

        def lowest_at(inputs, prefix, choose_from):  # min over target critics at the bins the online mean picks
            own = torch.stack([m(inputs, prefix) for m in learner.target.members], dim=-2)  # [B, k+1, 2, bins]
            picked = choose_from.argmax(-1)
            return own.gather(-1, picked[..., None, None].expand(*picked.shape, 2, 1)).squeeze(-1).amin(-1)

        next_dimension = lowest_at(obs, bins[:, :-1], online)[:, 1]
        next_obs = torch.where((batch["successor"] >= 0)[:, None], obs[batch["successor"].clamp(min=0)], batch["next_obs"])
        none = bins[:, :0]
        next_state = lowest_at(next_obs, none, model(next_obs, none))[:, 0]
        next1 = lowest_at(batch["next1_obs"], none, model(batch["next1_obs"], none))[:, 0]
        nstep = batch["nstep_return"] + batch["bootstrap_discount"] * next_state
        one_step = batch["reward"] + torch.where(batch["terminal1"], 0.0, 0.5) * next1
        expected = torch.stack([next_dimension, torch.maximum(nstep, one_step)], dim=1)
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-5)
    # a mean or a max over the critics, or the first critic alone, gives other targets
    assert (expected[:, 0] - torch.stack([m(obs, bins[:, :-1])[:, 1] for m in learner.target.members]).mean(0)
            .gather(-1, online[:, 1].argmax(-1, keepdim=True)).squeeze(-1)).abs().min() > 1e-3
    seen = []  # update() hands targets() the online critics' mean, and each critic's Q for within_step=online
    targets = learner.targets
    learner.targets = lambda batch, online_q, tokens, every=None: seen.append((online_q, every)) or targets(batch, online_q, tokens, every)
    learner.update(batch)
    torch.testing.assert_close(seen[0][0], online, rtol=0, atol=1e-6)
    assert seen[0][1].shape[-2] == 2
    torch.testing.assert_close(seen[0][1].mean(-2), online, rtol=0, atol=1e-6)
    for member in model.members:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in member.parameters())
