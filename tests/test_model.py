"""Tests of dqt.model: greedy decoding agrees with the training head, and attention is causal."""

from __future__ import annotations

import pytest
import torch

from dqt.model import Critics, QTransformer, greedy_bins, q_network

OBS_DIM, DIMS, BINS = 5, 4, 7


def _model(seed: int, dueling: bool) -> QTransformer:
    torch.manual_seed(seed)
    model = QTransformer(obs_dim=OBS_DIM, action_dims=DIMS, bins=BINS, dim=16, depth=2, heads=2, dueling=dueling)
    # Untrained heads are nearly flat; widen the spread so argmax is decided by the weights, not by rounding.
    with torch.no_grad():
        model.advantage.weight.mul_(10.0)
    return model.eval()


@pytest.mark.parametrize("dueling", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_greedy_bins_is_argmax_of_training_head(seed, dueling):
    model = _model(seed, dueling)
    obs = torch.randn(16, OBS_DIM, generator=torch.Generator().manual_seed(100 + seed))
    bins = greedy_bins(model, obs)
    assert bins.shape == (16, DIMS) and bins.dtype == torch.long
    assert bins.min() >= 0 and bins.max() < BINS
    with torch.no_grad():
        q = model(obs, bins[:, :-1])
    assert q.shape == (16, DIMS, BINS)
    for i in range(DIMS):
        assert torch.equal(bins[:, i], q[:, i].argmax(-1)), f"dimension {i}"
    # The decode is not trivially constant: over 16 states some dimension picks different bins.
    assert any(bins[:, i].unique().numel() > 1 for i in range(DIMS))


@pytest.mark.parametrize("dueling", [False, True])
@pytest.mark.parametrize("j", range(DIMS - 1))
def test_changing_bin_j_leaves_tokens_up_to_j_unchanged(j, dueling):
    model = _model(7, dueling)
    gen = torch.Generator().manual_seed(j)
    obs = torch.randn(8, OBS_DIM, generator=gen)
    prefix = torch.randint(BINS, (8, DIMS - 1), generator=gen)
    changed = prefix.clone()
    changed[:, j] = (prefix[:, j] + 1 + torch.randint(BINS - 1, (8,), generator=gen)) % BINS
    assert (changed[:, j] != prefix[:, j]).all()
    with torch.no_grad():
        q, q_changed = model(obs, prefix), model(obs, changed)
    # Output i is Q of dimension i given bins < i: bin j only reaches outputs j+1, ..., d-1. Masked
    # attention weights are exactly 0 and the shapes are equal, so the unaffected outputs are bit-identical.
    assert torch.equal(q_changed[:, : j + 1], q[:, : j + 1])
    for i in range(j + 1, DIMS):
        assert not torch.allclose(q_changed[:, i], q[:, i], rtol=0, atol=1e-4), f"output {i} ignores bin {j}"


def test_shorter_prefix_gives_same_leading_outputs():
    # float64: sequences of different length may sum in another order, which float32 shows at ~1e-6
    model = _model(3, dueling=False).double()
    gen = torch.Generator().manual_seed(0)
    obs = torch.randn(8, OBS_DIM, generator=gen, dtype=torch.float64)
    prefix = torch.randint(BINS, (8, DIMS - 1), generator=gen)
    with torch.no_grad():
        full = model(obs, prefix)
        for k in range(DIMS - 1):
            torch.testing.assert_close(model(obs, prefix[:, :k]), full[:, : k + 1], rtol=0, atol=1e-12)


@pytest.mark.parametrize("dueling", [False, True])
def test_head_at_is_the_head_at_one_bin(dueling):
    model = _model(5, dueling)
    gen = torch.Generator().manual_seed(5)
    obs = torch.randn(8, OBS_DIM, generator=gen)
    prefix = torch.randint(BINS, (8, DIMS - 1), generator=gen)
    chosen = torch.randint(BINS, (8, DIMS), generator=gen)
    with torch.no_grad():
        features = model.features(obs, prefix)
        everything = model.head(features)
        # a dot product per token instead of a matmul over all bins: equal up to summation order
        torch.testing.assert_close(model.head_at(features, chosen),
                                   everything.gather(-1, chosen.unsqueeze(-1)).squeeze(-1), rtol=0, atol=1e-5)
    assert not torch.equal(model.head_at(features, chosen), model.head_at(features, (chosen + 1) % BINS))



def _critic_inputs(batch: int, seed: int):
    """(obs, prefix bins, one chosen bin per token) for a batch of `batch` states."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, OBS_DIM, generator=gen), torch.randint(BINS, (batch, DIMS - 1), generator=gen),
            torch.randint(BINS, (batch, DIMS), generator=gen))


@pytest.mark.parametrize("dueling", [False, True])
def test_critics_act_on_their_mean_and_back_up_their_min(dueling):
    # two independent critics: forward/head give the mean, backup_values and head_at the min (clipped double Q), every
    # critic's values are its own network's, and greedy decoding takes the argmax of the mean
    torch.manual_seed(4)
    critics = Critics(2, obs_dim=OBS_DIM, action_dims=DIMS, bins=BINS, dim=16, depth=2, heads=2, dueling=dueling)
    with torch.no_grad():
        for member in critics.members:
            member.advantage.weight.mul_(10.0)
    critics.eval()
    obs, prefix, chosen = _critic_inputs(16, seed=4)
    with torch.no_grad():
        own = torch.stack([member(obs, prefix) for member in critics.members], dim=-2)  # [16, DIMS, 2, BINS]
        # equal up to how the BLAS sums (a critic's features are a strided view in Critics)
        torch.testing.assert_close(critics(obs, prefix, every_critic=True), own, rtol=0, atol=1e-5)
        torch.testing.assert_close(critics(obs, prefix), own.mean(-2), rtol=0, atol=1e-5)
        features = critics.features(obs, prefix)
        lowest = torch.minimum(own[..., 0, :], own[..., 1, :])
        torch.testing.assert_close(critics.backup_values(features), lowest, rtol=0, atol=1e-5)
        torch.testing.assert_close(critics.head_at(features, chosen), lowest.gather(-1, chosen.unsqueeze(-1)).squeeze(-1),
                                   rtol=0, atol=1e-4)
        assert (own[..., 0, :] != own[..., 1, :]).all()  # independent weights: the min is not the mean
        bins = greedy_bins(critics, obs)
        q = critics(obs, bins[:, :-1])
    for i in range(DIMS):
        assert torch.equal(bins[:, i], q[:, i].argmax(-1)), f"dimension {i}"
    # the mean decides: some state's greedy bins differ from both critics' own
    alone = [greedy_bins(member, obs) for member in critics.members]
    assert not torch.equal(bins, alone[0]) and not torch.equal(bins, alone[1])


def test_critic_backup_mean_backs_up_the_critics_mean():
    # model.critic_backup=mean: backup_values and head_at give the mean of the critics, not their min; acting is unchanged
    torch.manual_seed(5)
    critics = q_network(OBS_DIM, DIMS, BINS, critics=3, critic_backup="mean", dim=16, depth=1, heads=2)
    critics.eval()
    obs, prefix, chosen = _critic_inputs(8, seed=5)
    with torch.no_grad():
        own = torch.stack([member(obs, prefix) for member in critics.members], dim=-2)  # [8, DIMS, 3, BINS]
        mean = (own[..., 0, :] + own[..., 1, :] + own[..., 2, :]) / 3
        features = critics.features(obs, prefix)
        torch.testing.assert_close(critics.backup_values(features), mean, rtol=0, atol=1e-5)
        torch.testing.assert_close(critics.head_at(features, chosen), mean.gather(-1, chosen.unsqueeze(-1)).squeeze(-1),
                                   rtol=0, atol=1e-5)
        assert (critics.backup_values(features) > own.amin(-2) + 1e-4).any()  # not the min
    with pytest.raises(ValueError, match="backup='max'"):
        Critics(2, obs_dim=OBS_DIM, action_dims=DIMS, bins=BINS, dim=16, depth=1, heads=2, backup="max")


def test_q_network_is_one_transformer_for_one_critic():
    assert type(q_network(3, 2, 5, critics=1, dim=8, depth=1, heads=2)) is QTransformer
    assert type(q_network(3, 2, 5, critics=1, critic_backup="mean", dim=8, depth=1, heads=2)) is QTransformer
    two = q_network(3, 2, 5, critics=2, dim=8, depth=1, heads=2)
    assert isinstance(two, Critics) and len(two.members) == 2 and two.backup == "min"


@pytest.mark.parametrize("critics", [1, 2])
def test_coarse_to_fine_decode_is_the_argmax_of_every_token(critics):
    # bins 27 in 3 levels of 3 (model.levels): six tokens for two dimensions, argmax token by token
    torch.manual_seed(5)
    model = q_network(OBS_DIM, 2, 27, critics=critics, levels=3, dim=16, depth=2, heads=2).eval()
    for member in (model.members if critics > 1 else [model]):
        with torch.no_grad():
            member.advantage.weight.mul_(10.0)
    obs = torch.randn(32, OBS_DIM, generator=torch.Generator().manual_seed(9))
    bins = greedy_bins(model, obs)
    assert bins.shape == (32, 2) and bins.min() >= 0 and bins.max() < 27
    tokens = model.action_tokens(bins)
    with torch.no_grad():
        q = model(obs, tokens[:, :-1])
    assert q.shape == (32, 6, 3)
    for i in range(6):
        assert torch.equal(tokens[:, i], q[:, i].argmax(-1)), f"token {i}"
    assert bins[:, 0].unique().numel() > 1 or bins[:, 1].unique().numel() > 1


def test_levels_need_bins_that_are_a_power():
    assert QTransformer(OBS_DIM, 2, 256, dim=16, heads=2, levels=4).token_bins == 4  # the study's 256 bins
    assert QTransformer(OBS_DIM, 2, 256, dim=16, heads=2, levels=8).token_bins == 2
    with pytest.raises(ValueError, match="bins=10 is not allowed with model.levels=2"):
        QTransformer(OBS_DIM, 2, 10, dim=16, heads=2, levels=2)


def test_optimism_ranks_bins_by_the_critics_mean_plus_their_spread():
    # heads that ignore the state: critic A values the bins [3, 4, 0], critic B [3, 4, 6], at every token; their
    # mean [3, 4, 3] picks bin 1, their (population) std [0, 0, 3] adds 3 * optimism to bin 2 alone
    critics = Critics(2, obs_dim=OBS_DIM, action_dims=2, bins=3, dim=16, depth=1, heads=2)
    with torch.no_grad():
        for member, values in zip(critics.members, ([3.0, 4.0, 0.0], [3.0, 4.0, 6.0])):
            member.advantage.weight.zero_()
            member.advantage.bias.copy_(torch.tensor(values))
    obs = torch.randn(5, OBS_DIM)
    assert greedy_bins(critics, obs).tolist() == [[1, 1]] * 5
    assert greedy_bins(critics, obs, optimism=0.25).tolist() == [[1, 1]] * 5  # 4 against 3 + 0.75
    assert greedy_bins(critics, obs, optimism=1.0).tolist() == [[2, 2]] * 5  # 4 against 3 + 3
    single = critics.members[1]
    assert greedy_bins(single, obs, optimism=1.0).tolist() == [[2, 2]] * 5  # one critic: its own argmax, no bonus
