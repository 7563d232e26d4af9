"""Multi-head self-attention written with plain ops (exports to MatMul/Softmax).

Each block has its own number of heads and head dimension
(:meth:`ModelConfig.block_shape`): ``qkv`` maps d_model -> 3 * heads * head_dim,
``proj`` maps heads * head_dim -> d_model, scores are scaled by head_dim**-0.5.
:class:`AttentionBase` holds the projections and the shared forward; a scheme
that changes how q, k, v become the head outputs subclasses it and implements
:meth:`AttentionBase.attention` (e.g. hierarchical stochastic attention).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Optional, final

import torch
from torch import nn

from .layers import NoiseDict, apply_layer

__all__ = ["AttentionBase", "SelfAttention", "MASK_BIAS", "key_padding_bias"]

#: Added to the attention scores of padded keys (large, but finite for low-precision backends).
MASK_BIAS = -1e4


def key_padding_bias(mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """(B, T) 1/0 token mask -> (B, 1, 1, T) additive attention bias (None stays None)."""
    return None if mask is None else ((1.0 - mask) * MASK_BIAS)[:, None, None, :]


class AttentionBase(nn.Module, ABC):
    """``qkv``/``proj`` may be given (e.g. a scheme's Bayesian linears); otherwise plain
    ``nn.Linear`` layers are created here (qkv first, then proj)."""

    def __init__(self, dim: int, heads: int, head_dim: int, qkv: Optional[nn.Module] = None,
                 proj: Optional[nn.Module] = None) -> None:
        super().__init__()
        if heads < 1 or head_dim < 1:
            raise ValueError(f"attention needs heads >= 1 and head_dim >= 1, got {heads} and {head_dim}")
        self.heads = heads
        self.head_dim = head_dim
        inner = heads * head_dim
        self.dim = dim
        self.qkv = qkv if qkv is not None else nn.Linear(dim, 3 * inner)
        self.proj = proj if proj is not None else nn.Linear(inner, dim)

    @abstractmethod
    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, noise: Optional[NoiseDict],
                  key_bias: Optional[torch.Tensor]) -> torch.Tensor:
        """(B, H, T, head_dim) queries, keys, values -> (B, H, T, head_dim) head outputs."""

    def forward(self, x: torch.Tensor, noise: Optional[NoiseDict] = None,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        b, t, d = x.shape
        inner = self.heads * self.head_dim
        qkv = apply_layer(self.qkv, x, noise).reshape(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        out = self.attention(q, k, v, noise, key_padding_bias(mask)).transpose(1, 2)
        # ``d`` (traced from the input's shape) when the widths agree keeps the exported graph of
        # uniform models exactly as it was; a narrower (pruned) block reshapes to its own width.
        # (The comparison is on the configured ints, so torch.fx tracing still works.)
        out = out.reshape(b, t, d if inner == self.dim else inner)
        return apply_layer(self.proj, out, noise)


@final
class SelfAttention(AttentionBase):
    """softmax(q k^T / sqrt(head_dim)) v; ``drop_probs`` (dropout on the attention weights,
    e.g. MC dropout) exists only when given."""

    def __init__(self, dim: int, heads: int, head_dim: int, qkv: Optional[nn.Module] = None,
                 proj: Optional[nn.Module] = None, drop_probs: Optional[nn.Module] = None) -> None:
        super().__init__(dim, heads, head_dim, qkv, proj)
        if drop_probs is not None:
            self.drop_probs = drop_probs

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, noise: Optional[NoiseDict],
                  key_bias: Optional[torch.Tensor]) -> torch.Tensor:
        scores = (q @ k.transpose(-2, -1)) * (self.head_dim ** -0.5)
        if key_bias is not None:
            scores = scores + key_bias
        att = torch.softmax(scores, dim=-1)
        if hasattr(self, "drop_probs"):
            att = self.drop_probs(att, noise)
        return att @ v
