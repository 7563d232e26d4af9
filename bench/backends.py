"""Backends on x86, one run: TVM (untuned, tuned) vs ONNX Runtime vs PyTorch on the trunk and head.

    python bench/backends.py [--trials 0] [--samples 16] [--batch 1] [--threads 1] [--repeats 50]
                             [--targets x86-64 host] [--tuning-db DIR]
                             [--json results/backends.json] [--kernels-json results/backends_kernels.json]

The model is the demo recipe's architecture (bearing-demo: conv patch embedding, d=64,
3 blocks, last block + head stochastic) with random weights (speed does not depend on
training), or ``--checkpoint DIR``. The trunk runs on ``batch`` windows, the head on
``samples * batch`` rows (one S-sample inference). Every backend gets the same inputs
and threads, and all are timed interleaved (one call of each, then again), so drift in
this shared machine's speed hits every row alike.

Per TVM target descriptor (``--targets``; ``host`` = the best host-ISA descriptor for this
CPU from /proc/cpuinfo, e.g. ``x86-64-avx512``):

* ``tvm untuned``: default schedules, dynamic batch, no database at all;
* ``tvm tuned``: what ``edgeuq compile`` gives with ``--tune N``: the tuning database that
  ships with the package for the demo architecture (``edgeuq/lower/tvm/tuning/<target>``),
  plus the records in ``--tuning-db`` (default: a fresh empty folder) and ``--trials`` new
  MetaSchedule trials per graph added to it (default 0: the shipped database only). The row
  names its tuning state (``tuned (shipped database)``, ``tuned``, ``reused``).
* ``tvm tuned (shipped database, not the <vendor> copy)``: where the package ships a copy of the
  target's database retuned on this CPU's vendor (``tuning/<target>@<vendor>``, which the tuned
  row uses), the same build from the target's own database (``tuning_vendor=""``), so the two
  are timed interleaved and paired in one run.
* ``tvm tuned (database DIR)`` (with ``--compare-database DIR``): the same build with the tuning
  database in ``DIR/<target>/`` *instead of* the shipped one (no shipped records, no new trials),
  e.g. the database shipped before a retune (``git show``), so old and new database are timed
  interleaved and paired in one run (both graphs and every S of the head sweep).

Shape buckets (``--sweep-samples``, default S = 1 4 8 16 32): the tuned head of every target
holds one function per shape bucket the databases cover (``TvmOptions.head_buckets``); per S,
ONNX Runtime, every tuned TVM head, and the host target's head compiled without buckets
(one batch of ``samples`` rows: what S < 16 paid before) are timed interleaved in random
order on the same S-row inputs and paired against ONNX Runtime (``tables.buckets``). With
them runs the host head's bucket function called straight on the Relax VM with its input
tensors built once (no executor: no input staging, padding, output copies or Python around
the call), so ``tables.overhead`` splits the executor's time per S into the VM call and the
executor's own per-call overhead (paired per round), next to ONNX Runtime's whole call. With
``EDGEUQ_HOST_ISA=avx2`` the ``host`` target is the AVX2 one; ONNX Runtime has no ISA switch and
keeps this CPU's kernels, so the rows of a lower-ISA target compare it with ONNX Runtime at
this host's ISA. The ``tvm ISA dispatch`` rows (both graphs, and the head sweep) are the lowest-ISA
tuned library carrying the higher-ISA tuned libraries as per-ISA ``variants`` (what
``TvmOptions.isa_variants`` -- the x86-host board's ``isa_variants`` -- puts in a bundle): the
executor runs the best library the host's CPU flags allow, and the row and the note name the one
it ran -- so a bundle built for generic x86-64 runs AVX2/AVX-512 code where the CPU has it, like
ONNX Runtime's run-time dispatch. The ``tvm ISA dispatch capped to x86-64`` rows are the same
library as the executor runs it on a CPU without AVX2 (the generic one); their paired ratios
answer "generic x86-64 <= 1.5x ONNX Runtime" (``generic_vs_onnxruntime`` in the JSON, and a note),
saying what each side ran: ONNX Runtime cannot be forced below its own run-time dispatch, so it
runs this CPU's best kernels.

Every TVM library is checked against ONNX Runtime on the same inputs (a mismatch above
1e-3 fails the run). One run writes both tables (``--json``, ``--kernels-json``; ``''``
skips) for ``scripts/render_tables.py``: the latency table with ratios to ONNX Runtime,
and where the TVM time goes (Relax VM instrument: compiled kernels vs VM builtins).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = "onnxruntime"          # the row every ratio divides by (ONNX Runtime on the same graph)
#: the row of the generic library as the dispatching executor runs it on a CPU without AVX2
GENERIC_LABEL = "tvm ISA dispatch capped to {base}"
GENERIC_GOAL = 1.5                 # issue 23: generic x86-64 TVM <= 1.5x ONNX Runtime
sys.path.insert(0, str(ROOT))


def _out(path: str) -> Path:
    out = Path(path)
    return out if out.is_absolute() else ROOT / out


def _kernel_row(role: str, label: str, table: list) -> list:
    # medians over the runs (per instruction: its time summed within a run): one preemption of this
    # shared machine in one of the runs would otherwise show up as a slow kernel
    kernels = sorted((r for r in table if r["op"] == "kernel"), key=lambda r: -r["median_us"])
    builtins = [r for r in table if r["op"] != "kernel"]
    k_ms = sum(r["median_us"] for r in kernels) / 1e3
    b_ms = sum(r["median_us"] for r in builtins) / 1e3
    total = k_ms + b_ms
    heavy = sum(r["median_us"] for r in kernels if any(s in r["name"] for s in ("matmul", "conv"))) / 1e3
    top = ", ".join(f"{r['name'][:28]} {r['median_us'] / 1e3:.3f}" for r in kernels[:3])
    return [role, label, f"{sum(r['calls_per_run'] for r in kernels):.0f}", f"{k_ms:.3f}",
            f"{sum(r['calls_per_run'] for r in builtins):.0f}", f"{b_ms:.3f}",
            f"{100 * heavy / total:.0f} %" if total > 0 else "-", top]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="checkpoint directory (default: demo architecture, random weights)")
    p.add_argument("--trials", type=int, default=0,
                   help="new MetaSchedule trials per graph on top of the shipped database (default 0)")
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--sweep-samples", type=int, nargs="*", default=[1, 4, 8, 16, 32],
                   help="MC samples S of the head sweep (TVM shape buckets vs ONNX Runtime); none: no sweep")
    p.add_argument("--quick", action="store_true", help="fewer repeats (15); the JSON says mode quick")
    p.add_argument("--tuning-db", help="folder of per-target user databases (default: a fresh empty folder)")
    p.add_argument("--compare-database", help="folder of per-target databases (DIR/<target>/) built instead of the "
                                              "shipped one for a 'tvm tuned (database DIR)' row per target that "
                                              "has one (e.g. the previously shipped database: before vs after)")
    p.add_argument("--json", default="results/backends.json", help="latency table JSON ('' to skip)")
    p.add_argument("--kernels-json", default="results/backends_kernels.json",
                   help="where-the-TVM-time-goes table JSON ('' to skip)")
    p.add_argument("--targets", nargs="+", default=["x86-64", "x86-64-avx2", "host"],
                   help="TVM target descriptors (default x86-64 host; 'host' = detected host ISA)")
    a = p.parse_args(argv)
    os.environ.setdefault("TVM_NUM_THREADS", str(a.threads))
    from edgeuq.provenance import command_line, start, write_results

    if a.quick:
        a.repeats = min(a.repeats, 15)
    run_prov = start("quick" if a.quick else "full", a.threads)
    command = command_line("bench/backends.py", argv)

    import onnxruntime as ort
    import torch

    from edgeuq.catalog import get_recipe, get_target
    from edgeuq.export import export_onnx
    from edgeuq.lower import lower
    from edgeuq.lower.tvm.numerics import max_error
    from edgeuq.lower.tvm.lowerer import TvmOptions, database_vendor
    from edgeuq.lower.tvm.targets import detect_host_target
    from edgeuq.lower.tvm.tune import shipped_dir
    from edgeuq.models import ModelConfig, SignalTransformer
    from edgeuq.profile import measure_stages, paired_ratio
    from edgeuq.profile.tvm_rpc import tvm_kernel_table
    from edgeuq.report import format_table, results_table
    from edgeuq.training import load_checkpoint, save_checkpoint
    from edgeuq_runtime.executors import COMPILED_LIBRARY, executor_capabilities, load_graph
    from edgeuq_runtime.executors.tvm import call_plan
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

    names = list(dict.fromkeys(detect_host_target() if t == "host" else t for t in a.targets))
    db = Path(a.tuning_db) if a.tuning_db else work / "user-db"
    print(f"model: d={model.cfg.d_model} depth={model.cfg.depth} L={model.cfg.input_length}; trunk batch {a.batch}, "
          f"head rows {a.samples * a.batch}; {a.threads} thread(s); tuned = shipped database + {db} "
          f"+ {a.trials} new trials per graph; targets {names}", flush=True)
    builds, notes, tuned_by_target = {}, [], {}
    for name in names:
        target = get_target(name)
        t0 = time.perf_counter()
        builds[f"tvm untuned {name}"] = lower("tvm", art, target, work / f"untuned-{name}", samples=a.samples,
                                              batch=a.batch, check="none", tuning_root=work / "no-db",
                                              shipped_database=False)
        notes.append(f"tvm untuned {name}: compiled in {time.perf_counter() - t0:.1f} s")
        if a.compare_database and (Path(a.compare_database) / name).is_dir():
            t0 = time.perf_counter()   # before the tuned build: the sweep's bare-VM row stays the tuned host head
            builds[f"tvm tuned (database {a.compare_database}) {name}"] = lower(
                "tvm", art, target, work / f"compare-{name}", samples=a.samples, batch=a.batch, check="none",
                tuning_root=Path(a.compare_database), shipped_database=False)
            notes.append(f"tvm tuned (database {a.compare_database}) {name}: the database in "
                         f"{Path(a.compare_database) / name} instead of the shipped one, compiled in "
                         f"{time.perf_counter() - t0:.1f} s")
        vendor = database_vendor(target, TvmOptions())
        if vendor and shipped_dir(name, vendor) != shipped_dir(name):
            t0 = time.perf_counter()   # the target's own database where the tuned build takes this CPU vendor's copy
            builds[f"tvm tuned (shipped database, not the {vendor} copy) {name}"] = lower(
                "tvm", art, target, work / f"novendor-{name}", samples=a.samples, batch=a.batch, check="none",
                tuning_root=db, tuning_vendor="")
            notes.append(f"tvm tuned (shipped database, not the {vendor} copy) {name}: the shipped {name} database "
                         f"itself, where the tuned row takes its copy for {vendor} CPUs ({shipped_dir(name, vendor).name}), "
                         f"compiled in {time.perf_counter() - t0:.1f} s")
        t0 = time.perf_counter()
        tuned = lower("tvm", art, target, work / f"tuned-{name}", samples=a.samples, batch=a.batch,
                      tune_trials=a.trials, tuning_root=db, check="none",
                      progress=lambda m: print("  " + m, flush=True))
        state = tuned.metadata["tuning"]
        if state == "untuned":   # no shipped database, no user records, no trials: same as the untuned build
            notes.append(f"{name}: nothing tuned (no shipped database for this target, no records, no trials): "
                         "no 'tuned' row")
            print("  " + notes[-1])
            continue
        label = f"tvm {state} {name}"
        builds[label] = tuned
        tuned_by_target[name] = tuned
        tuned_s = time.perf_counter() - t0
        if a.sweep_samples and name == names[-1]:
            t0 = time.perf_counter()
            builds[f"no buckets: {label}"] = lower("tvm", art, target, work / f"nobuckets-{name}", samples=a.samples,
                                                   batch=a.batch, tune_trials=0, tuning_root=db, check="none",
                                                   graphs=["head"], head_buckets=())
            notes.append(f"no buckets: {label}: head compiled for {a.samples * a.batch} rows only, "
                         f"{time.perf_counter() - t0:.1f} s")
        sd = shipped_dir(name, vendor)
        if sd is not None and (sd / "provenance.json").is_file():
            prov = json.loads((sd / "provenance.json").read_text())
            tpt = prov.get("trials_per_task", {})
            note = (f"shipped database {sd.name}: tuned {prov.get('tuned')} on {prov.get('cpu')}, "
                    f"{prov.get('records_measured')} trials over {prov.get('tasks')} tasks "
                    f"({tpt.get('min')}-{tpt.get('max')} per task), {prov.get('shipped_records')} records shipped")
            if prov.get("vendor"):
                base = prov.get("base") or {}
                note += (f"; a copy for {prov['vendor']} CPUs of the {name} database (tuned {base.get('tuned')} on "
                         f"{base.get('cpu')}): {base.get('default_schedules_timed_here')} tasks re-timed on the "
                         f"tuning host against TVM's default schedule, {base.get('default_schedule_won_here')} of them "
                         "fastest with the default")
                if base.get("hand_written_softmax_timed_here"):
                    note += (f", {base['hand_written_softmax_timed_here']} against the hand-written softmax schedule, "
                             f"{base.get('hand_written_softmax_won_here')} fastest with it")
            notes.append(note)
        graphs = tuned.metadata["graphs"]
        notes.append(f"{label}: compiled in {tuned_s:.1f} s; " + ", ".join(
            f"{r} batch {m['batch']}, {m['tuning'].get('shipped_tasks', 0)} of {m['tuning'].get('tasks', '?')} tasks "
            f"from the shipped database ({sd.name if sd is not None else 'none'}), "
            f"{m['tuning'].get('records', 0)} user records" for r, m in graphs.items()))

    rng = np.random.default_rng(0)
    x = rng.standard_normal((a.batch, art.input_length)).astype(np.float32)
    with torch.no_grad():
        feats = model.trunk(torch.from_numpy(x)).numpy()
    rows_n = a.samples * a.batch
    tiled = np.ascontiguousarray(np.tile(feats, (a.samples,) + (1,) * (feats.ndim - 1)))
    feeds = {"trunk": {art.input_name: x}, "head": {art.feature_name: tiled, **sample_noise(art.noise, rows_n, rng)}}
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = a.threads
    rows, kernel_rows, failures = [], [], []
    dispatch = _dispatch(tuned_by_target, work / "dispatch")
    generic = {}      # role -> paired ratio of the generic library (as dispatched on a pre-AVX2 CPU) to ORT
    for role in ("trunk", "head"):
        path = art.trunk_path if role == "trunk" else art.head_path
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        ref = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds[role])))
        runs = {REFERENCE: lambda s=sess, f=feeds[role]: s.run(None, f)}
        for label, res in builds.items():
            g = getattr(res, role)
            # the rows compare compiled libraries (shape buckets, kernel table), as their executor declares
            if COMPILED_LIBRARY not in executor_capabilities(g.executor) or label.startswith("no buckets"):
                continue
            graph = load_graph(g.executor, g.file, a.threads, g.options)
            err = max_error(graph.run(feeds[role]), ref)
            if not err <= 1e-3:
                failures.append(f"{label} {role} differs from ONNX Runtime by {err:.3g}")
            runs[label] = lambda gr=graph, f=feeds[role]: gr.run(f)
            arrays = [feeds[role][n] for n in g.options["inputs"]]
            plan = call_plan(g.options, arrays[0].shape[0], path=g.file)     # shape buckets: main_b<rows>
            kernel_rows.append(_kernel_row(role, label, tvm_kernel_table(g.file.parent / plan.library, arrays,
                                                                         warmup=3, repeats=20, entry=plan[0][0])[0]))
        if dispatch is not None:
            for label, graph in _dispatch_graphs(dispatch, role, a.threads, notes).items():
                err = max_error(graph.run(feeds[role]), ref)
                if not err <= 1e-3:
                    failures.append(f"{label} {role} differs from ONNX Runtime by {err:.3g}")
                runs[label] = lambda gr=graph, f=feeds[role]: gr.run(f)
        tf = {k: torch.from_numpy(v) for k, v in feeds[role].items()}
        with torch.no_grad():
            if role == "trunk":
                runs["pytorch"] = lambda: model.trunk(tf[art.input_name])
            else:
                noise = {s.name: tf[s.name] for s in art.noise}
                runs["pytorch"] = lambda: model.head_forward(tf[art.feature_name], noise)
            # interleaved in a seeded random order per round: neither drift nor position favours one
            stats = measure_stages(runs, warmup=5, repeats=a.repeats)
        reference = next(iter(runs))   # the first callable (ONNX Runtime) is the reference of the ratios
        for k in runs:
            r = paired_ratio(stats[k], stats[reference])   # per-round ratio, median + 95 % bootstrap CI
            rows.append([role, k, f"{stats[k].median_ms:.3f}",
                         "1.00" if k == reference else f"{r.median:.2f} [{r.ci_low:.2f}, {r.ci_high:.2f}]"])
            if dispatch is not None and k.startswith(GENERIC_LABEL.format(base=dispatch[1])):
                generic[role] = {"ratio": round(r.median, 3), "ci95": [round(r.ci_low, 3), round(r.ci_high, 3)],
                                 "tvm_ms": round(stats[k].median_ms, 4),
                                 "onnxruntime_ms": round(stats[reference].median_ms, 4),
                                 "met": bool(r.median <= GENERIC_GOAL), "rows": rows_n if role == "head" else a.batch}
    overhead_rows = []
    sweep_rows = _sweep(a, art, model, builds, so, failures, sample_noise, measure_stages, paired_ratio,
                        max_error, dispatch, notes, overhead_rows) if a.sweep_samples else []
    verdict = _generic_verdict(dispatch, generic, a.samples)
    if verdict is not None:
        notes.append(verdict["text"])
    if failures:
        print("FAILED numerics:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    headers = ["graph", "backend", "median ms", "x ONNX Runtime (paired median [95 % CI])"]
    k_headers = ["graph", "TVM build", "kernel calls", "kernels ms", "VM builtin calls", "builtins ms",
                 "matmul+conv share", "top kernels (ms)"]
    print()
    print(format_table(headers, rows))
    print()
    print(format_table(k_headers, kernel_rows))
    s_headers = ["S", "head", "buckets (rows)", "rows run", "median ms", "x ONNX Runtime (paired median [95 % CI])"]
    o_headers = ["S", "head", "executor ms", "VM call ms (tensors prebuilt)", "executor overhead ms (paired)",
                 "overhead share", "ONNX Runtime ms"]
    if sweep_rows:
        print()
        print(format_table(s_headers, sweep_rows))
    if overhead_rows:
        print()
        print(format_table(o_headers, overhead_rows))
    print()
    for n in notes:
        print(n)
    details = (f"trunk {a.batch} window(s), head {rows_n} rows; medians of {a.repeats} interleaved calls; "
               f"tuned = shipped database + {a.trials} new trials per graph")
    if a.json:
        extra = {}
        if verdict is not None:     # the figures docs prose quotes (<!-- value:backends#KEY -->), never typed
            extra["generic_vs_onnxruntime"] = verdict
            extra["values"] = {f"generic_{role}_x_ort": f"{v['ratio']:.2f} [{v['ci95'][0]:.2f}, {v['ci95'][1]:.2f}]"
                               for role, v in verdict["graphs"].items()}
        # every tuned row's paired ratio, for prose (e.g. a vendor copy against the target's own database)
        extra.setdefault("values", {}).update({
            f"{graph}_x_ort_" + re.sub(r"[^A-Za-z0-9]+", "_", backend).strip("_"): ratio
            for graph, backend, _, ratio in rows if backend.startswith("tvm tuned")})
        if sweep_rows:
            extra["tables"] = {"buckets": results_table(
                s_headers, sweep_rows,
                note=(f"head graph on S rows (1 window), {a.threads} thread(s); per S all heads timed interleaved "
                      f"in a seeded random order, {a.repeats} rounds, ratios paired per round against ONNX "
                      f"Runtime; 'rows run' is what the executor runs (the smallest shape bucket holding S, "
                      f"chunks of the largest above it); load average before the run "
                      f"{run_prov.get('load_before')}"))}
        if overhead_rows:
            extra.setdefault("tables", {})["overhead"] = results_table(
                o_headers, overhead_rows,
                note=("where the TVM head's time goes per S: the executor's run() against its bucket function "
                      "called on the Relax VM with input tensors built once (same inputs, timed interleaved with "
                      "the sweep); overhead = executor - VM call per round (median, 95 % bootstrap CI): input "
                      "staging (unaligned numpy arrays are copied to 64-byte-aligned buffers), padding, output "
                      "copies and the Python around the call"))
        write_results(_out(a.json), results_table(headers, rows, note="; ".join(notes), **extra), command,
                      {**run_prov, "note": details})
    if a.kernels_json:
        write_results(_out(a.kernels_json), results_table(k_headers, kernel_rows), command,
                      {**run_prov, "note": details + "; per-instruction times from vm.set_instrument, medians over 20 "
                                                 "calls after 3 (each includes ~1 us of Python callback)"})
    return 0


def _dispatch(tuned_by_target, folder):
    """Per graph, the lowest-ISA tuned library (e.g. generic x86-64) with the higher-ISA tuned libraries as
    its per-ISA ``variants``, in one folder: what a bundle compiled with ``TvmOptions.isa_variants`` (the
    x86-host board's ``isa_variants``) carries. The tvm executor loads the best library this host's CPU
    flags allow (``EDGEUQ_HOST_ISA`` caps them). Returns ``(label, base target, {role: (library path,
    options, executor)})``, or None with fewer than two tuned x86 targets."""
    import shutil

    from edgeuq.catalog import get_target
    from edgeuq_runtime.executors import COMPILED_LIBRARY, executor_capabilities
    from edgeuq.lower.tvm.targets import required_flags

    flags = {n: required_flags(get_target(n)) for n, res in tuned_by_target.items()
             if all(COMPILED_LIBRARY in executor_capabilities(getattr(res, r).executor) for r in ("trunk", "head"))}
    if len(flags) < 2:
        return None
    base = min(flags, key=lambda n: len(flags[n]))
    higher = sorted((n for n in flags if flags[n] > flags[base]), key=lambda n: -len(flags[n]))
    if not higher:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    graphs = {}
    for role in ("trunk", "head"):
        shutil.copyfile(getattr(tuned_by_target[base], role).file, folder / f"{role}.so")
        variants = []
        for n in higher:
            g = getattr(tuned_by_target[n], role)
            shutil.copyfile(g.file, folder / f"{role}.{n}.so")
            variants.append({"file": f"{role}.{n}.so", "target": n, "requires": sorted(flags[n]),
                             "batch": g.options.get("batch"),
                             **({"buckets": list(g.options["buckets"])} if g.options.get("buckets") else {})})
        g = getattr(tuned_by_target[base], role)
        graphs[role] = (folder / f"{role}.so", {**g.options, "variants": variants}, g.executor)
    return f"tvm ISA dispatch ({base} + {', '.join(higher)})", base, graphs


def _dispatch_graphs(dispatch, role, threads, notes):
    """``{label: graph}``: the dispatch library as the executor picks it on this host, and as it picks it
    on a CPU without any of the variants' flags (the generic library: what runs on a pre-AVX2 x86-64)."""
    from edgeuq_runtime.executors import load_graph
    from edgeuq_runtime.executors.tvm import choose_library

    label, base, graphs = dispatch
    path, options, backend = graphs[role]
    here = load_graph(backend, path, threads, options)
    chosen, opts, why = choose_library(path, options, flags=frozenset())   # a CPU with none of the variants' flags
    generic = load_graph(backend, chosen, threads, opts)
    out = {f"{label}: ran {here.path.name}": here,
           f"{GENERIC_LABEL.format(base=base)}: ran {generic.path.name}": generic}
    if notes is not None:
        notes.append(f"{label} {role} -- the executor's choice on this host: {here.evidence['library']}; capped to "
                     f"{base} (no variant flags): {why}")
    return out


def _generic_verdict(dispatch, generic, samples):
    """Issue 23's "generic x86-64 <= 1.5x ONNX Runtime", per graph, from the paired ratios of the generic
    library (as the dispatching executor runs it on a CPU without AVX2) -- saying exactly what each side
    ran: ONNX Runtime has no switch below its own run-time dispatch, so it ran this CPU's best kernels."""
    if dispatch is None or set(generic) != {"trunk", "head"}:
        return None
    from edgeuq_runtime.cpuinfo import cpu_flags as raw_flags
    from edgeuq_runtime.hostcpu import X86_ISA_FLAGS

    have = raw_flags() or frozenset()
    level = next((lv for lv in reversed(list(X86_ISA_FLAGS)) if X86_ISA_FLAGS[lv] <= have), "x86-64")
    ort_ran = (f"ONNX Runtime: its own run-time dispatch (MLAS picks kernels from the CPU, here an {level} "
               f"CPU{' with AVX-512' if 'avx512f' in have else ''}; nothing forces it lower)")
    tvm_ran = (f"TVM: the generic {dispatch[1]} library (no ISA extension beyond SSE2), the one the "
               f"dispatching tvm executor runs on a CPU without AVX2 (its variants' flags hidden)")
    met = all(v["met"] for v in generic.values())
    text = (f"generic {dispatch[1]} <= {GENERIC_GOAL}x ONNX Runtime: " + ", ".join(
        f"{role} {v['ratio']:.2f}x [{v['ci95'][0]:.2f}, {v['ci95'][1]:.2f}] ({'met' if v['met'] else 'missed'})"
        for role, v in generic.items()) + f" (trunk 1 window, head S={samples}); {tvm_ran}; {ort_ran} -- so the "
        "ratio is an upper bound of the one with both sides held to SSE on this CPU (fewer ISA extensions "
        "could only slow ONNX Runtime down; the generic TVM library runs the same code)")
    return {"goal": f"<= {GENERIC_GOAL}x", "met": met, "graphs": generic, "tvm_ran": tvm_ran,
            "onnxruntime_ran": ort_ran, "text": text}


def _sweep(a, art, model, builds, so, failures, sample_noise, measure_stages, paired_ratio, max_error,
           dispatch=None, notes=None, overhead_rows=None):
    """TVM heads (shape buckets; the host head without buckets; the per-ISA dispatch head) vs ONNX
    Runtime at each S, paired; with ``overhead_rows`` (a list, filled) the host head's bucket function
    on the bare Relax VM too (the executor's per-call overhead)."""
    import onnxruntime as ort
    import torch
    from edgeuq_runtime.harness import bootstrap_median_ci
    from edgeuq_runtime.executors import COMPILED_LIBRARY, executor_capabilities, load_graph
    from edgeuq_runtime.executors.tvm import call_plan

    sess = ort.InferenceSession(str(art.head_path), so, providers=["CPUExecutionProvider"])
    heads = {}
    for label, res in builds.items():
        if "untuned" in label or COMPILED_LIBRARY not in executor_capabilities(res.head.executor):
            continue
        heads[label] = load_graph(res.head.executor, res.head.file, a.threads, res.head.options)
    if dispatch is not None:
        heads.update(_dispatch_graphs(dispatch, "head", a.threads, None))
    # the last tuned bucketed head (the host target's): its bucket functions on a bare Relax VM
    bare = next((label for label in reversed(list(heads)) if label in builds and heads[label].buckets), None)
    vm = None
    if overhead_rows is not None and bare is not None:
        import tvm
        from tvm import relax

        head_opts = builds[bare].head.options
        vm = relax.VirtualMachine(tvm.runtime.load_module(str(builds[bare].head.file)), tvm.cpu())
    rng = np.random.default_rng(1)
    x = rng.standard_normal((a.batch, art.input_length)).astype(np.float32)
    with torch.no_grad():
        feats = model.trunk(torch.from_numpy(x)).numpy()
    rows = []
    for s in a.sweep_samples:
        n = s * a.batch
        feeds = {art.feature_name: np.ascontiguousarray(np.tile(feats, (s,) + (1,) * (feats.ndim - 1))),
                 **sample_noise(art.noise, n, rng)}
        ref = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
        runs = {REFERENCE: lambda f=feeds: sess.run(None, f)}
        for label, g in heads.items():
            err = max_error(g.run(feeds), ref)
            if not err <= 1e-3:
                failures.append(f"{label} head at S={s} differs from ONNX Runtime by {err:.3g}")
            runs[label] = lambda gr=g, f=feeds: gr.run(f)
        vm_label = None
        plan = call_plan(head_opts, n) if vm is not None else []
        if len(plan) == 1:          # one bucket call: the VM function on tensors built once, padded as planned
            fn, size, _ = plan[0]
            args = [tvm.runtime.tensor(np.ascontiguousarray(np.concatenate(
                [feeds[k], np.zeros((size - n, *feeds[k].shape[1:]), np.float32)]))) for k in head_opts["inputs"]]
            func = vm[fn]
            vm_label = f"VM call only ({fn}, tensors prebuilt): {bare}"
            runs[vm_label] = lambda f=func, x=args: f(*x)
        stats = measure_stages(runs, warmup=5, repeats=a.repeats, seed=s)
        if vm_label is not None:
            per_round = [e - v for e, v in zip(stats[bare].samples_ms, stats[vm_label].samples_ms)]
            ci = bootstrap_median_ci(per_round)
            over = float(np.median(per_round))
            overhead_rows.append([str(s), bare, f"{stats[bare].median_ms:.3f}", f"{stats[vm_label].median_ms:.3f}",
                                  f"{over:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]",
                                  f"{100 * over / stats[bare].median_ms:.0f} %",
                                  f"{stats[REFERENCE].median_ms:.3f}"])
            del runs[vm_label]
        for label in runs:
            g = heads.get(label)
            plan = "-" if g is None else "+".join(str(g.bucket_for(min(n - r0, g.batch or n)))
                                                  for r0 in range(0, n, g.batch or n))
            r = paired_ratio(stats[label], stats[REFERENCE])
            rows.append([str(s), label, "-" if g is None else (", ".join(map(str, g.buckets)) or str(g.batch)),
                         plan, f"{stats[label].median_ms:.3f}",
                         "1.00" if label == REFERENCE else f"{r.median:.2f} [{r.ci_low:.2f}, {r.ci_high:.2f}]"])
        print(f"S={s}: " + ", ".join(f"{k} {stats[k].median_ms:.3f} ms" for k in runs), flush=True)
    return rows


if __name__ == "__main__":
    sys.exit(main())
