"""The Q-Transformer network: a state encoder feeding a causal transformer over action-dimension tokens.

Token 0 is the encoded state; token i > 0 embeds the chosen bin of action dimension i-1. Causal attention
means output i sees the state and the bins of dimensions < i, so it gives Q(s, a_1..a_{i-1}, a_i = b) for
every bin b of dimension i (Chebotar et al. 2023, Sec. 4.1). With `levels` > 1 (coarse to fine) each
dimension's bin is chosen in `levels` tokens of `token_bins` each (`algorithm.to_tokens`), and the sequence
is over those tokens; callers pass and receive per-dimension bins, converted by `action_tokens` and
`greedy_bins`. The model knows nothing of torch.distributed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dqt.algorithm import from_tokens, to_tokens
from dqt.config import token_bins as root_bins

CRITIC_BACKUPS = ("min", "mean")  # model.critic_backup: how several critics combine into the value a backup takes


class CausalBlock(nn.Module):
    """Pre-norm transformer block with causal self-attention."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, dim = x.shape
        # plain view/transpose rather than einops: this runs d times per action while acting
        if t == 1:  # a lone token attends only to itself: attention returns its value, so only v is needed
            value = F.linear(self.norm1(x), self.qkv.weight[2 * dim:], self.qkv.bias[2 * dim:])
            x = x + self.proj(value)
        else:
            q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
            attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.proj(attn.transpose(1, 2).reshape(b, t, dim))
        return x + self.mlp(self.norm2(x))

    def decode_step(self, x: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor] | None):
        """forward() of one new token x [B, dim] given the keys and values of the tokens before it.

        Returns (output [B, dim], cache including this token). One query over a handful of keys is a few
        elementwise ops; a batched matmul or SDPA call costs more than the arithmetic at acting batch sizes.
        """
        b, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, 3, 1, self.heads, dim // self.heads).unbind(1)
        if cache is None:  # the first token attends only to itself
            attn = v
        else:
            k, v = torch.cat([cache[0], k], dim=1), torch.cat([cache[1], v], dim=1)  # [B, t, heads, head_dim]
            scores = (q * k).sum(-1) * (dim // self.heads) ** -0.5  # [B, t, heads]
            attn = (scores.softmax(dim=1).unsqueeze(-1) * v).sum(1)  # [B, heads, head_dim]
        x = x + self.proj(attn.reshape(b, dim))
        return x + self.mlp(self.norm2(x)), (k, v)


class QTransformer(nn.Module):
    """Autoregressive Q-function over `action_dims` discretised dimensions of `bins` bins each, chosen in
    `levels` tokens per dimension (coarse to fine; 1 = one token per dimension, as in the paper)."""

    def __init__(self, obs_dim: int, action_dims: int, bins: int, dim: int = 128, depth: int = 2,
                 heads: int = 4, dueling: bool = False, levels: int = 1):
        super().__init__()
        self.action_dims, self.bins, self.dueling = action_dims, bins, dueling
        self.levels, self.token_bins = levels, root_bins(bins, levels)
        self.tokens = action_dims * levels  # the sequence: every token below is one of these, not a dimension
        self.encoder = nn.Sequential(nn.Linear(obs_dim, dim), nn.LayerNorm(dim), nn.GELU(), nn.Linear(dim, dim))
        self.bin_embedding = nn.Embedding(self.tokens * self.token_bins, dim)  # a separate table per token
        self.position = nn.Parameter(torch.zeros(self.tokens, dim))
        self.blocks = nn.ModuleList(CausalBlock(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.advantage = nn.Linear(dim, self.token_bins)
        self.value = nn.Linear(dim, 1) if dueling else None
        nn.init.normal_(self.position, std=0.02)

    def forward(self, obs: torch.Tensor, prefix_tokens: torch.Tensor, every_critic: bool = False) -> torch.Tensor:
        """Q-values [B, k+1, token_bins] for tokens 0..k given obs [B, obs_dim] and the prefix's tokens [B, k]
        (k < tokens; with levels = 1 tokens are dimensions and token_bins = bins); with `every_critic`,
        [B, k+1, 1, token_bins]: the one critic's, as `Critics` gives each of its own."""
        q = self.head(self.features(obs, prefix_tokens))
        return q.unsqueeze(-2) if every_critic else q

    def action_tokens(self, bins: torch.Tensor) -> torch.Tensor:
        """Per-dimension bins [..., action_dims] -> this model's tokens [..., tokens] (`algorithm.to_tokens`)."""
        return to_tokens(bins, self.token_bins, self.levels)

    def features(self, obs: torch.Tensor, prefix_tokens: torch.Tensor) -> torch.Tensor:
        """The head's input [B, k+1, dim] for forward()'s arguments."""
        k = prefix_tokens.shape[1]
        state = self.encoder(obs).unsqueeze(1)
        offsets = torch.arange(k, device=prefix_tokens.device) * self.token_bins  # a separate table per token
        tokens = torch.cat([state, self.bin_embedding(prefix_tokens + offsets)], dim=1)
        x = tokens + self.position[: k + 1]
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """Q-values [..., token_bins] of every bin of a token from features [..., dim]."""
        q = self.advantage(features)
        if self.value is not None:
            q = self.value(features) + q - q.mean(-1, keepdim=True)
        return q

    def backup_values(self, features: torch.Tensor) -> torch.Tensor:
        """The value a backup takes for every bin, [..., token_bins]: with one critic, `head` itself."""
        return self.head(features)

    def head_at(self, features: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
        """head(features) at one bin per token, [...], from features [..., dim] and bins [...] (long).

        Costs one dot product per token instead of `bins`: targets need the value of a single chosen bin.
        """
        q = (self.advantage.weight[bins] * features).sum(-1) + self.advantage.bias[bins]
        if self.value is not None:  # the mean advantage over bins is linear in the features
            mean = features @ self.advantage.weight.mean(0) + self.advantage.bias.mean()
            q = self.value(features).squeeze(-1) + q - mean
        return q


class Critics(nn.Module):
    """`critics` independent Q-Transformers with one interface (`model.critics`): acting ranks bins by their mean
    Q, every backup takes the lowest critic's value at the chosen bin (clipped double Q, Fujimoto et al. 2018;
    an ensemble's min as in RLPD, Ball et al. 2023), or with `backup="mean"` (`model.critic_backup`) their mean,
    and each critic learns the same targets. Independent weights, not heads on one transformer: heads that
    share the features agree wherever the data goes, so their min is no lower than their mean (results/learning/
    tried/README.md, eighth session).

    Features carry a critic dimension: [..., critics, dim], critic c's from its own transformer.
    """

    def __init__(self, critics: int, *args, backup: str = "min", **kwargs):
        super().__init__()
        if backup not in CRITIC_BACKUPS:
            raise ValueError(f"backup={backup!r}: expected one of {', '.join(CRITIC_BACKUPS)}")
        self.backup = backup
        self.members = nn.ModuleList(QTransformer(*args, **kwargs) for _ in range(critics))
        first = self.members[0]
        self.action_dims, self.bins, self.levels, self.token_bins, self.tokens = (
            first.action_dims, first.bins, first.levels, first.token_bins, first.tokens)

    def forward(self, obs: torch.Tensor, prefix_tokens: torch.Tensor, every_critic: bool = False) -> torch.Tensor:
        """The mean Q-values [B, k+1, token_bins] over the critics; with `every_critic` each one's, [B, k+1, critics,
        token_bins]."""
        q = self.critic_values(self.features(obs, prefix_tokens))
        return q if every_critic else q.mean(-2)

    def action_tokens(self, bins: torch.Tensor) -> torch.Tensor:
        """Per-dimension bins [..., action_dims] -> tokens [..., tokens] (`QTransformer.action_tokens`)."""
        return self.members[0].action_tokens(bins)

    def features(self, obs: torch.Tensor, prefix_tokens: torch.Tensor) -> torch.Tensor:
        """Every critic's head input, [B, k+1, critics, dim]."""
        return torch.stack([member.features(obs, prefix_tokens) for member in self.members], dim=-2)

    def critic_values(self, features: torch.Tensor) -> torch.Tensor:
        """Every critic's Q-values [..., critics, token_bins] from features [..., critics, dim]."""
        return torch.stack([member.head(features[..., c, :]) for c, member in enumerate(self.members)], dim=-2)

    def _combine(self, q: torch.Tensor, dim: int) -> torch.Tensor:
        return q.amin(dim) if self.backup == "min" else q.mean(dim)

    def backup_values(self, features: torch.Tensor) -> torch.Tensor:
        """The critics' backed-up Q-value of every bin, [..., token_bins]: the lowest (or with backup="mean" the mean)."""
        return self._combine(self.critic_values(features), -2)

    def head_at(self, features: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
        """`backup_values` at one bin per token, [...], from features [..., critics, dim] and bins [...]."""
        return self._combine(torch.stack([member.head_at(features[..., c, :], bins)
                                          for c, member in enumerate(self.members)], dim=-1), -1)


def q_network(obs_dim: int, action_dims: int, bins: int, critics: int = 1, critic_backup: str = "min",
              **kwargs) -> nn.Module:
    """The network `model.*` describes: one QTransformer (`critic_backup` has nothing to combine), or `Critics`."""
    if critics == 1:
        return QTransformer(obs_dim, action_dims, bins, **kwargs)
    return Critics(critics, obs_dim, action_dims, bins, backup=critic_backup, **kwargs)


@torch.inference_mode()
def greedy_bins(model: QTransformer | Critics, obs: torch.Tensor, optimism: float = 0.0) -> torch.Tensor:
    """Greedy autoregressive decode [B, d]: bin i = argmax of the same head training uses, given bins < i.

    Each step feeds one new token through the blocks, attending to the keys and values cached from the
    tokens before it, so acting costs one single-token pass per token rather than growing prefixes. With
    `Critics`, every critic decodes the same bins and the argmax is of their mean, or with `optimism` > 0 of
    mean + optimism * std over the critics (`explore.optimism`: an upper confidence bound from the ensemble,
    Chen et al. 2017, so bins the critics disagree on get tried). With levels > 1 the argmax is taken token by
    token (coarse to fine) and the tokens are returned as per-dimension bins.
    """
    members = list(model.members) if isinstance(model, Critics) else [model]
    xs = [member.encoder(obs) + member.position[0] for member in members]
    caches: list = [[None] * len(member.blocks) for member in members]
    chosen = []
    for i in range(model.tokens):
        qs = []
        for c, member in enumerate(members):
            x = xs[c]
            for j, block in enumerate(member.blocks):
                x, caches[c][j] = block.decode_step(x, caches[c][j])
            qs.append(member.head(member.norm(x)))
        if len(qs) == 1:
            score = qs[0]
        else:
            q = torch.stack(qs, dim=-2)
            score = q.mean(-2) + optimism * q.std(-2, correction=0) if optimism else q.mean(-2)
        token = score.argmax(-1)
        chosen.append(token)
        if i + 1 < model.tokens:
            xs = [member.bin_embedding(token + i * member.token_bins) + member.position[i + 1] for member in members]
    return from_tokens(torch.stack(chosen, dim=1), model.token_bins, model.levels)
