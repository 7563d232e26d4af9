"""Does tuning through a TVM RPC tracker reach the database quality of tuning on the host?

    python bench/tune_tracker_vs_host.py [--trials 48] [--repeats 200] [--seed 0]
                                         [--json results/tune_tracker_vs_host.json]

The head graph of the default recipe's model (`bearing-demo`, batch = its S samples, static
shapes) is tuned twice with MetaSchedule, the same task set and the same trial count, each into a
fresh database: once with the host runner (`edgeuq compile --tune N`: candidates timed in this
process) and once through a local tracker (`edgeuq compile --tune N --tracker H:P --key K`:
candidates built here, timed by a `tvm.exec.rpc_server` on 127.0.0.1 registered with a
`tvm.exec.rpc_tracker` on 127.0.0.1, both started and stopped here). The two tuning runs go in a
seeded random order. Each tuned module is compiled with its own database into a library
(exported and loaded back), and the two libraries are timed in the same rounds, in a seeded random
order every round, by the runtime's harness (`edgeuq_runtime.harness.compare`): the result is the
paired ratio tracker / host (median of per-round ratios, bootstrap interval). The weights are
untrained (a schedule's speed does not depend on the values).

MetaSchedule's search is random (its seed is fixed, 0, in `edgeuq.lower.tvm.tune`, but the
candidates it keeps depend on measured times, which differ run to run), so two host runs differ
too: a ratio inside the spread of host-vs-host is "the same quality within noise". With
`--host-twice` (default on) a second host tuning run gives that spread in the same bench.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "bearing-demo"
KEY = "edgeuq-bench-tune"


def _head_module(work: Path):
    """(relax module of the head graph at batch S, input specs, S) for the default recipe's model."""
    import torch

    from edgeuq.catalog import get_recipe
    from edgeuq.export import export_onnx
    from edgeuq.lower.tvm.build import graph_io, import_onnx
    from edgeuq.models import ModelConfig, build_model
    from edgeuq.training import save_checkpoint

    rec = get_recipe(RECIPE)
    classes = tuple(rec.data["classes"])
    cfg = ModelConfig.from_dict(rec.model, input_length=int(rec.data["window"]), num_classes=len(classes))
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    ck = save_checkpoint(model, work / "checkpoint", classes, float(rec.data["fs_hz"]))
    art = export_onnx(ck, work / "onnx", model=model)
    samples = int(rec.uq.get("samples", 16))
    inputs, _ = graph_io(art.head_path)
    return import_onnx(art.head_path, inputs, samples), inputs, samples


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=48, help="MetaSchedule trials of each tuning run")
    ap.add_argument("--repeats", type=int, default=200, help="timed rounds of the paired comparison")
    ap.add_argument("--seed", type=int, default=0, help="seed of the run order and of the timing rounds")
    ap.add_argument("--no-host-twice", action="store_true", help="skip the second host run (host-vs-host spread)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)

    import numpy as np
    import tvm
    from tvm import relax

    sys.path.insert(0, str(ROOT / "tests"))
    from rpc_farm import Farm

    from edgeuq.catalog import get_target
    from edgeuq.lower.tvm.targets import detect_host_target, tvm_target
    from edgeuq.lower.tvm.tune import database_size, tune_and_compile
    from edgeuq.provenance import command_line, finish, start, write_results
    from edgeuq.report import results_table
    from edgeuq_runtime.harness import compare

    prov = start("full", 1, packages=("apache-tvm", "torch", "onnx", "onnxruntime"))
    t_bench = time.perf_counter()
    target_name = detect_host_target()
    tt = tvm_target(get_target(target_name), num_cores=1)
    runs = ["host", "tracker"] + ([] if a.no_host_twice else ["host-2"])
    order = list(runs)
    random.Random(a.seed).shuffle(order)
    tuned, info = {}, {}
    with tempfile.TemporaryDirectory(prefix="edgeuq-bench-tune-") as tmp:
        tmp = Path(tmp)
        mod, inputs, samples = _head_module(tmp)
        with Farm() as farm:
            farm.add_servers(KEY, 1)
            for name in order:
                db = tmp / f"db-{name}"
                rpc = (farm.tracker_addr, KEY) if name == "tracker" else None
                t0 = time.perf_counter()
                ex, report = tune_and_compile(mod, tt, db, a.trials, progress=lambda m: None, rpc=rpc)
                lib = tmp / f"head-{name}.so"
                ex.export_library(str(lib))
                tuned[name] = lib
                info[name] = {"seconds": round(time.perf_counter() - t0, 1), "tasks": report.tasks,
                              "records": database_size(db), "state": report.state,
                              "measured_on": (f"TVM RPC server on 127.0.0.1 through tracker {farm.tracker_addr} "
                                              f"(key {KEY}; this host, not a board)") if rpc else
                              "this process (host runner)"}
                print(f"{name}: {info[name]}", flush=True)
                if rpc:
                    farm.wait_free(KEY, 1)
        rng = np.random.default_rng(a.seed)
        args = [tvm.runtime.tensor(rng.standard_normal((samples, *dims)).astype(dt)) for _, dt, dims in inputs]
        fns = {}
        for name, lib in tuned.items():
            vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib)), tvm.cpu())
            f = vm["main"]
            f(*args)
            fns[name] = (lambda f=f: f(*args))
        pairs = {"tracker_vs_host": compare(fns["tracker"], fns["host"], names=("tracker", "host"), warmup=10,
                                            repeats=a.repeats, seed=a.seed)}
        if "host-2" in fns:
            pairs["host2_vs_host"] = compare(fns["host-2"], fns["host"], names=("host-2", "host"), warmup=10,
                                             repeats=a.repeats, seed=a.seed + 1)
    rows = []
    for key, r in pairs.items():
        rows.append([key.replace("_vs_", " / "), f"{r.numerator_median_ms:.4f}", f"{r.denominator_median_ms:.4f}",
                     f"{r.median:.3f}", f"[{r.ci_low:.3f}, {r.ci_high:.3f}]", str(r.rounds)])
    tr = pairs["tracker_vs_host"]
    spread = pairs.get("host2_vs_host")
    verdict = ("within the host-vs-host spread" if spread is not None and
               min(spread.ci_low, 1 / spread.ci_high) <= tr.median <= max(spread.ci_high, 1 / spread.ci_low)
               else "outside the host-vs-host spread" if spread is not None else "no host-vs-host spread measured")
    bench_s = time.perf_counter() - t_bench
    prov = finish(prov, note=(f"head graph of {RECIPE} (batch S={samples}, untrained weights), target {target_name}, "
                              f"{a.trials} MetaSchedule trials per run (MetaSchedule seed 0; runs in seeded order "
                              f"{order}, seed {a.seed}); tracker and RPC server on 127.0.0.1 of this host (not a "
                              f"board); timed with edgeuq_runtime.harness.compare, {a.repeats} rounds; bench wall "
                              f"{bench_s:.0f} s"))
    doc = results_table(["libraries", "numerator median ms", "denominator median ms", "paired ratio (median)",
                       "95% CI", "rounds"],
                        rows, **{"tuning_runs": info, "run_order": order, "trials": a.trials, "samples": samples,
           "target": target_name, "ratio_tracker_vs_host": tr.median,
           "ratio_ci": [tr.ci_low, tr.ci_high],
           "ratio_host2_vs_host": None if spread is None else spread.median,
           "note": (f"Head graph of {RECIPE} tuned with {a.trials} MetaSchedule trials through a local tracker "
                    f"(RPC server on 127.0.0.1 of this host) vs the host runner: tracker/host latency "
                    f"{tr.median:.3f}x (95% CI {tr.ci_low:.3f}-{tr.ci_high:.3f}), "
                    + (f"host run 2/host run 1 {spread.median:.3f}x (CI {spread.ci_low:.3f}-{spread.ci_high:.3f}); "
                       if spread is not None else "") + f"the tracker's library is {verdict}. MetaSchedule's search "
                    "is random (seed 0, but it keeps candidates by measured time), so repeated runs differ.")})
    print(json.dumps(doc, indent=2))
    if not a.json:
        return 0
    print(f"results: {write_results(a.json, doc, command_line('bench/tune_tracker_vs_host.py', argv), prov)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
