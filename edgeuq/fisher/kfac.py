"""K-FAC factors of Linear layers (Martens & Grosse 2015; "expand" setting of
Eschenhagen et al. 2023 for weights shared over tokens).

For a Linear layer with inputs a (rows: samples × tokens) and output gradients
g = ∂/∂(W a + b) log p(y | x):

    A = E_{n,t}[a aᵀ]                 (in × in, or (in+1) × (in+1) with the bias)
    G = E_n[Σ_t g gᵀ]                 (out × out, labels as in FisherConfig)
    F_W ≈ G ⊗ A                       (row-major vec(W), W of shape (out, in))

With one input and one token the factorisation is exact: F_W = G ⊗ A.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ._hooks import io_taps, run_hooked_pass
from .config import FisherConfig

__all__ = ["KFACFactors", "KFACAccumulator", "kfac_factors"]


@dataclass(frozen=True, eq=False)
class KFACFactors:
    A: np.ndarray
    G: np.ndarray
    include_bias: bool = False

    def dense(self) -> np.ndarray:
        """The Kronecker approximation G ⊗ A as a dense matrix (small layers only)."""
        return np.kron(self.G, self.A)

    def diagonal(self) -> np.ndarray:
        """diag(G ⊗ A), shaped (out, in[+1]) like the weight (and bias column)."""
        return np.outer(np.diag(self.G), np.diag(self.A))

    def trace(self) -> float:
        return float(np.trace(self.G) * np.trace(self.A))


class KFACAccumulator:
    def __init__(self, model: nn.Module, layers: Sequence[str], include_bias: bool = False) -> None:
        modules = dict(model.named_modules())
        for n in layers:
            if not isinstance(modules.get(n), nn.Linear):
                raise TypeError(f"K-FAC factors are implemented for nn.Linear layers; {n!r} is not one")
        self.layers = list(layers)
        self.include_bias = include_bias
        self._A = {n: 0.0 for n in self.layers}
        self._G = {n: 0.0 for n in self.layers}
        self._rows = {n: 0 for n in self.layers}

    def taps(self):
        return io_taps("kfac", self.layers)

    def on_forward(self, tensors: Dict[str, torch.Tensor]) -> None:
        for n in self.layers:
            a = tensors[f"kfac:in:{n}"].double()
            a = a.reshape(-1, a.shape[-1])
            if self.include_bias:
                a = torch.cat([a, torch.ones(a.shape[0], 1, dtype=a.dtype)], dim=1)
            self._A[n] = self._A[n] + a.T @ a
            self._rows[n] += a.shape[0]

    def on_backward(self, grads: Dict[str, torch.Tensor], weights: torch.Tensor) -> None:
        for n in self.layers:
            g = grads[f"kfac:out:{n}"].double()
            b = g.shape[0]
            gw = (g * weights.sqrt().view([b] + [1] * (g.dim() - 1))).reshape(-1, g.shape[-1])
            self._G[n] = self._G[n] + gw.T @ gw

    def result(self, n_terms: int) -> Dict[str, KFACFactors]:
        return {
            n: KFACFactors(
                (self._A[n] / self._rows[n]).numpy(), (self._G[n] / n_terms).numpy(), self.include_bias
            )
            for n in self.layers
        }


def kfac_factors(
    model: nn.Module, x: np.ndarray, y: Optional[np.ndarray] = None, cfg: FisherConfig = FisherConfig(),
    layers: Optional[Sequence[str]] = None, include_bias: bool = False,
) -> Mapping[str, KFACFactors]:
    """K-FAC factors of every nn.Linear layer of ``model`` (or ``layers``)."""
    names = layers if layers is not None else [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    acc = KFACAccumulator(model, names, include_bias)
    n = run_hooked_pass(model, x, y, cfg, [acc], desc=f"K-FAC ({cfg.labels})")
    return acc.result(n)
