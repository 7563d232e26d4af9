"""How the text student's density score depends on its fit: fit rows x covariance ridge, chosen on
validation rows, TREC only reported.

    nice -n 10 .venv/bin/python bench/text_density_fit.py --student OUT [--json results/text_density_fit.json]

``OUT``: bench/text_student_cut.py's output folder (its ``bundle`` and ``device_rule_rows.json``: the
validation rows the device rule was picked on -- in-distribution dev phrases and constructed shifts,
never TREC). The student's density columns (manifest ``density_columns``) come from its ONNX trunk;
the density is the runtime's own :func:`edgeuq_runtime.density.fit_density` (tied-covariance Gaussian,
``ridge * trace / d`` on the diagonal) fitted on N SST-2 training phrases (none equal to a test or
validation phrase), scored as the device scores it (``GaussianDensity.score``). Per (N, ridge): the
mean AUROC over the validation shifts (what a choice may use) and the AUROC vs TREC (reported only).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "text"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", type=Path, required=True, help="bench/text_student_cut.py's --out folder")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--rows", type=int, nargs="+", default=[2000, 4000, 8000, 16000])
    ap.add_argument("--ridges", type=float, nargs="+", default=[1e-4, 1e-3, 1e-2, 1e-1])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    from edgeuq.calibrate.rule import RULE_ROWS_FILE, load_text_rule_rows
    from edgeuq.data.text import load_sst2, load_trec
    from edgeuq.provenance import command_line, finish, start, write_results
    from edgeuq.report import results_table
    from edgeuq.uq import auroc
    from edgeuq_runtime import UncertaintyRuntime
    from edgeuq_runtime.density import fit_density

    prov = start("full", 1)
    bundle, rows_file = a.student / "bundle", a.student / RULE_ROWS_FILE
    if not (bundle / "manifest.json").is_file() or not rows_file.is_file():
        print(f"{a.student}: needs bundle/ and {RULE_ROWS_FILE} (bench/text_student_cut.py --out)", file=sys.stderr)
        return 2
    import onnxruntime as ort

    rt = UncertaintyRuntime(bundle, threads=1, seed=0)
    cols = rt.bundle.manifest.metadata.get("density_columns")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(bundle / rt.bundle.manifest.trunk.file), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def feats(texts):
        ids = rt.tokenize(list(texts))
        f = np.concatenate([sess.run(None, {name: ids[i:i + 64]})[0] for i in range(0, len(ids), 64)])
        return f if not cols else f[:, int(cols[0]):int(cols[1])]

    sst = load_sst2(a.data / "sst2")
    trec = load_trec(a.data / "trec", "test")
    rows = load_text_rule_rows(rows_file)
    held = set(sst["test"].texts) | set(rows.in_distribution)
    perm = np.random.default_rng(a.seed).permutation(len(sst["train"]))
    idx = [i for i in perm if sst["train"].texts[i] not in held][:max(a.rows)]
    x_fit, y_fit = feats([sst["train"].texts[i] for i in idx]), np.asarray(sst["train"].y)[idx]
    x_in, x_shift = feats(rows.in_distribution), {k: feats(v) for k, v in rows.shifted.items()}
    x_test, x_trec = feats(sst["test"].texts), feats(trec.texts)
    out = []
    for n in a.rows:
        for ridge in a.ridges:
            g = fit_density(x_fit[:n], y_fit[:n], rt.bundle.manifest.num_classes, ridge=ridge)
            s_in = g.score(x_in)
            per = {k: float(auroc(s_in, g.score(v))) for k, v in x_shift.items()}
            out.append({"fit_rows": min(n, len(idx)), "ridge": ridge, "validation_auroc": float(np.mean(list(per.values()))),
                        "validation_per_set": per, "trec_auroc": float(auroc(g.score(x_test), g.score(x_trec)))})
            print(out[-1], flush=True)
    best = max(out, key=lambda r: r["validation_auroc"])
    doc = {"what": "text student density: fit rows x ridge; picked on validation shifts, TREC reported",
           "student": str(a.student), "density_columns": cols, "rows": out, "picked_on_validation": best,
           "tables": {"text_density_fit": results_table(
               ["fit rows", "ridge", "validation AUROC (mean over constructed shifts)", "TREC AUROC (reported only)"],
               [[f"{r['fit_rows']:,}", f"{r['ridge']:g}", f"{r['validation_auroc']:.4f}", f"{r['trec_auroc']:.4f}"]
                for r in out])}}
    if a.json:
        write_results(a.json, doc, command_line("bench/text_density_fit.py", argv), finish(prov))
        print(f"results: {a.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
