"""Activation Fisher traces and activation ranges of every layer's input.

For layer l with input activation a_l (what a quantized kernel reads):

    Tr(F_a,l) = E_x E_ε E_y Σ_i (∂/∂a_l,i log p(y | x, ε))²

the activation term of FIT's sensitivity (Zandonati et al., ICLR 2023). The
same pass records the input range (min, max), its mean square, and the output
abs-max — what a quantizer needs for step sizes and fixed-point formats.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ._hooks import io_taps, run_hooked_pass
from ._target import FisherTarget
from .config import FisherConfig

__all__ = ["ActivationStats", "ActivationAccumulator", "activation_fisher"]


@dataclass(frozen=True)
class ActivationStats:
    """Per layer: input-activation Fisher trace (per sample) and ranges."""

    trace: float          # Tr(F_a): summed over the elements of one sample's input
    numel: int            # elements of one sample's input
    min: float
    max: float
    mean_square: float
    out_absmax: float

    def to_dict(self) -> dict:
        return dict(vars(self))


class ActivationAccumulator:
    def __init__(self, layers: Sequence[str]) -> None:
        self.layers = list(layers)
        self._trace = {n: 0.0 for n in self.layers}
        self._min = {n: np.inf for n in self.layers}
        self._max = {n: -np.inf for n in self.layers}
        self._sq = {n: 0.0 for n in self.layers}
        self._count = {n: 0 for n in self.layers}
        self._numel = {n: 0 for n in self.layers}
        self._out = {n: 0.0 for n in self.layers}

    def taps(self):
        return io_taps("act", self.layers)

    def on_forward(self, tensors: Dict[str, torch.Tensor]) -> None:
        for n in self.layers:
            a = tensors[f"act:in:{n}"]
            self._min[n] = min(self._min[n], float(a.min()))
            self._max[n] = max(self._max[n], float(a.max()))
            self._sq[n] += float(a.double().pow(2).sum())
            self._count[n] += a.numel()
            self._numel[n] = int(a[0].numel())
            self._out[n] = max(self._out[n], float(tensors[f"act:out:{n}"].abs().max()))

    def on_backward(self, grads: Dict[str, torch.Tensor], weights: torch.Tensor) -> None:
        for n in self.layers:
            g = grads[f"act:in:{n}"].double()
            self._trace[n] += float((weights * g.pow(2).flatten(1).sum(1)).sum())

    def result(self, n_terms: int) -> Dict[str, ActivationStats]:
        return {
            n: ActivationStats(
                trace=self._trace[n] / n_terms, numel=self._numel[n], min=self._min[n], max=self._max[n],
                mean_square=self._sq[n] / max(1, self._count[n]), out_absmax=self._out[n],
            )
            for n in self.layers
        }


def activation_fisher(
    model: nn.Module, x: np.ndarray, y: Optional[np.ndarray] = None, cfg: FisherConfig = FisherConfig(),
    layers: Optional[Sequence[str]] = None,
) -> Mapping[str, ActivationStats]:
    """Activation Fisher trace and ranges of every Linear/Conv1d input (or ``layers``)."""
    acc = ActivationAccumulator(layers if layers is not None else list(FisherTarget(model).layers()))
    n = run_hooked_pass(model, x, y, cfg, [acc], desc=f"activation Fisher ({cfg.labels})")
    return acc.result(n)
