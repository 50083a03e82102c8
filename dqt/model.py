"""The Q-Transformer network: a state encoder feeding a causal transformer over action-dimension tokens.

Token 0 is the encoded state; token i > 0 embeds the chosen bin of action dimension i-1. Causal attention
means output i sees the state and the bins of dimensions < i, so it gives Q(s, a_1..a_{i-1}, a_i = b) for
every bin b of dimension i (Chebotar et al. 2023, Sec. 4.1). The model knows nothing of torch.distributed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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
        if t == 1:  # a lone token attends only to itself: attention returns its value
            x = x + self.proj(self.qkv(self.norm1(x))[..., 2 * dim:])
        else:
            q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
            attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.proj(attn.transpose(1, 2).reshape(b, t, dim))
        return x + self.mlp(self.norm2(x))


class QTransformer(nn.Module):
    """Autoregressive Q-function over `action_dims` discretised dimensions of `bins` bins each."""

    def __init__(self, obs_dim: int, action_dims: int, bins: int, dim: int = 128, depth: int = 2,
                 heads: int = 4, dueling: bool = False):
        super().__init__()
        self.action_dims, self.bins, self.dueling = action_dims, bins, dueling
        self.encoder = nn.Sequential(nn.Linear(obs_dim, dim), nn.LayerNorm(dim), nn.GELU(), nn.Linear(dim, dim))
        self.bin_embedding = nn.Embedding(action_dims * bins, dim)  # a separate table per dimension
        self.position = nn.Parameter(torch.zeros(action_dims, dim))
        self.blocks = nn.ModuleList(CausalBlock(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.advantage = nn.Linear(dim, bins)
        self.value = nn.Linear(dim, 1) if dueling else None
        nn.init.normal_(self.position, std=0.02)

    def forward(self, obs: torch.Tensor, prefix_bins: torch.Tensor) -> torch.Tensor:
        """Q-values [B, k+1, bins] for dimensions 0..k given obs [B, obs_dim] and prefix_bins [B, k] (k < d)."""
        return self.q_values(self.encoder(obs), prefix_bins)

    def q_values(self, state: torch.Tensor, prefix_bins: torch.Tensor) -> torch.Tensor:
        """forward() from an already encoded state [B, dim] (decoding encodes once for all d dimensions)."""
        k = prefix_bins.shape[1]
        state = state.unsqueeze(1)
        offsets = torch.arange(k, device=prefix_bins.device) * self.bins
        tokens = torch.cat([state, self.bin_embedding(prefix_bins + offsets)], dim=1)
        x = tokens + self.position[: k + 1]
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        q = self.advantage(x)
        if self.value is not None:
            q = self.value(x) + q - q.mean(-1, keepdim=True)
        return q


@torch.inference_mode()
def greedy_bins(model: QTransformer, obs: torch.Tensor) -> torch.Tensor:
    """Greedy autoregressive decode [B, d]: bin i = argmax of the same head training uses, given bins < i."""
    state = model.encoder(obs)
    bins = torch.zeros(obs.shape[0], 0, dtype=torch.long, device=obs.device)
    for _ in range(model.action_dims):
        q_last = model.q_values(state, bins)[:, -1]
        bins = torch.cat([bins, q_last.argmax(-1, keepdim=True)], dim=1)
    return bins
