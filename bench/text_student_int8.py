"""int8 weights for a text bundle (ONNX Runtime dynamic quantisation of the trunk: MatMul and
Gather weights int8, activations quantised per call), measured through the device runtime.

    nice -n 10 .venv/bin/python bench/text_student_int8.py --bundle runs/text_student_cut/bundle-laplace \\
        [--json results/text_student_int8.json]

Writes BUNDLE-int8/ (same manifest, trunk.onnx replaced, files re-hashed) and compares it with
the float32 bundle on SST-2 test (accuracy, ECE) and TREC (AUROC of MI, total entropy, the
bundle's density and the calibrated combined score), both through the device runtime with S = 32
and the same seeds. Each bundle is calibrated as deployed (edgeuq.calibrate.calibrate_text_bundle on
a copy): the density on --fit SST-2 training phrases, the combined score's p-values on --calib dev.tsv
phrases; never on the rows scored. ``--rule-from DIR``: a calibrated bundle whose device rule (which
p-values, combined how: ``edgeuq.calibrate.rule``, picked on constructed shifts, never on TREC) both
copies then run too; its AUROC vs TREC is the ``device`` column (the rule is not re-picked here).
``--rule-rows FILE`` instead: each copy picks its own rule (``edgeuq.calibrate.rule.pick_text_rule``) on
the validation rows bench/text_student_cut.py picked the float32 student's on (``OUT/device_rule_rows.json``:
constructed shifts, never TREC, none of them scored here).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "text"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=REPO / "runs" / "text_student_cut" / "bundle")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--fit", type=int, default=2000, help="SST-2 training phrases fitting the density")
    ap.add_argument("--calib", type=int, default=1000, help="SST-2 dev.tsv phrases calibrating the p-values")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rule-from", type=Path,
                    help="a calibrated bundle whose device rule (pvalues parts, rule, weights) the copies also run, "
                         "e.g. bench/text_student_cut.py's OUT/calibrated/student")
    ap.add_argument("--rule-rows", type=Path,
                    help="validation rows (bench/text_student_cut.py's OUT/device_rule_rows.json) on which each copy "
                         "picks its own device rule")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    if a.rule_from is not None and a.rule_rows is not None:
        ap.error("--rule-from and --rule-rows are alternatives: run a given rule, or pick one per copy")
    from edgeuq.provenance import command_line, finish, start, write_results
    from edgeuq.report import results_table

    prov = start("full", 1)
    if not (a.bundle / "manifest.json").is_file() or not (a.data / "sst2" / "test.tsv").is_file():
        print(f"no bundle at {a.bundle} or no SST-2 under {a.data}", file=sys.stderr)
        return 2
    from edgeuq.calibrate.fit import CalibrationOptions, calibrate_text_bundle
    from edgeuq.calibrate.rule import RulePickOptions, load_text_rule_rows, pick_text_rule, set_device_rule
    from edgeuq.calibrate.scores import score_windows
    from edgeuq.data.text import load_sst2, load_trec
    from edgeuq.quantize.dynamic import DYNAMIC_INT8, dynamic_int8_graph
    from edgeuq.uq import auroc, expected_calibration_error
    from edgeuq_runtime import UncertaintyRuntime, load_bundle
    from edgeuq_runtime.bundle import write_bundle
    from edgeuq_runtime.calibration import Calibrated

    rule = None
    if a.rule_from is not None:
        rule = load_bundle(a.rule_from, verify=True).manifest.sections["calibration"].pvalues
        if rule is None:
            print(f"{a.rule_from}: no calibrated p-value rule", file=sys.stderr)
            return 2
    rule_rows = None if a.rule_rows is None else load_text_rule_rows(a.rule_rows)
    b = load_bundle(a.bundle, verify=True)
    out = a.bundle.with_name(a.bundle.name + "-int8")
    with tempfile.TemporaryDirectory(prefix="edgeuq-int8-") as tmp:
        q = Path(tmp) / b.manifest.trunk.file
        dynamic_int8_graph(b.root / b.manifest.trunk.file, q)
        sources = {f: (q if f == b.manifest.trunk.file else b.root / f) for f in b.manifest.files}
        meta = {**dict(b.manifest.metadata), "trunk_weights": DYNAMIC_INT8}
        write_bundle(out, dataclasses.replace(b.manifest, metadata=meta, model_name=b.manifest.model_name + "-int8"),
                     sources, overwrite=True)
    sst = load_sst2(a.data / "sst2")
    trec = load_trec(a.data / "trec", "test")
    test = sst["test"]
    fit_rows = np.random.default_rng(a.seed).permutation(len(sst["train"]))[:a.fit]
    # the dev.tsv rows the student's distill step validated on (its text_student.json) are left out
    summary = a.bundle.parent / "text_student.json"
    seen = set()
    if summary.is_file():
        rec = json.loads(summary.read_text())
        if rec.get("val_split_rows") == len(sst["dev"]):
            seen = set(rec.get("val_row_index", ()))
    free = np.array([i for i in range(len(sst["dev"])) if i not in seen])
    cal_rows = np.random.default_rng(a.seed + 6).permutation(free)[:a.calib]
    fit_texts, fit_y = [sst["train"].texts[i] for i in fit_rows], np.asarray(sst["train"].y)[fit_rows]
    cal_texts, cal_y = [sst["dev"].texts[i] for i in cal_rows], np.asarray(sst["dev"].y)[cal_rows]
    rows = {}
    cal_dir = a.bundle.with_name(a.bundle.name + "-calibrated")     # calibrated copies: float32/, int8/
    for name, root in (("float32", a.bundle), ("int8", out)):
        bb = load_bundle(root, verify=True)
        graphs = [bb.manifest.trunk.file, bb.manifest.head.file]
        _, dropped = calibrate_text_bundle(root, cal_texts, cal_y, fit_texts, fit_y,
                                           CalibrationOptions(samples=a.samples, threads=1, seed=a.seed,
                                                              fit_source=f"SST-2 training phrases (--fit {a.fit})"),
                                           out_dir=cal_dir / name)
        rt = UncertaintyRuntime(cal_dir / name, threads=1, seed=0)
        cal = Calibrated.from_bundle(rt.bundle)
        r = score_windows(rt, rt.tokenize(list(test.texts)), a.samples, seed=3, calibrated=cal)
        o = score_windows(rt, rt.tokenize(list(trec.texts)), a.samples, seed=4, calibrated=cal)

        def au(part):
            v, w = getattr(r, part), getattr(o, part)
            return None if v is None else float(auroc(v, w))

        device, picked = None, None
        if rule_rows is not None:  # this copy's own rule, picked on the validation rows (never on TREC)
            pick = pick_text_rule(cal_dir / name, rule_rows.in_distribution, rule_rows.shifted,
                                  RulePickOptions(samples=a.samples, seed=a.seed, threads=1), log=print)
            picked = pick.to_json()
        if rule is not None or rule_rows is not None:   # the same scores under the rule: -log of its combined p
            if rule is not None:
                set_device_rule(cal_dir / name, rule.parts, rule.rule, rule.weights)
            dcal = Calibrated.from_bundle(load_bundle(cal_dir / name, verify=True))

            def dev(sc):
                return -np.log(dcal.combined_pvalue(dcal.pvalues(sc.epistemic, sc.total, sc.density, sc.prediction)))

            device = float(auroc(dev(r), dev(o)))

        rows[name] = {"acc": float(np.mean(r.prediction == test.y)),
                      "ece": float(expected_calibration_error(r.probs, test.y)),
                      "auroc_trec_mi": au("epistemic"), "auroc_trec_total": au("total"),
                      "auroc_trec_density": au("density"), "auroc_trec_combined": au("combined"),
                      "auroc_trec_device": device,
                      "device_rule": picked if picked is not None else None if rule is None else {
                          "parts": list(rule.parts), "rule": rule.rule,
                          "weights": None if rule.weights is None else list(rule.weights), "from": str(a.rule_from)},
                      "fit_rows": a.fit - dropped, "calibration_rows": len(cal_y),
                      "calibration_excludes_distill_validation_rows": bool(seen),
                      "graph_bytes": int(sum((root / f).stat().st_size for f in graphs)),
                      "bundle_bytes": int(sum((root / f).stat().st_size for f in bb.manifest.files))}
        print(name, rows[name], flush=True)

    def f3(v):
        return "not measured" if v is None else f"{v:.3f}"

    doc = {"what": "int8 trunk weights (ORT dynamic quantisation) vs float32, device runtime, S = %d" % a.samples,
           "bundle": str(a.bundle), "rows": rows,
           "tables": {"text_student_int8": results_table(
               ["weights", "SST-2 acc", "ECE", "AUROC MI (TREC)", "AUROC total H (TREC)", "AUROC density (TREC)",
                "AUROC combined, calibrated (TREC)", "AUROC device rule (TREC)", "graph MB"],
               [[k, f"{v['acc']:.4f}", f"{v['ece']:.4f}", f3(v["auroc_trec_mi"]), f3(v["auroc_trec_total"]),
                 f3(v["auroc_trec_density"]), f3(v["auroc_trec_combined"]), f3(v.get("auroc_trec_device")), f"{v['graph_bytes'] / 1e6:.2f}"]
                for k, v in rows.items()])}}
    if a.json:
        write_results(a.json, doc, command_line("bench/text_student_int8.py", argv), finish(prov))
        print(f"results: {a.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
