"""Calibrate a deployed bundle through the device runtime and rewrite it with a
``calibration`` manifest section (+ ``density.npz``).

Everything is measured on the bundle as deployed (its graphs, quantization and
S): the density model on the pooled trunk features of in-distribution *fit*
windows (normally the training set), the conformal thresholds and the abstention
thresholds on *held-out* labelled in-distribution windows.

Abstention thresholds at a target false-alarm rate ``far``: the epistemic (MI) and
density thresholds are each the conformal ``(1 - far/2)`` quantile of their
calibration scores (Bonferroni: on exchangeable in-distribution data the chance
that either fires is <= far); without a density model the MI threshold takes the
whole ``far``. The combined score's threshold is its ``(1 - far)`` quantile.

The **device rule** (issue 19) is a conformal test: the calibration scores of each part
(``pvalue_parts``: mutual information, total entropy, density) are stored per predicted class
(``pvalues.npz``); a window's p-value per part is its rank among them, the parts are combined
with ``combine`` (``min``: Bonferroni, valid whatever their dependence; ``weighted``: weighted
Bonferroni with ``pvalue_weights``, valid likewise; ``fisher``) and the window
abstains when the combined p-value is ``<= far``. Calibration data only: no shifted data is used.

**Honest density fitting.** The density model is fitted on ``x_fit`` (training windows), never on
calibration windows: the sha256 of every window's float32 bytes is compared and an overlap raises
(``allow_fit_overlap`` turns that into a loud warning, recorded in the manifest's
``calibration.density_fit``, which always records what the density was fitted on).
"""
from __future__ import annotations

import dataclasses
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple
import hashlib

import numpy as np

from edgeuq_runtime import UncertaintyRuntime, load_bundle
from edgeuq_runtime.adaptive import AdaptiveConfig
from edgeuq_runtime.calibration import (
    MI_EPS, PVALUE_PARTS, AbstainSection, Calibrated, Calibration, CombinedSection, DensityFitSection, DensitySection,
    PValueSection, calibration_to_json, graphs_digest, load_pvalue_scores, save_pvalue_scores,
)
from edgeuq_runtime.conformal import conformal_quantile, fit_conformal
from edgeuq_runtime.density import fit_density

from .scores import WindowScores, score_windows, trunk_pooled

__all__ = ["CalibrationOptions", "CalibrationResult", "calibrate_bundle", "calibrate_text_bundle", "DENSITY_FILE",
           "PVALUE_FILE", "window_hashes", "windows_digest", "FitOverlapError"]

DENSITY_FILE = "density.npz"
PVALUE_FILE = "pvalues.npz"


class FitOverlapError(ValueError):
    """The density fit windows and the calibration windows overlap."""


def window_hashes(x: np.ndarray) -> np.ndarray:
    """sha256 (hex) of each window's float32 bytes: identifies the data, not a computed result."""
    a = np.ascontiguousarray(np.asarray(x), dtype=np.float32)
    a = a.reshape(a.shape[0], -1)
    return np.array([hashlib.sha256(row.tobytes()).hexdigest() for row in a])


def windows_digest(hashes: np.ndarray) -> str:
    """One sha256 over the sorted window hashes (order-free identity of a window set)."""
    return hashlib.sha256("\n".join(sorted(str(h) for h in hashes)).encode()).hexdigest()
Log = Callable[[str], None]


@dataclass(frozen=True)
class CalibrationOptions:
    alpha: float = 0.05
    method: str = "lac"
    class_conditional: bool = False
    false_alarm_rate: float = 0.05
    samples: Optional[int] = None       # default: the manifest's default_samples
    seed: int = 0
    density: bool = True
    ridge: float = 1e-4
    s_min: int = 8
    step: int = 4
    z: float = 2.576
    mi_tol: float = 0.02
    pvalue_parts: Optional[Tuple[str, ...]] = None   # default: every part available (MI, entropy, density)
    combine: str = "min"                             # "min" (Bonferroni), "weighted" or "fisher"
    pvalue_weights: Optional[Tuple[float, ...]] = None   # "weighted": one per part (of pvalue_parts), summing to 1
    mondrian: bool = True                            # p-values per predicted class
    min_per_class: int = 20                          # fewer calibration windows: the class uses the pooled scores
    allow_fit_overlap: bool = False                  # warn (loudly, recorded) instead of refusing
    density_from_calibration: bool = False           # old behaviour: fit density on a random half of x_cal
    fit_source: str = "fit data passed to calibrate_bundle"
    threads: Optional[int] = None                    # the runtime's thread pool (None: the backend's default)


