"""Regenerate the tuning database that ships with the package for the demo architecture.

    python -m edgeuq.lower.tvm.shipped --target x86-64-avx512 [--trials-per-task 64] [--light-trials 8]
                                       [--work DIR] [--prune-only] [--exclude softmax] [--vendor intel]

The demo architecture (recipe ``bearing-demo``: conv patch embedding, d=64, 3 blocks,
last block + head stochastic) is exported with random weights (tuning tasks depend on
shapes, not on weights), the trunk for 1 window and the head for ``samples`` rows
(16: one S=16 inference), the shapes :class:`~edgeuq.lower.tvm.TvmOptions` compiles by
default. The tasks that dominate the time (``matmul`` and ``conv`` kernels: 80-90 % of
the untuned time, see ``docs/targets.md``) get ``--trials-per-task`` MetaSchedule
trials first, the others (transposes, layer norms, means, softmax last)
``--light-trials``. Softmax is last because one of its candidates once kept the
in-process builder (LLVM) busy for more than 5 minutes: with ``timeout`` it can only cost
the end of a run. All records go to a work database (``--work``, kept across runs, so
an interrupted run resumes with what it measured); the package copy is pruned to the
best record per task (``Database.dump_pruned``), a few hundred kB, in
``edgeuq/lower/tvm/tuning/<target>/``.

Tuning is CPU-heavy (about 1.5 s per trial on one core): run it with ``nice`` and
``timeout``; records are written as they are measured, then run ``--prune-only``.
``--exclude WORD...`` (with the pruning) ships no record for the workloads whose TIR mentions a
word: where a paired timing of the compiled graph finds a kernel's tuned schedules slower than
TVM's default one (16 trials of ``softmax`` on a busy host did, ``docs/targets.md``), it compiles
with the default again; the work database keeps every record.

``--vendor NAME`` (``intel``, ``amd``: :func:`edgeuq.hostcpu.cpu_vendor`, and it must be this
host's) writes a copy of the target's database for that vendor's CPUs instead,
``tuning/<target>@<vendor>/`` (:func:`overlay_into`): every task this run measured takes the
best record measured here, the others keep the target's shipped record, and ``--exclude``
drops words from the whole copy. ``--retime-base`` first times the target's shipped record,
TVM's default schedule and (softmax) the hand-written row schedule of every task on this host
(:func:`remeasure_into`; ``--retime-only WORD...`` narrows it to some workloads), so what competes
per task was all measured on this CPU. The lowering prefers the copy on CPUs of that vendor
(``TvmOptions.tuning_vendor``); the target's own database is left as it is.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, List, Optional, Sequence

from edgeuq_runtime.atomic import atomic_write

from .tune import HEAVY_KERNELS, SHIPPED_ROOT, database_size, drop_unnamed_meta_schedule_handlers, vendor_folder

__all__ = ["HEAVY_KERNELS", "demo_graphs", "demo_tasks", "tune_demo", "prune_into", "overlay_into", "remeasure_into",
           "write_provenance", "main"]



def demo_graphs(workdir: Path, recipe: str = "bearing-demo") -> Any:
    """The recipe's architecture with random weights, exported to ONNX (an ``OnnxArtifact``)."""
    import torch

    from ...catalog import get_recipe
    from ...export import export_onnx
    from ...models import ModelConfig, SignalTransformer
    from ...training import save_checkpoint

    torch.manual_seed(0)
    rec = get_recipe(recipe)
    cfg = ModelConfig.from_dict(rec.model, input_length=int(rec.data["window"]), num_classes=len(rec.data["classes"]))
    ck = save_checkpoint(SignalTransformer(cfg), Path(workdir) / "ck", tuple(rec.data["classes"]),
                         float(rec.data["fs_hz"]))
    return export_onnx(ck, Path(workdir) / "onnx")


def demo_tasks(art: Any, target: Any, samples: int = 16, batch: int = 1,
               graphs: Sequence[str] = ("trunk", "head")) -> List[Any]:
    """The tunable MetaSchedule tasks of the graphs at the shapes the lowering compiles."""
    from tvm.s_tir import meta_schedule as ms

    from .build import graph_io, import_onnx
    from .tune import _tunable, prepare_for_tuning

    tasks = []
    chosen = {"trunk": (Path(art.trunk_path), batch), "head": (Path(art.head_path), samples * batch)}
    for path, rows in (chosen[g] for g in graphs):
        mod = prepare_for_tuning(import_onnx(path, graph_io(path)[0], rows), target)
        tasks += [t for t in ms.relax_integration.extract_tasks(mod, target) if _tunable(t)]
    return tasks


