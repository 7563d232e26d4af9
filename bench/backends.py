"""Backends on x86, one run: TVM (untuned, tuned) vs ONNX Runtime vs PyTorch on the trunk and head.

    python bench/backends.py [--trials 256] [--samples 16] [--batch 1] [--threads 1] [--repeats 50]
                             [--targets x86-64 host] [--json results/backends.json]

The model is the demo recipe's architecture (bearing-demo: conv patch embedding, d=64,
3 blocks, last block + head stochastic) with random weights (speed does not depend on
training), or ``--checkpoint DIR``. The trunk runs on ``batch`` windows, the head on
``samples * batch`` rows (one S-sample inference). Every backend gets the same inputs
and threads. TVM tuned: MetaSchedule with ``--trials`` new trials per graph, added to
the per-target database under ``<toolchains>/tuning`` (so repeated runs keep improving;
``--trials 0`` only reuses it). ``--targets``: TVM target descriptors to compare in the same
run (``host``: the best host-ISA descriptor for this CPU from /proc/cpuinfo, e.g.
``x86-64-avx512``). Prints medians and ratios to ONNX Runtime.
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="checkpoint directory (default: demo architecture, random weights)")
    p.add_argument("--trials", type=int, default=256, help="new MetaSchedule trials per graph (0: reuse database)")
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--tuning-db", help="folder of per-target databases (default <toolchains>/tuning)")
    p.add_argument("--json", help="also write the table for scripts/render_tables.py (e.g. results/backends.json)")
    p.add_argument("--targets", nargs="+", default=["x86-64"],
                   help="TVM target descriptors (default x86-64; 'host' = detected host ISA)")
    a = p.parse_args(argv)
    os.environ.setdefault("TVM_NUM_THREADS", str(a.threads))

    import onnxruntime as ort
    import torch

    from edgeuq.catalog import get_recipe, get_target
    from edgeuq.export import export_onnx
    from edgeuq.lower import lower
    from edgeuq.lower.tvm.numerics import max_error
    from edgeuq.profile import measure_stages
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
    from edgeuq.lower.tvm.targets import detect_host_target

    names = list(dict.fromkeys(detect_host_target() if t == "host" else t for t in a.targets))
    db = Path(a.tuning_db) if a.tuning_db else None
    print(f"model: d={model.cfg.d_model} depth={model.cfg.depth} L={model.cfg.input_length}; trunk batch {a.batch}, "
          f"head rows {a.samples * a.batch}; {a.threads} thread(s); tuning +{a.trials} trials per graph; "
          f"targets {names}", flush=True)
    builds, compile_s = {}, {}
    for name in names:
        target = get_target(name)
        t0 = time.perf_counter()
        builds[f"tvm untuned {name}"] = lower("tvm", art, target, work / f"untuned-{name}", samples=a.samples,
                                              batch=a.batch, check="none", tuning_root=work / "no-db")
        compile_s[f"tvm untuned {name}"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        tuned = lower("tvm", art, target, work / f"tuned-{name}", samples=a.samples, batch=a.batch,
                      tune_trials=a.trials, tuning_root=db, check="none",
                      progress=lambda m: print("  " + m, flush=True))
        if tuned.metadata["tuning"] == "untuned":   # no trials and no database records: same as the untuned build
            print(f"  {name}: nothing tuned (no trials, no database records): no 'tuned' row")
            continue
        builds[f"tvm tuned {name}"] = tuned
        compile_s[f"tvm tuned {name}"] = time.perf_counter() - t0

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
        for label, res in builds.items():
            g = getattr(res, role)
            graph = load_tvm(g.file, a.threads, g.options)
            err = max_error(graph.run(feeds[role]), ref)
            runs[label] = lambda gr=graph, f=feeds[role]: gr.run(f)
            if not err <= 1e-3:
                print(f"WARNING: {label} {role} differs from ONNX Runtime by {err:.3g}")
        tf = {k: torch.from_numpy(v) for k, v in feeds[role].items()}
        with torch.no_grad():
            if role == "trunk":
                runs["pytorch"] = lambda: model.trunk(tf[art.input_name])
            else:
                noise = {s.name: tf[s.name] for s in art.noise}
                runs["pytorch"] = lambda: model.head_forward(tf[art.feature_name], noise)
            stats = measure_stages(runs, warmup=5, repeats=a.repeats)   # interleaved: drift hits all alike
            ms = {k: stats[k].median_ms for k in runs}
        for k, v in ms.items():
            rows.append([role, k, round(v, 3), round(v / ms["onnxruntime"], 2)])
    print()
    print(format_table(("graph", "backend", "median ms", "x ONNX Runtime"), rows))
    print()
    notes = []
    for label, res in builds.items():
        graphs = res.metadata["graphs"]
        notes.append(f"compile {label}: {compile_s[label]:.1f} s ({res.metadata['tuning']}; "
                     + ", ".join(f"{r}: {m['tuning'].get('records', 0)} records" for r, m in graphs.items()) + ")")
        print(notes[-1])
    if a.json:
        import json
        import platform

        cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                    if l.startswith("model name")), platform.processor())
        argv_s = " ".join(sys.argv[1:]) if argv is None else " ".join(argv)
        doc = {"command": f"python bench/backends.py {argv_s}".strip(),
               "provenance": (f"measured {time.strftime('%Y-%m-%d', time.gmtime())} on {cpu}, {os.cpu_count()} cores "
                              f"(shared), {a.threads} thread(s), one run; trunk {a.batch} window(s), head "
                              f"{rows_n} rows; tuning +{a.trials} trials per graph"),
               "headers": ["graph", "backend", "median ms", "x ONNX Runtime"],
               "rows": [[r[0], r[1], f"{r[2]:.3f}", f"{r[3]:.2f}"] for r in rows],
               "note": "; ".join(notes)}
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
