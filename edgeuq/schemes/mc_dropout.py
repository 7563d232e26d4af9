"""MC dropout: dropout stays on at inference; its keep masks are graph inputs.

The layer multiplies by an inverted-dropout keep mask (noise kind
``dropout_mask``, mean 1). Where the mask comes from:

* an explicit ``noise`` tensor of shape ``(batch, *shape)`` (export, runtime parity);
* otherwise, when the module is training or ``sampling`` is on, a mask drawn
  with torch's generator;
* otherwise the mask's mean, 1 — the deterministic pass.

Sites: ``ModelConfig.block_dropout_positions`` of the stochastic blocks
(``attn_probs`` = dropout on the attention weights, only when listed) and
``head_dropout_positions`` of the head when ``stochastic_head``.
"""
from __future__ import annotations

from typing import Any, List, Optional, Tuple, final

import torch
from torch import nn

from ..models.layers import Dropout, NoiseDict, StochasticLayer
from .base import Scheme, TextHead
from .registry import register_scheme

__all__ = ["MCDropout", "McDropoutScheme", "mc_block_dropout", "mc_head_dropout"]


@final
class MCDropout(StochasticLayer):
    kind = "dropout_mask"

    def __init__(self, name: str, p: float, shape: Tuple[int, ...]) -> None:
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout p must be in [0, 1), got {p}")
        super().__init__(name, shape)
        self.p = float(p)

    def noise_params(self) -> dict:
        return {"p": self.p}

    def forward(self, x: torch.Tensor, noise: Optional[NoiseDict] = None) -> torch.Tensor:
        if noise is not None:
            return x * self.explicit_noise(noise)
        if self.draws_now() and self.p > 0:
            keep = torch.rand_like(x) >= self.p
            return x * keep.to(x.dtype) / (1.0 - self.p)
        return x


def mc_block_dropout(cfg: Any, index: int, site: str, shape: Tuple[int, ...], stochastic: bool) -> nn.Module:
    """MC dropout at ``site`` of a stochastic block when the site is listed, else training-time dropout."""
    if stochastic and site in cfg.block_dropout_positions:
        return MCDropout(f"block{index}_{site}", cfg.dropout, shape)
    return Dropout(cfg.dropout)


def mc_head_dropout(cfg: Any, site: str, shape: Tuple[int, ...]) -> nn.Module:
    """MC dropout at head ``site`` when the head is stochastic and the site is listed."""
    if cfg.stochastic_head and site in cfg.head_dropout_positions:
        return MCDropout(site, cfg.head_p, shape)
    return Dropout(cfg.head_p)


@final
@register_scheme("mc_dropout")
class McDropoutScheme(Scheme):
    """MC dropout in the stochastic blocks and the head (no options: the sites are
    ``block_dropout_positions`` / ``head_dropout_positions`` of the model config)."""

    relocatable_sites = True
    text_head = TextHead(sites=("drop_in", "drop_hidden"))

    def problems(self, cfg: Any) -> List[str]:
        return []

    def block_dropout(self, cfg: Any, index: int, site: str, shape: Tuple[int, ...], stochastic: bool) -> nn.Module:
        return mc_block_dropout(cfg, index, site, shape, stochastic)

    def attention_dropout(self, cfg: Any, index: int, stochastic: bool) -> Optional[nn.Module]:
        if stochastic and "attn_probs" in cfg.block_dropout_positions:
            heads, t = cfg.block_shape(index).heads, cfg.block_tokens(index)
            return MCDropout(f"block{index}_attn_probs", cfg.dropout, (heads, t, t))
        return None

    def head_dropout(self, cfg: Any, site: str, shape: Tuple[int, ...]) -> nn.Module:
        return mc_head_dropout(cfg, site, shape)
