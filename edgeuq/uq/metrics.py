"""Calibration, proper scoring, OOD detection and selective-prediction metrics.

Conventions (numpy only):

* ``probs`` are mean predictive probabilities p̄ of shape (N, C): rows are
  non-negative, finite and sum to 1 (within 1e-3). ``labels`` are integers in
  [0, C) of shape (N,).
* OOD scores: out-of-distribution inputs are the *positive* class and a
  *higher* score means *more OOD* (e.g. mutual information, predictive
  entropy, 1 − max p̄).
* Confidence for selective prediction: *higher* means *more confident*.

Every function validates its inputs and raises ``ValueError`` saying what is
wrong.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
from scipy.stats import rankdata

__all__ = [
    "accuracy",
    "nll",
    "brier",
    "expected_calibration_error",
    "ReliabilityBins",
    "reliability_bins",
    "auroc",
    "aupr",
    "fpr_at_95_tpr",
    "selective_accuracy",
    "aurc",
    "accuracy_coverage_curve",
    "ClassificationMetrics",
    "classification_metrics",
]

_NLL_FLOOR = 1e-12
_SUM_TOL = 1e-3


# ----------------------------------------------------------------- validation


def _check_probs(probs) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] < 1 or p.shape[1] < 2:
        raise ValueError(f"probs must have shape (N >= 1, C >= 2), got {p.shape}")
    if not np.all(np.isfinite(p)):
        raise ValueError("probs contains NaN or inf")
    if np.any(p < 0):
        raise ValueError(f"probs must be >= 0, min is {p.min():g}")
    sums = p.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > _SUM_TOL)
    if bad.size:
        raise ValueError(
            f"each row of probs must sum to 1 (are these logits?); row {bad[0]} sums to {sums[bad[0]]:g}"
        )
    return p


def _check_probs_labels(probs, labels) -> tuple[np.ndarray, np.ndarray]:
    p = _check_probs(probs)
    y = np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != p.shape[0]:
        raise ValueError(f"labels must have shape ({p.shape[0]},) to match probs {p.shape}, got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(f"labels must lie in [0, {p.shape[1]}), got range [{y.min()}, {y.max()}]")
    return p, y.astype(np.int64)


def _check_scores(scores, name: str) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or s.size < 1:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {s.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError(f"{name} contains NaN or inf")
    return s


# ------------------------------------------------------ scores on p̄ and labels


def accuracy(probs, labels) -> float:
    """Fraction of inputs whose argmax p̄ equals the label."""
    p, y = _check_probs_labels(probs, labels)
    return float(np.mean(np.argmax(p, axis=1) == y))


def nll(probs, labels) -> float:
    """Negative log-likelihood −mean log p̄(y), with p̄(y) clipped at 1e-12."""
    p, y = _check_probs_labels(probs, labels)
    py = np.clip(p[np.arange(len(y)), y], _NLL_FLOOR, 1.0)
    return float(-np.mean(np.log(py)))


def brier(probs, labels) -> float:
    """Brier score: mean over inputs of Σ_c (p̄_c − 1[y = c])² (range [0, 2])."""
    p, y = _check_probs_labels(probs, labels)
    onehot = np.zeros_like(p)
    onehot[np.arange(len(y)), y] = 1.0
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


@dataclass(frozen=True)
class ReliabilityBins:
    """Per-bin statistics of top-1 confidence.

    ``edges`` has n_bins + 1 entries; bin b is (edges[b], edges[b+1]].
    ``accuracy`` and ``confidence`` are NaN for empty bins.
    """

    edges: np.ndarray
    count: np.ndarray
    accuracy: np.ndarray
    confidence: np.ndarray

    @property
    def n(self) -> int:
        return int(self.count.sum())

    def ece(self) -> float:
        filled = self.count > 0
        gaps = np.abs(self.accuracy[filled] - self.confidence[filled])
        return float(np.sum(self.count[filled] / self.n * gaps))


def reliability_bins(probs, labels, n_bins: int = 10) -> ReliabilityBins:
    """Bin inputs by top-1 confidence into ``n_bins`` equal-width bins.

    Edge convention: bins are closed on the right, (0, 1/n], (1/n, 2/n], ...,
    ((n−1)/n, 1], with edges ``np.linspace(0, 1, n_bins + 1)``; a confidence
    exactly on an edge belongs to the bin *below* it (0.8 is in (0.7, 0.8]).
    A confidence of exactly 0 (impossible for valid probabilities) would go
    to the first bin.
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be an integer >= 1, got {n_bins!r}")
    p, y = _check_probs_labels(probs, labels)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, int(n_bins) + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(idx, weights=correct, minlength=n_bins) / count
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / count
    return ReliabilityBins(edges=edges, count=count, accuracy=acc, confidence=mean_conf)


def expected_calibration_error(probs, labels, n_bins: int = 10) -> float:
    """ECE = Σ_b |B_b|/N · |acc_b − conf_b| over top-1 confidence bins.

    Bins as in :func:`reliability_bins`: equal width, closed on the right.
    """
    return reliability_bins(probs, labels, n_bins).ece()


# ------------------------------------------------------------- OOD detection


def auroc(scores_in, scores_out) -> float:
    """Area under the ROC curve, OOD positive, higher score = more OOD.

    Rank-based (Mann–Whitney U / (n_in · n_out)) with average ranks for ties,
    so a tie between an in- and an out-score counts one half.
    """
    s_in = _check_scores(scores_in, "scores_in")
    s_out = _check_scores(scores_out, "scores_out")
    ranks = rankdata(np.concatenate([s_in, s_out]))  # average ranks for ties
    n_in, n_out = len(s_in), len(s_out)
    u_out = ranks[n_in:].sum() - n_out * (n_out + 1) / 2.0
    return float(u_out / (n_in * n_out))


