"""Does tuning through a TVM RPC tracker reach the database quality of tuning on the host?

    nice -n 10 python bench/tune_tracker_vs_host.py [--trials-per-task 8 | --trials N] [--repeats 200]
                                                     [--seed 0] [--json results/tune_tracker_vs_host.json]

The head graph of the default recipe's model (`bearing-demo`, batch = its S samples, static
shapes) is tuned with MetaSchedule, the same task set and the same trial count, each run into a
fresh database. The trial count is ``--trials-per-task`` times the number of tunable tasks (unless
``--trials`` gives the total), so that every task gets measured candidates: a run that tunes only a
few tasks leaves the rest on TVM's default schedules and says nothing about tuning quality; each
run reports how many tasks got at least one measured record. The runs: with the host runner
(`edgeuq compile --tune N`: candidates timed in the tuning process), a second time with the host
runner, and through a local tracker (`edgeuq compile --tune N --tracker H:P --key K`: candidates
built in the tuning process, timed by a `tvm.exec.rpc_server` on 127.0.0.1 registered with a
`tvm.exec.rpc_tracker` on 127.0.0.1, both started and stopped here: this host, not a board). The
three runs tune concurrently, each in a process and session of its own (so all three see the same
machine load, and each gets its own CPU share under autogroup scheduling), or with `--sequential`
one after another in a seeded random order. Each tuned module is compiled with its own database
into a library (exported and loaded back), and the libraries are timed in the same rounds, in a seeded random
order every round, by the runtime's harness (`edgeuq_runtime.harness.measure_rounds`): the
results are the paired ratios tracker / host and host-2 / host (median of per-round ratios,
bootstrap interval, `edgeuq_runtime.harness.paired_ratio`). The weights are
untrained (a schedule's speed does not depend on the values).

MetaSchedule's search is random (its seed is fixed, 0, in `edgeuq.lower.tvm.tune`, but the
candidates it keeps depend on measured times, which differ run to run), so two host runs differ
too. A second host tuning run (skip it with `--no-host-twice`) gives that spread in the same bench:
the verdict is "within the host-vs-host spread" only when the 95 % interval of tracker / host
overlaps the one of host-2 / host, otherwise "not within".
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

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
    return import_onnx(art.head_path, inputs, samples), inputs, samples, Path(art.head_path)


def _tunable_tasks(mod, target) -> list:
    """The names of the tasks of ``mod`` that tuning measures (as ``tune_and_compile`` selects them)."""
    from tvm.s_tir import meta_schedule as ms

    from edgeuq.lower.tvm.tune import _tunable, prepare_for_tuning

    return [t.task_name for t in ms.relax_integration.extract_tasks(prepare_for_tuning(mod, target), target)
            if _tunable(t)]


def measured_tasks(db_dir: Path) -> dict:
    """Per workload (task) of a JSON tuning database, how many records hold a measured time:
    MetaSchedule stores a failed build or run with no time or a huge one (1e10 s), which does not
    count. Returns ``{workload index: measured records}``, only workloads with at least one."""
    out: dict = {}
    path = Path(db_dir) / "database_tuning_record.json"
    for line in (path.read_text().splitlines() if path.is_file() else []):
        if not line.strip():
            continue
        workload, record = json.loads(line)
        secs = record[1] if len(record) > 1 else None
        ok = bool(secs) and all(isinstance(v, (int, float)) and 0 < float(v) < 1e9 for v in secs)
        if ok:
            out[int(workload)] = out.get(int(workload), 0) + 1
    return out


def _tune_one(common: dict, spec: dict) -> dict:
    """One tuning run (``edgeuq compile --tune``'s ``tune_and_compile``) of the head graph into a fresh
    database, its library exported; returns what it did."""
    import os

    from edgeuq.catalog import get_target
    from edgeuq.lower.tvm.build import graph_io, import_onnx
    from edgeuq.lower.tvm.targets import tvm_target
    from edgeuq.lower.tvm.tune import database_size, tune_and_compile

    tt = tvm_target(get_target(common["target"]), num_cores=1)
    head = Path(common["head"])
    mod = import_onnx(head, graph_io(head)[0], int(common["samples"]))
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    c0 = time.process_time()
    ex, report = tune_and_compile(mod, tt, Path(spec["db"]), int(common["trials"]), progress=lambda m: None,
                                  rpc=tuple(spec["rpc"]) if spec["rpc"] else None)
    ex.export_library(spec["lib"])
    per_task = measured_tasks(Path(spec["db"]))
    return {"seconds": round(time.perf_counter() - t0, 1), "cpu_seconds": round(time.process_time() - c0, 1),
            "tasks": report.tasks, "tunable_tasks": int(common["tunable"]), "trials": int(common["trials"]),
            "tasks_with_measured_record": len(per_task),
            "measured_records_per_task": {"min": min(per_task.values(), default=0),
                                          "max": max(per_task.values(), default=0)},
            "records": database_size(Path(spec["db"])), "state": report.state,
            "load_1min": [round(load0, 2), round(os.getloadavg()[0], 2)], "measured_on": spec["measured_on"]}


def _tune_worker(spec_file: str, index: int) -> None:
    """A spawned process's entry point (its own session): run ``index`` of the spec file; the result
    goes to ``run_info.json`` in that run's database folder."""
    sys.path[:0] = [str(ROOT), str(ROOT / "runtime")]
    doc = json.loads(Path(spec_file).read_text())
    spec = doc["runs"][index]
    info = _tune_one(doc["common"], spec)
    (Path(spec["db"]) / "run_info.json").write_text(json.dumps(info))


def spread_verdict(tracker: tuple, spread: Optional[tuple]) -> str:
    """``within`` only when the tracker/host interval overlaps the host-2/host interval (both
    ``(low, high)``); NaN bounds never overlap."""
    if spread is None:
        return "no host-vs-host spread measured"
    finite = all(v == v for v in (*tracker, *spread))     # NaN != NaN
    overlap = finite and tracker[0] <= spread[1] and spread[0] <= tracker[1]
    return ("within the host-vs-host spread (the tracker/host 95% CI overlaps the host-2/host one)" if overlap
            else "not within the host-vs-host spread (the tracker/host 95% CI does not overlap the host-2/host one)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials-per-task", type=int, default=8,
                    help="MetaSchedule trials per tunable task of each tuning run (total = this x tasks)")
    ap.add_argument("--trials", type=int, default=None,
                    help="total MetaSchedule trials of each tuning run (overrides --trials-per-task)")
    ap.add_argument("--repeats", type=int, default=200, help="timed rounds of the paired comparison")
    ap.add_argument("--seed", type=int, default=0, help="seed of the run order and of the timing rounds")
    ap.add_argument("--no-host-twice", action="store_true", help="skip the second host run (host-vs-host spread)")
    ap.add_argument("--sequential", action="store_true",
                    help="tune the runs one after another in this process (in the seeded order), not concurrently")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds the concurrent tuning runs may take")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    if a.trials_per_task < 1 or (a.trials is not None and a.trials < 1):
        ap.error("--trials-per-task and --trials must be >= 1")

    import os

    import numpy as np
    import tvm
    from tvm import relax

    sys.path.insert(0, str(ROOT / "tests"))
    from rpc_farm import Farm

    from edgeuq.catalog import get_target
    from edgeuq.lower.tvm.targets import detect_host_target, tvm_target
    from edgeuq.provenance import command_line, finish, start, write_results
    from edgeuq.report import results_table
    from edgeuq_runtime.harness import measure_rounds, paired_ratio

    prov = start("full", 1, packages=("apache-tvm", "torch", "onnx", "onnxruntime"))
    niceness = os.nice(0)
    t_bench = time.perf_counter()
    target_name = detect_host_target()
    tt = tvm_target(get_target(target_name), num_cores=1)
    runs = ["host", "tracker"] + ([] if a.no_host_twice else ["host-2"])
    order = list(runs)
    random.Random(a.seed).shuffle(order)
    tuned, info = {}, {}
    with tempfile.TemporaryDirectory(prefix="edgeuq-bench-tune-") as tmp:
        tmp = Path(tmp)
        mod, inputs, samples, head_path = _head_module(tmp)
        task_names = _tunable_tasks(mod, tt)
        trials = a.trials if a.trials is not None else a.trials_per_task * len(task_names)
        print(f"{len(task_names)} tunable tasks, {trials} trials per run (at most "
              f"{max(8, -(-trials // max(1, len(task_names))))} per task); runs in order {order}", flush=True)
        with Farm() as farm:
            farm.add_servers(KEY, 1)
            specs = [{"name": name, "db": str(tmp / f"db-{name}"), "lib": str(tmp / f"head-{name}.so"),
                      "rpc": [farm.tracker_addr, KEY] if name == "tracker" else None,
                      "measured_on": (f"TVM RPC server on 127.0.0.1 through tracker {farm.tracker_addr} "
                                      f"(key {KEY}; this host, not a board)") if name == "tracker" else
                      "this process (host runner)" if a.sequential else "a tuning process on this host (host runner)"}
                     for name in order]
            common = {"head": str(head_path), "samples": samples, "target": target_name, "trials": trials,
                      "tunable": len(task_names)}
            if a.sequential:
                for spec in specs:
                    info[spec["name"]] = _tune_one(common, spec)
                    print(f"{spec['name']}: {info[spec['name']]}", flush=True)
                    if spec["rpc"]:
                        farm.wait_free(KEY, 1)
            else:
                from edgeuq.compress.distributed import run_workers

                spec_file = tmp / "runs.json"
                spec_file.write_text(json.dumps({"common": common, "runs": specs}))
                codes = run_workers(len(specs), _tune_worker, (str(spec_file),), timeout_s=a.timeout,
                                    log=lambda m: print(m, flush=True))
                for spec, code in zip(specs, codes):
                    out = Path(spec["db"]) / "run_info.json"
                    if code != 0 or not out.is_file():
                        raise SystemExit(f"tuning run {spec['name']!r} failed (exit code {code}; timeout "
                                         f"{a.timeout} s); nothing written")
                    info[spec["name"]] = json.loads(out.read_text())
                    print(f"{spec['name']}: {info[spec['name']]}", flush=True)
            tuned = {spec["name"]: Path(spec["lib"]) for spec in specs}
        rng = np.random.default_rng(a.seed)
        args = [tvm.runtime.tensor(rng.standard_normal((samples, *dims)).astype(dt)) for _, dt, dims in inputs]
        fns = {}
        for name in runs:
            vm = relax.VirtualMachine(tvm.runtime.load_module(str(tuned[name])), tvm.cpu())
            f = vm["main"]
            f(*args)
            fns[name] = (lambda f=f: f(*args))
        # all libraries in the same rounds, in a seeded random order every round: the ratios are paired
        times, _ = measure_rounds(fns, warmup=10, repeats=a.repeats, seed=a.seed)
        pairs = {"tracker_vs_host": paired_ratio(times["tracker"], times["host"], names=("tracker", "host"),
                                                 seed=a.seed)}
        if "host-2" in fns:
            pairs["host2_vs_host"] = paired_ratio(times["host-2"], times["host"], names=("host-2", "host"),
                                                  seed=a.seed + 1)
    short = {"tracker": "tracker", "host": "host", "host2": "host-2"}
    rows = []
    for key, r in pairs.items():
        num, _, den = key.partition("_vs_")
        cov = " / ".join(f"{info[short[x]]['tasks_with_measured_record']} of {len(task_names)}" for x in (num, den))
        rows.append([f"{num} / {den}", cov, str(trials), f"{r.numerator_median_ms:.4f}",
                     f"{r.denominator_median_ms:.4f}", f"{r.median:.3f}", f"[{r.ci_low:.3f}, {r.ci_high:.3f}]",
                     str(r.rounds)])
    tr = pairs["tracker_vs_host"]
    spread = pairs.get("host2_vs_host")
    verdict = spread_verdict((tr.ci_low, tr.ci_high), None if spread is None else (spread.ci_low, spread.ci_high))
    all_tuned = all(v["tasks_with_measured_record"] == len(task_names) for v in info.values())
    coverage = ("every tunable task has measured records in every run" if all_tuned else
                "NOT every tunable task has a measured record in every run (untuned tasks keep TVM's default "
                "schedules): the comparison is weaker than it reads")
    bench_s = time.perf_counter() - t_bench
    prov = finish(prov, note=(f"head graph of {RECIPE} (batch S={samples}, untrained weights), target {target_name}, "
                              f"{trials} MetaSchedule trials per run ({len(task_names)} tunable tasks; MetaSchedule "
                              f"seed 0; " + (f"runs one after another in seeded order {order}, seed {a.seed}"
                                             if a.sequential else "the runs tuned concurrently, each in a process "
                                             "and session of its own, so all see the same machine load")
                              + "); tracker and RPC server on "
                              f"127.0.0.1 of this host (not a board); timed with edgeuq_runtime.harness "
                              f"(measure_rounds + paired_ratio), all libraries in the same {a.repeats} rounds; "
                              f"niceness {niceness}; bench wall {bench_s:.0f} s"))
    runs_text = "; ".join(f"{k} {v['tasks_with_measured_record']} of {len(task_names)} tasks in {v['seconds']:.0f} s"
                          for k, v in info.items())
    doc = results_table(["libraries", "tasks with a measured record (numerator / denominator run)",
                         "trials per run", "numerator median ms", "denominator median ms", "paired ratio (median)",
                         "95% CI", "rounds"],
                        rows, **{"tuning_runs": info, "run_order": order, "trials": trials,
           "trials_per_task": None if a.trials is not None else a.trials_per_task,
           "tunable_tasks": task_names, "samples": samples,
           "target": target_name, "ratio_tracker_vs_host": tr.median,
           "ratio_ci": [tr.ci_low, tr.ci_high],
           "ratio_host2_vs_host": None if spread is None else spread.median,
           "ratio_host2_vs_host_ci": None if spread is None else [spread.ci_low, spread.ci_high],
           "verdict": verdict, "all_tasks_tuned": all_tuned,
           "note": (f"Head graph of {RECIPE} (S = {samples}) tuned with {trials} MetaSchedule trials per run "
                    f"({len(task_names)} tunable tasks; {runs_text}; {coverage}) through a local tracker "
                    f"(RPC server on 127.0.0.1 of this host, not a board) vs the host runner: tracker/host latency "
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