@dataclass(frozen=True, eq=False)
class CalibrationResult:
    bundle: Path
    calibration: Calibration
    scores: WindowScores       # on the calibration windows
    n_fit: int

    def to_json(self) -> Dict[str, Any]:
        return {"bundle": str(self.bundle), "n_fit": self.n_fit, "calibration": calibration_to_json(self.calibration)}


def _q(x: float) -> Optional[float]:
    return float(x) if math.isfinite(x) else None


def calibrate_bundle(bundle_dir: Path, x_cal: np.ndarray, y_cal: np.ndarray, x_fit: Optional[np.ndarray] = None,
                     y_fit: Optional[np.ndarray] = None, options: CalibrationOptions = CalibrationOptions(),
                     out_dir: Optional[Path] = None, progress: bool = False, log: Log = lambda s: None
                     ) -> CalibrationResult:
    """Fit density (on ``x_fit``), conformal and abstention thresholds (on ``x_cal``); write the bundle.

    Without ``x_fit`` a density model is refused (pass the training windows, or ``density=False``)
    unless ``density_from_calibration``: the calibration windows are then split in two at random,
    one half fitting the density model (recorded as such in ``density_fit``). A fit window equal to
    a calibration window raises :class:`FitOverlapError` unless ``allow_fit_overlap``."""
    o = options
    bundle_dir = Path(bundle_dir)
    out = Path(out_dir) if out_dir is not None else bundle_dir
    rt = UncertaintyRuntime(bundle_dir, threads=o.threads, seed=o.seed)
    m = rt.manifest
    s = int(o.samples or m.default_samples)
    y_cal = np.asarray(y_cal)
    if len(y_cal) < 10 or np.any(y_cal < 0):
        raise ValueError(f"calibration needs >= 10 labelled windows, got {len(y_cal)} (labels >= 0)")
    fit_source = o.fit_source
    if x_fit is None and o.density:
        if not o.density_from_calibration:
            raise ValueError("a density model needs fit data: pass the training windows (x_fit / --fit-data), "
                             "never windows that are scored as in-distribution; or calibrate without density")
        log("WARNING: density fitted on a random half of the calibration windows (density_from_calibration); "
            "evaluate will score windows of the same recordings as in-distribution")
        perm = np.random.default_rng(o.seed).permutation(len(y_cal))
        half = len(perm) // 2
        x_fit, y_fit = x_cal[perm[:half]], y_cal[perm[:half]]
        x_cal, y_cal = x_cal[perm[half:]], y_cal[perm[half:]]
        fit_source = "random half of the calibration data (density_from_calibration)"
    density = None
    dens_section = None
    fit_section = None
    if o.density:
        fit_h = window_hashes(x_fit)
        cal_h = window_hashes(x_cal)
        overlap = int(np.isin(cal_h, fit_h).sum())
        if overlap:
            msg = (f"{overlap} of {len(cal_h)} calibration windows are also density fit windows ({fit_source}): "
                   "the density score would be measured on data it was fitted on")
            if not o.allow_fit_overlap:
                raise FitOverlapError(msg + "; pass disjoint fit data (the training split) or allow_fit_overlap / "
                                      "--allow-fit-overlap to proceed anyway")
            log("WARNING " * 3 + msg + " (allowed by allow_fit_overlap; recorded in calibration.density_fit)")
        fit_section = DensityFitSection(len(fit_h), fit_source, windows_digest(fit_h), len(cal_h), overlap,
                                        bool(o.allow_fit_overlap))
        raw = rt.trunk_features(x_cal[:1])
        # a trunk emitting extra features for the density names their columns (edgeuq.text.ood)
        cols = m.metadata.get("density_columns")
        pooling = (f"columns:{int(cols[0])}:{int(cols[1])}" if cols is not None else
                   "mean_tokens" if raw.ndim == 3 else "none")
        feats = trunk_pooled(rt, x_fit, pooling=pooling)
        density = fit_density(feats, np.asarray(y_fit), num_classes=m.num_classes, ridge=o.ridge, pooling="none")
        dens_section = DensitySection(DENSITY_FILE, pooling, density.dim)
        log(f"density: tied-covariance Gaussian on {len(feats)} pooled trunk features (d = {density.dim})")
    sc = score_windows(rt, x_cal, s, o.seed + 1, density=density,
                       pooling=dens_section.pooling if dens_section else "auto", progress=progress,
                       desc="calibrate")
    conformal = fit_conformal(sc.probs, y_cal, o.alpha, o.method, o.class_conditional,
                              rng=np.random.default_rng(o.seed + 2))
    far = float(o.false_alarm_rate)
    level = far / 2 if density is not None else far
    mi_log = np.log(sc.epistemic + MI_EPS)
    combined = CombinedSection(float(mi_log.mean()), float(max(mi_log.std(), 1e-6)),
                               None if sc.density is None else float(sc.density.mean()),
                               None if sc.density is None else float(max(sc.density.std(), 1e-6)))
    draft = Calibration(samples=s, seed=o.seed, n=len(y_cal),
                        adaptive=AdaptiveConfig(min(o.s_min, s), s, o.step, o.z, o.mi_tol),
                        abstain=AbstainSection(far), conformal=conformal, density=dens_section, combined=combined,
                        graphs_digest=graphs_digest(m))
    comb = Calibrated(draft, density).combined_score(sc.epistemic, sc.density)
    abstain = AbstainSection(far, _q(conformal_quantile(sc.epistemic, level)),
                             None if sc.density is None else _q(conformal_quantile(sc.density, level)),
                             _q(conformal_quantile(comb, far)))
    available = {"epistemic": sc.epistemic, "total": sc.total, "density": sc.density}
    parts = tuple(o.pvalue_parts) if o.pvalue_parts else tuple(p for p in PVALUE_PARTS if available[p] is not None)
    bad = [p for p in parts if p not in PVALUE_PARTS or available[p] is None]
    if bad:
        raise ValueError(f"pvalue_parts {bad} are not available (parts: {list(PVALUE_PARTS)}; density needs a "
                         "density model)")
    bundle = load_bundle(bundle_dir, verify=True)
    sources: Dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="edgeuq-cal-") as tmp:
        pv_path, pooled = save_pvalue_scores(Path(tmp) / PVALUE_FILE, {p: available[p] for p in parts},
                                             sc.prediction, m.num_classes, o.min_per_class)
        sources[PVALUE_FILE] = pv_path
        pv_section = PValueSection(PVALUE_FILE, parts, o.combine, bool(o.mondrian), far, len(y_cal), pooled,
                                   None if o.pvalue_weights is None else tuple(float(w) for w in o.pvalue_weights))
        cal = dataclasses.replace(draft, abstain=abstain, pvalues=pv_section, density_fit=fit_section)
        calibration_to_json(cal)  # validates before anything is written
        cald = Calibrated(cal, density, load_pvalue_scores(pv_path, pv_section, m.num_classes))
        comb = cald.combined_score(sc.epistemic, sc.density, sc.total, sc.prediction)
        if density is not None:
            sources[DENSITY_FILE] = density.save(Path(tmp) / DENSITY_FILE)
        stale = [n for n in (DENSITY_FILE, PVALUE_FILE) if n in bundle.manifest.files]
        bundle.amend(sections={"calibration": cal}, files=sources, drop=stale, out=out)
    scores = dataclasses.replace(sc, combined=comb)
    log(f"calibrated {out}: n = {len(y_cal)}, S = {s}, {o.method.upper()} alpha = {o.alpha:g} -> qhat "
        f"{[round(q, 4) for q in conformal.qhat]}; thresholds at false-alarm rate {far:g}: MI > {abstain.epistemic}, "
        f"density > {abstain.density}, combined > {abstain.combined}; device rule: {o.combine} of conformal "
        f"p-values of {'/'.join(parts)}{' per predicted class' if o.mondrian else ''} <= {far:g}")
    return CalibrationResult(out, cal, scores, 0 if x_fit is None or not o.density else len(x_fit))


