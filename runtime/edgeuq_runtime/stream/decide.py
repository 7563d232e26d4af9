"""One calibrated decision per window: trunk once (density score from the same features),
the head S times (fixed or adaptive), the uncertainty decomposition, the conformal set,
and abstention with its reasons."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np

from ..adaptive import AdaptiveConfig, adaptive_predict, sample_logits
from ..calibration import Calibrated
from ..uncertainty import decompose_logits
from .hop import HopPath
from .quality import BLOCKING_FLAGS, window_flags, window_flags_batch

__all__ = ["Decision", "Diagnoser", "bundle_digest"]


def bundle_digest(rt: Any) -> Optional[str]:
    """The runtime's ``bundle_digest``. A runtime that loaded its bundle without verification has
    ``None`` there, and so do its decisions: no identity is claimed for files nobody checked. Only a
    runtime-like object without the attribute (a test double) gets sha256 over its manifest's file
    hashes."""
    if hasattr(rt, "bundle_digest"):
        d = rt.bundle_digest
        return d if isinstance(d, str) and d else None
    files = rt.manifest.files
    if not files:
        return None
    h = hashlib.sha256("".join(f"{k}:{v}\n" for k, v in sorted(files.items())).encode())
    return h.hexdigest()


@dataclass
class Decision:
    label: Optional[str]
    class_index: Optional[int]
    confidence: Optional[float]
    total: Optional[float]
    aleatoric: Optional[float]
    epistemic: Optional[float]
    density: Optional[float]
    combined: Optional[float]
    prediction_set: Optional[List[str]]
    abstain: bool
    reasons: List[str]
    flags: List[str]
    samples: int
    probs: Optional[List[float]] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> Dict[str, Any]:
        return self.record({})

    def record(self, out: Dict[str, Any]) -> Dict[str, Any]:
        """:meth:`to_json`'s keys added to ``out`` in order (a stream record starts with its status):
        every float rounded to 6 decimals (``round(float(v), 6)``, written out: this runs every hop)."""
        v = self.confidence
        c = None if v is None else round(float(v), 6)
        v = self.total
        t = None if v is None else round(float(v), 6)
        v = self.aleatoric
        a = None if v is None else round(float(v), 6)
        v = self.epistemic
        e = None if v is None else round(float(v), 6)
        v = self.density
        d = None if v is None else round(float(v), 6)
        v = self.combined
        out.update({"class": self.label, "class_index": self.class_index, "confidence": c, "total": t,
                    "aleatoric": a, "epistemic": e, "density": d,
                    "combined": None if v is None else round(float(v), 6), "set": self.prediction_set,
                    "abstain": self.abstain, "reasons": self.reasons, "flags": self.flags, "samples": self.samples})
        extra = self.extra
        if "pvalues" in extra:
            out["pvalues"] = {k: None if v is None else round(float(v), 6) for k, v in extra["pvalues"].items()}
            v = extra["p_combined"]
            out["p_combined"] = None if v is None else round(float(v), 6)
        return out


class Diagnoser:
    """Decisions for single windows of a loaded :class:`UncertaintyRuntime`.

    ``adaptive``: sample until settled (``calibration.adaptive`` or ``adaptive_config``,
    S_max from it), else a fixed ``samples`` (default: the calibration's S, else the
    manifest's). Without a calibration section there is no density score, set or
    calibrated abstention: only the quality flags abstain.

    ``fast`` (default): where :meth:`HopPath.build <edgeuq_runtime.stream.hop.HopPath.build>` covers
    the configuration (fixed S, the p-value rule, a LAC set or none, no front end), :meth:`decide`
    runs one float32 window through :class:`~edgeuq_runtime.stream.hop.HopPath`: the same decision
    in fewer calls (``hop_path_reason`` says why not where it does not). ``fast=False`` keeps the
    general path (:meth:`decide_general`) for every window."""

    def __init__(self, rt: Any, adaptive: bool = False, samples: Optional[int] = None, seed: Any = 0,
                 calibrated: Optional[Calibrated] = None, adaptive_config: Optional[AdaptiveConfig] = None,
                 use_calibration: bool = True, fast: bool = True) -> None:
        self.rt = rt
        self.cal = calibrated if calibrated is not None else (Calibrated.from_bundle(rt.bundle) if use_calibration
                                                              else None)
        self.adaptive = bool(adaptive)
        base = self.cal.cal.samples if self.cal is not None else rt.default_samples
        self.samples = int(samples or base)
        if adaptive_config is not None:
            self.cfg = adaptive_config
        elif self.cal is not None:
            self.cfg = self.cal.cal.adaptive
        else:
            self.cfg = AdaptiveConfig(s_min=min(8, rt.default_samples), s_max=rt.default_samples)
        self.rng = np.random.default_rng(seed)
        self.class_names = tuple(rt.class_names)
        self.digest = bundle_digest(rt)
        self._hop: Optional[HopPath] = None
        self.hop_path_reason = "fast=False"
        if fast:
            if type(self)._features is not Diagnoser._features or type(self).decide_general is not \
                    Diagnoser.decide_general:
                self.hop_path_reason = "a subclass changes the features or the decision"
            else:
                self._hop, self.hop_path_reason = HopPath.build(self)
        self._hop_shape = None if self._hop is None else (int(rt.input_length),)

    @property
    def batched(self) -> bool:
        """Whether :meth:`decide_batch` decides exactly what :meth:`decide` does for this object: true
        for a plain Diagnoser; a subclass that overrides ``decide`` alone is decided window by window."""
        cls = type(self)
        return (cls.decide is Diagnoser.decide and cls.decide_general is Diagnoser.decide_general) \
            or cls.decide_batch is not Diagnoser.decide_batch

    def _thresholds(self):
        if self.cal is None:
            return None, None
        mi_t = self.cal.cal.abstain.epistemic
        cp = self.cal.cal.conformal
        prob_t = None
        if cp is not None and cp.method == "lac" and not cp.class_conditional and np.isfinite(cp.qhat[0]):
            prob_t = 1.0 - cp.qhat[0]
        return mi_t, prob_t

    @property
    def hop_path(self) -> Optional[HopPath]:
        """The one-window fast path :meth:`decide` uses for float32 windows (None: the general path)."""
        return self._hop

    def decide(self, window: np.ndarray) -> Decision:
        """The decision of one raw window (length ``input_length``): :class:`HopPath` for a float32
        window where the diagnoser has one, else :meth:`decide_general` (same decision)."""
        hop = self._hop
        if hop is not None and isinstance(window, np.ndarray) and window.dtype == np.float32 \
                and window.shape == self._hop_shape:
            return hop.decide(window)
        return self.decide_general(window)

    def decide_general(self, window: np.ndarray) -> Decision:
        """The decision of one window through the general path (any configuration): the reference
        that :class:`HopPath` and :meth:`decide_batch` are checked against."""
        flags = window_flags(window)
        blocking = [f for f in flags if f in BLOCKING_FLAGS]
        if blocking:
            return Decision(None, None, None, None, None, None, None, None, None, True, list(blocking), flags, 0)
        features = self._features(window[None, :])
        density = combined = None
        if self.cal is not None:
            d = self.cal.density_score(features)
            density = None if d is None else d
        draw = lambda k: sample_logits(self.rt, features, k, self.rng)  # noqa: E731
        if self.adaptive:
            mi_t, prob_t = self._thresholds()
            res, used = adaptive_predict(draw, self.cfg, self.class_names, mi_t, prob_t)
        else:
            res = decompose_logits(draw(self.samples))   # = decompose(softmax(logits)), without the sample array
            used = self.samples
        reasons: List[str] = [f for f in flags]
        pset = None
        extra: Dict[str, Any] = {}
        if self.cal is not None:
            # the p-values once per window: the combined score and the abstention rule reuse them
            pvals = self.cal.pvalues(res.epistemic, res.total, density, res.prediction)
            pc = None
            if pvals is not None:
                pc = self.cal.combined_pvalue(pvals)
                extra = {"pvalues": {k: float(v[0]) for k, v in pvals.items()}, "p_combined": float(pc[0])}
                combined = -np.log10(pc)
            else:
                combined = self.cal.combined_score(res.epistemic, density, res.total, res.prediction)
            size = None
            cp = self.cal.cal.conformal
            if cp is not None:
                member = cp.sets(res.probs, rng=self.rng)[0]
                pset = [self.class_names[i] for i in np.flatnonzero(member)]
                size = np.array([len(pset)])
            reasons += self.cal.abstain_reasons(size, res.epistemic, density, res.total, res.prediction,
                                                parts=pvals, combined=pc)[0]
        i = int(res.prediction[0])
        return Decision(self.class_names[i], i, float(res.confidence[0]), float(res.total[0]),
                        float(res.aleatoric[0]), float(res.epistemic[0]),
                        None if density is None else float(density[0]),
                        None if combined is None else float(combined[0]), pset, bool(reasons), reasons, flags,
                        used, res.probs[0].tolist(), extra)

    def _features(self, x: np.ndarray) -> np.ndarray:
        """Trunk features of windows ``x`` (B, length) that passed the blocking quality flags (finite):
        the runtime's ``stream_features`` (no second validation and input-quality pass; same front end,
        normalisation and trunk, so the same features) for C-contiguous float32 windows, else its
        ``trunk_features`` (other dtypes keep their own precision up to the normalisation)."""
        stream_features = getattr(self.rt, "stream_features", None)
        if stream_features is not None and x.dtype == np.float32 and x.flags.c_contiguous:
            return stream_features(x)
        return self.rt.trunk_features(x)

    # -- micro-batches ---------------------------------------------------------------------------
    def _draws_in_post(self) -> bool:
        """Whether the calibrated post-processing draws from ``rng`` (randomised APS sets): then a
        window's noise must follow the previous window's set draw, and windows go one at a time."""
        cp = self.cal.cal.conformal if self.cal is not None else None
        return cp is not None and cp.draws_random

    def decide_batch(self, windows: np.ndarray) -> List[Decision]:
        """The decisions of consecutive windows (B, length), equal to ``[decide(w) for w in windows]``
        from the same state (same noise rows per window, within float round-off): one trunk run,
        one density score, one head run of B * S rows (fixed S; adaptive S draws window by window,
        in order) and one vectorised decomposition, p-value and set computation for the batch.
        Windows with a blocking quality flag are left out of the model runs, as in :meth:`decide`."""
        x = np.ascontiguousarray(windows, dtype=np.float32)
        if x.ndim != 2:
            raise ValueError(f"decide_batch needs windows (batch, length), got shape {x.shape}")
        if self._draws_in_post():
            return [self.decide(w) for w in x]
        flags = window_flags_batch(x)
        blocking = [[f for f in fl if f in BLOCKING_FLAGS] for fl in flags]
        use = [i for i, bl in enumerate(blocking) if not bl]
        out: List[Optional[Decision]] = [None] * x.shape[0]
        for i, bl in enumerate(blocking):
            if bl:
                out[i] = Decision(None, None, None, None, None, None, None, None, None, True, list(bl), flags[i], 0)
        if not use:
            return out  # type: ignore[return-value]
        xu = x if len(use) == x.shape[0] else x[use]
        features = self._features(xu)
        density = self.cal.density_score(features) if self.cal is not None else None
        n = len(use)
        if self.adaptive:
            mi_t, prob_t = self._thresholds()
            probs = np.empty((n, len(self.class_names)))
            pred = np.empty(n, dtype=np.int64)
            conf, total, alea, epi = (np.empty(n) for _ in range(4))
            used = [0] * n
            for j in range(n):
                f = features[j:j + 1]
                r, used[j] = adaptive_predict(lambda k: sample_logits(self.rt, f, k, self.rng), self.cfg,
                                              self.class_names, mi_t, prob_t)
                probs[j], pred[j], conf[j] = r.probs[0], r.prediction[0], r.confidence[0]
                total[j], alea[j], epi[j] = r.total[0], r.aleatoric[0], r.epistemic[0]
        else:
            per_input = getattr(self.rt, "sample_logits_per_input", None)
            if per_input is not None:
                logits = per_input(features, self.samples, self.rng)
            else:
                logits = np.concatenate([sample_logits(self.rt, features[j:j + 1], self.samples, self.rng)
                                         for j in range(n)], axis=1)
            probs, pred, conf, total, alea, epi = decompose_logits(logits)
            used = [self.samples] * n
        combined = None
        pvals = None
        sets = None
        reasons: List[List[str]] = [[] for _ in range(n)]
        pc = None
        if self.cal is not None:
            pvals = self.cal.pvalues(epi, total, density, pred)
            if pvals is not None:
                pc = self.cal.combined_pvalue(pvals)
                combined = -np.log10(pc)
            else:
                combined = self.cal.combined_score(epi, density, total, pred)
            size = None
            cp = self.cal.cal.conformal
            if cp is not None:
                sets = cp.sets(probs, rng=self.rng)
                size = sets.sum(axis=1)
            reasons = self.cal.abstain_reasons(size, epi, density, total, pred, parts=pvals, combined=pc)
        names = self.class_names
        for j, i in enumerate(use):
            k = int(pred[j])
            rs = list(flags[i]) + reasons[j]
            extra: Dict[str, Any] = {}
            if pvals is not None:
                extra = {"pvalues": {p: float(v[j]) for p, v in pvals.items()}, "p_combined": float(pc[j])}
            pset = None if sets is None else [names[c] for c in np.flatnonzero(sets[j])]
            out[i] = Decision(names[k], k, float(conf[j]), float(total[j]), float(alea[j]), float(epi[j]),
                              None if density is None else float(density[j]),
                              None if combined is None else float(combined[j]), pset, bool(rs), rs, flags[i],
                              used[j], probs[j].tolist(), extra)
        return out  # type: ignore[return-value]