def unique_demo_tasks(art: Any, target: Any, samples: Sequence[int], graphs: Sequence[str]) -> List[Any]:
    """The demo graphs' tuning tasks for every head size in ``samples`` (the trunk once), each
    kernel at each shape once."""
    import tvm_ffi   # comes with TVM (tvm.ir has no structural_hash in TVM 0.27)

    tasks, seen = [], set()
    for rows in samples:
        for t in demo_tasks(art, target, samples=rows, graphs=graphs if rows == samples[0]
                            else [g for g in graphs if g == "head"]):
            key = int(tvm_ffi.structural_hash(t.dispatched[0]))
            if key not in seen:       # the same kernel at the same shape: one task
                seen.add(key)
                tasks.append(t)
    return tasks


def tune_demo(tasks: Sequence[Any], db_dir: Path, heavy_trials: int, light_trials: int,
              say=print, heavy: Sequence[str] = HEAVY_KERNELS, population: Optional[int] = None,
              genetic_iters: Optional[int] = None) -> None:
    """Tune the heavy tasks (names containing one of ``heavy``), then the light ones, into the
    JSON database ``db_dir``. ``population`` / ``genetic_iters``: the evolutionary search's
    population size and genetic iterations per round (TVM's defaults 512 and 4 when None); smaller
    ones spend less CPU searching between measured trials (a busy tuning host)."""
    from tvm.s_tir import meta_schedule as ms

    from .tune import _make_in_process_builder, _make_in_process_runner, open_database

    db = open_database(db_dir)
    light = sorted((t for t in tasks if not any(k in t.task_name for k in heavy)),
                   key=lambda t: "softmax" in t.task_name)
    heavy = [t for t in tasks if any(k in t.task_name for k in heavy)]
    for group, n in ((heavy, heavy_trials), (light, light_trials)):
        if not group or n <= 0:
            continue
        say(f"{time.strftime('%H:%M:%S')} tuning {len(group)} tasks x {n} trials: "
            f"{sorted({t.task_name for t in group})}")
        drop_unnamed_meta_schedule_handlers()
        strategy: Any = "evolutionary"
        if population is not None or genetic_iters is not None:
            knobs = {k: v for k, v in (("population_size", population), ("genetic_num_iters", genetic_iters))
                     if v is not None}
            strategy = ms.search_strategy.EvolutionarySearch(**knobs)
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
            extracted_tasks=group, work_dir=str(db_dir), space="post-order-apply", strategy=strategy, seed=0)
        ms.tune.tune_tasks(tasks=contexts, task_weights=weights, work_dir=str(db_dir),
                           max_trials_global=n * len(group), max_trials_per_task=n, num_trials_per_iter=16,
                           builder=_make_in_process_builder(), runner=_make_in_process_runner(), database=db,
                           cost_model="xgb", task_scheduler="round-robin")


def _copy_whole_lines(work_db: Path, dest: Path) -> None:
    """Copy a JSON database, whole lines only (a tuning run stopped by ``timeout`` may leave a
    half-written last line)."""
    import json

    Path(dest).mkdir(parents=True, exist_ok=True)
    for name in ("database_workload.json", "database_tuning_record.json"):
        lines = []
        for line in (Path(work_db) / name).read_text().splitlines():
            try:
                json.loads(line)
            except ValueError:
                continue
            lines.append(line)
        (Path(dest) / name).write_text("".join(line + "\n" for line in lines))


