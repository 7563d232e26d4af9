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
from ..uncertainty import decompose, softmax
from .quality import BLOCKING_FLAGS, window_flags

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
        r = lambda v: None if v is None else round(float(v), 6)  # noqa: E731
        out = {"class": self.label, "class_index": self.class_index, "confidence": r(self.confidence),
               "total": r(self.total), "aleatoric": r(self.aleatoric), "epistemic": r(self.epistemic),
               "density": r(self.density), "combined": r(self.combined), "set": self.prediction_set,
               "abstain": self.abstain, "reasons": self.reasons, "flags": self.flags, "samples": self.samples}
        if "pvalues" in self.extra:
            out["pvalues"] = {k: r(v) for k, v in self.extra["pvalues"].items()}
            out["p_combined"] = r(self.extra["p_combined"])
        return out


class Diagnoser:
    """Decisions for single windows of a loaded :class:`UncertaintyRuntime`.

    ``adaptive``: sample until settled (``calibration.adaptive`` or ``adaptive_config``,
    S_max from it), else a fixed ``samples`` (default: the calibration's S, else the
    manifest's). Without a calibration section there is no density score, set or
    calibrated abstention: only the quality flags abstain."""

    def __init__(self, rt: Any, adaptive: bool = False, samples: Optional[int] = None, seed: Any = 0,
                 calibrated: Optional[Calibrated] = None, adaptive_config: Optional[AdaptiveConfig] = None,
                 use_calibration: bool = True) -> None:
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

    def _thresholds(self):
        if self.cal is None:
            return None, None
        mi_t = self.cal.cal.abstain.epistemic
        cp = self.cal.cal.conformal
        prob_t = None
        if cp is not None and cp.method == "lac" and not cp.class_conditional and np.isfinite(cp.qhat[0]):
            prob_t = 1.0 - cp.qhat[0]
        return mi_t, prob_t

    def decide(self, window: np.ndarray) -> Decision:
        flags = window_flags(window)
        blocking = [f for f in flags if f in BLOCKING_FLAGS]
        if blocking:
            return Decision(None, None, None, None, None, None, None, None, None, True, list(blocking), flags, 0)
        features = self.rt.trunk_features(window[None, :])
        density = combined = None
        if self.cal is not None:
            d = self.cal.density_score(features)
            density = None if d is None else d
        draw = lambda k: sample_logits(self.rt, features, k, self.rng)  # noqa: E731
        if self.adaptive:
            mi_t, prob_t = self._thresholds()
            res, used = adaptive_predict(draw, self.cfg, self.class_names, mi_t, prob_t)
        else:
            res = decompose(softmax(np.asarray(draw(self.samples), dtype=np.float64), axis=-1), self.class_names)
            used = self.samples
        reasons: List[str] = [f for f in flags]
        pset = None
        extra: Dict[str, Any] = {}
        if self.cal is not None:
            # the p-values once per window: the combined score and the abstention rule reuse them
            pvals = self.cal.pvalues(res.epistemic, res.total, density, res.prediction)
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
                                                parts=pvals)[0]
        i = int(res.prediction[0])
        return Decision(self.class_names[i], i, float(res.confidence[0]), float(res.total[0]),
                        float(res.aleatoric[0]), float(res.epistemic[0]),
                        None if density is None else float(density[0]),
                        None if combined is None else float(combined[0]), pset, bool(reasons), reasons, flags,
                        used, [float(v) for v in res.probs[0]], extra)
