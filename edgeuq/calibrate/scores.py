"""Per-window scores through the deployed bundle: the predictive (S samples), mutual
information, total entropy, the density score and the combined score (trunk run once)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from tqdm.auto import tqdm

from edgeuq_runtime import UncertaintyRuntime
from edgeuq_runtime.adaptive import AdaptiveConfig, adaptive_predict, sample_logits
from edgeuq_runtime.calibration import Calibrated
from edgeuq_runtime.density import GaussianDensity, pool_features
from edgeuq_runtime.uncertainty import decompose, softmax

__all__ = ["WindowScores", "score_windows", "trunk_pooled", "calibrated_extra_scores"]


@dataclass(frozen=True, eq=False)
class WindowScores:
    probs: np.ndarray          # (N, C) predictive mean
    epistemic: np.ndarray      # (N,) mutual information
    total: np.ndarray          # (N,) predictive entropy
    aleatoric: np.ndarray
    density: Optional[np.ndarray] = None
    combined: Optional[np.ndarray] = None
    samples_used: Optional[np.ndarray] = None  # (N,) S per window (adaptive)

    @property
    def prediction(self) -> np.ndarray:
        return self.probs.argmax(1)

    @property
    def confidence(self) -> np.ndarray:
        return self.probs.max(1)


def trunk_pooled(rt: UncertaintyRuntime, x: np.ndarray, chunk: int = 256, pooling: str = "auto") -> np.ndarray:
    """Pooled trunk features (N, d) of windows ``x`` through the deployed trunk."""
    return np.concatenate([pool_features(rt.trunk_features(x[i:i + chunk]), pooling)
                           for i in range(0, len(x), chunk)], axis=0)


def score_windows(rt: UncertaintyRuntime, x: np.ndarray, samples: int, seed: int = 0,
                  calibrated: Optional[Calibrated] = None, density: Optional[GaussianDensity] = None,
                  pooling: str = "auto", adaptive: Optional[AdaptiveConfig] = None,
                  mi_threshold: Optional[float] = None, prob_threshold: Optional[float] = None,
                  chunk: int = 128, progress: bool = False, desc: str = "") -> WindowScores:
    """Score windows ``x`` (N, L): one trunk pass per chunk, ``samples`` head draws (or adaptive,
    one window at a time), density from the same features when a model is given."""
    rng = np.random.default_rng(seed)
    if calibrated is not None and density is None and calibrated.density is not None:
        density, pooling = calibrated.density, calibrated.cal.density.pooling
    probs, epi, tot, ale, dens, used = [], [], [], [], [], []
    for i in tqdm(range(0, len(x), chunk), desc=desc, disable=not progress, leave=False):
        f = rt.trunk_features(x[i:i + chunk])
        if density is not None:
            dens.append(density.score(f, pooling))
        if adaptive is None:
            res = decompose(softmax(sample_logits(rt, f, samples, rng).astype(np.float64), axis=-1))
            used.append(np.full(f.shape[0], samples))
            parts = [res]
        else:
            parts = []
            for b in range(f.shape[0]):
                fb = f[b:b + 1]
                r, n = adaptive_predict(lambda k: sample_logits(rt, fb, k, rng), adaptive, None, mi_threshold,
                                        prob_threshold)
                parts.append(r)
                used.append(np.array([n]))
        for r in parts:
            probs.append(r.probs)
            epi.append(r.epistemic)
            tot.append(r.total)
            ale.append(r.aleatoric)
    out = dict(probs=np.concatenate(probs), epistemic=np.concatenate(epi), total=np.concatenate(tot),
               aleatoric=np.concatenate(ale), density=np.concatenate(dens) if dens else None,
               samples_used=np.concatenate(used))
    combined = (calibrated.combined_score(out["epistemic"], out["density"], out["total"], out["probs"].argmax(1))
                if calibrated is not None else None)
    return WindowScores(**out, combined=combined)


def calibrated_extra_scores(rt: UncertaintyRuntime, x: np.ndarray, epistemic: np.ndarray,
                            total: Optional[np.ndarray] = None, prediction: Optional[np.ndarray] = None,
                            chunk: int = 256) -> Optional[dict]:
    """``{"density": (N,), "combined": (N,)}`` for a calibrated bundle (None without calibration):
    the density score from the deployed trunk's features, the combined score from it, ``epistemic``
    and (a p-value rule) ``total`` and the predicted class."""
    cal = Calibrated.from_bundle(rt.bundle)
    if cal is None:
        return None
    out = {}
    if cal.density is not None:
        out["density"] = np.concatenate([cal.density_score(rt.trunk_features(x[i:i + chunk]))
                                         for i in range(0, len(x), chunk)])
    comb = cal.combined_score(epistemic, out.get("density"), total, prediction)
    if comb is not None:
        out["combined"] = comb
    return out
