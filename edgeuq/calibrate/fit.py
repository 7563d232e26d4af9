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
"""
from __future__ import annotations

import dataclasses
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np

from edgeuq_runtime import UncertaintyRuntime, load_bundle, write_bundle
from edgeuq_runtime.adaptive import AdaptiveConfig
from edgeuq_runtime.calibration import (
    MI_EPS, AbstainSection, Calibrated, Calibration, CombinedSection, DensitySection, calibration_to_json,
    graphs_digest,
)
from edgeuq_runtime.conformal import conformal_quantile, fit_conformal
from edgeuq_runtime.density import fit_density

from .scores import WindowScores, score_windows, trunk_pooled

__all__ = ["CalibrationOptions", "CalibrationResult", "calibrate_bundle", "DENSITY_FILE"]

DENSITY_FILE = "density.npz"
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

    Without ``x_fit`` the calibration windows are split in two at random: one half fits the
    density model, the other calibrates (so no threshold is computed on the data the density
    model saw)."""
    o = options
    bundle_dir = Path(bundle_dir)
    out = Path(out_dir) if out_dir is not None else bundle_dir
    rt = UncertaintyRuntime(bundle_dir, seed=o.seed)
    m = rt.manifest
    s = int(o.samples or m.default_samples)
    y_cal = np.asarray(y_cal)
    if len(y_cal) < 10 or np.any(y_cal < 0):
        raise ValueError(f"calibration needs >= 10 labelled windows, got {len(y_cal)} (labels >= 0)")
    if x_fit is None and o.density:
        perm = np.random.default_rng(o.seed).permutation(len(y_cal))
        half = len(perm) // 2
        x_fit, y_fit = x_cal[perm[:half]], y_cal[perm[:half]]
        x_cal, y_cal = x_cal[perm[half:]], y_cal[perm[half:]]
    density = None
    dens_section = None
    if o.density:
        feats = trunk_pooled(rt, x_fit)
        density = fit_density(feats, np.asarray(y_fit), num_classes=m.num_classes, ridge=o.ridge)
        raw = rt.trunk_features(x_cal[:1])
        dens_section = DensitySection(DENSITY_FILE, "mean_tokens" if raw.ndim == 3 else "none", density.dim)
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
    cal = dataclasses.replace(draft, abstain=abstain)
    calibration_to_json(cal)  # validates before anything is written
    bundle = load_bundle(bundle_dir, verify=True)
    sources = {name: bundle.path(name) for name in bundle.manifest.files if name != DENSITY_FILE}
    with tempfile.TemporaryDirectory(prefix="edgeuq-cal-") as tmp:
        if density is not None:
            sources[DENSITY_FILE] = density.save(Path(tmp) / DENSITY_FILE)
        sections = {**dict(getattr(bundle.manifest, "sections", {}) or {}), "calibration": cal}
        manifest = dataclasses.replace(bundle.manifest, files={}, sections=sections)
        write_bundle(out, manifest, sources, overwrite=True)
    scores = dataclasses.replace(sc, combined=comb)
    log(f"calibrated {out}: n = {len(y_cal)}, S = {s}, {o.method.upper()} alpha = {o.alpha:g} -> qhat "
        f"{[round(q, 4) for q in conformal.qhat]}; thresholds at false-alarm rate {far:g}: MI > {abstain.epistemic}, "
        f"density > {abstain.density}, combined > {abstain.combined}")
    return CalibrationResult(out, cal, scores, 0 if x_fit is None else len(x_fit))
