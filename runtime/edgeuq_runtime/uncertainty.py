"""Uncertainty decomposition from S sampled probability vectors (numpy only).

For samples p_s = p(y | x, theta_s), s = 1..S and the mean p_bar:

* total     = H[p_bar]                  (predictive entropy)
* aleatoric = mean_s H[p_s]             (expected entropy)
* epistemic = total - aleatoric          (mutual information, >= 0)

Entropies are in nats.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

__all__ = ["UncertaintyResult", "entropy", "softmax", "decompose"]


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    z = logits - np.max(logits, axis=axis, keepdims=True)
    e = np.exp(z)
    return e / np.sum(e, axis=axis, keepdims=True)


def entropy(p: np.ndarray, axis: int = -1) -> np.ndarray:
    """Shannon entropy in nats; 0 log 0 = 0."""
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return -np.sum(terms, axis=axis)


@dataclass(frozen=True)
class UncertaintyResult:
    """Per-input prediction and uncertainty, all arrays with a leading batch axis.

    ``samples`` holds the S probability vectors, shape (S, batch, classes).

    ``input_flags`` (one string per row, or None when unknown) is ``""`` for a usable
    input window and names the problem otherwise (``"flat"``: constant window, e.g. a
    dead sensor; ``"clipped"``: saturated). A flagged row is **not a diagnosis**: its
    numbers are what the model says about a meaningless window; :meth:`labels` and
    :meth:`to_rows` give ``None`` as its prediction. ``bundle_digest`` is the sha256 of
    the bundle's ``manifest.json`` that produced the result (its identity).
    """

    probs: np.ndarray
    prediction: np.ndarray
    confidence: np.ndarray
    total: np.ndarray
    aleatoric: np.ndarray
    epistemic: np.ndarray
    samples: np.ndarray
    class_names: Optional[Sequence[str]] = None
    input_flags: Optional[Tuple[str, ...]] = None
    bundle_digest: Optional[str] = None

    @property
    def num_samples(self) -> int:
        return int(self.samples.shape[0])

    @property
    def diagnosed(self) -> np.ndarray:
        """Boolean (batch,): True where the input was usable (no input flag)."""
        if self.input_flags is None:
            return np.ones(len(self.prediction), dtype=bool)
        return np.array([not f for f in self.input_flags], dtype=bool)

    def labels(self) -> list:
        """Class name (or index without names) per row; None for a flagged input row."""
        ok = self.diagnosed
        if self.class_names is None:
            return [int(i) if ok[r] else None for r, i in enumerate(self.prediction)]
        return [self.class_names[int(i)] if ok[r] else None for r, i in enumerate(self.prediction)]

    def to_rows(self) -> list:
        """One JSON-friendly dict per input (``prediction``/``class_index`` None for a flagged
        input, whose ``input_flag`` says why)."""
        names = self.labels()
        ok = self.diagnosed
        flags = self.input_flags or ("",) * len(names)
        return [
            {
                "prediction": names[i],
                "class_index": int(self.prediction[i]) if ok[i] else None,
                "input_flag": flags[i] or None,
                "confidence": float(self.confidence[i]),
                "total": float(self.total[i]),
                "aleatoric": float(self.aleatoric[i]),
                "epistemic": float(self.epistemic[i]),
                "probs": [float(v) for v in self.probs[i]],
            }
            for i in range(len(names))
        ]


def decompose(sample_probs: np.ndarray, class_names: Optional[Sequence[str]] = None,
              input_flags: Optional[Sequence[str]] = None, bundle_digest: Optional[str] = None) -> UncertaintyResult:
    """Decompose S sampled probability vectors of shape (S, batch, classes)."""
    sp = np.asarray(sample_probs, dtype=np.float64)
    if sp.ndim != 3:
        raise ValueError(f"sample_probs must have shape (S, batch, classes), got {sp.shape}")
    if sp.shape[0] < 1 or sp.shape[2] < 2:
        raise ValueError(f"need S >= 1 samples and >= 2 classes, got shape {sp.shape}")
    if not np.all(np.isfinite(sp)):
        raise ValueError("sample_probs contains NaN or inf")
    mean = sp.mean(axis=0)
    total = entropy(mean)
    aleatoric = entropy(sp).mean(axis=0)
    # MI >= 0 mathematically (Jensen); clip float round-off only.
    epistemic = np.maximum(total - aleatoric, 0.0)
    return UncertaintyResult(
        probs=mean,
        prediction=np.argmax(mean, axis=-1),
        confidence=np.max(mean, axis=-1),
        total=total,
        aleatoric=aleatoric,
        epistemic=epistemic,
        samples=sp,
        class_names=tuple(class_names) if class_names is not None else None,
        input_flags=tuple(input_flags) if input_flags is not None else None,
        bundle_digest=bundle_digest,
    )
