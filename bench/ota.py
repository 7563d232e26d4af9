"""OTA update cost: bytes transferred for a full vs a bsdiff4 delta update, and the time to
verify and install on this machine, measured in one run.

Model: a synthetic two-graph bundle built with onnx.helper (no training): trunk
signal(1024) -> 512 -> 256 features (MatMul+Relu), stochastic head 256 -> 256 -> 4 with a
dropout mask, ~2.9 MB float32. The weights are seeded random, not trained; updates mimic
what changes between releases:

  head-only retrain   head weights moved by a small relative step (1e-3), trunk identical
  quantize (fp32->int8)  every weight int8 + per-tensor scale (DequantizeLinear)
  int8 head retrain   the int8 model's head requantized after the same small step

For each update the device (slots, TUF client, canaries through UncertaintyRuntime) runs
the real installer against a file:// repository, once with deltas and once without;
"fetched" counts every byte the fetcher delivered (metadata + targets). Times are medians
of --repeats installs. The publisher's default publishes a delta only when it is at most
50% of the full archive; here every delta is published so its size can be reported.

    python bench/ota.py [--repeats 3] [--out runs/bench/ota] [--tables-json results/ota.json]
    python bench/ota.py --from-json runs/bench/ota/ota.json --tables-json results/ota.json
                                           # re-render an earlier run's table (its own command and provenance)
    python bench/ota.py --quick ...        # 2 installs per case instead of --repeats (mode quick)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeuq.ota.canaries import add_canaries
from edgeuq.ota.keys import generate_keys
from edgeuq.ota.publish import publish_bundle
from edgeuq.report import format_table
from edgeuq_runtime import GraphSpec, InputSpec, Manifest, NoiseSpec, write_bundle
from edgeuq_runtime.atomic import atomic_write
from edgeuq_runtime.ota import mark_good
from edgeuq_runtime.ota.updater import OtaUpdater, UpdateConfig, provision

L, H, F, C = 1024, 512, 256, 4
BOARD, MODEL = "bench-board", "bench-ota"


def _w(name, arr, int8: bool, nodes, inits):
    """A weight as float32 initializer, or int8 + scale behind DequantizeLinear."""
    if not int8:
        inits.append(numpy_helper.from_array(arr.astype(np.float32), name))
        return name
    scale = np.float32(np.abs(arr).max() / 127.0)
    q = np.clip(np.round(arr / scale), -127, 127).astype(np.int8)
    inits += [numpy_helper.from_array(q, name + "_q"), numpy_helper.from_array(np.array(scale, np.float32), name + "_s")]
    nodes.append(helper.make_node("DequantizeLinear", [name + "_q", name + "_s"], [name]))
    return name


def _save(path: Path, nodes, inputs, outputs, inits):
    g = helper.make_graph(nodes, path.stem, inputs, outputs, initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, str(path))


def build(root: Path, name: str, weights: dict, int8: bool, version: str, windows: np.ndarray) -> Path:
    src = root / f"{name}-src"
    src.mkdir(parents=True)
    vi = helper.make_tensor_value_info
    nodes, inits = [], []
    w1, w2 = _w("W1", weights["W1"], int8, nodes, inits), _w("W2", weights["W2"], int8, nodes, inits)
    nodes += [helper.make_node("MatMul", ["signal", w1], ["h"]), helper.make_node("Relu", ["h"], ["hr"]),
              helper.make_node("MatMul", ["hr", w2], ["features"])]
    _save(src / "trunk.onnx", nodes, [vi("signal", TensorProto.FLOAT, ["B", L])],
          [vi("features", TensorProto.FLOAT, ["B", F])], inits)
    nodes, inits = [], []
    v1, v2 = _w("V1", weights["V1"], int8, nodes, inits), _w("V2", weights["V2"], int8, nodes, inits)
    nodes += [helper.make_node("Mul", ["features", "mask_0"], ["m"]), helper.make_node("MatMul", ["m", v1], ["g"]),
              helper.make_node("Relu", ["g"], ["gr"]), helper.make_node("MatMul", ["gr", v2], ["logits"])]
    _save(src / "head.onnx", nodes, [vi("features", TensorProto.FLOAT, ["N", F]), vi("mask_0", TensorProto.FLOAT, ["N", F])],
          [vi("logits", TensorProto.FLOAT, ["N", C])], inits)
    manifest = Manifest(
        model_name=MODEL, model_version=version, input=InputSpec(length=L, sample_rate_hz=12000.0),
        class_names=("normal", "inner", "outer", "ball"), default_samples=16,
        noise=(NoiseSpec("mask_0", "dropout_mask", (F,), {"p": 0.2}),),
        trunk=GraphSpec("trunk.onnx", ("signal",), ("features",)),
        head=GraphSpec("head.onnx", ("features", "mask_0"), ("logits",)),
        feature_name="features", logits_name="logits", metadata={"created_by": "bench/ota.py"})
    b = write_bundle(root / name, manifest, {"trunk.onnx": src / "trunk.onnx", "head.onnx": src / "head.onnx"}).root
    # int8 changes the outputs: canaries are computed per release, on that release (as publish does)
    add_canaries(b, windows, seed=0, mi_tolerance=0.01)
    return b


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("runs/bench/ota"))
    ap.add_argument("--tables-json", type=Path, help="also write the table for scripts/render_tables.py "
                                                     "(e.g. results/ota.json)")
    ap.add_argument("--from-json", type=Path, metavar="OTA_JSON",
                    help="run nothing: print (and with --tables-json write) the table of an earlier run's ota.json")
    ap.add_argument("--quick", action="store_true", help="2 installs per case (mode quick)")
    a = ap.parse_args(argv)
    if a.from_json is not None:
        return _from_json(a)
    from edgeuq.provenance import command_line, start

    if a.quick:
        a.repeats = min(a.repeats, 2)
    prov = start("quick" if a.quick else "full", 1, note=f"median of {a.repeats} installs per case")
    command = command_line("bench/ota.py", argv)
    rng = np.random.default_rng(0)
    base = {"W1": rng.standard_normal((L, H)) / np.sqrt(L), "W2": rng.standard_normal((H, F)) / np.sqrt(H),
            "V1": rng.standard_normal((F, F)) / np.sqrt(F), "V2": rng.standard_normal((F, C)) / np.sqrt(F)}
    base = {k: v.astype(np.float32) for k, v in base.items()}
    retrained = dict(base)
    for k in ("V1", "V2"):
        retrained[k] = (base[k] * (1 + 1e-3 * rng.standard_normal(base[k].shape))).astype(np.float32)
    retrained2 = dict(retrained)
    for k in ("V1", "V2"):
        retrained2[k] = (retrained[k] * (1 + 1e-3 * rng.standard_normal(base[k].shape))).astype(np.float32)
    windows = rng.standard_normal((8, L)).astype(np.float32)

    rows, results = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rel = {
            1: build(tmp, "r1", base, False, "1.0", windows),
            2: build(tmp, "r2", retrained, False, "1.1", windows),
            3: build(tmp, "r3", retrained, True, "1.1-int8", windows),
            4: build(tmp, "r4", retrained2, True, "1.2-int8", windows),
        }
        throwaway_keys(tmp / "keys")
        repo = tmp / "repo"
        pubs = {1: publish_bundle(rel[1], repo, tmp / "keys", BOARD, delta_max_ratio=1.0)}
        dev = tmp / "dev"
        provision(dev, BOARD, MODEL, repo.as_uri(), (repo / "metadata" / "1.root.json").read_bytes())
        cfg = UpdateConfig(attempts=3, healthy_needed=1, threads=1)
        OtaUpdater(dev, config=cfg).update()
        mark_good(dev)
        scenarios = {2: "fp32 head-only retrain", 3: "quantize fp32 -> int8", 4: "int8 head-only retrain"}
        for n in (2, 3, 4):
            pubs[n] = publish_bundle(rel[n], repo, tmp / "keys", BOARD, delta_max_ratio=1.0)
            delta_path = next(p for p in pubs[n].deltas if p.endswith(f"/r{n - 1}-r{n}.bsdiff"))
            rec = {"update": scenarios[n], "from_release": n - 1, "to_release": n, "full_bytes": pubs[n].full_bytes,
                   "delta_bytes": pubs[n].deltas[delta_path]}
            for mode in ("full", "delta"):
                times, fetched, parts = [], [], []
                for r in range(a.repeats):
                    d = tmp / f"dev-{n}-{mode}-{r}"
                    shutil.copytree(dev, d, symlinks=True)
                    out = OtaUpdater(d, config=UpdateConfig(attempts=3, healthy_needed=1, threads=1,
                                                            delta=(mode == "delta"))).update()
                    assert out["status"] == "installed" and out["delta"] == (mode == "delta"), out
                    times.append(out["seconds"]["total"])
                    fetched.append(out["bytes"])
                    parts.append(out["seconds"])
                    shutil.rmtree(d)
                rec[f"{mode}_fetched_bytes"] = int(statistics.median(fetched))
                rec[f"{mode}_seconds"] = statistics.median(times)
                rec[f"{mode}_seconds_parts"] = {k: statistics.median(p[k] for p in parts) for k in parts[0]}
            results.append(rec)
            # advance the reference device to this release (committed, good)
            assert OtaUpdater(dev, config=cfg).update()["release"] == n
            mark_good(dev)

    hdr, rows = ota_table(results)
    print(format_table(hdr, rows))
    print(f"\n(synthetic two-graph model, {results[0]['full_bytes'] / 1e6:.2f} MB fp32 bundle, seeded weights, not "
          "trained; 'fetched' = metadata + targets; install = TUF refresh + download + verify + canaries + A/B "
          f"write with fsync + flip, median of {a.repeats}; one CPU thread for the canaries; every delta published "
          "here, the publisher's default 50% rule would skip ones above 0.5)")
    for r in results:
        p = r["delta_seconds_parts"]
        print(f"  {r['update']}: delta path download+verify {p['download_verify']:.3f} s, canaries {p['canaries']:.3f} s, "
              f"slot write+commit {p['install']:.3f} s")
    a.out.mkdir(parents=True, exist_ok=True)
    from edgeuq.provenance import finish

    doc = {"model": {"L": L, "H": H, "F": F, "C": C, "weights": "seeded random, not trained"},
           "repeats": a.repeats, "results": results, "command": command, "provenance": finish(prov)}
    atomic_write(a.out / "ota.json", json.dumps(doc, indent=2))
    print(f"wrote {a.out / 'ota.json'}")
    if a.tables_json:
        write_tables_json(doc, a.tables_json)
    return 0


def throwaway_keys(keys: Path) -> Path:
    """Fresh signing keys in ``keys`` (a temporary folder) for a bench's OTA repository: encrypted at
    rest like real ones, with a bench passphrase unless ``$EDGEUQ_OTA_PASSPHRASE`` names one."""
    os.environ.setdefault("EDGEUQ_OTA_PASSPHRASE", "edgeuq-bench-throwaway-keys")
    generate_keys(keys)
    return keys


def ota_table(results):
    """(headers, rows) of the cost table from the ``results`` list of ``ota.json`` (what the run prints)."""
    hdr = ["update", "full tar", "delta", "delta/full", "fetched full", "fetched delta", "fetch ratio",
           "install full s", "install delta s"]
    rows = [[r["update"], f"{r['full_bytes'] / 1e6:.3f} MB", f"{r['delta_bytes'] / 1e6:.3f} MB",
             f"{r['delta_bytes'] / r['full_bytes']:.3f}", f"{r['full_fetched_bytes'] / 1e6:.3f} MB",
             f"{r['delta_fetched_bytes'] / 1e6:.3f} MB", f"{r['delta_fetched_bytes'] / r['full_fetched_bytes']:.3f}",
             f"{r['full_seconds']:.3f}", f"{r['delta_seconds']:.3f}"] for r in results]
    return hdr, rows


def write_tables_json(doc: dict, path: Path) -> Path:
    """The cost table of an ``ota.json`` in scripts/render_tables.py's format (``results/ota.json``),
    with the command and provenance the run recorded."""
    from edgeuq.provenance import write_results
    from edgeuq.report import results_table

    if "command" not in doc or "provenance" not in doc:
        raise SystemExit(f"{path}: the run JSON has no command/provenance record: rerun bench/ota.py")
    hdr, rows = ota_table(doc["results"])
    write_results(path, results_table(hdr, rows), doc["command"], doc["provenance"])
    print(f"tables: {path}")
    return path


def _from_json(a) -> int:
    """Re-render an earlier run's table without installing anything."""
    doc = json.loads(a.from_json.read_text())
    hdr, rows = ota_table(doc["results"])
    for line in ["| " + " | ".join(hdr) + " |", "|" + "|".join("---" for _ in hdr) + "|",
                 *("| " + " | ".join(r) + " |" for r in rows)]:
        print(line)
    if a.tables_json:
        write_tables_json(doc, a.tables_json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