def prune_into(work_db: Path, dest: Path, exclude: Sequence[str] = ()) -> int:
    """Write the best record per workload of ``work_db`` to ``dest`` (replaced); returns its size.
    ``exclude``: leave out the records of every workload whose TIR mentions one of these words (e.g.
    ``softmax``, where a paired timing found the tuned kernels slower than TVM's default schedule:
    a workload with no record compiles with the default one). The work database keeps them."""
    from .tune import open_database

    import json
    import shutil

    dest = Path(dest)
    staging = Path(tempfile.mkdtemp(prefix=".shipped-", dir=dest.parent if dest.parent.is_dir() else None))
    source = Path(tempfile.mkdtemp(prefix="edgeuq-work-db-"))
    _copy_whole_lines(work_db, source)
    if exclude:
        from tvm.s_tir import meta_schedule as ms

        full, kept = open_database(source), Path(tempfile.mkdtemp(prefix="edgeuq-work-db-"))
        for name in ("database_workload.json", "database_tuning_record.json"):
            (kept / name).write_text("")
        out = open_database(kept)
        for rec in full.get_all_tuning_records():
            if not any(word in rec.workload.mod.script() for word in exclude):
                out.commit_tuning_record(ms.database.TuningRecord(rec.trace, out.commit_workload(rec.workload.mod),
                                                                  rec.run_secs, rec.target, rec.args_info))
        shutil.rmtree(source, ignore_errors=True)
        source = kept
    open_database(source).dump_pruned(open_database(staging))
    shutil.rmtree(source, ignore_errors=True)
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("database_workload.json", "database_tuning_record.json"):
        (staging / name).replace(dest / name)
    staging.rmdir()
    return database_size(dest)


def remeasure_into(base: Path, work_db: Path, target: Any, only: Sequence[str] = (), repeat: int = 3,
                   say=print, workloads: Sequence[Any] = ()) -> dict:
    """Time, on this host, ``base``'s record of each workload (those whose TIR mentions a word of
    ``only``, or all), TVM's default schedule of it (a trace that only looks up the root block:
    what a workload without a record compiles to; MetaSchedule's queries skip records with an empty
    trace, so the default must be a real record to win and to count as covered, e.g. for the head's
    shape buckets) and, for a row softmax, the hand-written schedule of :mod:`.softmax_schedule`,
    and commit them to ``work_db`` with the times measured here. ``workloads`` (IRModules of
    tuning tasks, e.g. the demo's) adds those the base has no record of: their default and
    hand-written schedules. Records tuned here, the base's, the default and the hand-written one
    then compete in one database measured on one CPU: its best record per workload is the fastest
    here, whatever the base's own times said (they were measured on the CPU where the base was
    tuned). Returns counts of what was timed and failed."""
    from tvm.s_tir import Schedule
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo
    from tvm.s_tir.meta_schedule.builder import BuilderInput
    from tvm.s_tir.meta_schedule.runner import RunnerInput

    from .softmax_schedule import float32_lanes
    from .tune import _make_in_process_builder, _make_in_process_runner, _ReadOnlyCopy, open_database

    builder, runner = _make_in_process_builder(), _make_in_process_runner(number=3, repeat=repeat)
    work, copy = open_database(work_db), _ReadOnlyCopy(Path(base))
    counts = {"timed": 0, "failed": 0, "hand_written_timed": 0}
    wanted = (lambda mod: not only or any(word in mod.script() for word in only))
    try:
        items = [(r.workload.mod, r.args_info, r.trace) for r in copy.db.get_all_tuning_records()
                 if wanted(r.workload.mod)]
        for mod in workloads:
            if wanted(mod) and not copy.db.has_workload(mod):
                items.append((mod, ArgInfo.from_prim_func(mod["main"]), None))
        for i, (mod, args_info, trace) in enumerate(items):
            for label, sch in _candidates(mod, trace, Schedule, float32_lanes(target)):
                built = builder.build([BuilderInput(sch.mod, target)])[0]
                result = None if built.error_msg else runner.run(
                    [RunnerInput(built.artifact_path, "cpu", args_info)])[0].result()
                if result is None or result.error_msg or not result.run_secs:
                    counts["failed"] += 1
                    say(f"workload {i + 1}/{len(items)} {label}: not timed "
                        f"({built.error_msg or (result.error_msg if result is not None else 'no result')})")
                    continue
                work.commit_tuning_record(ms.database.TuningRecord(sch.trace, work.commit_workload(mod),
                                                                   result.run_secs, target, args_info))
                counts["timed"] += 1
                counts["hand_written_timed"] += label == "hand-written schedule"
            say(f"{time.strftime('%H:%M:%S')} re-timed workload {i + 1}/{len(items)} here")
    finally:
        copy.close()
    return counts


