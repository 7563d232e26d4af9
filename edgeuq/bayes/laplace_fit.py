"""Fit the last-layer Laplace posterior of a trained ``scheme="laplace"`` model."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np
import torch

from ..models import SignalTransformer
from ..models.laplace import LastLayerLaplace, full_ggn, laplace_factor_full, laplace_factors_kron
from ..uq import nll

__all__ = ["LaplaceFit", "fit_laplace", "head_features", "laplace_logit_samples"]

DEFAULT_PRIOR_GRID = tuple(float(v) for v in np.logspace(-2, 5, 15))


@dataclass(frozen=True)
class LaplaceFit:
    structure: str
    prior_precision: float
    grid: Tuple[float, ...]
    val_nll: Tuple[float, ...]
    n_train: int

    def to_dict(self) -> dict:
        return {"structure": self.structure, "prior_precision": self.prior_precision, "grid": list(self.grid),
                "val_nll": list(self.val_nll), "n_train": self.n_train}


def _laplace_layer(model: SignalTransformer) -> LastLayerLaplace:
    layer = getattr(getattr(model, "head", None), "fc2", None)
    if not isinstance(layer, LastLayerLaplace):
        raise ValueError(f"model has no last-layer Laplace head (scheme {model.cfg.scheme!r}); use scheme 'laplace'")
    return layer


@torch.no_grad()
def head_features(model: SignalTransformer, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Inputs of ``head.fc2`` (the last layer) in the deterministic pass, (N, d)."""
    layer = _laplace_layer(model)
    model.eval()
    captured = []
    hook = layer.register_forward_hook(lambda mod, args, out: captured.append(args[0].detach().clone()))
    try:
        for i in range(0, len(x), batch_size):
            model(torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size])))
    finally:
        hook.remove()
    return torch.cat(captured).numpy().astype(np.float64)


def _map_logits(layer: LastLayerLaplace, feats: np.ndarray) -> np.ndarray:
    return feats @ layer.weight.detach().numpy().T.astype(np.float64) + layer.bias.detach().numpy()


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def laplace_logit_samples(layer_weight: np.ndarray, layer_bias: np.ndarray, feats: np.ndarray, structure: str,
                          factors: tuple, eps: np.ndarray) -> np.ndarray:
    """The head's formula in numpy: logits (S, N, C) for eps (S, N, noise size)."""
    z = feats @ layer_weight.T + layer_bias
    xt = np.concatenate([feats, np.ones((len(feats), 1))], axis=1)
    if structure == "kron":
        a_inv, g_chol = factors
        scale = np.sqrt(np.einsum("ni,ij,nj->n", xt, a_inv, xt))[None, :, None]
        return z[None] + scale * (eps @ g_chol.T)
    (cov_chol,) = factors
    c = layer_weight.shape[0]
    delta = (eps @ cov_chol.T).reshape(eps.shape[0], eps.shape[1], c, -1)
    return z[None] + np.einsum("sncj,nj->snc", delta, xt)


def fit_laplace(
    model: SignalTransformer,
    x_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    prior_grid: Sequence[float] = DEFAULT_PRIOR_GRID,
    samples: int = 64,
    seed: int = 0,
) -> LaplaceFit:
    """GGN of the last layer on the training features, then the prior precision
    from ``prior_grid`` with the lowest validation NLL of the sampled predictive
    (``samples`` fixed draws); installs the posterior in ``model.head.fc2``."""
    layer = _laplace_layer(model)
    w = layer.weight.detach().numpy().astype(np.float64)
    b = layer.bias.detach().numpy().astype(np.float64)
    f_train = head_features(model, x_train)
    p_train = _softmax(_map_logits(layer, f_train))
    f_val = head_features(model, x_val)
    eps = np.random.default_rng(seed).standard_normal((samples, len(f_val), layer.shape[0]))
    ggn = full_ggn(f_train, p_train) if layer.structure == "full" else None
    scores, all_factors = [], []
    for tau in prior_grid:
        if layer.structure == "kron":
            factors = laplace_factors_kron(f_train, p_train, tau)
        else:
            factors = (laplace_factor_full(ggn, tau),)
        logits = laplace_logit_samples(w, b, f_val, layer.structure, factors, eps)
        scores.append(nll(_softmax(logits).mean(axis=0), y_val))
        all_factors.append(factors)
    best = int(np.argmin(scores))
    tau = float(prior_grid[best])
    if layer.structure == "kron":
        layer.set_posterior(tau, a_inv=all_factors[best][0], g_chol=all_factors[best][1])
    else:
        layer.set_posterior(tau, cov_chol=all_factors[best][0])
    return LaplaceFit(layer.structure, tau, tuple(float(t) for t in prior_grid), tuple(float(v) for v in scores),
                      int(len(f_train)))
