"""Split-conformal prediction sets (numpy only): LAC and APS, optionally class-conditional,
and adaptive conformal inference (ACI) for streams where labels arrive later.

Scores (higher = less conforming) of a probability vector ``p`` and a class ``y``:

* **LAC** (least ambiguous set-valued classifier): ``s = 1 - p_y``.
* **APS** (adaptive prediction sets): the probability mass of the classes ranked
  strictly above ``y`` plus ``u * p_y``, with ``u ~ U(0, 1)`` (randomised) or
  ``u = 1`` (deterministic, slightly conservative).

Calibration on ``n`` held-out labelled examples: ``q = `` the
``ceil((n + 1)(1 - alpha))``-th smallest score (``+inf`` when that exceeds ``n``).
The set of a new input is ``{y : s(p, y) <= q}``; with exchangeable data
``P(y in set) >= 1 - alpha``. Class-conditional calibration uses one ``q`` per
class, computed from that class's examples only (coverage then holds per class).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

from .errors import InputError

__all__ = ["METHODS", "conformal_quantile", "class_scores", "label_scores", "prediction_sets",
           "ConformalPredictor", "fit_conformal", "AdaptiveConformal", "conformal_pvalues", "mondrian_pvalues",
           "COMBINE_RULES", "combine_pvalues", "chi2_sf_even", "check_weights", "WEIGHT_SUM_TOL"]

METHODS = ("lac", "aps")
#: how per-score conformal p-values are combined into one (see :func:`combine_pvalues`)
COMBINE_RULES = ("min", "fisher", "weighted")
#: how far from 1 the weights of the ``weighted`` rule may sum
WEIGHT_SUM_TOL = 1e-9


def _probs(probs: np.ndarray) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise InputError(f"probabilities must have shape (batch, classes >= 2), got {p.shape}")
    if not np.all(np.isfinite(p)):
        raise InputError("probabilities contain NaN or inf")
    return p


def _method(method: str) -> str:
    if method not in METHODS:
        raise InputError(f"conformal method must be one of {list(METHODS)}, got {method!r}")
    return method


def _alpha(alpha: float, name: str = "alpha") -> float:
    a = float(alpha)
    if not (0.0 < a < 1.0):
        raise InputError(f"{name} must lie in (0, 1), got {alpha!r}")
    return a


def conformal_quantile(scores: np.ndarray, alpha: float) -> float:
    """The ``ceil((n + 1)(1 - alpha))``-th smallest of ``scores`` (``inf`` if beyond ``n``)."""
    s = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    n = s.size
    # tolerance guards against (n+1)(1-alpha) landing a hair above an integer in floating point
    k = int(math.ceil((n + 1) * (1.0 - _alpha(alpha)) - 1e-9))
    if n == 0 or k > n:
        return math.inf
    return float(s[max(k, 1) - 1])


def class_scores(probs: np.ndarray, method: str, u: Optional[np.ndarray] = None) -> np.ndarray:
    """Score of every class for every input: (batch, classes).

    ``u`` (batch,) in [0, 1] randomises APS (one draw per input, shared by its
    classes); ``None`` means ``u = 1``. Ties in APS ranking are broken by class
    index (stable sort of ``-p``)."""
    p = _probs(probs)
    if _method(method) == "lac":
        return 1.0 - p
    uu = np.ones(p.shape[0]) if u is None else np.asarray(u, dtype=np.float64).reshape(-1)
    if uu.shape != (p.shape[0],):
        raise InputError(f"u must have shape ({p.shape[0]},), got {np.shape(u)}")
    order = np.argsort(-p, axis=1, kind="stable")
    ranked = np.take_along_axis(p, order, axis=1)
    above = np.cumsum(ranked, axis=1) - ranked          # mass strictly ranked above
    ranked_scores = above + uu[:, None] * ranked
    out = np.empty_like(p)
    np.put_along_axis(out, order, ranked_scores, axis=1)
    return out


def label_scores(probs: np.ndarray, labels: np.ndarray, method: str, u: Optional[np.ndarray] = None) -> np.ndarray:
    """Score of the true label of each input: (batch,)."""
    p = _probs(probs)
    y = np.asarray(labels).reshape(-1)
    if y.shape != (p.shape[0],) or not np.issubdtype(y.dtype, np.integer) or y.min(initial=0) < 0 \
            or y.max(initial=0) >= p.shape[1]:
        raise InputError(f"labels must be {p.shape[0]} integers in [0, {p.shape[1]}), got {y!r:.80}")
    return class_scores(p, method, u)[np.arange(p.shape[0]), y]


def prediction_sets(probs: np.ndarray, qhat, method: str, u: Optional[np.ndarray] = None) -> np.ndarray:
    """Boolean membership (batch, classes): ``score <= qhat`` (scalar or one per class)."""
    s = class_scores(probs, method, u)
    q = np.asarray(qhat, dtype=np.float64)
    if q.ndim == 1 and q.shape[0] != s.shape[1]:
        raise InputError(f"per-class qhat must have {s.shape[1]} entries, got {q.shape[0]}")
    return s <= q


@dataclass(frozen=True)
class ConformalPredictor:
    """A calibrated split-conformal set predictor.

    ``qhat`` is a scalar (marginal) or a tuple with one threshold per class
    (``class_conditional``). ``randomized`` APS draws ``u`` per input from the
    caller's generator; LAC ignores it. ``n`` is the calibration size.
    """

    method: str
    alpha: float
    qhat: Tuple[float, ...]
    class_conditional: bool = False
    randomized: bool = True
    n: int = 0

    def __post_init__(self) -> None:
        _method(self.method)
        _alpha(self.alpha)
        q = tuple(float(v) for v in np.atleast_1d(np.asarray(self.qhat, dtype=np.float64)))
        if any(math.isnan(v) for v in q):
            raise InputError("qhat must not be NaN")
        if not self.class_conditional and len(q) != 1:
            raise InputError(f"a marginal predictor has one qhat, got {len(q)}")
        object.__setattr__(self, "qhat", q)

    @property
    def threshold(self):
        return np.asarray(self.qhat) if self.class_conditional else self.qhat[0]

    @property
    def draws_random(self) -> bool:
        """Whether :meth:`sets` draws from the caller's generator (randomised APS)."""
        return self.method == "aps" and self.randomized

    def draw_u(self, batch: int, rng: Optional[np.random.Generator]) -> Optional[np.ndarray]:
        if self.method != "aps" or not self.randomized:
            return None
        if rng is None:
            raise InputError("randomized APS needs a numpy Generator")
        return rng.random(batch)

    def sets(self, probs: np.ndarray, rng: Optional[np.random.Generator] = None,
             u: Optional[np.ndarray] = None) -> np.ndarray:
        p = _probs(probs)
        if u is None:
            u = self.draw_u(p.shape[0], rng)
        return prediction_sets(p, self.threshold, self.method, u)


