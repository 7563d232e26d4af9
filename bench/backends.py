"""Backends on x86, one run: TVM (untuned, tuned) vs ONNX Runtime vs PyTorch on the trunk and head.

    python bench/backends.py [--trials 256] [--samples 16] [--batch 1] [--threads 1] [--repeats 50]

The model is the demo recipe's architecture (bearing-demo: conv patch embedding, d=64,
3 blocks, last block + head stochastic) with random weights (speed does not depend on
training), or ``--checkpoint DIR``. The trunk runs on ``batch`` windows, the head on
``samples * batch`` rows (one S-sample inference). Every backend gets the same inputs
and threads. TVM tuned: MetaSchedule with ``--trials`` new trials per graph, added to
the per-target database under ``<toolchains>/tuning`` (so repeated runs keep improving;
``--trials 0`` only reuses it). Prints medians and ratios to ONNX Runtime.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _median_ms(fn, repeats: int) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="checkpoint directory (default: demo architecture, random weights)")
    p.add_argument("--trials", type=int, default=256, help="new MetaSchedule trials per graph (0: reuse database)")
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--tuning-db", help="folder of per-target databases (default <toolchains>/tuning)")
    a = p.parse_args(argv)
    os.environ.setdefault("TVM_NUM_THREADS", str(a.threads))

    import onnxruntime as ort
    import torch

    from edgeuq.catalog import get_recipe, get_target
    from edgeuq.export import export_onnx
    from edgeuq.lower import lower
    from edgeuq.lower import tvm as _tvm  # noqa: F401  (registers the "tvm" lowering)
    from edgeuq.lower.tvm_check import max_error
    from edgeuq.models import ModelConfig, SignalTransformer
    from edgeuq.report import format_table
    from edgeuq.training import load_checkpoint, save_checkpoint
    from edgeuq_runtime.executors.tvm import load_tvm
    from edgeuq_runtime.noise import sample_noise

    torch.set_num_threads(a.threads)
    work = Path(tempfile.mkdtemp(prefix="edgeuq-bench-"))
    if a.checkpoint:
        ck = load_checkpoint(Path(a.checkpoint))
    else:
        torch.manual_seed(0)
        rec = get_recipe("bearing-demo")
        cfg = ModelConfig.from_dict(rec.model, input_length=int(rec.data["window"]),
                                    num_classes=len(rec.data["classes"]))
        ck = save_checkpoint(SignalTransformer(cfg), work / "ck", tuple(rec.data["classes"]), float(rec.data["fs_hz"]))
    model = ck.load_model().eval()
    art = export_onnx(ck, work / "onnx")
    target = get_target("x86-64")
    db = Path(a.tuning_db) if a.tuning_db else None
    print(f"model: d={model.cfg.d_model} depth={model.cfg.depth} L={model.cfg.input_length}; trunk batch {a.batch}, "
          f"head rows {a.samples * a.batch}; {a.threads} thread(s); tuning +{a.trials} trials per graph", flush=True)
    t0 = time.perf_counter()
    untuned = lower("tvm", art, target, work / "untuned", samples=a.samples, batch=a.batch, check="none",
                    tuning_root=work / "no-db")
    t_untuned = time.perf_counter() - t0
    t0 = time.perf_counter()
    tuned = lower("tvm", art, target, work / "tuned", samples=a.samples, batch=a.batch, tune_trials=a.trials,
                  tuning_root=db, check="none", progress=lambda m: print("  " + m, flush=True))
    t_tuned = time.perf_counter() - t0

    rng = np.random.default_rng(0)
    x = rng.standard_normal((a.batch, art.input_length)).astype(np.float32)
    with torch.no_grad():
        feats = model.trunk(torch.from_numpy(x)).numpy()
    rows_n = a.samples * a.batch
    tiled = np.ascontiguousarray(np.tile(feats, (a.samples,) + (1,) * (feats.ndim - 1)))
    feeds = {"trunk": {art.input_name: x}, "head": {art.feature_name: tiled, **sample_noise(art.noise, rows_n, rng)}}
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = a.threads
    rows = []
    for role in ("trunk", "head"):
        path = art.trunk_path if role == "trunk" else art.head_path
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        ref = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds[role])))
        runs = {"onnxruntime": lambda s=sess, f=feeds[role]: s.run(None, f)}
        for label, res in (("tvm untuned", untuned), ("tvm tuned", tuned)):
            g = getattr(res, role)
            graph = load_tvm(g.file, a.threads, g.options)
            err = max_error(graph.run(feeds[role]), ref)
            runs[label] = lambda gr=graph, f=feeds[role]: gr.run(f)
            if err > 1e-3:
                print(f"WARNING: {label} {role} differs from ONNX Runtime by {err:.3g}")
        tf = {k: torch.from_numpy(v) for k, v in feeds[role].items()}
        with torch.no_grad():
            if role == "trunk":
                runs["pytorch"] = lambda: model.trunk(tf[art.input_name])
            else:
                noise = {s.name: tf[s.name] for s in art.noise}
                runs["pytorch"] = lambda: model.head_forward(tf[art.feature_name], noise)
            ms = {k: _median_ms(fn, a.repeats) for k, fn in runs.items()}
        for k, v in ms.items():
            rows.append([role, k, round(v, 3), round(v / ms["onnxruntime"], 2)])
    print()
    print(format_table(("graph", "backend", "median ms", "x ONNX Runtime"), rows))
    print(f"\ncompile: untuned {t_untuned:.1f} s; tuned {t_tuned:.1f} s ({tuned.metadata['tuning']}; "
          + ", ".join(f"{r}: {m['tuning'].get('records', 0)} records" for r, m in tuned.metadata["graphs"].items())
          + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
