"""Run deployed models (bundles, or checkpoints exported to bundles) through the shift suite.

Per model: the bundle is copied and calibrated through the device runtime with the protocol's
data -- density fitted on the *training* windows, conformal sets and p-values on the *cal*
windows (in-distribution only) -- then the device rule (which scores' p-values, combined how) is
picked on the *validation* sets (val windows vs. the validation shifts, none of them reported)
from every subset of {MI, total entropy, density} with the combinations of
``SuiteOptions.device_rules`` (:mod:`edgeuq.calibrate.rule`: Bonferroni ``min`` by default; ``weighted``
adds weighted Bonferroni candidates); a single score is a candidate, so on validation the pick is
never worse than its best part. Then every set is scored
with every score side by side: MI, total entropy, density, the old ``max z`` combination, the
min-p and Fisher combinations of all three, and the device rule (its abstentions as the stream's
``Diagnoser`` decides them: quality flags, conformal set size, the p-value rule).
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from edgeuq_runtime import UncertaintyRuntime
from edgeuq_runtime.calibration import Calibrated
from edgeuq_runtime.conformal import combine_pvalues, conformal_pvalues
from edgeuq_runtime.preprocess import zscore_windows
from edgeuq_runtime.stream.quality import window_flags

from ..calibrate import CalibrationOptions, calibrate_bundle, score_windows
from ..calibrate.rule import pick_rule, rule_candidates, set_device_rule
from ..uq import auroc, fpr_at_95_tpr
from .protocol import ProtocolData, assert_leak_free
from .sets import ShiftSet, Skipped

__all__ = ["SuiteOptions", "evaluate_model", "pick_rule", "set_device_rule", "SCORE_NAMES", "rule_candidates"]

Log = Callable[[str], None]
#: the scores reported side by side (higher = more unusual)
SCORE_NAMES = ("mi", "total", "density", "maxz", "min_p", "fisher_p", "device", "device_marginal")


@dataclass(frozen=True)
class SuiteOptions:
    samples: Optional[int] = None     # S (default: the manifest's)
    alpha: float = 0.05               # conformal sets
    false_alarm_rate: float = 0.05    # the device rule's level
    seed: int = 0
    progress: bool = False
    # combinations the device rule may use (min: FAR guaranteed; "weighted" adds weighted Bonferroni candidates,
    # edgeuq.calibrate.rule.rule_candidates)
    device_rules: Tuple[str, ...] = ("min",)


def _scores(rt: UncertaintyRuntime, cal: Calibrated, x: np.ndarray, s: int, seed: int) -> Dict[str, np.ndarray]:
    """Every score of windows ``x``; ``cal`` holds the p-value calibration of every part."""
    sc = score_windows(rt, x, s, seed, calibrated=cal)
    pred = sc.prediction
    pv_all = cal.pvalues(sc.epistemic, sc.total, sc.density, pred)
    given = {"epistemic": sc.epistemic, "total": sc.total, "density": sc.density}
    pv_marg = {p: conformal_pvalues(cal.pvalue_scores[p][1], given[p]) for p in pv_all}
    legacy = Calibrated(dataclasses.replace(cal.cal, pvalues=None), cal.density).combined_score(sc.epistemic,
                                                                                                 sc.density)
    P = np.stack([pv_all[p] for p in pv_all], 1)
    flags = [window_flags(w) for w in x]
    sets = cal.cal.conformal.sets(sc.probs, rng=np.random.default_rng(seed + 7))
    return {"probs": sc.probs, "pred": pred, "mi": sc.epistemic, "total": sc.total, "density": sc.density,
            "maxz": legacy, "min_p": -np.log(combine_pvalues(P, "min")),
            "fisher_p": -np.log(combine_pvalues(P, "fisher")),
            "pv": pv_all, "pv_marginal": pv_marg, "flags": flags, "set_size": sets.sum(1)}


def _device(cal: Calibrated, sc: Dict[str, Any]) -> Tuple[np.ndarray, np.ndarray, np.ndarray, List[List[str]]]:
    """Device score (-log combined p of the chosen rule), abstain (any reason), abstain by the p-value
    rule, and the reasons -- as :class:`edgeuq_runtime.stream.Diagnoser` decides."""
    pv = {p: sc["pv"][p] for p in cal.cal.pvalues.parts}
    score = -np.log(cal.combined_pvalue(pv))
    sc["device_marginal"] = -np.log(cal.combined_pvalue({p: sc["pv_marginal"][p] for p in cal.cal.pvalues.parts}))
    fired = cal.fired(pv)
    reasons = []
    for i, f in enumerate(sc["flags"]):
        r = list(f)
        if sc["set_size"][i] != 1:
            r.append("set_size")
        r += [f"pvalue:{p}" for p in fired[i]]
        reasons.append(r)
    abstain = np.array([bool(r) for r in reasons])
    by_rule = np.array([bool(f) for f in fired])
    return score, abstain, by_rule, reasons


def _count_reasons(reasons: List[List[str]]) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for rs in reasons:
        for r in rs:
            out[r] = out.get(r, 0) + 1
    return out


def evaluate_model(name: str, bundle_dir: Path, data: ProtocolData, sets: Sequence[Union[ShiftSet, Skipped]],
                   workdir: Path, options: SuiteOptions = SuiteOptions(), log: Log = print) -> Dict[str, Any]:
    """Calibrate a copy of ``bundle_dir`` on the protocol's data, pick the device rule on validation,
    score every set; returns the JSON-ready result of this model."""
    o = options
    work = Path(workdir)
    dest = work / "bundle"
    if dest.exists():
        shutil.rmtree(dest)
    rt0 = UncertaintyRuntime(Path(bundle_dir))
    if tuple(rt0.class_names) != tuple(data.class_names):
        raise ValueError(f"{name}: bundle classes {rt0.class_names} differ from the protocol's {data.class_names}")
    if rt0.manifest.input.length != data.window or float(rt0.manifest.input.sample_rate_hz) != data.fs:
        raise ValueError(f"{name}: bundle input {rt0.manifest.input.length} samples at "
                         f"{rt0.manifest.input.sample_rate_hz} Hz, protocol data {data.window} at {data.fs}")
    evaluated = {s.name: _as_ds(s, data) for s in sets if isinstance(s, ShiftSet)}
    assert_leak_free(data, evaluated)
    s = int(o.samples or rt0.default_samples)
    res = calibrate_bundle(Path(bundle_dir), zscore_windows(data.cal.x), data.cal.y, zscore_windows(data.train.x),
                           data.train.y, CalibrationOptions(alpha=o.alpha, false_alarm_rate=o.false_alarm_rate,
                                                            samples=s, seed=o.seed,
                                                            fit_source=f"shift-suite training windows: "
                                                                       f"{data.describe()}"),
                           out_dir=dest, progress=o.progress, log=log)
    rt = UncertaintyRuntime(dest, seed=o.seed)
    cal = Calibrated.from_bundle(rt.bundle)      # the p-values of every part (the device rule picks some)
    parts = tuple(cal.cal.pvalues.parts)
    # --- pick the device rule on validation data
    val_sc = _scores(rt, cal, data.val.x, s, o.seed + 100)
    vsets = [x for x in sets if isinstance(x, ShiftSet) and x.kind == "validation"]
    v_out = [_scores(rt, cal, x.x, s, o.seed + 101 + i) for i, x in enumerate(vsets)]
    if v_out:
        p_out = {p: np.concatenate([v["pv"][p] for v in v_out]) for p in parts}
        pick = pick_rule(val_sc["pv"], p_out, parts, o.device_rules)
        chosen, rule, weights, table = pick.parts, pick.rule, pick.weights, pick.table
    else:
        chosen, rule, weights, table = parts, "min", None, []
    set_device_rule(dest, chosen, rule, weights)
    rt = UncertaintyRuntime(dest, seed=o.seed)
    cal2 = Calibrated.from_bundle(rt.bundle)     # as the device loads it
    log(f"{name}: device rule = {rule} of {'/'.join(chosen)} (validation AUROC "
        f"{max((r['auroc'] for r in table), default=float('nan')):.4f})")
    # --- in-distribution reference
    ref = _scores(rt, cal, data.test.x, s, o.seed + 200)
    ref_dev, ref_abs, ref_rule, ref_reasons = _device(cal2, ref)
    ref["device"] = ref_dev
    acc_ref = float(np.mean(ref["pred"] == data.test.y))
    rows_gen = [{"model": name, "shift": "in-distribution test (time-disjoint)", "n": int(len(data.test)),
                 "accuracy": acc_ref, "abstain": float(ref_abs.mean()), "abstain_rule": float(ref_rule.mean()),
                 "reasons": _count_reasons(ref_reasons)}]
    rows_flag, skipped = [], []
    for i, st in enumerate(sets):
        if isinstance(st, Skipped):
            skipped.append({"model": name, "shift": st.name, "kind": st.kind, "reason": st.reason})
            continue
        if st.kind == "validation":
            continue
        sc = _scores(rt, cal, st.x, s, o.seed + 300 + i)
        dev, ab, by_rule, reasons = _device(cal2, sc)
        sc["device"] = dev
        known = st.y >= 0
        row: Dict[str, Any] = {"model": name, "shift": st.name, "kind": st.kind, "n": int(len(st)),
                               "records": len(st.records), "description": st.description,
                               "accuracy": float(np.mean(sc["pred"][known] == st.y[known])) if known.any() else None,
                               "abstain": float(ab.mean()), "abstain_rule": float(by_rule.mean()),
                               "reasons": _count_reasons(reasons)}
        if st.kind in ("flag", "control"):
            for k in SCORE_NAMES:
                row[f"auroc_{k}"] = float(auroc(ref[k], sc[k]))
                row[f"fpr95_{k}"] = float(fpr_at_95_tpr(ref[k], sc[k]))
            rows_flag.append(row)
        else:
            rows_gen.append(row)
    return {"model": name, "bundle": str(bundle_dir), "samples": s, "classes": list(data.class_names),
            "device_rule": {"parts": list(chosen), "rule": rule,
                            **({} if weights is None else {"weights": dict(zip(chosen, weights))}),
                            "level": o.false_alarm_rate,
                            "mondrian": cal2.cal.pvalues.mondrian, "validation": table,
                            "validation_sets": [v.name for v in vsets]},
            "density_fit": dataclasses.asdict(cal2.cal.density_fit) if cal2.cal.density_fit else None,
            "calibration_n": res.calibration.n, "generalise": rows_gen, "flag": rows_flag, "skipped": skipped}


def _as_ds(st: ShiftSet, data: ProtocolData):
    from ..data import WindowDataset

    n = len(st)
    return WindowDataset(st.x, st.y, data.class_names, data.fs, {"record": np.array(["?"] * n)})


def write_json(doc: Mapping[str, Any], path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, allow_nan=True, default=str))
    return path
