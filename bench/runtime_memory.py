"""Peak and retained memory (RSS) of one large UncertaintyRuntime call, and per-call latency.

Builds a small bundle (onnx.helper graphs sized like the demo model's head: a 1024-sample
window, 64 features, 4 classes, a dropout mask), then in a fresh process per configuration:

    RSS after load -> one call of B windows x S samples -> RSS after the call (retained),
    peak RSS during the call (ru_maxrss), and the median latency of a small call (B=1, S=16).

Configurations compare ONNX Runtime's CPU arena kept at its peak (ORT's default) with the
runtime's arena shrinkage after runs of >= 256 rows, at max_batch 4096 (the old default) and
1024 (the new one). Prints one table; numbers are measured in this run (timings on a shared
machine are noisy).

    python bench/runtime_memory.py [--batch 256] [--samples 16] [--json results/runtime_memory.json]

(``--json`` writes the table for ``scripts/render_tables.py``, rendered in runtime/README.md.)
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

L, F, C, H = 1024, 64, 4, 256


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def build(root: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgeuq_runtime import GraphSpec, InputSpec, Manifest, NoiseSpec, write_bundle

    rng = np.random.default_rng(0)
    vi = helper.make_tensor_value_info

    def save(nodes, name, ins, outs, inits, path):
        m = helper.make_model(helper.make_graph(nodes, name, ins, outs, initializer=inits),
                              opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        onnx.save(m, str(path))
        return path

    t = save([helper.make_node("MatMul", ["signal", "W"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
              helper.make_node("MatMul", ["r", "W2"], ["features"])], "trunk",
             [vi("signal", TensorProto.FLOAT, ["B", L])], [vi("features", TensorProto.FLOAT, ["B", F])],
             [numpy_helper.from_array(rng.standard_normal((L, H)).astype(np.float32) / 32, "W"),
              numpy_helper.from_array(rng.standard_normal((H, F)).astype(np.float32) / 16, "W2")], root / "t.onnx")
    h = save([helper.make_node("Mul", ["features", "mask_0"], ["m"]), helper.make_node("MatMul", ["m", "U"], ["u"]),
              helper.make_node("Relu", ["u"], ["v"]), helper.make_node("MatMul", ["v", "V"], ["logits"])], "head",
             [vi("features", TensorProto.FLOAT, ["N", F]), vi("mask_0", TensorProto.FLOAT, ["N", F])],
             [vi("logits", TensorProto.FLOAT, ["N", C])],
             [numpy_helper.from_array(rng.standard_normal((F, H)).astype(np.float32) / 8, "U"),
              numpy_helper.from_array(rng.standard_normal((H, C)).astype(np.float32) / 16, "V")], root / "h.onnx")
    m = Manifest(model_name="mem-bench", model_version="1", input=InputSpec(length=L, sample_rate_hz=12000.0),
                 class_names=("a", "b", "c", "d"), default_samples=16,
                 noise=(NoiseSpec("mask_0", "dropout_mask", (F,), {"p": 0.1}),),
                 trunk=GraphSpec("trunk.onnx", ("signal",), ("features",)),
                 head=GraphSpec("head.onnx", ("features", "mask_0"), ("logits",)),
                 feature_name="features", logits_name="logits")
    return write_bundle(root / "bundle", m, {"trunk.onnx": t, "head.onnx": h}).root


def child(bundle: str, shrink: bool, max_batch: int, batch: int, samples: int) -> dict:
    import edgeuq_runtime.executors.onnxruntime as ortx
    from edgeuq_runtime import UncertaintyRuntime

    if not shrink:  # ONNX Runtime's default: the arena keeps whatever the largest run took
        ortx.SHRINK_ROWS = 1 << 62
    rt = UncertaintyRuntime(bundle, threads=1, seed=0, max_batch=max_batch)
    x = np.random.default_rng(1).standard_normal((batch, rt.input_length)).astype(np.float32)
    rt.predict(x[:2], samples=2)
    before = rss_mb()
    t0 = time.perf_counter()
    rt.predict(x, samples=samples)
    big = time.perf_counter() - t0
    after = rss_mb()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times = []
    for _ in range(30):
        t0 = time.perf_counter()
        rt.predict(x[:1], samples=16)
        times.append(time.perf_counter() - t0)
    return {"before": before, "after": after, "peak": peak, "big_s": big,
            "latency_ms": 1e3 * float(np.median(times))}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--bundle", help="measure this bundle (e.g. the demo's) instead of the built one")
    ap.add_argument("--child", nargs=3, metavar=("BUNDLE", "SHRINK", "MAX_BATCH"), help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, help="write the table for scripts/render_tables.py")
    ap.add_argument("--quick", action="store_true", help="the mode recorded in the JSON (the run is already short)")
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.child[0], a.child[1] == "1", int(a.child[2]), a.batch, a.samples)))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from edgeuq.provenance import command_line, start, write_results
    from edgeuq.report import results_table

    prov = start("quick" if a.quick else "full", 1)
    command = command_line("bench/runtime_memory.py", argv)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(a.bundle) if a.bundle else build(Path(tmp))
        rows = []
        for shrink, max_batch in ((False, 4096), (True, 4096), (False, 1024), (True, 1024)):
            out = subprocess.run([sys.executable, __file__, "--batch", str(a.batch), "--samples", str(a.samples),
                                  "--child", str(bundle), "1" if shrink else "0", str(max_batch)],
                                 capture_output=True, text=True, check=True,
                                 env={**os.environ, "OMP_NUM_THREADS": "1"})
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append((("shrink >= 256 rows" if shrink else "keep (ORT default)"), max_batch, r))
    print(f"bundle {a.bundle or 'built (L=1024, 64 features, MLP head)'}: one call of {a.batch} windows x "
          f"S={a.samples}; RSS in MiB; latency: B=1, S=16, median of 30")
    print("runtime defaults: arena shrink on runs >= 256 rows, max_batch 1024 (last row)")
    print(f"{'ORT arena':<20} {'max_batch':>9} {'RSS before':>10} {'RSS after':>9} {'retained':>8} {'peak':>7} "
          f"{'big call s':>10} {'B=1 ms':>7}")
    for name, mb, r in rows:
        print(f"{name:<20} {mb:>9} {r['before']:>10.1f} {r['after']:>9.1f} {r['after'] - r['before']:>8.1f} "
              f"{r['peak']:>7.1f} {r['big_s']:>10.2f} {r['latency_ms']:>7.2f}")
    if a.json:
        table = results_table(
            ["ORT arena", "max_batch", "RSS before MiB", "retained after the call MiB", "peak MiB", "big call s",
             "B=1, S=16 ms"],
            [[name, mb, f"{r['before']:.1f}", f"{r['after'] - r['before']:.1f}", f"{r['peak']:.1f}",
              f"{r['big_s']:.2f}", f"{r['latency_ms']:.2f}"] for name, mb, r in rows],
            note=f"one call of {a.batch} windows x S={a.samples} in a fresh process per row; bundle "
                 f"{a.bundle or 'built here (L=1024, 64 features, MLP head, one dropout mask)'}; latency: "
                 "median of 30 calls")
        write_results(a.json, table, command, prov)
        print(f"table: {a.json}")


if __name__ == "__main__":
    main()