def aupr(scores_in, scores_out) -> float:
    """Area under the precision–recall curve with OOD as positive (AUPR-Out).

    Computed as average precision, Σ_k (R_k − R_{k−1}) · P_k over the distinct
    score thresholds (flag OOD when score >= t), tied scores forming one step.
    """
    s_in = _check_scores(scores_in, "scores_in")
    s_out = _check_scores(scores_out, "scores_out")
    scores = np.concatenate([s_in, s_out])
    positive = np.concatenate([np.zeros(len(s_in)), np.ones(len(s_out))])
    order = np.argsort(-scores, kind="stable")
    scores, positive = scores[order], positive[order]
    # Last index of each group of equal scores = one threshold.
    ends = np.r_[np.flatnonzero(np.diff(scores) != 0), len(scores) - 1]
    tp = np.cumsum(positive)[ends]
    precision = tp / (ends + 1)
    recall = tp / len(s_out)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def fpr_at_95_tpr(scores_in, scores_out, tpr: float = 0.95) -> float:
    """False-positive rate on in-distribution inputs at the threshold where
    at least ``tpr`` of the OOD inputs are flagged (score >= threshold).

    The threshold is the largest one reaching the TPR: the k-th largest OOD
    score with k = ceil(tpr · n_out), so the FPR is the smallest possible.
    """
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must lie in (0, 1], got {tpr!r}")
    s_in = _check_scores(scores_in, "scores_in")
    s_out = _check_scores(scores_out, "scores_out")
    k = max(1, math.ceil(tpr * len(s_out) - 1e-9))
    threshold = np.sort(s_out)[::-1][k - 1]
    return float(np.mean(s_in >= threshold))


# -------------------------------------------------------- selective prediction


def _expected_errors_at_k(confidence: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """E[#errors among the k most confident], k = 1..N, with ties in
    confidence averaged over all orderings (no dependence on input order)."""
    order = np.argsort(-confidence, kind="stable")
    conf, err = confidence[order], 1.0 - correct[order]
    n = len(conf)
    starts = np.r_[0, np.flatnonzero(np.diff(conf) != 0) + 1]
    sizes = np.diff(np.r_[starts, n])
    cum_err = np.r_[0.0, np.cumsum(err)]
    group_rate = (cum_err[starts + sizes] - cum_err[starts]) / sizes
    group = np.repeat(np.arange(len(starts)), sizes)
    k = np.arange(1, n + 1)
    return cum_err[starts[group]] + (k - starts[group]) * group_rate[group]


def _check_selective(confidence, correct) -> tuple[np.ndarray, np.ndarray]:
    conf = _check_scores(confidence, "confidence")
    c = np.asarray(correct)
    if c.shape != conf.shape:
        raise ValueError(f"correct must have shape {conf.shape} to match confidence, got {c.shape}")
    if not (c.dtype == bool or np.all((c == 0) | (c == 1))):
        raise ValueError("correct must be boolean (or 0/1)")
    return conf, c.astype(np.float64)


def selective_accuracy(probs, labels, coverage: float, confidence: Optional[np.ndarray] = None) -> float:
    """Accuracy on the ``ceil(coverage · N)`` most confident inputs.

    ``confidence`` defaults to max p̄; pass e.g. ``-epistemic`` to rank by
    mutual information instead. Ties are averaged over orderings.
    """
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"coverage must lie in (0, 1], got {coverage!r}")
    p, y = _check_probs_labels(probs, labels)
    conf = p.max(axis=1) if confidence is None else confidence
    conf, correct = _check_selective(conf, p.argmax(axis=1) == y)
    k = max(1, math.ceil(coverage * len(y) - 1e-9))
    return float(1.0 - _expected_errors_at_k(conf, correct)[k - 1] / k)


def aurc(confidence, correct) -> float:
    """Area under the risk–coverage curve: mean over k = 1..N of the error
    rate among the k most confident inputs (lower is better; ties averaged)."""
    conf, c = _check_selective(confidence, correct)
    k = np.arange(1, len(conf) + 1)
    return float(np.mean(_expected_errors_at_k(conf, c) / k))


def accuracy_coverage_curve(probs, labels, confidence: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """(coverage, accuracy) when keeping the k most confident inputs, k = 1..N.

    ``confidence`` defaults to max p̄ (e.g. pass ``-epistemic``); ties averaged.
    """
    p, y = _check_probs_labels(probs, labels)
    conf = p.max(axis=1) if confidence is None else confidence
    conf, correct = _check_selective(conf, p.argmax(axis=1) == y)
    k = np.arange(1, len(conf) + 1)
    return k / len(conf), 1.0 - _expected_errors_at_k(conf, correct) / k


# ------------------------------------------------------------------- summary


@dataclass(frozen=True)
class ClassificationMetrics:
    accuracy: float
    nll: float
    brier: float
    ece: float
    n: int

    def to_dict(self) -> dict:
        return asdict(self)


def classification_metrics(probs, labels, n_bins: int = 10) -> ClassificationMetrics:
    """Accuracy, NLL, Brier and ECE of mean predictive probabilities."""
    p, y = _check_probs_labels(probs, labels)
    return ClassificationMetrics(
        accuracy=accuracy(p, y),
        nll=nll(p, y),
        brier=brier(p, y),
        ece=expected_calibration_error(p, y, n_bins),
        n=int(len(y)),
    )