def calibrate_text_bundle(bundle_dir: Path, cal_texts, y_cal, fit_texts, y_fit,
                          options: CalibrationOptions = CalibrationOptions(), out_dir: Optional[Path] = None,
                          log: Log = lambda s: None) -> Tuple[CalibrationResult, int]:
    """:func:`calibrate_bundle` for a bundle that ships a tokenizer: the texts are tokenized by the
    bundle's own tokenizer, and a fit text whose ids equal a calibration text's is dropped from the
    fit (a corpus that repeats phrases, as SST-2 does, would otherwise raise :class:`FitOverlapError`).
    Returns the result and how many fit texts were dropped."""
    rt = UncertaintyRuntime(bundle_dir, threads=options.threads, seed=options.seed)
    x_cal, x_fit = rt.tokenize(list(cal_texts)), rt.tokenize(list(fit_texts))
    keep = ~np.isin(window_hashes(x_fit), window_hashes(x_cal))
    dropped = int((~keep).sum())
    if dropped:
        log(f"{dropped} fit texts equal a calibration text (after tokenization): left out of the density fit")
    res = calibrate_bundle(bundle_dir, x_cal, np.asarray(y_cal), x_fit[keep], np.asarray(y_fit)[keep], options,
                           out_dir=out_dir, log=log)
    return res, dropped
