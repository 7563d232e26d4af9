"""``edgeuq calibrate`` (fit density + conformal + abstention thresholds on the deployed bundle and
rewrite it) and ``edgeuq diagnose`` (stream a signal through the device runtime's streaming loop).

Registered through ``edgeuq.cli._command_modules()``; imports stay inside the commands."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["register"]


def _cmd_calibrate(a: argparse.Namespace) -> int:
    from edgeuq_runtime import UncertaintyRuntime
    from edgeuq_runtime.calibration import calibration_summary

    from ..evaluate import load_eval_inputs
    from .fit import CalibrationOptions, calibrate_bundle

    rt = UncertaintyRuntime(Path(a.bundle))
    cal_in = load_eval_inputs(Path(a.data), rt, fs=a.fs, key=a.key, hop=a.hop, split=a.split)
    if not cal_in.labelled:
        raise ValueError(f"{a.data}: calibration data must be labelled with the bundle's classes")
    x_fit = y_fit = None
    fit_source = ""
    if not a.no_density:
        fit_path = Path(a.fit_data) if a.fit_data else Path(a.data)
        same = fit_path.resolve() == Path(a.data).resolve()
        fit_split = a.fit_split
        if fit_split == "auto":
            fit_split = "train" if same else "all"
        cal_split = a.split
        if cal_split == "auto":
            from ..data.sources import resolve_data_source

            cal_split = "test" if resolve_data_source(Path(a.data)).held_out_split else "all"
        # on the same recordings only the training split (first 70 %) and the test split (last 15 %)
        # are disjoint in time; any other pair overlaps
        if same and {fit_split, cal_split} != {"train", "test"}:
            msg = (f"--fit-data {fit_path} (split {fit_split}) overlaps the calibration windows of --data "
                   f"(split {cal_split}): pass --fit-data with the training recordings, or calibrate on --split test "
                   f"with the density fitted on --fit-split train (time-disjoint)")
            if not a.allow_fit_overlap:
                raise ValueError(msg + " (or --allow-fit-overlap to proceed, recorded in the manifest)")
            print("WARNING: " + msg + " -- proceeding because of --allow-fit-overlap", file=sys.stderr)
        fit_in = load_eval_inputs(fit_path, rt, fs=a.fs, key=a.key, hop=a.hop, split=fit_split)
        if not fit_in.labelled:
            raise ValueError(f"{fit_path}: density fit data must be labelled")
        x_fit, y_fit = fit_in.x, fit_in.y
        fit_source = fit_in.description
        print(f"density fit data: {fit_source}")
    print(f"calibration data: {cal_in.description}")
    opts = CalibrationOptions(alpha=a.alpha, method=a.method, class_conditional=a.class_conditional,
                              false_alarm_rate=a.false_alarm_rate, samples=a.samples, seed=a.seed,
                              density=not a.no_density, combine=a.combine, mondrian=not a.no_mondrian,
                              pvalue_weights=(tuple(float(w) for w in a.pvalue_weights.split(","))
                                              if a.pvalue_weights else None),
                              pvalue_parts=tuple(a.pvalue_parts.split(",")) if a.pvalue_parts else None,
                              allow_fit_overlap=a.allow_fit_overlap, fit_source=fit_source or "none")
    res = calibrate_bundle(Path(a.bundle), cal_in.x, cal_in.y, x_fit, y_fit, opts,
                           out_dir=Path(a.out) if a.out else None, progress=not a.no_progress, log=print)
    pick = _pick_rule(a, res.bundle, cal_in.x) if a.rule_val else None
    cal = res.calibration if pick is None else _read_calibration(res.bundle)
    for line in calibration_summary(cal):
        print("  " + line)
    print(f"bundle rewritten: {res.bundle} (manifest section 'calibration'"
          f"{', density.npz' if res.calibration.density else ''}"
          f"{', pvalues.npz' if res.calibration.pvalues else ''})")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        doc = {**res.to_json(), "data": cal_in.description, "mean_epistemic": float(res.scores.epistemic.mean())}
        if pick is not None:
            from edgeuq_runtime.calibration import calibration_to_json

            doc.update(calibration=calibration_to_json(cal), device_rule=pick.to_json())
        Path(a.json).write_text(json.dumps(doc, indent=2))
        print(f"json: {a.json}")
    return 0


def _read_calibration(root: Path):
    from edgeuq_runtime import load_bundle

    return load_bundle(root).manifest.sections["calibration"]


def _pick_rule(a: argparse.Namespace, root: Path, x_cal):
    """--rule-val / --rule-shift: pick the device rule on validation data and write it into the bundle."""
    import numpy as np

    from edgeuq_runtime import UncertaintyRuntime

    from ..evaluate import load_eval_inputs
    from .fit import window_hashes
    from .rule import RulePickOptions, pick_bundle_rule

    if not a.rule_shift:
        raise ValueError("--rule-val needs --rule-shift (constructed shifted validation data, never a set you report)")
    rt = UncertaintyRuntime(root)
    val = load_eval_inputs(Path(a.rule_val), rt, fs=a.fs, key=a.key, hop=a.hop, allow_unknown=True, split="all")
    same = int(np.isin(window_hashes(val.x), window_hashes(x_cal)).sum())
    if same:
        raise ValueError(f"--rule-val {a.rule_val}: {same} of its inputs are calibration inputs; pick the rule on "
                         "in-distribution data that neither calibrated the bundle nor is reported")
    shifted = {}
    for path in a.rule_shift:
        s = load_eval_inputs(Path(path), rt, fs=a.fs, key=a.key, hop=a.hop, allow_unknown=True, split="all")
        shifted[s.name] = s.x
    print(f"device rule validation: {val.description}; shifted: {', '.join(shifted)}")
    opts = RulePickOptions(rules=tuple(r.strip() for r in a.rule_candidates.split(",") if r.strip()),
                           samples=a.samples, seed=a.seed)
    return pick_bundle_rule(root, val.x, shifted, opts, log=print)


def _cmd_diagnose(a: argparse.Namespace) -> int:
    import numpy as np

    from edgeuq_runtime.stream import ArraySource, Diagnoser, Hysteresis, open_source, run_stream
    from edgeuq_runtime.stream.cli import diagnosis_setup

    rt, diag, (k, n, normal) = diagnosis_setup(a.bundle, a, "diagnose")
    rate = rt.manifest.input.sample_rate_hz
    out = open(a.out, "w") if a.out else sys.stdout
    summaries = []

    def emit(rec):
        if rec.get("type") == "summary":
            summaries.append(rec)
        if not a.quiet or rec.get("type") in ("alarm", "summary"):
            out.write(json.dumps(rec, allow_nan=False, default=str) + "\n")
            out.flush()

    sources = []
    if a.input:
        from ..data import load_signals

        for rec in load_signals(Path(a.input), fs=a.fs, key=a.key, target_fs=rate):
            sig = np.asarray(rec.signal, dtype=np.float32)
            sources.append(ArraySource(sig, rate, realtime=a.realtime,
                                       description=f"{rec.meta.get('record_id', a.input)} (resampled to {rate:g} Hz)"))
    else:
        sources.append(open_source(a.source, rate, realtime=a.realtime, stall_timeout=a.stall_timeout,
                                   max_seconds=a.max_seconds, seed=a.seed))
    try:
        for i, src in enumerate(sources):
            if i:   # every recording is decided as if alone: a fresh diagnoser, the same seed
                diag = Diagnoser(rt, adaptive=a.adaptive, samples=a.samples, seed=a.seed,
                                 use_calibration=not a.no_calibration)
            run_stream(diag, src, emit, hop=a.hop, alarm=Hysteresis(k, n, normal), max_windows=a.max_windows,
                       max_stalls=a.max_stalls)
            src.close()
    finally:
        if a.out:
            out.close()
    for s in summaries:
        print(f"{s['source']}: {s['windows']} windows, {s['abstained']} abstained, {s['late']} late "
              f"(deadline {s['deadline_ms']} ms), mean S {s['mean_samples']}, p50 {s['latency_p50_ms']} ms, "
              f"p99 {s['latency_p99_ms']} ms, {s['alarms']} alarm changes", file=sys.stderr)
    return 0


def register(sub) -> None:
    from edgeuq_runtime.stream.cli import add_diagnosis_arguments

    c = sub.add_parser("calibrate", help="fit density, conformal sets and abstention thresholds on a deployed "
                                         "bundle (through the device runtime) and rewrite the bundle")
    c.add_argument("--bundle", required=True)
    c.add_argument("--data", required=True, help="labelled held-out in-distribution data (CWRU folder or signal "
                                                 "files, as for `edgeuq evaluate`)")
    c.add_argument("--split", default="auto", choices=("auto", "test", "all", "train"),
                   help="which windows of --data (auto: the held-out test split of a CWRU folder, else all)")
    c.add_argument("--fit-data", help="labelled in-distribution data for the density model: the training "
                                      "recordings (default: the training split of --data, first 70 %% in time)")
    c.add_argument("--fit-split", default="auto", choices=("auto", "train", "test", "all"),
                   help="which windows of the fit data (auto: 'train' when it is --data itself, else 'all')")
    c.add_argument("--allow-fit-overlap", action="store_true",
                   help="proceed (with a loud warning, recorded in the manifest) when fit and calibration "
                        "windows overlap; refused by default")
    c.add_argument("--combine", default="min", choices=("min", "weighted", "fisher"),
                   help="how the device combines the conformal p-values of its scores (min = Bonferroni; weighted = "
                        "weighted Bonferroni min_k p_k / w_k with --pvalue-weights)")
    c.add_argument("--pvalue-weights", help="--combine weighted: comma-separated weights, one per --pvalue-parts "
                                            "entry (in its order), each > 0, summing to 1")
    c.add_argument("--pvalue-parts", help="comma-separated scores for the device rule, from epistemic,total,"
                                          "density (default: all available)")
    c.add_argument("--no-mondrian", action="store_true", help="one pool of calibration scores, not per class")
    c.add_argument("--rule-val", metavar="DATA",
                   help="pick the device rule (which scores, min or weighted Bonferroni) on this in-distribution "
                        "validation data (as --data; neither calibration nor fit data, nor anything you report) "
                        "against --rule-shift, and write it into the bundle")
    c.add_argument("--rule-shift", nargs="+", metavar="DATA",
                   help="constructed shifted validation data for --rule-val (files `edgeuq evaluate --ood` reads; "
                        "a text file of one sentence a line for a text bundle); never a held-out set you report")
    c.add_argument("--rule-candidates", default="min,weighted",
                   help="combinations --rule-val may pick: min (Bonferroni), weighted (density weight 0.5-0.95), "
                        "fisher (no false-alarm guarantee under dependence) (default: min,weighted)")
    c.add_argument("--fs", type=float)
    c.add_argument("--key")
    c.add_argument("--hop", type=int)
    c.add_argument("--alpha", type=float, default=0.05, help="conformal miscoverage (sets cover >= 1 - alpha)")
    c.add_argument("--method", default="lac", choices=("lac", "aps"))
    c.add_argument("--class-conditional", action="store_true", help="one conformal threshold per class")
    c.add_argument("--false-alarm-rate", type=float, default=0.05,
                   help="target rate of epistemic/density abstentions on in-distribution data")
    c.add_argument("--samples", type=int, help="S (default: the manifest's)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--no-density", action="store_true", help="no density model")
    c.add_argument("--out", help="write the calibrated bundle here instead of in place")
    c.add_argument("--json")
    c.add_argument("--no-progress", action="store_true")
    c.set_defaults(func=_cmd_calibrate)

    d = sub.add_parser("diagnose", help="diagnose a signal window by window with the device runtime's "
                                        "streaming loop (JSON lines; alarms with hysteresis)")
    d.add_argument("--bundle", required=True)
    g = d.add_mutually_exclusive_group(required=True)
    g.add_argument("--input", help="signal file(s) any `edgeuq` loader reads (.npz/.npy/.csv/.mat), resampled "
                                   "to the bundle's rate")
    g.add_argument("--source", help="a runtime source: file:PATH, stdin:f32|i16, tcp:127.0.0.1:PORT, sim[:KIND]")
    d.add_argument("--fs", type=float)
    d.add_argument("--key")
    d.add_argument("--realtime", action="store_true", help="play at the sample rate (default: as fast as possible)")
    add_diagnosis_arguments(d)
    d.add_argument("--max-windows", type=int)
    d.add_argument("--max-seconds", type=float)
    d.add_argument("--stall-timeout", type=float, default=2.0)
    d.add_argument("--max-stalls", type=int)
    d.add_argument("--no-calibration", action="store_true")
    d.add_argument("--quiet", action="store_true", help="only alarms and summaries")
    d.add_argument("--out", help="write the JSON lines here (default: stdout)")
    d.set_defaults(func=_cmd_diagnose)