def fit_conformal(probs: np.ndarray, labels: np.ndarray, alpha: float, method: str = "lac",
                  class_conditional: bool = False, randomized: bool = True,
                  rng: Optional[np.random.Generator] = None) -> ConformalPredictor:
    """Calibrate on held-out ``probs`` (n, C) and integer ``labels`` (n,)."""
    p = _probs(probs)
    _method(method)
    randomized = bool(randomized) and method == "aps"
    u = None
    if randomized:
        u = (rng if rng is not None else np.random.default_rng(0)).random(p.shape[0])
    s = label_scores(p, labels, method, u)
    y = np.asarray(labels).reshape(-1)
    if class_conditional:
        q = tuple(conformal_quantile(s[y == c], alpha) for c in range(p.shape[1]))
    else:
        q = (conformal_quantile(s, alpha),)
    return ConformalPredictor(method, float(alpha), q, bool(class_conditional), randomized, int(p.shape[0]))


class AdaptiveConformal:
    """Adaptive conformal inference (Gibbs & Candès 2021) for a stream with late labels.

    Keeps the sorted calibration scores; after each labelled step
    ``alpha_t <- alpha_t + gamma * (alpha - err_t)`` with ``err_t = 1[y_t not in C_t]``.
    The threshold is the conformal quantile at ``alpha_t`` (``alpha_t <= 0``: every
    class; ``alpha_t >= 1``: empty set). Over ``T`` steps the miscoverage rate stays
    within ``(max(alpha_1, 1 - alpha_1) + gamma) / (gamma * T)`` of ``alpha`` whatever
    the data do.
    """

    def __init__(self, calibration_scores: Sequence[float], alpha: float, gamma: float = 0.005,
                 method: str = "lac") -> None:
        self._scores = np.sort(np.asarray(calibration_scores, dtype=np.float64).ravel())
        if self._scores.size == 0 or not np.all(np.isfinite(self._scores)):
            raise InputError("ACI needs a non-empty array of finite calibration scores")
        self.alpha = _alpha(alpha)
        self.gamma = float(gamma)
        if not (self.gamma > 0):
            raise InputError(f"ACI step gamma must be > 0, got {gamma!r}")
        self.method = _method(method)
        self.alpha_t = self.alpha
        self.steps = 0
        self.errors = 0

    def threshold(self) -> float:
        if self.alpha_t <= 0.0:
            return math.inf
        if self.alpha_t >= 1.0:
            return -math.inf
        return conformal_quantile(self._scores, self.alpha_t)

    def sets(self, probs: np.ndarray, u: Optional[np.ndarray] = None) -> np.ndarray:
        return prediction_sets(probs, self.threshold(), self.method, u)

    def update(self, covered: bool) -> float:
        """Record whether the last set covered the true label; returns the new alpha_t."""
        err = 0.0 if covered else 1.0
        self.steps += 1
        self.errors += int(err)
        self.alpha_t = self.alpha_t + self.gamma * (self.alpha - err)
        return self.alpha_t

    @property
    def miscoverage(self) -> float:
        return self.errors / self.steps if self.steps else math.nan


