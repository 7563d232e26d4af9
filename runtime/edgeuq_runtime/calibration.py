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

Two optional sections added by issue 19:

.. code-block:: json

      "density_fit": {"n": 4200, "source": "train split of data/", "windows_sha256": "9f1c...",
                      "checked_against": 812, "overlap": 0, "overlap_allowed": false},
      "pvalues":     {"file": "pvalues.npz", "parts": ["epistemic", "total", "density"], "rule": "min",
                      "mondrian": true, "level": 0.05, "n": 812, "pooled_classes": []}

With ``"rule": "weighted"`` the section also holds ``"weights": {"epistemic": 0.05, "total": 0.05,
"density": 0.9}`` (one per part, each > 0, summing to 1): weighted Bonferroni ``min_k p_k / w_k``.

``density_fit`` records what the density model was fitted on (a digest of the sorted sha256 of
every fit window's float32 bytes) and how many calibration windows were found among them.
``pvalues`` makes abstention a conformal test: each score (mutual information ``epistemic``,
predictive entropy ``total``, ``density``) gets the p-value ``(1 + #{cal >= s}) / (n + 1)`` against
the calibration scores *of the predicted class* (Mondrian; classes with too few calibration
windows, listed in ``pooled_classes``, use all of them), the p-values are combined by ``rule``
(``min``: Bonferroni ``K min p``; ``weighted``: ``min p_k / w_k``; ``fisher``), and a window abstains when the combined p-value is
``<= level``; the reason names the score(s) that fired (``pvalue:density``). The sorted calibration
scores live in ``file`` (arrays ``<part>`` pooled, ``<part>__c<k>`` per class), hashed like every file.

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

from . import _checks as c
from .adaptive import AdaptiveConfig
from .conformal import COMBINE_RULES, ConformalPredictor, check_weights, combine_pvalues
from .density import POOLINGS, GaussianDensity, check_pooling
from .errors import BundleError, InputError

__all__ = ["SECTION", "ConformalSection", "DensitySection", "CombinedSection", "AbstainSection", "Calibration",
           "parse_calibration", "calibration_to_json", "read_calibration", "graphs_digest", "Calibrated", "MI_EPS",
           "PValueSection", "DensityFitSection", "PVALUE_PARTS", "load_pvalue_scores", "save_pvalue_scores"]

SECTION = "calibration"
MI_EPS = 1e-12


# the strict-JSON toolkit (edgeuq_runtime._checks) under this module's historical names
_fail, _obj, _num, _int, _bool = c.fail, c.obj_keys, c.number, c.integer, c.boolean


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

#: the scores a p-value rule may combine (higher = more unusual)
PVALUE_PARTS = ("epistemic", "total", "density")


@dataclass(frozen=True)
class PValueSection:
    file: str
    parts: Tuple[str, ...]
    rule: str
    mondrian: bool
    level: float
    n: int
    pooled_classes: Tuple[int, ...] = ()
    #: the ``weighted`` rule's weight of each part (in the order of ``parts``); None for other rules
    weights: Optional[Tuple[float, ...]] = None


@dataclass(frozen=True)
class DensityFitSection:
    n: int
    source: str
    windows_sha256: str
    checked_against: int
    overlap: int
    overlap_allowed: bool = False


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
    pvalues: Optional[PValueSection] = None
    density_fit: Optional[DensityFitSection] = None


def _q_to_json(q: float) -> Optional[float]:
    return q if math.isfinite(q) else None


def parse_calibration(obj: Any, where: str = SECTION) -> Calibration:
    """Strictly parse the JSON ``calibration`` section (errors name the dotted field)."""
    top = _obj(where, obj, {"samples", "seed", "n", "graphs_digest", "adaptive", "conformal", "density",
                            "combined", "abstain", "pvalues", "density_fit"}, {"samples", "seed", "n", "adaptive",
                                                                               "abstain"})
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
        try:
            check_pooling(pooling)
        except InputError:
            raise _fail(f"{w}.pooling", f"must be one of {list(POOLINGS)} or 'columns:A:B', got {pooling!r}") from None
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
    pvalues = None
    if top.get("pvalues") is not None:
        w = f"{where}.pvalues"
        keys = {"file", "parts", "rule", "mondrian", "level", "n", "pooled_classes", "weights"}
        pv = _obj(w, top["pvalues"], keys, keys - {"pooled_classes", "weights"})
        fname = _text(f"{w}.file", pv["file"])
        if fname.startswith("/") or ".." in fname.split("/"):
            raise _fail(f"{w}.file", f"must be a relative path inside the bundle, got {fname!r}")
        parts = pv["parts"]
        if not isinstance(parts, list) or not parts or any(p not in PVALUE_PARTS for p in parts) \
                or len(set(parts)) != len(parts):
            raise _fail(f"{w}.parts", f"must be a non-empty list of distinct names from {list(PVALUE_PARTS)}, "
                        f"got {parts!r}")
        if "density" in parts and density is None:
            raise _fail(f"{w}.parts", "'density' needs the density section")
        rule = _text(f"{w}.rule", pv["rule"])
        if rule not in COMBINE_RULES:
            raise _fail(f"{w}.rule", f"must be one of {list(COMBINE_RULES)}, got {rule!r}")
        pooled = pv.get("pooled_classes", [])
        if not isinstance(pooled, list):
            raise _fail(f"{w}.pooled_classes", f"must be a list of class indices, got {pooled!r}")
        weights = _parse_weights(f"{w}.weights", pv.get("weights"), parts, rule)
        pvalues = PValueSection(fname, tuple(parts), rule, _bool(f"{w}.mondrian", pv["mondrian"]),
                                _num(f"{w}.level", pv["level"], 0, 1, True, True), _int(f"{w}.n", pv["n"], 1),
                                tuple(_int(f"{w}.pooled_classes[{i}]", v) for i, v in enumerate(pooled)), weights)
    density_fit = None
    if top.get("density_fit") is not None:
        w = f"{where}.density_fit"
        keys = {"n", "source", "windows_sha256", "checked_against", "overlap", "overlap_allowed"}
        df = _obj(w, top["density_fit"], keys, keys)
        density_fit = DensityFitSection(_int(f"{w}.n", df["n"], 1), _text(f"{w}.source", df["source"]),
                                        _text(f"{w}.windows_sha256", df["windows_sha256"]),
                                        _int(f"{w}.checked_against", df["checked_against"]),
                                        _int(f"{w}.overlap", df["overlap"]),
                                        _bool(f"{w}.overlap_allowed", df["overlap_allowed"]))
        if density_fit.overlap and not density_fit.overlap_allowed:
            raise _fail(f"{w}.overlap", f"{density_fit.overlap} calibration windows were among the density fit "
                        "windows but overlap_allowed is false")
    return Calibration(samples, _int(f"{where}.seed", top["seed"]), _int(f"{where}.n", top["n"], 1), adaptive,
                       abstain, conformal, density, combined, digest, pvalues, density_fit)


def _parse_weights(where: str, obj: Any, parts: list, rule: str) -> Optional[Tuple[float, ...]]:
    """The ``weighted`` rule's ``{part: weight}`` as a tuple in the order of ``parts`` (None otherwise)."""
    if rule != "weighted":
        if obj is not None:
            raise _fail(where, f"weights are only for the 'weighted' rule, not {rule!r}")
        return None
    if not isinstance(obj, dict):
        raise _fail(where, f"the 'weighted' rule needs an object {{part: weight}} for the parts {parts}, got {obj!r}")
    unknown = [k for k in obj if k not in parts]
    if unknown:
        raise _fail(where, f"names parts that are not in pvalues.parts {parts}: {unknown}")
    missing = [p for p in parts if p not in obj]
    if missing:
        raise _fail(where, f"lacks the weight of {missing} (one per part of {parts})")
    out = tuple(_num(f"{where}.{p}", obj[p], 0, open_lo=True) for p in parts)
    try:
        check_weights(out, len(parts))      # the same check as the combination's (sum to 1 within tolerance)
    except InputError as exc:
        raise _fail(where, str(exc)) from None
    return out


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
    if cal.pvalues is not None:
        pv = cal.pvalues
        out["pvalues"] = {"file": pv.file, "parts": list(pv.parts), "rule": pv.rule, "mondrian": pv.mondrian,
                          "level": pv.level, "n": pv.n, "pooled_classes": list(pv.pooled_classes)}
        if pv.weights is not None:
            if len(pv.weights) != len(pv.parts):
                raise _fail(f"{SECTION}.pvalues.weights", f"{len(pv.weights)} weights for the {len(pv.parts)} parts "
                            f"{list(pv.parts)}")
            out["pvalues"]["weights"] = {p: float(v) for p, v in zip(pv.parts, pv.weights)}
    if cal.density_fit is not None:
        df = cal.density_fit
        out["density_fit"] = {"n": df.n, "source": df.source, "windows_sha256": df.windows_sha256,
                              "checked_against": df.checked_against, "overlap": df.overlap,
                              "overlap_allowed": df.overlap_allowed}
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


def save_pvalue_scores(path: Any, scores: Mapping[str, np.ndarray], predicted: np.ndarray, num_classes: int,
                       min_per_class: int) -> Tuple[Any, Tuple[int, ...]]:
    """Write the sorted calibration scores of each part (pooled and per predicted class) to ``path``
    (npz); classes with fewer than ``min_per_class`` calibration windows are left out (pooled).
    Returns (path, pooled classes)."""
    import io

    pred = np.asarray(predicted).reshape(-1)
    counts = np.bincount(pred, minlength=num_classes)
    pooled = tuple(int(k) for k in range(num_classes) if counts[k] < min_per_class)
    arrays: Dict[str, np.ndarray] = {}
    for part, v in scores.items():
        v = np.asarray(v, dtype=np.float64).reshape(-1)
        if v.shape != pred.shape or not np.all(np.isfinite(v)):
            raise InputError(f"calibration scores of {part!r} must be {pred.size} finite numbers")
        arrays[part] = np.sort(v)
        for k in range(num_classes):
            if k not in pooled:
                arrays[f"{part}__c{k}"] = np.sort(v[pred == k])
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    from pathlib import Path

    Path(path).write_bytes(buf.getvalue())
    return path, pooled


def load_pvalue_scores(path: Any, section: PValueSection, num_classes: int) -> Dict[str, Tuple[list, np.ndarray]]:
    """part -> (per-class sorted calibration scores or None (pooled), pooled scores)."""
    out: Dict[str, Tuple[list, np.ndarray]] = {}
    try:
        with np.load(path, allow_pickle=False) as z:
            for part in section.parts:
                if part not in z.files:
                    raise BundleError(f"p-value file {str(path)!r} lacks the array {part!r}")
                per = []
                for k in range(num_classes):
                    key = f"{part}__c{k}"
                    if not section.mondrian or k in section.pooled_classes:
                        per.append(None)
                    elif key not in z.files:
                        raise BundleError(f"p-value file {str(path)!r} lacks the array {key!r}")
                    else:
                        per.append(np.asarray(z[key], dtype=np.float64))
                pooled = np.asarray(z[part], dtype=np.float64)
                for a in [pooled, *[v for v in per if v is not None]]:
                    if a.size == 0 or not np.all(np.isfinite(a)):
                        raise BundleError(f"p-value file {str(path)!r}: {part!r} scores are empty or not finite")
                out[part] = (per, pooled)
    except (OSError, ValueError) as exc:
        raise BundleError(f"cannot read p-value file {str(path)!r}: {exc}") from None
    return out


def _pvalues_sorted(c: np.ndarray, s: np.ndarray) -> np.ndarray:
    """:func:`~edgeuq_runtime.conformal.conformal_pvalues` against calibration scores ``c`` already
    sorted (same values, NaN included: a NaN score counts as beyond every calibration score)."""
    nan = np.isnan(s)
    ge = c.size - np.searchsorted(c, np.where(nan, np.inf, s), side="left")
    if nan.any():
        ge = np.where(nan, 0, ge)
    return (1.0 + ge) / (c.size + 1.0)


#: largest (classes x distinct calibration scores) of a part's :func:`_rank_table` (8 bytes each)
RANK_TABLE_MAX = 1 << 21


def _rank_table(per: list) -> Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Mondrian p-values of any rows in one lookup: ``(values, below, sizes)`` with ``values`` the
    distinct calibration scores of all classes (sorted), ``below[k, i]`` the number of class ``k``'s
    scores ``<= values[i - 1]`` (``below[k, 0] = 0``) and ``sizes[k]`` its number of scores. For a
    score ``s`` and ``i = searchsorted(values, s, "left")``, the class-``k`` scores below ``s`` are
    exactly those ``<= values[i - 1]`` (every calibration score is one of ``values``), so
    ``sizes[k] - below[k, i]`` counts those ``>= s``: the ``ge`` of :func:`_pvalues_sorted` against
    ``per[k]``. NaN and +inf scores (searched as +inf) give ``i = len(values)``, ``ge = 0``, as
    there. None when the table would exceed :data:`RANK_TABLE_MAX` entries (rows are then ranked
    per class)."""
    values = np.unique(np.concatenate(per))
    if len(per) * (values.size + 1) > RANK_TABLE_MAX:
        return None
    below = np.zeros((len(per), values.size + 1), dtype=np.int64)
    for k, c in enumerate(per):
        below[k, 1:] = np.searchsorted(c, values, side="right")
    return values, below, np.array([c.size for c in per], dtype=np.int64)


class Calibrated:
    """A bundle's calibration ready to use: density model loaded, scores and abstention."""

    def __init__(self, cal: Calibration, density: Optional[GaussianDensity] = None,
                 pvalue_scores: Optional[Dict[str, Tuple[list, np.ndarray]]] = None) -> None:
        self.cal = cal
        self.density = density
        self.pvalue_scores = pvalue_scores
        if cal.density is not None and density is None:
            raise BundleError("calibration declares a density model but none was loaded")
        if density is not None and cal.density is not None and density.dim != cal.density.dim:
            raise BundleError(f"density file has dimension {density.dim}, calibration.density.dim says "
                              f"{cal.density.dim}")
        if cal.pvalues is not None and (pvalue_scores is None or set(pvalue_scores) != set(cal.pvalues.parts)):
            raise BundleError("calibration declares p-values but their calibration scores were not loaded")
        # sorted once here, so that a window's p-values are one binary search per score (a stream's
        # hot path) instead of a sort of the calibration scores per call
        self._sorted: Dict[str, Tuple[list, np.ndarray]] = {}
        self._ranks: Dict[str, Tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for part, (per, pooled) in (pvalue_scores or {}).items():
            ps = np.sort(np.asarray(pooled, dtype=np.float64).ravel())
            self._sorted[part] = ([ps if v is None else np.sort(np.asarray(v, dtype=np.float64).ravel())
                                   for v in per], ps)
            if cal.pvalues is not None and cal.pvalues.mondrian:
                table = _rank_table(self._sorted[part][0])
                if table is not None:
                    self._ranks[part] = table

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
        pv = None
        if cal.pvalues is not None:
            if cal.pvalues.file not in bundle.manifest.files:
                raise BundleError(f"calibration.pvalues.file {cal.pvalues.file!r} is not listed (hashed) in the "
                                  "manifest's files")
            pv = load_pvalue_scores(bundle.path(cal.pvalues.file), cal.pvalues, bundle.manifest.num_classes)
        return cls(cal, dens, pv)

    def density_score(self, features: np.ndarray) -> Optional[np.ndarray]:
        if self.density is None:
            return None
        return self.density.score(features, self.cal.density.pooling)

    def pvalues(self, epistemic: np.ndarray, total: Optional[np.ndarray], density: Optional[np.ndarray],
                prediction: Optional[np.ndarray]) -> Optional[Dict[str, np.ndarray]]:
        """Conformal p-value of every part of the p-value rule (None without a ``pvalues`` section)."""
        pv = self.cal.pvalues
        if pv is None:
            return None
        given = {"epistemic": epistemic, "total": total, "density": density}
        out = {}
        groups = None
        if pv.mondrian:
            if prediction is None:
                raise InputError("Mondrian p-values need the predicted class")
            g = np.asarray(prediction).reshape(-1)
            k = len(self._sorted[pv.parts[0]][0])
            if g.size and (not np.issubdtype(g.dtype, np.integer) or g.min() < 0 or g.max() >= k):
                raise InputError(f"groups must be {g.size} integers in [0, {k}), got {g!r:.80}")
            groups = g.tolist()
        for part in pv.parts:
            v = given[part]
            if v is None:
                raise InputError(f"the p-value rule needs the {part!r} score")
            per, pooled = self._sorted[part]
            v = np.asarray(v, dtype=np.float64).reshape(-1)
            if groups is None:
                out[part] = _pvalues_sorted(pooled, v)
            elif v.shape != g.shape:
                raise InputError(f"the {part!r} scores must be one per predicted class ({g.size}), got {v.size}")
            elif part in self._ranks:   # every row at once, whatever its class (see _rank_table)
                values, below, sizes = self._ranks[part]
                i = values.searchsorted(np.where(np.isnan(v), np.inf, v), side="left")
                n = sizes[g]
                out[part] = (1.0 + (n - below[g, i])) / (n + 1.0)
            elif len(set(groups)) == 1:
                out[part] = _pvalues_sorted(per[groups[0]], v)
            elif len(groups) <= 16:
                # one binary search per row against its class's sorted scores (rows are few in a stream)
                out[part] = np.array([_pvalues_sorted(per[k], v[i:i + 1])[0] for i, k in enumerate(groups)])
            else:
                res = np.empty_like(v)
                for k in set(groups):
                    m = g == k
                    res[m] = _pvalues_sorted(per[k], v[m])
                out[part] = res
        return out

    def combined_pvalue(self, parts: Mapping[str, np.ndarray]) -> np.ndarray:
        pv = self.cal.pvalues
        return combine_pvalues(np.stack([parts[p] for p in pv.parts], axis=1), pv.rule, pv.weights)

    def combined_score(self, epistemic: np.ndarray, density: Optional[np.ndarray], total: Optional[np.ndarray] = None,
                       prediction: Optional[np.ndarray] = None,
                       parts: Optional[Mapping[str, np.ndarray]] = None) -> Optional[np.ndarray]:
        """With a ``pvalues`` section: ``-log10`` of the combined p-value (higher = more unusual);
        else the older ``max(z_mi, z_density)`` of the ``combined`` section. ``parts``: the
        :meth:`pvalues` of these same inputs, when the caller has them already."""
        if self.cal.pvalues is not None:
            if parts is None:
                parts = self.pvalues(epistemic, total, density, prediction)
            return -np.log10(self.combined_pvalue(parts))
        cb = self.cal.combined
        if cb is None:
            return None
        z = (np.log(np.asarray(epistemic, dtype=np.float64) + MI_EPS) - cb.mi_log_mean) / cb.mi_log_std
        if density is not None and cb.density_mean is not None:
            z = np.maximum(z, (np.asarray(density, dtype=np.float64) - cb.density_mean) / cb.density_std)
        return z

    def fired(self, parts: Mapping[str, np.ndarray], combined: Optional[np.ndarray] = None) -> list:
        """Per input, the parts whose p-value makes the rule abstain (empty: no abstention).
        ``min``: every part with ``K p_k <= level``; ``weighted``: every part with ``p_k / w_k <= level``;
        ``fisher``: the smallest-p part when the combined p-value is ``<= level``. ``combined``: :meth:`combined_pvalue` of these ``parts``,
        when the caller has it already."""
        pv = self.cal.pvalues
        P = np.stack([parts[p] for p in pv.parts], axis=1)
        comb = combine_pvalues(P, pv.rule, pv.weights) if combined is None else np.asarray(combined).reshape(-1)
        if comb.shape != (P.shape[0],):
            raise InputError(f"combined p-values must have shape ({P.shape[0]},), got {comb.shape}")
        out = []
        for i in range(P.shape[0]):
            if not comb[i] <= pv.level:
                out.append([])
            elif pv.rule == "min":
                out.append([p for j, p in enumerate(pv.parts) if len(pv.parts) * P[i, j] <= pv.level])
            elif pv.weights is not None:
                out.append([p for j, p in enumerate(pv.parts) if P[i, j] / pv.weights[j] <= pv.level])
            else:
                out.append([pv.parts[int(np.argmin(P[i]))]])
        return out

    def abstain_reasons(self, set_size: Optional[np.ndarray], epistemic: np.ndarray,
                        density: Optional[np.ndarray], total: Optional[np.ndarray] = None,
                        prediction: Optional[np.ndarray] = None,
                        parts: Optional[Mapping[str, np.ndarray]] = None,
                        combined: Optional[np.ndarray] = None) -> list:
        """Per input, the list of reasons to abstain (empty: answer): ``set_size`` (the conformal
        set is not one class); then, with a ``pvalues`` section, ``pvalue:<part>`` for each score
        that fired the combined conformal test; without one, ``epistemic`` / ``density`` (above
        its threshold; the two thresholds are calibrated jointly so that their union meets the
        false-alarm rate). The combined score's threshold is stored for evaluation and alarms.
        ``parts`` / ``combined``: :meth:`pvalues` and :meth:`combined_pvalue` of these inputs, when the
        caller has them already (``combined`` is used only with ``parts``)."""
        ab = self.cal.abstain
        n = len(epistemic)
        out = [[] for _ in range(n)]
        if self.cal.pvalues is not None:
            checks = [("set_size", None if set_size is None else (np.asarray(set_size) != 1))]
        else:
            checks = [("set_size", None if set_size is None else (np.asarray(set_size) != 1)),
                      ("epistemic", None if ab.epistemic is None else np.asarray(epistemic) > ab.epistemic),
                      ("density", None if (ab.density is None or density is None) else density > ab.density)]
        for name, flags in checks:
            if flags is None:
                continue
            for i in np.flatnonzero(flags):
                out[i].append(name)
        if self.cal.pvalues is not None:
            if parts is None:   # ``parts``: the pvalues of these inputs, when the caller has them already
                parts, combined = self.pvalues(epistemic, total, density, prediction), None
            for i, fired in enumerate(self.fired(parts, combined)):
                out[i].extend(f"pvalue:{p}" for p in fired)
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
    if cal.pvalues is not None:
        pv = cal.pvalues
        shown = (pv.parts if pv.weights is None else
                 [f"{p} (w {v:.3g})" for p, v in zip(pv.parts, pv.weights)])
        lines.append(f"device rule: abstain when the {pv.rule} combination of conformal p-values of "
                     f"{'/'.join(shown)} ({'Mondrian by predicted class' if pv.mondrian else 'marginal'}, "
                     f"n={pv.n}) is <= {pv.level:g}")
    if cal.density_fit is not None:
        df = cal.density_fit
        lines.append(f"density fitted on {df.n} windows ({df.source}); {df.overlap} of {df.checked_against} "
                     f"calibration windows among them")
    return tuple(lines)
