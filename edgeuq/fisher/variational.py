"""Closed-form Fisher of a mean-field Gaussian weight posterior q(w) = N(μ, σ²).

Ready for a variational (Bayes-by-backprop) layer: it works on the layer's
parameter tensors, so no layer class is needed. Per weight, with the scale
parametrised by a free parameter ρ,

    F_μμ = 1 / σ²,      F_ρρ = 2 (∂σ/∂ρ)² / σ²,      F_μρ = 0

    parametrization   σ(ρ)              F_ρρ
    "sigma"           ρ                 2 / σ²
    "softplus"        log(1 + e^ρ)      2 sigmoid(ρ)² / σ²
    "log_sigma"       e^ρ               2

The Fisher is the expected outer product of the score ∇ log q(w), so its trace
is the expected squared score norm, E_q ‖∇_{μ,ρ} log q(w)‖² — exact here
(:func:`gaussian_score` gives the score for Monte Carlo checks).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import numpy as np
from torch import nn

__all__ = ["GaussianFisher", "PARAMETRIZATIONS", "gaussian_weight_fisher", "gaussian_score", "sigma_of",
           "expected_fisher_trace", "variational_fisher"]

PARAMETRIZATIONS = ("sigma", "softplus", "log_sigma")


def _arr(t) -> np.ndarray:
    if hasattr(t, "detach"):
        t = t.detach().cpu().numpy()
    return np.asarray(t, dtype=np.float64)


def _check(mu: np.ndarray, rho: np.ndarray, parametrization: str) -> None:
    if parametrization not in PARAMETRIZATIONS:
        raise ValueError(f"unknown parametrization {parametrization!r}; use one of {PARAMETRIZATIONS}")
    if mu.shape != rho.shape:
        raise ValueError(f"mean and scale parameters differ in shape: {mu.shape} vs {rho.shape}")
    if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(rho))):
        raise ValueError("mean/scale parameters contain NaN or inf")
    if parametrization == "sigma" and np.any(rho <= 0):
        raise ValueError("with parametrization='sigma' every scale must be > 0")


def sigma_of(rho, parametrization: str = "softplus") -> np.ndarray:
    rho = _arr(rho)
    if parametrization == "sigma":
        return rho
    if parametrization == "softplus":
        return np.logaddexp(0.0, rho)
    if parametrization == "log_sigma":
        return np.exp(rho)
    raise ValueError(f"unknown parametrization {parametrization!r}; use one of {PARAMETRIZATIONS}")


def _dsigma(rho: np.ndarray, parametrization: str) -> np.ndarray:
    if parametrization == "sigma":
        return np.ones_like(rho)
    if parametrization == "softplus":
        return 1.0 / (1.0 + np.exp(-rho))
    return np.exp(rho)


@dataclass(frozen=True, eq=False)
class GaussianFisher:
    """Diagonal Fisher of q with respect to the mean and the scale parameter."""

    mean: np.ndarray
    scale: np.ndarray
    parametrization: str

    @property
    def trace_mean(self) -> float:
        return float(self.mean.sum())

    @property
    def trace_scale(self) -> float:
        return float(self.scale.sum())

    def trace(self) -> float:
        return self.trace_mean + self.trace_scale


def gaussian_weight_fisher(mu, rho, parametrization: str = "softplus") -> GaussianFisher:
    """Closed-form Fisher of N(μ, σ(ρ)²) for tensors ``mu`` and ``rho`` (numpy or torch)."""
    mu, rho = _arr(mu), _arr(rho)
    _check(mu, rho, parametrization)
    sigma = sigma_of(rho, parametrization)
    if np.any(sigma <= 0):
        raise ValueError("σ underflows to 0; the Fisher is unbounded")
    return GaussianFisher(1.0 / sigma**2, 2.0 * _dsigma(rho, parametrization) ** 2 / sigma**2, parametrization)


def expected_fisher_trace(mu, rho, parametrization: str = "softplus") -> float:
    """Tr F = E_q ‖∇ log q(w)‖², summed over the mean and scale parameters."""
    return gaussian_weight_fisher(mu, rho, parametrization).trace()


def gaussian_score(w, mu, rho, parametrization: str = "softplus") -> Tuple[np.ndarray, np.ndarray]:
    """(∂/∂μ, ∂/∂ρ) log N(w; μ, σ(ρ)²) at weights ``w``; ``w`` may carry leading sample axes."""
    w, mu, rho = _arr(w), _arr(mu), _arr(rho)
    _check(mu, rho, parametrization)
    sigma = sigma_of(rho, parametrization)
    z = (w - mu) / sigma
    d_mu = z / sigma
    d_sigma = (z**2 - 1.0) / sigma
    return d_mu, d_sigma * _dsigma(rho, parametrization)


def variational_fisher(model: nn.Module, suffix: str = "_rho",
                       parametrization: str = "softplus") -> Dict[str, GaussianFisher]:
    """Closed form for every mean-field Gaussian parameter pair in ``model``.

    A pair is a parameter ``<p>`` (the mean) next to ``<p><suffix>`` (the scale
    parameter), e.g. ``weight`` / ``weight_rho`` with σ = softplus(ρ) — the
    convention of a Bayes-by-backprop linear layer. Keys are full parameter
    names of the means. No pair: an empty dict.
    """
    params = dict(model.named_parameters())
    out: Dict[str, GaussianFisher] = {}
    for name, scale in params.items():
        if name.endswith(suffix) and name[: -len(suffix)] in params:
            mean = name[: -len(suffix)]
            out[mean] = gaussian_weight_fisher(params[mean], scale, parametrization)
    return out
