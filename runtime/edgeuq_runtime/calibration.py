"""The manifest's ``calibration`` section and the calibrated decision quantities (numpy only).

Written by ``edgeuq calibrate`` after running the *deployed* bundle (same graphs,
same quantization, same S) on held-out in-distribution data:

.. code-block:: json

    "calibration": {
      "samples": 32, "seed": 0, "n": 812, "graphs_digest": "ab12...",
      "adaptive":  {"s_min": 8, "s_max": 32, "step": 4, "z": 2.576, "mi_tol": 0.02},
      "conformal": {"method": "lac", "alpha": 0.1, "class_conditional": false,
                    "randomized": true, "qhat": [0.41], "n": 812},
      "density":   {"file": "density.npz", "pooling": "mean_tokens", "dim": 32},
      "combined":  {"mi_log_mean": -6.1, "mi_log_std": 1.3, "density_mean": 40.2, "density_std": 3.1},
      "abstain":   {"false_alarm_rate": 0.05, "epistemic": 0.02, "density": 47.0, "combined": 1.9}
    }

``qhat`` entries and ``abstain`` thresholds may be ``null``: no finite threshold
(too few calibration examples for the level; the set holds every class / that
score never abstains). ``conformal``, ``density`` and ``combined`` are optional.
Every problem raises :class:`ManifestError` naming the dotted field.

The **combined score** is ``max(z_mi, z_density)`` with ``z_mi = (log(MI + 1e-12)
- mi_log_mean) / mi_log_std`` and ``z_density = (density - density_mean) /
density_std`` (statistics of the calibration data): an input is as unusual as its
more unusual score.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from .adaptive import AdaptiveConfig
from .conformal import ConformalPredictor
from .density import POOLINGS, GaussianDensity
from .errors import BundleError, InputError, ManifestError

__all__ = ["SECTION", "ConformalSection", "DensitySection", "CombinedSection", "AbstainSection", "Calibration",
           "parse_calibration", "calibration_to_json", "read_calibration", "graphs_digest", "Calibrated", "MI_EPS"]

SECTION = "calibration"
MI_EPS = 1e-12


def _fail(where: str, msg: str) -> ManifestError:
    return ManifestError(f"{where}: {msg}")


def _obj(where: str, v: Any, allowed: set, required: set = frozenset()) -> Mapping[str, Any]:
    if not isinstance(v, Mapping):
        raise _fail(where, f"must be an object, got {type(v).__name__}")
    extra = sorted(set(v) - allowed)
    if extra:
        raise _fail(where, f"unknown keys {extra}; allowed: {sorted(allowed)}")
    missing = sorted(set(required) - set(v))
    if missing:
        raise _fail(where, f"missing keys {missing}")
    return v


def _num(where: str, v: Any, lo: float = -math.inf, hi: float = math.inf, open_lo: bool = False,
         open_hi: bool = False, nullable: bool = False) -> Optional[float]:
    if v is None and nullable:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _fail(where, f"must be a number{' or null' if nullable else ''}, got {v!r}")
    f = float(v)
    if not math.isfinite(f):
        raise _fail(where, f"must be finite, got {v!r}")
    if f < lo or f > hi or (open_lo and f == lo) or (open_hi and f == hi):
        lb, hb = "(" if open_lo else "[", ")" if open_hi else "]"
        raise _fail(where, f"must lie in {lb}{lo:g}, {hi:g}{hb}, got {v!r}")
    return f


def _int(where: str, v: Any, lo: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise _fail(where, f"must be an integer >= {lo}, got {v!r}")
    return int(v)


def _bool(where: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise _fail(where, f"must be true or false, got {v!r}")
    return v


def _text(where: str, v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise _fail(where, f"must be a non-empty string, got {v!r}")
    return v


@dataclass(frozen=True)
class DensitySection:
    file: str
    pooling: str
    dim: int


@dataclass(frozen=True)
class CombinedSection:
    mi_log_mean: float
    mi_log_std: float
    density_mean: Optional[float] = None
    density_std: Optional[float] = None


@dataclass(frozen=True)
class AbstainSection:
    false_alarm_rate: float
    epistemic: Optional[float] = None
    density: Optional[float] = None
    combined: Optional[float] = None


ConformalSection = ConformalPredictor


@dataclass(frozen=True)
class Calibration:
    samples: int
    seed: int
    n: int
    adaptive: AdaptiveConfig
    abstain: AbstainSection
    conformal: Optional[ConformalPredictor] = None
    density: Optional[DensitySection] = None
    combined: Optional[CombinedSection] = None
    graphs_digest: Optional[str] = None


def _q_to_json(q: float) -> Optional[float]:
    return q if math.isfinite(q) else None


def parse_calibration(obj: Any, where: str = SECTION) -> Calibration:
    """Strictly parse the JSON ``calibration`` section (errors name the dotted field)."""
    top = _obj(where, obj, {"samples", "seed", "n", "graphs_digest", "adaptive", "conformal", "density",
                            "combined", "abstain"}, {"samples", "seed", "n", "adaptive", "abstain"})
    samples = _int(f"{where}.samples", top["samples"], 1)
    ad = _obj(f"{where}.adaptive", top["adaptive"], {"s_min", "s_max", "step", "z", "mi_tol"},
              {"s_min", "s_max", "step", "z", "mi_tol"})
    try:
        adaptive = AdaptiveConfig(_int(f"{where}.adaptive.s_min", ad["s_min"], 1),
                                  _int(f"{where}.adaptive.s_max", ad["s_max"], 1),
                                  _int(f"{where}.adaptive.step", ad["step"], 1),
                                  _num(f"{where}.adaptive.z", ad["z"], 0, open_lo=True),
                                  _num(f"{where}.adaptive.mi_tol", ad["mi_tol"], 0, open_lo=True))
    except InputError as exc:
        raise _fail(f"{where}.adaptive", str(exc)) from None
    conformal = None
    if top.get("conformal") is not None:
        w = f"{where}.conformal"
        cf = _obj(w, top["conformal"], {"method", "alpha", "class_conditional", "randomized", "qhat", "n"},
                  {"method", "alpha", "class_conditional", "randomized", "qhat", "n"})
        method = _text(f"{w}.method", cf["method"])
        if method not in ("lac", "aps"):
            raise _fail(f"{w}.method", f"must be 'lac' or 'aps', got {method!r}")
        cc = _bool(f"{w}.class_conditional", cf["class_conditional"])
        qs = cf["qhat"]
        if not isinstance(qs, list) or not qs or (not cc and len(qs) != 1):
            raise _fail(f"{w}.qhat", f"must be a list of {'one threshold per class' if cc else 'one threshold'}, "
                        f"got {qs!r}")
        q = tuple(math.inf if v is None else _num(f"{w}.qhat[{i}]", v) for i, v in enumerate(qs))
        conformal = ConformalPredictor(method, _num(f"{w}.alpha", cf["alpha"], 0, 1, True, True), q, cc,
                                       _bool(f"{w}.randomized", cf["randomized"]), _int(f"{w}.n", cf["n"], 1))
    density = None
    if top.get("density") is not None:
        w = f"{where}.density"
        dn = _obj(w, top["density"], {"file", "pooling", "dim"}, {"file", "pooling", "dim"})
        pooling = _text(f"{w}.pooling", dn["pooling"])
        if pooling not in POOLINGS:
            raise _fail(f"{w}.pooling", f"must be one of {list(POOLINGS)}, got {pooling!r}")
        fname = _text(f"{w}.file", dn["file"])
        if fname.startswith("/") or ".." in fname.split("/"):
            raise _fail(f"{w}.file", f"must be a relative path inside the bundle, got {fname!r}")
        density = DensitySection(fname, pooling, _int(f"{w}.dim", dn["dim"], 1))
    combined = None
    if top.get("combined") is not None:
        w = f"{where}.combined"
        cb = _obj(w, top["combined"], {"mi_log_mean", "mi_log_std", "density_mean", "density_std"},
                  {"mi_log_mean", "mi_log_std"})
        combined = CombinedSection(_num(f"{w}.mi_log_mean", cb["mi_log_mean"]),
                                   _num(f"{w}.mi_log_std", cb["mi_log_std"], 0, open_lo=True),
                                   _num(f"{w}.density_mean", cb.get("density_mean"), nullable=True),
                                   _num(f"{w}.density_std", cb.get("density_std"), 0, open_lo=True, nullable=True))
        if (combined.density_mean is None) != (combined.density_std is None):
            raise _fail(w, "density_mean and density_std must both be given or both be null")
    w = f"{where}.abstain"
    ab = _obj(w, top["abstain"], {"false_alarm_rate", "epistemic", "density", "combined"}, {"false_alarm_rate"})
    abstain = AbstainSection(_num(f"{w}.false_alarm_rate", ab["false_alarm_rate"], 0, 1, True, True),
                             *(_num(f"{w}.{k}", ab.get(k), nullable=True) for k in ("epistemic", "density",
                                                                                     "combined")))
    if abstain.density is not None and density is None:
        raise _fail(f"{w}.density", "a density threshold needs the density section")
    if abstain.combined is not None and combined is None:
        raise _fail(f"{w}.combined", "a combined threshold needs the combined section")
    digest = top.get("graphs_digest")
    if digest is not None:
        _text(f"{where}.graphs_digest", digest)
    return Calibration(samples, _int(f"{where}.seed", top["seed"]), _int(f"{where}.n", top["n"], 1), adaptive,
                       abstain, conformal, density, combined, digest)


def calibration_to_json(cal: Calibration) -> Dict[str, Any]:
    a = cal.adaptive
    out: Dict[str, Any] = {
        "samples": cal.samples, "seed": cal.seed, "n": cal.n,
        "adaptive": {"s_min": a.s_min, "s_max": a.s_max, "step": a.step, "z": float(a.z), "mi_tol": float(a.mi_tol)},
        "abstain": {"false_alarm_rate": cal.abstain.false_alarm_rate, "epistemic": cal.abstain.epistemic,
                    "density": cal.abstain.density, "combined": cal.abstain.combined},
    }
    if cal.graphs_digest is not None:
        out["graphs_digest"] = cal.graphs_digest
    if cal.conformal is not None:
        c = cal.conformal
        out["conformal"] = {"method": c.method, "alpha": c.alpha, "class_conditional": c.class_conditional,
                            "randomized": c.randomized, "qhat": [_q_to_json(q) for q in c.qhat], "n": c.n}
    if cal.density is not None:
        out["density"] = {"file": cal.density.file, "pooling": cal.density.pooling, "dim": cal.density.dim}
    if cal.combined is not None:
        cb = cal.combined
        out["combined"] = {"mi_log_mean": cb.mi_log_mean, "mi_log_std": cb.mi_log_std,
                           "density_mean": cb.density_mean, "density_std": cb.density_std}
    # the round trip validates what we write (finite numbers, consistent sections)
    parse_calibration(json.loads(json.dumps(out, allow_nan=False)))
    return out


def _register() -> None:
    from .manifest import register_manifest_section

    register_manifest_section(SECTION, parse_calibration, calibration_to_json)


_register()


def graphs_digest(manifest: Any) -> str:
    """sha256 over the trunk and head graph files' hashes: what the calibration was computed on."""
    files = manifest.files
    text = "".join(f"{role}:{files.get(getattr(manifest, role).file, '')}\n" for role in ("trunk", "head"))
    return hashlib.sha256(text.encode()).hexdigest()


