"""Hierarchical stochastic attention (Pei, Wang & Szarvas, AAAI 2022).

Two stochastic levels per head, both Gumbel-softmax relaxations whose Gumbel
noise comes from ``uniform`` graph inputs (turned into Gumbel noise inside the
graph, clamped away from 0 and 1):

1. stochastic attention over the values, temperature ``tau1``::

       a = softmax((q k^T / sqrt(d_h) + g1) / tau1),   h = a v

2. each head output attends to ``k`` learnable centroids ``C_h`` (k, d_h) and
   is replaced by a sampled mixture of them, temperature ``tau2``::

       b = softmax((h C_h^T / sqrt(d_h) + g2) / tau2),  h' = b C_h

``g1`` (heads, T, T) and ``g2`` (heads, T, k) are i.i.d. standard Gumbel. With
the noise at its mean (u = 0.5, a constant shift of every logit) the layer is
the deterministic ``softmax(s / tau)`` attention. With ``tau -> 0`` a sample of
``b`` approaches a one-hot draw from ``softmax(h C^T / sqrt(d_h))`` (the
Gumbel-max trick), i.e. a centroid sampled with those probabilities.

The scheme puts this attention in the stochastic blocks (each with its own
heads and head_dim); the head, when stochastic, keeps MC dropout.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Tuple, final

import torch
from torch import nn

from ..models.attention import AttentionBase
from ..models.layers import NoiseDict, StochasticLayer, gumbel_from_uniform
from .base import Scheme
from .mc_dropout import mc_head_dropout
from .registry import register_scheme

__all__ = ["GumbelNoise", "HierarchicalStochasticAttention", "gumbel_softmax", "HsaOptions", "HsaScheme"]


@final
class GumbelNoise(StochasticLayer):
    """A ``uniform`` noise input returned as standard Gumbel noise (None = its mean: no shift)."""

    kind = "uniform"

    def forward(self, like: torch.Tensor, noise: Optional[NoiseDict] = None) -> Optional[torch.Tensor]:
        u = self.noise_for(noise, like.shape[0], like)
        return None if u is None else gumbel_from_uniform(u)


def gumbel_softmax(logits: torch.Tensor, gumbel: Optional[torch.Tensor], tau: float) -> torch.Tensor:
    """softmax((logits + gumbel) / tau) over the last axis; no noise when ``gumbel`` is None."""
    z = logits if gumbel is None else logits + gumbel
    return torch.softmax(z / tau if tau != 1.0 else z, dim=-1)


@final
class HierarchicalStochasticAttention(AttentionBase):
    """Self-attention with the module names of the plain attention (``qkv``, ``proj``)
    plus ``centroids`` (heads, k, head_dim) and two Gumbel noise inputs."""

    def __init__(self, dim: int, heads: int, head_dim: int, tokens: int, centroids: int, tau1: float, tau2: float,
                 name: str) -> None:
        super().__init__(dim, heads, head_dim)
        self.tau1 = float(tau1)
        self.tau2 = float(tau2)
        self.centroids = nn.Parameter(0.5 * torch.randn(heads, centroids, self.head_dim))
        self.gumbel_attn = GumbelNoise(f"{name}_attn_gumbel", (heads, tokens, tokens))
        self.gumbel_centroid = GumbelNoise(f"{name}_centroid_gumbel", (heads, tokens, centroids))

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, noise: Optional[NoiseDict],
                  key_bias: Optional[torch.Tensor]) -> torch.Tensor:
        scale = self.head_dim ** -0.5
        scores = (q @ k.transpose(-2, -1)) * scale
        if key_bias is not None:
            scores = scores + key_bias
        att = gumbel_softmax(scores, self.gumbel_attn(scores, noise), self.tau1)
        h = att @ v                                                  # (B, H, T, d_h)
        c_scores = (h @ self.centroids.transpose(-2, -1)) * scale    # (B, H, T, k)
        mix = gumbel_softmax(c_scores, self.gumbel_centroid(c_scores, noise), self.tau2)
        return mix @ self.centroids                                  # (B, H, T, d_h)


@final
@dataclass(frozen=True)
class HsaOptions:
    """``centroids`` per head, Gumbel-softmax temperatures ``tau1`` (over values) and ``tau2``
    (over centroids)."""

    centroids: int = 16
    tau1: float = 1.0
    tau2: float = 1.0


@final
@register_scheme("hsa")
class HsaScheme(Scheme):
    trunk_layers = True
    options_type = HsaOptions
    def problems(self, cfg: Any) -> List[str]:
        o: HsaOptions = cfg.scheme_options
        problems = []
        if not cfg.stochastic_blocks:
            problems.append("scheme 'hsa' needs at least one stochastic block")
        if o.centroids < 1 or not (o.tau1 > 0 and o.tau2 > 0):
            problems.append("scheme_options centroids must be >= 1 and tau1, tau2 > 0")
        return problems

    def attention(self, cfg: Any, index: int, stochastic: bool) -> AttentionBase:
        if not stochastic:
            return super().attention(cfg, index, stochastic)
        o: HsaOptions = cfg.scheme_options
        shape = cfg.block_shape(index)
        return HierarchicalStochasticAttention(cfg.d_model, shape.heads, shape.head_dim, cfg.block_tokens(index),
                                               o.centroids, o.tau1, o.tau2, f"block{index}")

    def head_dropout(self, cfg: Any, site: str, shape: Tuple[int, ...]) -> nn.Module:
        return mc_head_dropout(cfg, site, shape)