def _candidates(mod: Any, trace: Any, schedule: Any, lanes: int) -> Any:
    """``(label, schedule)`` of each candidate :func:`remeasure_into` times for the workload
    ``mod``: the base's record (``trace``, when there is one), TVM's default schedule (a trace that
    only looks up the root block changes nothing) and, for a row softmax, the hand-written schedule
    (:mod:`.softmax_schedule`)."""
    from .softmax_schedule import schedule_softmax_rows

    if trace is not None:
        sch = schedule(mod)
        trace.apply_to_schedule(sch, remove_postproc=False)
        yield "base record", sch
    sch = schedule(mod)
    sch.get_sblock("root")
    yield "default schedule", sch
    hand = schedule_softmax_rows(mod, lanes)
    if hand is not None:
        yield "hand-written schedule", hand


def is_hand_written(trace: Any, workload: Any, lanes: int) -> bool:
    """True when ``trace`` is :mod:`.softmax_schedule`'s row schedule of ``workload``."""
    from .softmax_schedule import schedule_softmax_rows

    hand = schedule_softmax_rows(workload, lanes)
    return hand is not None and str(hand.trace) == str(trace)


def is_default_trace(trace: Any) -> bool:
    """True for a trace that changes nothing (block look-ups only): TVM's default schedule."""
    return all(inst.kind.name in ("GetSBlock", "GetBlock") for inst in trace.insts)


