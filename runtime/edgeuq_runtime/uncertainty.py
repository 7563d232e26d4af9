"""Uncertainty decomposition from S sampled probability vectors (numpy only).

For samples p_s = p(y | x, theta_s), s = 1..S and the mean p_bar:

* total     = H[p_bar]                  (predictive entropy)
* aleatoric = mean_s H[p_s]             (expected entropy)
* epistemic = total - aleatoric          (mutual information, >= 0)

Entropies are in nats.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional, Sequence, Tuple

import numpy as np

__all__ = ["UncertaintyResult", "entropy", "softmax", "decompose", "decompose_logits", "LogitDecomposer", "LogitSummary", "NO_PREDICTION"]

#: ``prediction`` of a flagged row (not a class index).
NO_PREDICTION = -1


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
    dead sensor; ``"clipped"``: saturated). A flagged row is **not a diagnosis**, and no
    diagnosis can be read from it: its ``prediction`` is ``-1`` and its ``probs``,
    ``confidence``, ``total``, ``aleatoric``, ``epistemic`` and ``samples`` are NaN (set
    on construction, whoever builds the result); :meth:`labels` and :meth:`to_rows` give
    ``None``. Select usable rows with :attr:`diagnosed` (e.g. ``r.select(r.diagnosed)``).
    ``bundle_digest`` is the sha256 of the bundle's ``manifest.json`` that produced the
    result (its identity; None when the bundle's files were not verified).
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

    def __post_init__(self) -> None:
        if self.input_flags is None:
            return
        flags = tuple(self.input_flags)
        n = len(self.prediction)
        if len(flags) != n or not all(isinstance(f, str) for f in flags):
            raise ValueError(f"input_flags must hold one string per row ({n}), got {len(flags)}")
        object.__setattr__(self, "input_flags", flags)
        bad = np.array([bool(f) for f in flags], dtype=bool)
        if not bad.any():
            return
        pred = np.array(self.prediction, copy=True)
        pred[bad] = NO_PREDICTION
        object.__setattr__(self, "prediction", pred)
        for name in ("probs", "confidence", "total", "aleatoric", "epistemic"):
            arr = np.array(getattr(self, name), dtype=np.float64, copy=True)
            arr[bad] = np.nan
            object.__setattr__(self, name, arr)
        samples = np.array(self.samples, dtype=np.float64, copy=True)
        samples[:, bad] = np.nan
        object.__setattr__(self, "samples", samples)

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
        """One JSON-friendly dict per input. A flagged input has ``prediction``, ``class_index``,
        ``confidence``, the entropies and ``probs`` None (never NaN, which is not JSON) and its
        ``input_flag`` says why."""
        names = self.labels()
        ok = self.diagnosed
        flags = self.input_flags or ("",) * len(names)
        rows = []
        for i in range(len(names)):
            num = (lambda v: float(v)) if ok[i] else (lambda v: None)  # noqa: E731
            rows.append({
                "prediction": names[i],
                "class_index": int(self.prediction[i]) if ok[i] else None,
                "input_flag": flags[i] or None,
                "confidence": num(self.confidence[i]),
                "total": num(self.total[i]),
                "aleatoric": num(self.aleatoric[i]),
                "epistemic": num(self.epistemic[i]),
                "probs": [float(v) for v in self.probs[i]] if ok[i] else None,
            })
        return rows

    def select(self, rows: Any) -> "UncertaintyResult":
        """The result restricted to ``rows`` (a boolean mask or indices over the batch)."""
        idx = np.arange(len(self.prediction))[np.asarray(rows)]
        return UncertaintyResult(
            probs=self.probs[idx], prediction=self.prediction[idx], confidence=self.confidence[idx],
            total=self.total[idx], aleatoric=self.aleatoric[idx], epistemic=self.epistemic[idx],
            samples=self.samples[:, idx], class_names=self.class_names,
            input_flags=None if self.input_flags is None else tuple(self.input_flags[i] for i in idx),
            bundle_digest=self.bundle_digest)

    @classmethod
    def concatenate(cls, results: Sequence["UncertaintyResult"]) -> "UncertaintyResult":
        """Rows of several results (same classes and number of samples) in order. Flags carry
        over (a result without flags counts as unflagged); the digest is kept when all agree."""
        results = list(results)
        if not results:
            raise ValueError("concatenate needs at least one result")
        first = results[0]
        for r in results[1:]:
            if r.class_names != first.class_names or r.samples.shape[0] != first.samples.shape[0] \
                    or r.samples.shape[2] != first.samples.shape[2]:
                raise ValueError("concatenate needs results with the same class names, samples and classes")
        flags = None
        if any(r.input_flags is not None for r in results):
            flags = tuple(f for r in results for f in (r.input_flags or ("",) * len(r.prediction)))
        digests = {r.bundle_digest for r in results}
        cat = lambda name: np.concatenate([getattr(r, name) for r in results])  # noqa: E731
        return cls(probs=cat("probs"), prediction=cat("prediction"), confidence=cat("confidence"),
                   total=cat("total"), aleatoric=cat("aleatoric"), epistemic=cat("epistemic"),
                   samples=np.concatenate([r.samples for r in results], axis=1), class_names=first.class_names,
                   input_flags=flags, bundle_digest=digests.pop() if len(digests) == 1 else None)


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


class LogitSummary(NamedTuple):
    """What a decision needs of S sampled logit vectors (arrays over the batch, float64)."""

    probs: np.ndarray        # (B, C): mean of the S softmax vectors
    prediction: np.ndarray   # (B,): argmax of probs
    confidence: np.ndarray   # (B,): max of probs
    total: np.ndarray        # (B,)
    aleatoric: np.ndarray    # (B,)
    epistemic: np.ndarray    # (B,)


#: smallest positive normal float64: ``p log max(p, TINY)`` is 0 at p = 0 (0 log 0 = 0)
_TINY = float(np.finfo(np.float64).tiny)


def decompose_logits(logits: np.ndarray) -> LogitSummary:
    """``decompose(softmax(logits))`` of logits (S, B, C) without the sample array, in one pass of
    a few whole-array operations (a stream's per-window hot path; equal within float64 round-off).

    Each sample's entropy comes from its log-softmax, ``H[p_s] = log sum_c e^{z_c} - sum_c p_c z_c``
    (``z`` = logits minus their row maximum), so no logarithm of a probability is taken and no
    ``0 log 0`` needs masking; only ``H[p_bar]`` takes ``log max(p_bar, tiny)``. Non-finite logits
    are a ValueError, as in :func:`decompose`. The steps are :class:`LogitDecomposer`'s (one copy)."""
    return LogitDecomposer(np.shape(logits)).summary(logits)


class LogitDecomposer:
    """:func:`decompose_logits` for logits of one fixed shape (S, B, C), into float64 buffers kept
    between calls (a stream's one-window path decomposes the same (S, 1, C) logits every hop): the
    same operations on the same shapes as :func:`decompose_logits` (which runs through a fresh one),
    so the same values, without a new temporary per step.

    :meth:`summary` returns a :class:`LogitSummary` whose arrays are this object's buffers (the
    next call overwrites them); :meth:`one` returns the one window's values (B = 1) as Python
    floats and ints."""

    def __init__(self, shape: Tuple[int, ...]) -> None:
        shape = tuple(int(v) for v in shape)
        if len(shape) != 3 or shape[0] < 1 or shape[2] < 2:
            raise ValueError(f"logits must have shape (S, batch, classes >= 2), got {shape}")
        s, b, c = shape
        self.shape, self._s = shape, s
        self._z, self._e, self._ez = (np.empty(shape) for _ in range(3))
        self._m = np.empty((s, b, 1))
        self._norm, self._h, self._t = (np.empty((s, b)) for _ in range(3))
        self._norm3 = self._norm[..., None]
        self._hsum, self._total = np.empty(b), np.empty(b)
        self._mean, self._lm = np.empty((b, c)), np.empty((b, c))

    def _run(self, logits: np.ndarray) -> None:
        """The steps up to ``sum_s H[p_s]`` (in ``_hsum``), ``p_bar`` (``_mean``) and ``-H[p_bar]``
        (``_total``): the ufuncs' own reductions (what ``x.max()``, ``x.mean()`` call;
        ``np.add.reduce(x, axis) / n`` is what ``x.mean(axis)`` computes) and in-place steps."""
        if np.shape(logits) != self.shape:   # (copyto would broadcast)
            raise ValueError(f"logits of shape {np.shape(logits)}, this decomposer is for {self.shape}")
        z = self._z
        np.copyto(z, logits)                   # float32 -> float64 exact (= np.array(logits, float64))
        # float32 logits (a graph's output): one reduction, their float64 sum is finite exactly when every
        # entry is (an inf or NaN makes it inf or NaN; float32 magnitudes cannot overflow it); other
        # dtypes: entry by entry
        if getattr(logits, "dtype", None) == np.float32:
            finite = math.isfinite(np.add.reduce(z, axis=None))
        else:
            finite = np.logical_and.reduce(np.isfinite(z), axis=None)
        if not finite:
            raise ValueError("logits contain NaN or inf")
        s = self._s
        np.subtract(z, np.maximum.reduce(z, axis=-1, keepdims=True, out=self._m), out=z)
        e = np.exp(z, out=self._e)
        norm = np.add.reduce(e, axis=-1, out=self._norm)          # (S, B), >= 1
        np.divide(e, self._norm3, out=e)                           # p
        h = np.log(norm, out=self._h)
        np.subtract(h, np.add.reduce(np.multiply(e, z, out=self._ez), axis=-1, out=self._t), out=h)   # H[p_s]
        np.add.reduce(h, axis=0, out=self._hsum)
        mean = np.divide(np.add.reduce(e, axis=0, out=self._mean), s, out=self._mean)
        lm = np.log(np.maximum(mean, _TINY, out=self._lm), out=self._lm)
        np.add.reduce(np.multiply(mean, lm, out=lm), axis=-1, out=self._total)     # -H[p_bar]

    def summary(self, logits: np.ndarray) -> LogitSummary:
        """:func:`decompose_logits` of ``logits`` (arrays: this object's buffers)."""
        self._run(logits)
        total = np.negative(self._total, out=self._total)
        aleatoric = np.divide(self._hsum, self._s, out=self._hsum)
        mean = self._mean
        return LogitSummary(mean, mean.argmax(axis=-1), np.maximum.reduce(mean, axis=-1), total, aleatoric,
                            np.maximum(total - aleatoric, 0.0))

    def one(self, logits: np.ndarray) -> Tuple[list, int, float, float, float, float]:
        """``(probs, prediction, confidence, total, aleatoric, epistemic)`` of one window's logits
        (S, 1, C), as :meth:`summary`'s row 0 gives them (``probs`` a list): the last steps on Python
        floats are the same IEEE operations (a negation, a division by S, a max, a first argmax)."""
        self._run(logits)
        probs = self._mean[0].tolist()
        conf = max(probs)
        total = -float(self._total[0])
        aleatoric = float(self._hsum[0]) / self._s
        epi = total - aleatoric
        return probs, probs.index(conf), conf, total, aleatoric, (epi if epi >= 0.0 else 0.0)