# ----------------------------------------------------------------------------------------------
# Conformal p-values of anomaly scores (higher score = more unusual), Mondrian by group, combined
# ----------------------------------------------------------------------------------------------

def conformal_pvalues(calibration_scores: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """``p = (1 + #{calibration scores >= s}) / (n + 1)`` for each score ``s``.

    With the ``n`` calibration scores and the new one exchangeable (in-distribution data),
    ``P(p <= a) <= a`` for every ``a`` (exactly ``floor(a (n + 1)) / (n + 1)`` without ties).
    A NaN score counts as beyond every calibration score (``p = 1 / (n + 1)``)."""
    c = np.sort(np.asarray(calibration_scores, dtype=np.float64).ravel())
    if c.size == 0 or not np.all(np.isfinite(c)):
        raise InputError("conformal p-values need a non-empty array of finite calibration scores")
    s = np.asarray(scores, dtype=np.float64)
    ge = c.size - np.searchsorted(c, np.where(np.isnan(s), np.inf, s), side="left")
    ge = np.where(np.isnan(s), 0, ge)
    return (1.0 + ge) / (c.size + 1.0)


def mondrian_pvalues(calibration: Sequence[Optional[np.ndarray]], pooled: np.ndarray, scores: np.ndarray,
                     groups: np.ndarray) -> np.ndarray:
    """Per-group (Mondrian) conformal p-values: the score of an input of group ``g`` is ranked
    among ``calibration[g]`` (the calibration scores of that group only), so ``P(p <= a | g) <= a``
    holds within every group. A group whose entry is ``None`` uses ``pooled`` (all groups)."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    g = np.asarray(groups).reshape(-1)
    if g.shape != s.shape or (g.size and (not np.issubdtype(g.dtype, np.integer) or g.min() < 0
                                           or g.max() >= len(calibration))):
        raise InputError(f"groups must be {s.size} integers in [0, {len(calibration)}), got {g!r:.80}")
    out = np.empty_like(s)
    for k in np.unique(g):
        m = g == k
        cal = calibration[int(k)]
        out[m] = conformal_pvalues(pooled if cal is None else cal, s[m])
    return out


def chi2_sf_even(x: np.ndarray, dof: int) -> np.ndarray:
    """Survival function of the chi-square law with an even number of degrees of freedom
    ``dof = 2k``: ``exp(-x/2) sum_{i<k} (x/2)^i / i!`` (closed form, numpy only)."""
    if dof <= 0 or dof % 2:
        raise InputError(f"chi2_sf_even needs an even dof >= 2, got {dof}")
    h = np.asarray(x, dtype=np.float64) / 2.0
    term = np.ones_like(h)
    total = np.ones_like(h)
    for i in range(1, dof // 2):
        term = term * h / i
        total = total + term
    return np.minimum(1.0, np.exp(-h) * total)


def check_weights(weights, k: int) -> np.ndarray:
    """The ``k`` weights of the ``weighted`` rule as float64 ``(k,)``: each finite and > 0, summing to 1
    within :data:`WEIGHT_SUM_TOL` (else :class:`InputError`)."""
    if weights is None:
        raise InputError("the 'weighted' combination rule needs one weight per p-value")
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape != (k,):
        raise InputError(f"the 'weighted' rule needs {k} weights (one per p-value), got {w.size}")
    if not np.all(np.isfinite(w)) or not np.all(w > 0):
        raise InputError(f"weights must be finite and > 0, got {w.tolist()}")
    if not abs(float(w.sum()) - 1.0) <= WEIGHT_SUM_TOL:
        raise InputError(f"weights must sum to 1 (within {WEIGHT_SUM_TOL:g}), got {w.tolist()} (sum {w.sum()!r})")
    return w


def combine_pvalues(pvalues: np.ndarray, rule: str = "min", weights=None) -> np.ndarray:
    """Combine per-score p-values ``(N, K)`` into one ``(N,)``.

    * ``"min"`` (Bonferroni): ``min(1, K * min_k p_k)``. Valid whatever the dependence between
      the scores: ``P(K min p <= a) <= sum_k P(p_k <= a / K) <= a`` when each ``p_k`` is valid.
    * ``"weighted"`` (weighted Bonferroni): ``min(1, min_k p_k / w_k)`` with ``weights`` ``w_k > 0``
      summing to 1 (:func:`check_weights`). Valid whatever the dependence too:
      ``P(min_k p_k / w_k <= a) <= sum_k P(p_k <= w_k a) <= sum_k w_k a = a``. Equal weights
      ``1 / K`` are ``"min"``; a larger weight spends more of the level on that score.
    * ``"fisher"``: ``chi2_sf(-2 sum_k log p_k, 2K)``. Exact only when the ``p_k`` are
      independent; mutual information and total entropy are not, so on in-distribution data
      Fisher's p-value is typically *anti*-conservative (see ``docs/shifts.md``).

    ``weights`` only with ``"weighted"``."""
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 1:
        raise InputError(f"p-values must have shape (N, K >= 1), got {p.shape}")
    if rule not in COMBINE_RULES:
        raise InputError(f"combination rule must be one of {list(COMBINE_RULES)}, got {rule!r}")
    k = p.shape[1]
    if rule == "weighted":
        return np.minimum(1.0, (p / check_weights(weights, k)).min(axis=1))
    if weights is not None:
        raise InputError(f"weights are only for the 'weighted' rule, not {rule!r}")
    if rule == "min":
        return np.minimum(1.0, k * p.min(axis=1))
    return chi2_sf_even(-2.0 * np.log(np.clip(p, 1e-300, 1.0)).sum(axis=1), 2 * k)
