"""One-pass density score on the trunk's pooled features (numpy only).

A class-conditional Gaussian with one shared (tied) covariance, fitted on
in-distribution training features (Mahalanobis / DDU-style, Lee et al. 2018,
Mukhoti et al. 2023):

    p(z) = sum_c pi_c N(z; mu_c, Sigma)

The **density score** is the negative log-likelihood ``-log p(z)`` in nats:
higher means further from every class, i.e. more likely out of distribution.
It needs the trunk only (no sampling). Token features ``(B, T, d)`` (a
stochastic block) are mean-pooled over tokens first; pooled features ``(B, d)``
(a stochastic head only) are used as they are. Pooling ``columns:A:B`` takes
columns ``A..B-1`` of pooled features: a trunk that emits extra features for the
density beside the head's (a text trunk's ``[fine-tuned | pretrained Avg-Avg]``,
``edgeuq.text.ood``) names them so.

The fitted model is stored in a bundle file (``density.npz``: ``means`` (C, d),
``precision`` (d, d), ``log_priors`` (C,)), hashed in the manifest like every file.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np

from .errors import BundleError, InputError

__all__ = ["POOLINGS", "pool_features", "check_pooling", "GaussianDensity", "fit_density"]

POOLINGS = ("auto", "mean_tokens", "none")
_COLUMNS = "columns:"


def check_pooling(pooling: str) -> str:
    """``pooling`` if it is one of :data:`POOLINGS` or ``columns:A:B`` (0 <= A < B), else InputError."""
    if pooling in POOLINGS:
        return pooling
    if isinstance(pooling, str) and pooling.startswith(_COLUMNS):
        parts = pooling[len(_COLUMNS):].split(":")
        if len(parts) == 2 and all(p.isdigit() for p in parts) and int(parts[0]) < int(parts[1]):
            return pooling
    raise InputError(f"pooling must be one of {list(POOLINGS)} or 'columns:A:B' (0 <= A < B), got {pooling!r}")


def pool_features(features: np.ndarray, pooling: str = "auto") -> np.ndarray:
    """Features (B, d) from trunk output (B, d) or tokens (B, T, d) (mean over T)."""
    f = np.asarray(features)
    check_pooling(pooling)
    if pooling.startswith(_COLUMNS):
        a, b = (int(v) for v in pooling[len(_COLUMNS):].split(":"))
        if f.ndim != 2 or f.shape[1] < b:
            raise InputError(f"pooling {pooling!r} needs pooled features (B, >= {b}), got shape {f.shape}")
        return f[:, a:b].astype(np.float64)
    if f.ndim == 3 and pooling in ("auto", "mean_tokens"):
        return f.mean(axis=1, dtype=np.float64)
    if f.ndim == 2 and pooling in ("auto", "none"):
        return f.astype(np.float64)
    raise InputError(f"cannot pool trunk features of shape {f.shape} with pooling {pooling!r} "
                     "(expected (B, d), or (B, T, d) tokens)")


@dataclass(frozen=True, eq=False)
class GaussianDensity:
    """Tied-covariance class-conditional Gaussian: ``score(features)`` = -log p(z)."""

    means: np.ndarray       # (C, d)
    precision: np.ndarray   # (d, d), symmetric positive definite
    log_priors: np.ndarray  # (C,)

    def __post_init__(self) -> None:
        m = np.asarray(self.means, dtype=np.float64)
        p = np.asarray(self.precision, dtype=np.float64)
        lp = np.asarray(self.log_priors, dtype=np.float64)
        if m.ndim != 2 or m.shape[0] < 1 or p.shape != (m.shape[1], m.shape[1]) or lp.shape != (m.shape[0],):
            raise BundleError(f"density model shapes are inconsistent: means {m.shape}, precision {p.shape}, "
                              f"log_priors {lp.shape} (expected (C, d), (d, d), (C,))")
        if not (np.all(np.isfinite(m)) and np.all(np.isfinite(p)) and np.all(np.isfinite(lp))):
            raise BundleError("density model contains NaN or inf")
        p = 0.5 * (p + p.T)
        try:
            chol = np.linalg.cholesky(p)  # precision = L L^T; (z - mu) L has identity covariance
        except np.linalg.LinAlgError:
            raise BundleError("density precision matrix is not positive definite") from None
        object.__setattr__(self, "means", m)
        object.__setattr__(self, "precision", p)
        object.__setattr__(self, "log_priors", lp)
        object.__setattr__(self, "_chol", chol)
        object.__setattr__(self, "_mean_w", m @ chol)
        d = m.shape[1]
        # log N(z; mu, Sigma) = -0.5 d log 2pi + 0.5 log det P - 0.5 ||(z - mu) L||^2
        object.__setattr__(self, "_const", -0.5 * d * math.log(2 * math.pi) + float(np.log(np.diag(chol)).sum()))

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    @property
    def num_classes(self) -> int:
        return int(self.means.shape[0])

    def mahalanobis_sq(self, pooled: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance to every class mean: (B, C)."""
        z = np.asarray(pooled, dtype=np.float64)
        if z.ndim != 2 or z.shape[1] != self.dim:
            raise InputError(f"pooled features must have shape (batch, {self.dim}), got {z.shape}")
        zw = z @ self._chol
        return ((zw[:, None, :] - self._mean_w[None, :, :]) ** 2).sum(-1)

    def class_log_likelihood(self, pooled: np.ndarray) -> np.ndarray:
        """log pi_c + log N(z; mu_c, Sigma): (B, C)."""
        return self.log_priors[None, :] + self._const - 0.5 * self.mahalanobis_sq(pooled)

    def score(self, features: np.ndarray, pooling: str = "auto") -> np.ndarray:
        """Negative log-likelihood -log p(z) (B,) of trunk features (pooled as needed)."""
        ll = self.class_log_likelihood(pool_features(features, pooling))
        top = ll.max(axis=1)
        return -(top + np.log(np.exp(ll - top[:, None]).sum(axis=1)))

    # -- storage ------------------------------------------------------------------------------
    def save(self, path: Union[str, Path]) -> Path:
        path = Path(path)
        buf = io.BytesIO()
        np.savez(buf, means=self.means, precision=self.precision, log_priors=self.log_priors)
        path.write_bytes(buf.getvalue())
        return path

    @classmethod
    def load(cls, path: Union[str, Path]) -> "GaussianDensity":
        try:
            with np.load(path, allow_pickle=False) as z:
                missing = {"means", "precision", "log_priors"} - set(z.files)
                if missing:
                    raise BundleError(f"density file {str(path)!r} lacks arrays {sorted(missing)}")
                return cls(z["means"], z["precision"], z["log_priors"])
        except (OSError, ValueError) as exc:
            raise BundleError(f"cannot read density file {str(path)!r}: {exc}") from None