def read_calibration(bundle: Any) -> Optional[Calibration]:
    """The bundle's parsed ``calibration`` manifest section, or None."""
    sections = getattr(bundle.manifest, "sections", None) or {}
    return sections.get(SECTION)


class Calibrated:
    """A bundle's calibration ready to use: density model loaded, scores and abstention."""

    def __init__(self, cal: Calibration, density: Optional[GaussianDensity] = None) -> None:
        self.cal = cal
        self.density = density
        if cal.density is not None and density is None:
            raise BundleError("calibration declares a density model but none was loaded")
        if density is not None and cal.density is not None and density.dim != cal.density.dim:
            raise BundleError(f"density file has dimension {density.dim}, calibration.density.dim says "
                              f"{cal.density.dim}")

    @classmethod
    def from_bundle(cls, bundle: Any) -> Optional["Calibrated"]:
        cal = read_calibration(bundle)
        if cal is None:
            return None
        if cal.graphs_digest is not None and cal.graphs_digest != graphs_digest(bundle.manifest):
            raise BundleError("the calibration section was computed for other trunk/head graphs (graphs_digest "
                              "differs): recalibrate the bundle (edgeuq calibrate) after changing its graphs")
        dens = None
        if cal.density is not None:
            if cal.density.file not in bundle.manifest.files:
                raise BundleError(f"calibration.density.file {cal.density.file!r} is not listed (hashed) in the "
                                  "manifest's files")
            dens = GaussianDensity.load(bundle.path(cal.density.file))
        return cls(cal, dens)

    def density_score(self, features: np.ndarray) -> Optional[np.ndarray]:
        if self.density is None:
            return None
        return self.density.score(features, self.cal.density.pooling)

    def combined_score(self, epistemic: np.ndarray, density: Optional[np.ndarray]) -> Optional[np.ndarray]:
        cb = self.cal.combined
        if cb is None:
            return None
        z = (np.log(np.asarray(epistemic, dtype=np.float64) + MI_EPS) - cb.mi_log_mean) / cb.mi_log_std
        if density is not None and cb.density_mean is not None:
            z = np.maximum(z, (np.asarray(density, dtype=np.float64) - cb.density_mean) / cb.density_std)
        return z

    def abstain_reasons(self, set_size: Optional[np.ndarray], epistemic: np.ndarray,
                        density: Optional[np.ndarray]) -> list:
        """Per input, the list of reasons to abstain (empty: answer): ``set_size`` (the conformal
        set is not one class), ``epistemic`` / ``density`` (above its threshold; the two
        thresholds are calibrated jointly so that their union meets the false-alarm rate).
        The combined score's threshold is stored for evaluation and alarms, not used here."""
        ab = self.cal.abstain
        n = len(epistemic)
        out = [[] for _ in range(n)]
        checks = [("set_size", None if set_size is None else (np.asarray(set_size) != 1)),
                  ("epistemic", None if ab.epistemic is None else np.asarray(epistemic) > ab.epistemic),
                  ("density", None if (ab.density is None or density is None) else density > ab.density)]
        for name, flags in checks:
            if flags is None:
                continue
            for i in np.flatnonzero(flags):
                out[i].append(name)
        return out


def calibration_summary(cal: Calibration) -> Tuple[str, ...]:
    lines = [f"calibrated on n={cal.n} windows with S={cal.samples} (seed {cal.seed})"]
    if cal.conformal is not None:
        c = cal.conformal
        lines.append(f"conformal {c.method.upper()} alpha={c.alpha:g}{' class-conditional' if c.class_conditional else ''}"
                     f": qhat {[round(q, 4) for q in c.qhat]}")
    ab = cal.abstain
    lines.append(f"abstain at false-alarm rate {ab.false_alarm_rate:g}: epistemic > {ab.epistemic}, density > "
                 f"{ab.density}, combined > {ab.combined}")
    return tuple(lines)
