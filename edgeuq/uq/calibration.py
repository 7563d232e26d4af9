"""Post-hoc temperature scaling (Guo et al. 2017) for any stochastic scheme.

Every sampled logit vector is divided by one temperature T > 0 before the
softmax: p_s = softmax(z_s / T), p_bar = mean_s p_s. T is fitted on held-out
(validation) data by minimising the NLL of p_bar, so it calibrates the
posterior *predictive*, not a single pass. T > 1 softens over-confident
predictions, T < 1 sharpens under-confident ones. Deployed, T is a constant
inside the head graph (``ModelConfig.temperature``).

When the validation predictions are all correct the NLL keeps falling as
T -> 0 (no interior minimum): the fit would just sharpen to the search bound,
which is over-confidence waiting for the first shifted input. Such a fit is
reported as ``degenerate`` and the identity T = 1 is kept.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp

__all__ = ["TemperatureFit", "fit_temperature", "tempered_probs", "tempered_nll"]


def _as_samples(logits) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim == 2:
        z = z[None]
    if z.ndim != 3 or z.shape[0] < 1 or z.shape[1] < 1 or z.shape[2] < 2:
        raise ValueError(f"logits must have shape (N, C) or (S, N, C) with C >= 2, got {np.shape(logits)}")
    if not np.all(np.isfinite(z)):
        raise ValueError("logits contain NaN or inf")
    return z


def tempered_probs(logits, temperature: float) -> np.ndarray:
    """p_bar (N, C) = mean_s softmax(z_s / T) for logits (S, N, C) or (N, C)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = _as_samples(logits) / temperature
    return np.exp(z - logsumexp(z, axis=-1, keepdims=True)).mean(axis=0)


def tempered_nll(logits, labels, temperature: float) -> float:
    """NLL of p_bar at temperature T (log-sum-exp over samples, stable for large logits)."""
    z = _as_samples(logits) / temperature
    y = np.asarray(labels)
    if y.shape != (z.shape[1],) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers of shape ({z.shape[1]},), got {y.dtype} {y.shape}")
    if y.min() < 0 or y.max() >= z.shape[2]:
        raise ValueError(f"labels must lie in [0, {z.shape[2]})")
    logp = z - logsumexp(z, axis=-1, keepdims=True)                      # (S, N, C)
    logp_y = logp[:, np.arange(len(y)), y]                                # (S, N)
    log_mean = logsumexp(logp_y, axis=0) - math.log(z.shape[0])           # log p_bar(y)
    return float(-np.mean(log_mean))


@dataclass(frozen=True)
class TemperatureFit:
    """``temperature`` to install; ``optimum`` the NLL minimiser found in the bounds;
    ``degenerate`` when that minimiser sits on a bound (then ``temperature`` is 1)."""

    temperature: float
    nll_before: float
    nll_after: float
    optimum: float = 1.0
    degenerate: bool = False

    def to_dict(self) -> dict:
        return {"temperature": self.temperature, "nll_before": self.nll_before, "nll_after": self.nll_after,
                "optimum": self.optimum, "degenerate": self.degenerate}


def fit_temperature(logits, labels, bounds: tuple = (0.05, 20.0)) -> TemperatureFit:
    """The T in ``bounds`` minimising the NLL of mean_s softmax(z_s / T) on (logits, labels).

    ``logits``: (N, C) for a deterministic model or (S, N, C) sampled logits
    (fixed draws: the same noise is reused for every candidate T).
    """
    lo, hi = bounds
    if not 0 < lo < 1 < hi:
        raise ValueError(f"bounds must satisfy 0 < low < 1 < high, got {bounds}")
    z = _as_samples(logits)
    res = minimize_scalar(lambda t: tempered_nll(z, labels, math.exp(t)), bounds=(math.log(lo), math.log(hi)),
                          method="bounded", options={"xatol": 1e-4})
    optimum = float(math.exp(res.x))
    best = tempered_nll(z, labels, optimum)
    # A minimiser on a bound, or a bound that is as good (a flat NLL, e.g. ~0 with no errors): no interior optimum.
    at_bound = (min(abs(res.x - math.log(lo)), abs(res.x - math.log(hi))) < 1e-2
                or min(tempered_nll(z, labels, lo), tempered_nll(z, labels, hi)) <= best + 1e-7)
    before = tempered_nll(z, labels, 1.0)
    t = 1.0 if at_bound else optimum
    after = tempered_nll(z, labels, t)
    if after > before:  # bounded search missed (flat NLL): keep the identity
        t, after = 1.0, before
    return TemperatureFit(temperature=t, nll_before=before, nll_after=after, optimum=optimum, degenerate=bool(at_bound))
