"""Hessian traces by Hutchinson's estimator (the HAWQ-V2/V3 sensitivity).

    Tr(H_l) = E_v[vᵀ H_l v],   v Rademacher over layer l's parameters,

with H the Hessian of the mean negative log-likelihood at the *data* labels
(HAWQ's objective), Hessian-vector products by double backprop. For stochastic
models the loss is averaged over noise draws like the Fisher estimators. Used
as the HAWQ baseline next to the Fisher-guided allocation.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ._target import FisherTarget, calibration_batches, passes
from .config import FisherConfig
from .per_sample import nll_terms

__all__ = ["hutchinson_trace"]


def hutchinson_trace(
    model: nn.Module, x: np.ndarray, y: np.ndarray, cfg: FisherConfig = FisherConfig(), probes: int = 16,
    params: Optional[Sequence[str]] = None,
) -> Dict[str, float]:
    """Estimated Tr(H) of each parameter tensor (default: every layer weight)."""
    if y is None:
        raise ValueError("the Hessian of the training loss needs data labels y")
    if probes < 1:
        raise ValueError(f"probes must be >= 1, got {probes}")
    target = FisherTarget(model)
    live = target.named_params()
    names = list(params) if params is not None else [f"{n}.weight" for n in target.layers()]
    unknown = [n for n in names if n not in live]
    if unknown:
        raise KeyError(f"no such parameters: {unknown}")
    tensors = [live[n] for n in names]
    rng = np.random.default_rng(cfg.seed + 2)
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    acc = {n: 0.0 for n in names}
    total = 0
    with target.evaluating():
        for xb, yb in calibration_batches(x, y, cfg.batch_size, cfg.progress, "Hessian trace (Hutchinson)"):
            for _ in range(passes(target, cfg)):
                loss = nll_terms(target.logits(xb, target.draw_noise(len(xb), rng)), yb).mean()
                grads = torch.autograd.grad(loss, tensors, create_graph=True)
                for _ in range(probes):
                    vs = [torch.randint(0, 2, t.shape, generator=gen).to(t.dtype) * 2 - 1 for t in tensors]
                    hv = torch.autograd.grad(grads, tensors, grad_outputs=vs, retain_graph=True)
                    for n, v, h in zip(names, vs, hv):
                        acc[n] += float((v * h).sum()) * len(xb) / probes
                total += len(xb)
    return {n: v / total for n, v in acc.items()}
