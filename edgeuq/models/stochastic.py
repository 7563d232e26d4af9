"""Base class of the stochastic layers whose randomness is a graph input.

A stochastic layer owns one noise input: a :class:`NoiseSpec` (name, kind,
per-sample shape). Where its noise comes from, in order:

* an explicit ``noise[name]`` tensor of shape ``(batch, *shape)`` (export,
  runtime parity, ``mc_sample_probs``);
* a draw from torch's generator when ``sampling`` is on, or in training mode
  when the layer samples during training (``sample_in_training``);
* otherwise nothing: :meth:`noise_for` returns ``None`` and the layer takes its
  noise-free path, which equals feeding the kind's mean
  (``edgeuq_runtime.noise.NOISE_MEANS``) — the deterministic pass.

:class:`~edgeuq.models.mc_dropout.MCDropout` predates this class and follows
the same protocol on its own.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from torch import nn

from edgeuq_runtime.noise import NOISE_SAMPLERS, NoiseSpec

from .mc_dropout import MCDropout

__all__ = ["StochasticLayer", "is_stochastic_layer", "apply_layer", "gumbel_from_uniform"]

NoiseDict = Mapping[str, torch.Tensor]
#: Uniform noise is clamped to [eps, 1 - eps] before the Gumbel transform (finite logs).
GUMBEL_EPS = 1e-6


class StochasticLayer(nn.Module):
    """A layer with one noise input of kind ``kind`` and per-sample ``shape``."""

    kind: str = ""
    sample_in_training: bool = True

    def __init__(self, name: str, shape: Tuple[int, ...]) -> None:
        super().__init__()
        if self.kind not in NOISE_SAMPLERS:
            raise ValueError(f"{type(self).__name__}: noise kind {self.kind!r} unknown; known: {sorted(NOISE_SAMPLERS)}")
        self.name = name
        self.shape = tuple(int(s) for s in shape)
        self.sampling = False

    def noise_params(self) -> Dict[str, Any]:
        return {}

    def noise_spec(self) -> NoiseSpec:
        return NoiseSpec(name=self.name, kind=self.kind, shape=self.shape, params=self.noise_params())

    def draw(self, batch: int, like: torch.Tensor) -> torch.Tensor:
        """Noise of shape (batch, *shape) from torch's generator (training / sampling)."""
        size = (batch, *self.shape)
        if self.kind == "standard_normal":
            return torch.randn(size, dtype=like.dtype, device=like.device)
        if self.kind == "uniform":
            return torch.rand(size, dtype=like.dtype, device=like.device)
        if self.kind == "categorical":
            k = self.shape[-1]
            index = torch.randint(0, k, size[:-1], device=like.device)
            return nn.functional.one_hot(index, k).to(like.dtype)
        raise NotImplementedError(f"{type(self).__name__} cannot draw noise of kind {self.kind!r}")

    def noise_for(self, noise: Optional[NoiseDict], batch: int, like: torch.Tensor) -> Optional[torch.Tensor]:
        """The noise tensor to use, or None for the noise-free (mean) path."""
        if noise is not None:
            if self.name not in noise:
                raise KeyError(f"noise for stochastic layer {self.name!r} missing; got {sorted(noise)}")
            return noise[self.name]
        if self.sampling or (self.training and self.sample_in_training):
            return self.draw(batch, like)
        return None


def is_stochastic_layer(module: nn.Module) -> bool:
    return isinstance(module, (MCDropout, StochasticLayer))


def apply_layer(layer: nn.Module, x: torch.Tensor, noise: Optional[NoiseDict]) -> torch.Tensor:
    """``layer(x, noise)`` for stochastic layers, ``layer(x)`` for plain ones (nn.Linear)."""
    return layer(x, noise) if isinstance(layer, StochasticLayer) else layer(x)


def gumbel_from_uniform(u: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel noise ``-log(-log(u))`` from U(0, 1) noise, clamped away from 0 and 1."""
    u = u.clamp(GUMBEL_EPS, 1.0 - GUMBEL_EPS)
    return -torch.log(-torch.log(u))
