"""MC dropout whose mask can be supplied from outside (the export contract).

The layer multiplies by an inverted-dropout keep mask. Where the mask comes from:

* an explicit ``noise`` tensor of shape ``(batch, *shape)`` (export, runtime parity);
* otherwise, when the module is training or ``sampling`` is on, a mask drawn
  with torch's generator;
* otherwise the mask's mean, 1 — the deterministic pass.
"""
from __future__ import annotations

from typing import Mapping, Optional, Tuple

import torch
from torch import nn

from edgeuq_runtime.noise import NoiseSpec

__all__ = ["MCDropout", "NoiseDict"]

NoiseDict = Mapping[str, torch.Tensor]


class MCDropout(nn.Module):
    kind = "dropout_mask"

    def __init__(self, name: str, p: float, shape: Tuple[int, ...]) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout p must be in [0, 1), got {p}")
        self.name = name
        self.p = float(p)
        self.shape = tuple(int(s) for s in shape)
        self.sampling = False

    def noise_spec(self) -> NoiseSpec:
        return NoiseSpec(name=self.name, kind=self.kind, shape=self.shape, params={"p": self.p})

    def forward(self, x: torch.Tensor, noise: Optional[NoiseDict] = None) -> torch.Tensor:
        if noise is not None:
            if self.name not in noise:
                raise KeyError(f"noise for stochastic layer {self.name!r} missing; got {sorted(noise)}")
            return x * noise[self.name]
        if (self.training or self.sampling) and self.p > 0:
            keep = torch.rand_like(x) >= self.p
            return x * keep.to(x.dtype) / (1.0 - self.p)
        return x