def overlay_into(base: Path, work_db: Path, dest: Path, exclude: Sequence[str] = (),
                 lanes: Optional[int] = None) -> dict:
    """Write ``dest`` (replaced): for every workload ``work_db`` measured, its fastest record there
    (which may be TVM's default schedule, :func:`remeasure_into`); ``base``'s record for every
    other workload; ``exclude`` as in :func:`prune_into`, over the whole result. Neither input is
    changed. Returns how many workloads each side decided (``default_here``: of those measured
    here, the default schedule won; ``hand_written_here``, with the target's vector ``lanes``: the
    hand-written softmax schedule won), and how many of each the work database timed."""
    import shutil

    from tvm.s_tir import meta_schedule as ms

    from .tune import _ReadOnlyCopy, open_database

    tmp = Path(tempfile.mkdtemp(prefix="edgeuq-overlay-db-"))
    base_copy = _ReadOnlyCopy(Path(base)) if database_size(base) > 0 else None
    try:
        _copy_whole_lines(work_db, tmp / "work")
        work_recs = open_database(tmp / "work").get_all_tuning_records()
        defaults_timed = sum(is_default_trace(r.trace) for r in work_recs)
        hand_timed = sum(is_hand_written(r.trace, r.workload.mod, lanes) for r in work_recs) if lanes else 0
        prune_into(tmp / "work", tmp / "best")     # the fastest record per workload measured here
        merged = tmp / "merged"
        merged.mkdir()
        for name in ("database_workload.json", "database_tuning_record.json"):
            (merged / name).write_text("")
        out, best = open_database(merged), open_database(tmp / "best")
        counts = {"measured_here": 0, "default_here": 0, "hand_written_here": 0, "from_base": 0}

        def commit(rec: Any) -> bool:
            if any(word in rec.workload.mod.script() for word in exclude):
                return False
            out.commit_tuning_record(ms.database.TuningRecord(rec.trace, out.commit_workload(rec.workload.mod),
                                                              rec.run_secs, rec.target, rec.args_info))
            return True

        for rec in best.get_all_tuning_records():
            if commit(rec):
                counts["measured_here"] += 1
                counts["default_here"] += is_default_trace(rec.trace)
                counts["hand_written_here"] += bool(lanes) and is_hand_written(rec.trace, rec.workload.mod, lanes)
        for rec in (base_copy.db.get_all_tuning_records() if base_copy is not None else []):
            if not best.has_workload(rec.workload.mod):
                counts["from_base"] += commit(rec)
        prune_into(merged, dest)
        return {**counts, "default_schedules_timed": defaults_timed, "hand_written_timed": hand_timed}
    finally:
        if base_copy is not None:
            base_copy.close()
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", required=True, help="target descriptor (e.g. x86-64, x86-64-avx512)")
    p.add_argument("--trials-per-task", type=int, default=64)
    p.add_argument("--light-trials", type=int, default=8)
    p.add_argument("--samples", type=int, nargs="+", default=[16],
                   help="head rows (MC samples for 1 window) to tune; several values tune the head's shape "
                        "buckets (e.g. 1 4 16)")
    p.add_argument("--missing-only", action="store_true",
                   help="tune only tasks with no record in the work database yet")
    p.add_argument("--seed-from-shipped", action="store_true",
                   help="start the work database from the shipped one (its records are kept; provenance "
                        "adds this run to the shipped run's)")
    p.add_argument("--work", help="work database folder (default: a folder under the system temp dir)")
    p.add_argument("--prune-only", action="store_true", help="only copy the work database's best records")
    p.add_argument("--graphs", nargs="+", default=["trunk", "head"], choices=["trunk", "head"],
                   help="graphs whose tasks are tuned (default both)")
    p.add_argument("--only", nargs="+", help="tune only tasks whose kernel name contains one of these (all "
                                             "get --trials-per-task)")
    p.add_argument("--exclude", nargs="+", default=[],
                   help="ship no record for workloads whose TIR mentions one of these words (e.g. softmax: "
                        "TVM's default schedule where the tuned ones measured slower); the work database keeps them")
    p.add_argument("--population", type=int, help="evolutionary search population per round (TVM default 512)")
    p.add_argument("--genetic-iters", type=int, help="evolutionary search genetic iterations per round (default 4)")
    p.add_argument("--vendor", help="write the copy for this CPU vendor's machines (tuning/<target>@<vendor>/: the "
                                    "tasks measured here over the target's shipped database); must be this host's "
                                    "vendor")
    p.add_argument("--retime-base", action="store_true",
                   help="with --vendor: first time the target's shipped record of every task, TVM's default "
                        "schedule of it and (softmax) the hand-written row schedule on this host, into the work "
                        "database, so the fastest measured here wins per task (a record tuned here, the shipped "
                        "one, the hand-written one, or none: the default schedule)")
    p.add_argument("--retime-only", nargs="+", default=[],
                   help="with --retime-base: re-time only the workloads whose TIR mentions one of these words "
                        "(e.g. softmax; the work database keeps what earlier runs timed of the others)")
    a = p.parse_args(argv)
    if a.retime_only and not a.retime_base:
        p.error("--retime-only narrows --retime-base")
    if a.retime_base and not a.vendor:
        p.error("--retime-base compares the target's shipped records on this host: it writes a vendor's copy "
                "(--vendor)")
    if a.vendor:
        from ...hostcpu import cpu_vendor

        try:
            vendor_folder(a.target, a.vendor)
        except ValueError as exc:
            p.error(str(exc))
        if cpu_vendor() != a.vendor:
            p.error(f"--vendor {a.vendor}: this host's CPU is {cpu_vendor() or 'of unknown vendor'}; a vendor's "
                    "database holds records measured on that vendor's CPUs")
        if a.seed_from_shipped:
            p.error("--vendor keeps the target's shipped records for the tasks it does not measure; "
                    "--seed-from-shipped would mix records measured on other CPUs into the comparison")
    for name in ("population", "genetic_iters"):
        if getattr(a, name) is not None and getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    from ...catalog import get_target
    from .targets import tvm_target

    target = tvm_target(get_target(a.target), num_cores=1)
    folder = vendor_folder(a.target, a.vendor) if a.vendor else a.target
    work = Path(a.work) if a.work else Path(tempfile.gettempdir()) / f"edgeuq-tune-{folder}"
    previous = None
    if a.seed_from_shipped:
        previous = seed_work_database(work, SHIPPED_ROOT / a.target)
    if not a.prune_only or a.retime_base:
        work.mkdir(parents=True, exist_ok=True)
        with open(work / "commands.txt", "a", encoding="utf-8") as f:   # every run that measures into it
            f.write("python -m edgeuq.lower.tvm.shipped " + " ".join(sys.argv[1:] if argv is None else argv) + "\n")
    if not a.prune_only:
        with tempfile.TemporaryDirectory(prefix="edgeuq-demo-") as tmp:
            tasks = unique_demo_tasks(demo_graphs(Path(tmp)), target, a.samples, a.graphs)
            if a.missing_only:
                from .tune import _has_record, open_database

                db = open_database(work)
                tasks = [t for t in tasks if not _has_record(db, t)]
            print(f"{len(tasks)} tasks to tune: {sorted(t.task_name for t in tasks)}", flush=True)
            if a.only:
                tasks = [t for t in tasks if any(k in t.task_name for k in a.only)]
                tune_demo(tasks, work, a.trials_per_task, 0, heavy=tuple(a.only), population=a.population,
                          genetic_iters=a.genetic_iters)
            else:
                tune_demo(tasks, work, a.trials_per_task, a.light_trials, population=a.population,
                          genetic_iters=a.genetic_iters)
    retimed = None
    if a.retime_base:
        work.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="edgeuq-demo-") as tmp:   # tasks the base has no record of, too
            demo = [t.dispatched[0] for t in unique_demo_tasks(demo_graphs(Path(tmp)), target, a.samples, a.graphs)]
        retimed = remeasure_into(SHIPPED_ROOT / a.target, work, target, only=a.retime_only, workloads=demo)
        print(f"re-timed here: {retimed['timed']} (shipped records, default schedules, "
              f"{retimed['hand_written_timed']} hand-written softmax schedules), {retimed['failed']} failed")
    if database_size(work) == 0:
        print(f"no records in {work}", file=sys.stderr)
        return 1
    dest = SHIPPED_ROOT / folder
    if a.vendor:
        from .softmax_schedule import float32_lanes

        counts = overlay_into(SHIPPED_ROOT / a.target, work, dest, exclude=a.exclude,
                              lanes=float32_lanes(target))
        base_prov = SHIPPED_ROOT / a.target / "provenance.json"
        import json

        write_provenance(work, dest, a.target, samples=a.samples, command=command_line_of(a, argv), vendor=a.vendor,
                         base={"folder": a.target, "records_kept": counts["from_base"], "excluded": list(a.exclude),
                               "default_schedule_won_here": counts["default_here"],
                               "default_schedules_timed_here": counts["default_schedules_timed"],
                               "hand_written_softmax_won_here": counts["hand_written_here"],
                               "hand_written_softmax_timed_here": counts["hand_written_timed"],
                               **({k: v for k, v in json.loads(base_prov.read_text()).items()
                                   if k in ("tuned", "cpu", "records_measured", "tasks")}
                                  if base_prov.is_file() else {})})
    else:
        prune_into(work, dest, exclude=a.exclude)
        write_provenance(work, dest, a.target, previous=previous, samples=a.samples, command=command_line_of(a, argv))
    print(f"{dest}: {database_size(dest)} records (best per task) from {database_size(work)} in {work}")
    return 0


