"""Per-parameter diagonal Fisher and per-layer traces from per-sample gradients.

    F_ii = E_x E_ε E_{y ~ labels} [ (∂/∂θ_i log p(y | x, ε, θ))² ]

Per-sample gradients come from the estimator ``FisherConfig.per_sample`` names
(:mod:`edgeuq.fisher.per_sample`): ``torch.func`` (``vmap(grad(...))``, one batched
pass) or, as a reference, one backward pass per sample (``per_sample="loop"``).
The trace of a layer is the sum of its diagonal, so Tr(F_l) needs no extra work.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional

import numpy as np
import torch
from torch import nn

from ._target import FisherTarget, Noise, calibration_batches, check_labels_needed, label_draws, passes
from .config import FisherConfig
from .per_sample import DEFAULT_PER_SAMPLE, get_per_sample

__all__ = ["DiagonalFisher", "diagonal_fisher", "per_sample_grads"]


@dataclass(frozen=True, eq=False)
class DiagonalFisher:
    """Diagonal Fisher per parameter tensor (same shapes as the parameters)."""

    diag: Mapping[str, np.ndarray]
    n_samples: int

    def trace(self, name: str) -> float:
        return float(self.diag[name].sum())

    def param_traces(self) -> Dict[str, float]:
        return {k: float(v.sum()) for k, v in self.diag.items()}

    def layer_traces(self, model: nn.Module) -> Dict[str, float]:
        """Tr(F) of each Linear/Conv1d layer's weight."""
        return {n: self.trace(f"{n}.weight") for n in FisherTarget(model).layers() if f"{n}.weight" in self.diag}


def per_sample_grads(
    target: FisherTarget, x: torch.Tensor, noise: Noise, labels: torch.Tensor, per_sample: str = DEFAULT_PER_SAMPLE
) -> Dict[str, torch.Tensor]:
    """∂/∂θ (−log p(y_n | x_n, ε_n)) for every sample n: tensors of shape (B, *param.shape),
    taken by the registered estimator ``per_sample`` (:data:`~edgeuq.fisher.per_sample.PER_SAMPLE_GRADIENTS`)."""
    return get_per_sample(per_sample)(target, x, noise, labels)


def diagonal_fisher(
    model: nn.Module, x: np.ndarray, y: Optional[np.ndarray] = None, cfg: FisherConfig = FisherConfig()
) -> DiagonalFisher:
    """Stream ``x`` (and ``y`` for the empirical Fisher) and average squared per-sample gradients."""
    check_labels_needed(cfg, y)
    target = FisherTarget(model)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    acc = {k: torch.zeros(p.shape, dtype=torch.float64) for k, p in target.named_params().items()}
    n_terms = 0
    with target.evaluating():
        for xb, yb in calibration_batches(x, y, cfg.batch_size, cfg.progress, f"Fisher diagonal ({cfg.labels})"):
            for _ in range(passes(target, cfg)):
                noise = target.draw_noise(len(xb), rng)
                with torch.no_grad():
                    logits = target.logits(xb, noise)
                for draw in label_draws(logits, yb, cfg, gen):
                    g = per_sample_grads(target, xb, noise, draw.labels, cfg.per_sample)
                    w = draw.weights
                    for k, gk in g.items():
                        acc[k] += torch.einsum("b,b...->...", w, gk.double() ** 2)
                n_terms += len(xb)
    return DiagonalFisher({k: (v / n_terms).numpy() for k, v in acc.items()}, n_samples=int(len(x)))