def fit_density(features: np.ndarray, labels: np.ndarray, num_classes: Optional[int] = None,
                ridge: float = 1e-4, pooling: str = "auto") -> GaussianDensity:
    """Fit class means, the pooled within-class covariance (divided by N - C) plus
    ``ridge * trace / d`` on the diagonal, and empirical class priors."""
    z = pool_features(features, pooling)
    y = np.asarray(labels).reshape(-1)
    if z.shape[0] != y.shape[0] or z.shape[0] < 2:
        raise InputError(f"need >= 2 features with one label each, got {z.shape[0]} features, {y.shape[0]} labels")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise InputError("labels must be non-negative integers")
    if not np.all(np.isfinite(z)):
        raise InputError("features contain NaN or inf")
    c = int(num_classes if num_classes is not None else y.max() + 1)
    counts = np.bincount(y, minlength=c)
    if len(counts) > c or np.any(counts == 0):
        raise InputError(f"every class 0..{c - 1} needs at least one example; counts {counts.tolist()}")
    means = np.stack([z[y == k].mean(axis=0) for k in range(c)])
    centred = z - means[y]
    dof = max(z.shape[0] - c, 1)
    cov = centred.T @ centred / dof
    d = z.shape[1]
    cov += np.eye(d) * (float(ridge) * max(np.trace(cov) / d, 1e-12))
    precision = np.linalg.inv(cov)
    return GaussianDensity(means, 0.5 * (precision + precision.T), np.log(counts / counts.sum()))
