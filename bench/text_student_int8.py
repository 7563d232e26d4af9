"""int8 weights for a text bundle (ONNX Runtime dynamic quantisation of the trunk: MatMul and
Gather weights int8, activations quantised per call), measured through the device runtime.

    nice -n 10 .venv/bin/python bench/text_student_int8.py --bundle runs/text_student_cut/bundle-laplace \\
        [--json results/text_student_int8.json]

Writes BUNDLE-int8/ (same manifest, trunk.onnx replaced, files re-hashed) and compares it with
the float32 bundle on SST-2 test (accuracy, ECE) and TREC (AUROC of MI), both through
UncertaintyRuntime.predict_text with S = 32 and the same seeds.
"""
from __future__ import annotations

import argparse
import dataclasses
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
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    from edgeuq.provenance import command_line, finish, start, write_results
    from edgeuq.report import results_table

    prov = start("full", 1)
    if not (a.bundle / "manifest.json").is_file() or not (a.data / "sst2" / "test.tsv").is_file():
        print(f"no bundle at {a.bundle} or no SST-2 under {a.data}", file=sys.stderr)
        return 2
    from edgeuq.data.text import load_sst2, load_trec
    from edgeuq.quantize.dynamic import DYNAMIC_INT8, dynamic_int8_graph
    from edgeuq.uq import auroc, expected_calibration_error
    from edgeuq_runtime import UncertaintyRuntime, load_bundle
    from edgeuq_runtime.bundle import write_bundle

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
    rows = {}
    for name, root in (("float32", a.bundle), ("int8", out)):
        bb = load_bundle(root, verify=True)
        rt = UncertaintyRuntime(root, threads=1, seed=0)
        r = rt.predict_text(list(test.texts), samples=a.samples, seed=3)
        o = rt.predict_text(list(trec.texts), samples=a.samples, seed=4)
        graphs = [bb.manifest.trunk.file, bb.manifest.head.file]
        rows[name] = {"acc": float(np.mean(r.prediction == test.y)),
                      "ece": float(expected_calibration_error(r.probs, test.y)),
                      "auroc_trec_mi": float(auroc(r.epistemic, o.epistemic)),
                      "auroc_trec_total": float(auroc(r.total, o.total)),
                      "graph_bytes": int(sum((root / f).stat().st_size for f in graphs)),
                      "bundle_bytes": int(sum((root / f).stat().st_size for f in bb.manifest.files))}
        print(name, rows[name], flush=True)
    doc = {"what": "int8 trunk weights (ORT dynamic quantisation) vs float32, device runtime, S = %d" % a.samples,
           "bundle": str(a.bundle), "rows": rows,
           "tables": {"text_student_int8": results_table(
               ["weights", "SST-2 acc", "ECE", "AUROC MI (TREC)", "AUROC total H (TREC)", "graph MB"],
               [[k, f"{v['acc']:.4f}", f"{v['ece']:.4f}", f"{v['auroc_trec_mi']:.3f}",
                 f"{v['auroc_trec_total']:.3f}", f"{v['graph_bytes'] / 1e6:.2f}"] for k, v in rows.items()])}}
    if a.json:
        write_results(a.json, doc, command_line("bench/text_student_int8.py", argv), finish(prov))
        print(f"results: {a.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
