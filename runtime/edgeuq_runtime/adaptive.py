"""Adaptive number of samples S (numpy only): sample the head in small batches and stop
once the decision is settled.

After ``s_min`` samples, and after every further ``step``, with ``n`` samples drawn
and ``se(v) = std(v) / sqrt(n)`` over the per-sample values ``v``, the decision is
**settled** for an input when, at the normal quantile ``z``:

1. the top class is separated: the per-sample margin ``p_s[top] - p_s[runner-up]``
   has ``mean - z * se > 0``;
2. the epistemic decision is clear: the mutual information equals the mean of the
   per-sample terms ``KL(p_s || p_bar)``; with an abstention threshold ``tau``,
   ``|MI - tau| > z * se`` (without one, ``z * se <= mi_tol``); if MI is settled
   *above* ``tau`` the input abstains anyway, so (1) is not needed;
3. optionally (LAC conformal sets, ``prob_threshold = 1 - q``) every class's
   membership ``p_bar_c >= 1 - q`` is settled: ``|p_bar_c - (1 - q)| > z * se``.

Sampling stops when every input of the batch is settled, or at ``s_max``. The
per-look error is about ``2 * (1 - Phi(z))``; ``z = 2.576`` with up to
``(s_max - s_min) / step + 1`` looks is the default trade-off (see
docs/stream.md). The MI estimate of few samples is biased low; ``s_min`` bounds it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple

import numpy as np

from .errors import BackendError, InputError
from .uncertainty import UncertaintyResult, decompose, softmax

__all__ = ["AdaptiveConfig", "sample_logits", "settled", "adaptive_predict"]


@dataclass(frozen=True)
class AdaptiveConfig:
    s_min: int = 8
    s_max: int = 32
    step: int = 4
    z: float = 2.576
    mi_tol: float = 0.02

    def __post_init__(self) -> None:
        for name in ("s_min", "s_max", "step"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise InputError(f"adaptive.{name} must be an integer >= 1, got {v!r}")
        if self.s_min > self.s_max:
            raise InputError(f"adaptive.s_min ({self.s_min}) must be <= adaptive.s_max ({self.s_max})")
        if not (np.isfinite(self.z) and self.z > 0):
            raise InputError(f"adaptive.z must be a finite number > 0, got {self.z!r}")
        if not (np.isfinite(self.mi_tol) and self.mi_tol > 0):
            raise InputError(f"adaptive.mi_tol must be a finite number > 0, got {self.mi_tol!r}")


def sample_logits(rt: Any, features: np.ndarray, samples: int, rng: np.random.Generator) -> np.ndarray:
    """Logits (samples, B, C) of ``samples`` head draws on ``features`` (B, ...), through the
    runtime's ``sample_logits`` (noise drawn sample by sample from ``rng``: k draws and then k
    more equal one call of 2k, which is what makes stopping early exact)."""
    return np.asarray(rt.sample_logits(features, samples, rng))


def _se(v: np.ndarray, n: int) -> np.ndarray:
    return v.std(axis=0, ddof=1) / np.sqrt(n) if n > 1 else np.full(v.shape[1:], np.inf)


def settled(probs: np.ndarray, cfg: AdaptiveConfig, mi_threshold: Optional[float] = None,
            prob_threshold: Optional[float] = None) -> np.ndarray:
    """Per input (B,): is the decision settled given sample probabilities (n, B, C)?"""
    p = np.asarray(probs, dtype=np.float64)
    n = p.shape[0]
    pbar = p.mean(axis=0)
    order = np.argsort(-pbar, axis=1, kind="stable")
    b = np.arange(p.shape[1])
    margin = p[:, b, order[:, 0]] - p[:, b, order[:, 1]]                   # (n, B)
    class_ok = margin.mean(0) - cfg.z * _se(margin, n) > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        logratio = np.where(p > 0, np.log(np.where(p > 0, p, 1.0)) - np.log(np.maximum(pbar, 1e-300)), 0.0)
    kl = (p * logratio).sum(-1)                                              # (n, B); mean = MI
    mi, mi_se = kl.mean(0), cfg.z * _se(kl, n)
    if mi_threshold is None:
        mi_ok, mi_above = mi_se <= cfg.mi_tol, np.zeros_like(class_ok)
    else:
        mi_ok = np.abs(mi - mi_threshold) > mi_se
        mi_above = mi_ok & (mi > mi_threshold)
    ok = (class_ok & mi_ok) | mi_above
    if prob_threshold is not None:
        set_ok = (np.abs(pbar - prob_threshold) > cfg.z * _se(p, n)).all(axis=1)
        ok = ok & (set_ok | mi_above)
    return ok


def adaptive_predict(draw: Callable[[int], np.ndarray], cfg: AdaptiveConfig,
                     class_names: Optional[Tuple[str, ...]] = None, mi_threshold: Optional[float] = None,
                     prob_threshold: Optional[float] = None) -> Tuple[UncertaintyResult, int]:
    """Draw logits ``draw(k) -> (k, B, C)`` in batches until :func:`settled` or ``s_max``.

    Returns the decomposition of all samples drawn and the number of samples used."""
    parts = [softmax(np.asarray(draw(cfg.s_min), dtype=np.float64), axis=-1)]
    n = cfg.s_min
    while n < cfg.s_max:
        probs = np.concatenate(parts, axis=0)
        if settled(probs, cfg, mi_threshold, prob_threshold).all():
            break
        k = min(cfg.step, cfg.s_max - n)
        parts.append(softmax(np.asarray(draw(k), dtype=np.float64), axis=-1))
        n += k
    probs = np.concatenate(parts, axis=0)
    if not np.all(np.isfinite(probs)):
        raise BackendError("the head produced non-finite logits")
    return decompose(probs, class_names), n
