"""Per-parameter diagonal Fisher and per-layer traces from per-sample gradients.

    F_ii = E_x E_ε E_{y ~ labels} [ (∂/∂θ_i log p(y | x, ε, θ))² ]

Per-sample gradients come from ``torch.func`` (``vmap(grad(...))``, one batched
pass) or, as a reference, from one backward pass per sample (``backend="loop"``).
The trace of a layer is the sum of its diagonal, so Tr(F_l) needs no extra work.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from ._target import FisherTarget, Noise, calibration_batches, check_labels_needed, label_draws, nll_terms, passes
from .config import FisherConfig

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
    target: FisherTarget, x: torch.Tensor, noise: Noise, labels: torch.Tensor, backend: str = "vmap"
) -> Dict[str, torch.Tensor]:
    """∂/∂θ (−log p(y_n | x_n, ε_n)) for every sample n: tensors of shape (B, *param.shape)."""
    model = target.model
    params = {k: v.detach() for k, v in target.named_params().items()}
    if backend == "loop":
        out: Dict[str, list] = {k: [] for k in params}
        live = target.named_params()
        for n in range(x.shape[0]):
            nz = None if noise is None else {k: v[n : n + 1] for k, v in noise.items()}
            loss = nll_terms(target.logits(x[n : n + 1], nz), labels[n : n + 1]).sum()
            grads = torch.autograd.grad(loss, list(live.values()), allow_unused=True)
            for (k, p), g in zip(live.items(), grads):
                out[k].append(torch.zeros_like(p) if g is None else g)
        return {k: torch.stack(v) for k, v in out.items()}
    if backend != "vmap":
        raise ValueError(f"unknown backend {backend!r}; use 'vmap' or 'loop'")
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    if noise is None:
        def loss_one(p, xi, yi):
            logits = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
            return nll_terms(logits, yi.unsqueeze(0)).sum()

        return vmap(grad(loss_one), in_dims=(None, 0, 0))(params, x, labels)

    def loss_one_noisy(p, xi, ni, yi):
        nz = {k: v.unsqueeze(0) for k, v in ni.items()}
        logits = functional_call(model, (p, buffers), (xi.unsqueeze(0), nz))
        return nll_terms(logits, yi.unsqueeze(0)).sum()

    return vmap(grad(loss_one_noisy), in_dims=(None, 0, 0, 0))(params, x, noise, labels)


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
                    g = per_sample_grads(target, xb, noise, draw.labels, cfg.resolved_backend)
                    w = draw.weights
                    for k, gk in g.items():
                        acc[k] += torch.einsum("b,b...->...", w, gk.double() ** 2)
                n_terms += len(xb)
    return DiagonalFisher({k: (v / n_terms).numpy() for k, v in acc.items()}, n_samples=int(len(x)))