def seed_work_database(work: Path, shipped: Path) -> Optional[dict]:
    """Start ``work`` from the shipped database of ``shipped`` (its pruned records), returning the
    shipped provenance (None when there is none). A work folder that already holds records is kept."""
    import json
    import shutil

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    if database_size(work) == 0 and database_size(shipped) > 0:
        for name in ("database_workload.json", "database_tuning_record.json"):
            shutil.copyfile(Path(shipped) / name, work / name)
    prov = Path(shipped) / "provenance.json"
    if (work / "seeded-from.json").is_file():
        return json.loads((work / "seeded-from.json").read_text())
    doc = json.loads(prov.read_text()) if prov.is_file() else None
    if doc is not None:
        (work / "seeded-from.json").write_text(json.dumps(doc, indent=2) + "\n")
    return doc


def command_line_of(a: Any, argv: Optional[Sequence[str]]) -> str:
    """This run's command line; for ``--prune-only`` and ``--retime-base``, the runs recorded in the
    work database (``commands.txt``) followed by it (once)."""
    args = list(sys.argv[1:] if argv is None else argv)
    this = "python -m edgeuq.lower.tvm.shipped " + " ".join(args)
    runs = Path(a.work) / "commands.txt" if a.work else None
    if (a.prune_only or a.retime_base) and runs is not None and runs.is_file():
        lines = [line for line in runs.read_text().splitlines() if line.strip()]
        return " ; ".join(lines if lines and lines[-1] == this else [*lines, this])
    return this


def _trials_range(this_run: dict, previous: Optional[dict]) -> dict:
    """Trials per task over the whole database: this run's tasks and the seeded database's."""
    lo = [min(this_run.values())] if this_run else []
    hi = [max(this_run.values())] if this_run else []
    if previous and previous.get("trials_per_task"):
        lo.append(int(previous["trials_per_task"]["min"]))
        hi.append(int(previous["trials_per_task"]["max"]))
    return {"min": min(lo, default=0), "max": max(hi, default=0)}


def tuning_host(target: str) -> str:
    """Where this run measured its trials: the host's CPU and widest ISA, and whether that is above
    the target's (e.g. ``x86-64-avx2`` code tuned on an AVX-512 host: the same instructions run, but
    caches, ports and clocks are that host's, not an AVX2-only CPU's)."""
    from ...catalog import get_target
    from ...hostcpu import cpu_flags, isa_name
    from ...profile.harness import cpu_name
    from .targets import detect_host_target, required_flags

    host = detect_host_target(cpu_flags())
    beyond = sorted(cpu_flags() & frozenset().union(*(required_flags(get_target(t)) for t in (host,)))
                    - required_flags(get_target(target)))
    where = f"{cpu_name()} ({isa_name()}, host target {host})"
    if beyond:
        return (f"{where}: the {target} code was tuned on a host with a wider ISA than the target "
                f"(it also has {', '.join(beyond[:6])}); the code uses only the target's instructions")
    return f"{where}: the target's own ISA level"


def write_provenance(work_db: Path, dest: Path, target: str, previous: Optional[dict] = None,
                     samples: Sequence[int] = (16,), command: Optional[str] = None, vendor: Optional[str] = None,
                     base: Optional[dict] = None) -> dict:
    """``provenance.json`` next to a shipped database: when, where, and how many trials per task.
    With ``previous`` (the provenance of the database the work database was seeded from), the
    earlier run's trials are added and it is kept under ``history``. A vendor's copy
    (``vendor``) says which base database filled the tasks it did not measure (``base``)."""
    import json
    import os
    from collections import Counter

    measured = Counter()
    for line in (Path(work_db) / "database_tuning_record.json").read_text().splitlines():
        try:
            measured[json.loads(line)[0]] += 1
        except ValueError:
            continue
    seeded = int(previous.get("shipped_records", 0)) if previous else 0   # pruned records copied in, not re-measured
    earlier = int(previous.get("records_measured", 0)) if previous else 0
    # the seeded database's workloads come first (one copied record each): this run's trials per task
    this_run = {w: n - (1 if w < seeded else 0) for w, n in measured.items()}
    this_run = {w: n for w, n in this_run.items() if n > 0}
    from ...profile.harness import cpu_name

    cpu = cpu_name()
    rows = ", ".join(str(int(n)) for n in samples)
    doc = {"target": target, "architecture": f"bearing-demo (trunk 1 window, head {rows} rows)",
           "tuned": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu, "cores": os.cpu_count(),
           "tuning_host": tuning_host(target),
           "records_measured": sum(measured.values()) - seeded + earlier, "tasks": len(measured),
           "trials_per_task": _trials_range(this_run, previous),
           "tasks_tuned_this_run": len(this_run),
           "trials_per_task_this_run": {"min": min(this_run.values(), default=0),
                                        "max": max(this_run.values(), default=0)},
           "shipped_records": database_size(dest),
           "command": command or f"python -m edgeuq.lower.tvm.shipped --target {target}",
           "note": "trials are timed on the tuning host while it runs whatever else it runs; the load average when "
                   "the database was written says how busy it was (tasks absent here use TVM's default schedules)",
           "load_average_when_written": [round(v, 2) for v in os.getloadavg()]}
    if vendor:
        doc["vendor"] = vendor
        doc["base"] = dict(base or {})
        doc["note"] += (f"; a copy for {vendor} CPUs: records_measured and trials count only the records measured "
                        "on this host (tuning trials, and with --retime-base the target's shipped records, TVM's "
                        "default schedules and the hand-written softmax schedules re-timed here; a record whose "
                        "trace only looks up the root block is the default schedule, measured fastest here), "
                        f"the other {doc['base'].get('records_kept', 0)} records (base) are the target's shipped "
                        "ones, measured where that database was tuned")
    if previous:
        doc["history"] = [*previous.get("history", []), {k: v for k, v in previous.items() if k != "history"}]
        doc["note"] += ("; this database was seeded from the earlier shipped one (history): its records were kept, "
                        "records_measured adds that run's trials to this run's")
    atomic_write(Path(dest) / "provenance.json", json.dumps(doc, indent=2) + "\n")
    return doc


if __name__ == "__main__":
    sys.exit(main())
