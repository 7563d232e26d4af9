"""MetaSchedule tuning for the TVM lowering, with a per-target database reused across runs.

Why a custom builder and runner: MetaSchedule's stock ``LocalBuilder`` starts a
fresh pool of worker processes for every batch of candidates, and each worker
spends ~25 s importing ``tvm.s_tir.tensor_intrin`` on a 2-core machine, against
a 30 s build timeout (build errors and ~35 s per task). Building and timing in
the main process, one candidate after another, has none of that start-up cost
(measured: see ``docs/targets.md``). The cost is isolation: a candidate that
crashes would take the process down, which has not been seen on CPU targets.

The database is MetaSchedule's JSON database (``database_workload.json`` +
``database_tuning_record.json``) in one folder per target; tuning appends to it,
and compiling with ``tune_trials=0`` applies whatever it already holds, so a
second ``edgeuq compile`` of the same graphs reuses the tuned schedules.

Shipped database: the package carries a pruned database (the best record per task) for
the demo architecture (``bearing-demo``: trunk on 1 window, head on 16 rows) per x86
target, in ``edgeuq/lower/tvm/tuning/<target>/`` (:func:`shipped_dir`). Tuning tasks
are keyed by the structure of the fused kernels, not by weights, so it applies to any
trained model of that architecture; compiling applies it together with the user's
database (the faster record per task wins) and reports state ``tuned (shipped
database)`` when only shipped records matched. Regenerate it with
``python -m edgeuq.lower.tvm.shipped`` (see that module). A target may also ship copies retuned
on one CPU vendor's machines, ``tuning/<target>@<vendor>/`` (schedules tuned on an AMD EPYC can
be slower than TVM's default on an Intel Xeon of the same ISA): the lowering prefers the copy of
the vendor of the CPU that runs the code (``TvmOptions.tuning_vendor``).
"""
from __future__ import annotations

import logging
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple

__all__ = ["TuneReport", "tune_and_compile", "open_database", "database_size", "matching_records", "prepare_for_tuning",
           "shipped_dir", "vendor_folder", "heavy_coverage", "HEAVY_KERNELS", "SHIPPED_ROOT", "SHIPPED_STATE",
           "META_SCHEDULE_LOGGER", "drop_unnamed_meta_schedule_handlers"]

#: Kernel-name fragments of the tasks that dominate the time (matmul and conv: 80-90 % of the
#: untuned time, see ``docs/targets.md``).
HEAVY_KERNELS = ("matmul", "conv")

#: Per-target pruned databases that ship with the package (``<target name>/database_*.json``).
SHIPPED_ROOT = Path(__file__).resolve().parent / "tuning"
#: The tuning state of a graph whose schedules came from the shipped database only.
SHIPPED_STATE = "tuned (shipped database)"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TuneReport:
    """What tuning did for one graph."""

    trials_requested: int
    tasks: int
    records_before: int
    records_after: int
    seconds: float
    database: str
    user_tasks: int = 0            # tasks of this graph with a workload in the user's database
    shipped_tasks: int = 0         # tasks of this graph with a record in the shipped database
    shipped_database: str = ""     # the shipped database folder consulted ("" when none)

    @property
    def state(self) -> str:
        """``tuned`` (trials run now), ``reused`` (the user's database matched), ``tuned (shipped
        database)`` (only the shipped database matched) or ``untuned``."""
        if self.trials_requested > 0:
            return "tuned"
        if self.records_before > 0 and self.user_tasks > 0:
            return "reused"
        return SHIPPED_STATE if self.shipped_tasks > 0 else "untuned"

    def to_json(self) -> dict:
        return {"state": self.state, "trials": self.trials_requested, "tasks": self.tasks,
                "records": self.records_after, "seconds": round(self.seconds, 2), "database": self.database,
                "user_tasks": self.user_tasks, "shipped_tasks": self.shipped_tasks,
                "shipped_database": self.shipped_database}


def _ms() -> Any:
    from tvm.s_tir import meta_schedule as ms  # heavy import: only when tuning is used

    return ms


def open_database(db_dir: Path) -> Any:
    """The JSON tuning database in ``db_dir`` (created when missing)."""
    ms = _ms()
    db_dir = Path(db_dir)
    db_dir.mkdir(parents=True, exist_ok=True)
    return ms.database.JSONDatabase(path_workload=str(db_dir / "database_workload.json"),
                                    path_tuning_record=str(db_dir / "database_tuning_record.json"))


def database_size(db_dir: Path) -> int:
    """Number of tuning records stored in ``db_dir`` (0 when there is no database)."""
    path = Path(db_dir) / "database_tuning_record.json"
    if not path.is_file():
        return 0
    return sum(1 for line in path.read_text().splitlines() if line.strip())


def shipped_dir(target_name: str, vendor: Optional[str] = None) -> Optional[Path]:
    """The shipped database folder of a target, or None when the package has none for it.

    With ``vendor`` (``intel``, ``amd``, ...: :func:`edgeuq.hostcpu.cpu_vendor`), that vendor's
    copy ``<target>@<vendor>`` where the package ships one (the target's database with the tasks
    retuned on that vendor's CPUs, :func:`.shipped.overlay_into`), else the target's own."""
    names = ([vendor_folder(target_name, vendor)] if vendor else []) + [str(target_name)]
    for name in names:
        d = SHIPPED_ROOT / name
        if database_size(d) > 0 and (d / "database_workload.json").is_file():
            return d
    return None


def vendor_folder(target_name: str, vendor: str) -> str:
    """The folder name of a target's database retuned on one CPU vendor's machines."""
    from ...hostcpu import check_vendor_name

    return f"{target_name}@{check_vendor_name(vendor)}"


class _ReadOnlyCopy:
    """A JSON database opened on a private copy of a (possibly read-only, installed) folder:
    MetaSchedule may append workloads to the files it opens."""

    def __init__(self, src: Path) -> None:
        self._tmp = Path(tempfile.mkdtemp(prefix="edgeuq-shipped-db-"))
        for name in ("database_workload.json", "database_tuning_record.json"):
            shutil.copyfile(Path(src) / name, self._tmp / name)
        self.db = open_database(self._tmp)

    def close(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)


def _has_record(db: Any, task: Any) -> bool:
    mod = task.dispatched[0]
    return bool(db.has_workload(mod)) and len(db.get_top_k(db.commit_workload(mod), 1)) > 0


def _make_in_process_builder(cc: Optional[str] = None) -> Any:
    """MetaSchedule builder in this process; ``cc``: the target's cross compiler (an aarch64 board's
    candidates are exported with it, so its RPC servers can load them), else the host's."""
    ms = _ms()
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.builder.local_builder import default_build, default_export
    from tvm.ir.utils import derived_object

    @derived_object
    class InProcessBuilder(PyBuilder):
        """Builds each candidate in this process (no worker start-up, no build timeout)."""

        def build(self, build_inputs: List[Any]) -> List[Any]:
            out = []
            for bi in build_inputs:
                try:
                    with warnings.catch_warnings():  # default_build calls the deprecated tvm.build
                        warnings.simplefilter("ignore", DeprecationWarning)
                        lib = default_build(bi.mod, bi.target, None)
                    out.append(BuilderResult(default_export(lib) if cc is None else _cross_export(lib, cc), None))
                except Exception as exc:  # a failed candidate is a result, not a crash
                    out.append(BuilderResult(None, f"InProcessBuilder: {type(exc).__name__}: {exc}"))
            return out

    del ms
    return InProcessBuilder()


def _cross_export(lib: Any, cc: str) -> str:
    """Export a candidate with the target's cross compiler into a fresh temporary folder (what
    MetaSchedule's ``default_export`` does with the host compiler); the runner uploads the file."""
    path = Path(tempfile.mkdtemp(prefix="edgeuq-tune-")) / "candidate.so"
    lib.export_library(str(path), cc=cc)
    return str(path)


def _make_in_process_runner(number: int = 3, repeat: int = 1, min_repeat_ms: int = 20) -> Any:
    import tvm
    from tvm.s_tir.meta_schedule.runner import EvaluatorConfig, PyRunner
    from tvm.s_tir.meta_schedule.runner.local_runner import (
        LocalRunnerFuture, default_alloc_argument, default_run_evaluator,
    )
    from tvm.ir.utils import derived_object

    config = EvaluatorConfig(number=number, repeat=repeat, min_repeat_ms=min_repeat_ms)

    @derived_object
    class InProcessRunner(PyRunner):
        """Times each built candidate in this process with ``time_evaluator``."""

        def run(self, runner_inputs: List[Any]) -> List[Any]:
            futures = []
            for ri in runner_inputs:
                try:
                    mod = tvm.runtime.load_module(ri.artifact_path)
                    dev = tvm.runtime.device(ri.device_type, 0)
                    args = default_alloc_argument(dev, tuple(a.as_json() for a in ri.args_info), 1)
                    futures.append(LocalRunnerFuture(res=default_run_evaluator(mod, dev, config, args)))
                except Exception as exc:
                    futures.append(LocalRunnerFuture(error_message=f"InProcessRunner: {exc}"))
            return futures

    return InProcessRunner()


def _tunable(task: Any) -> bool:
    """Tasks whose inputs are all floating point. Gather-like tasks (``take``) read integer
    indices, which the measurement fills with random values: out-of-bounds reads that
    crash the process. They are cheap and keep their default schedule."""
    func = next(iter(task.dispatched[0].functions.values()))
    return all("float" in str(getattr(p, "dtype", "float32")) for p in func.params)


def prepare_for_tuning(mod: Any, target: Any) -> Any:
    """Legalize and fuse (the "zero" pipeline): MetaSchedule finds tasks only after it. CPU
    targets legalize softmax / erf / exp through vectorizable versions (:mod:`.fastmath`)."""
    import tvm
    from tvm import relax

    from .fastmath import fast_math_legalize

    first = [fast_math_legalize()] if target.kind.name == "llvm" else [relax.transform.DecomposeOpsForInference()]
    with target:
        seq = tvm.transform.Sequential([*first, relax.transform.CanonicalizeBindings(), relax.get_pipeline("zero")])
        return seq(mod)


def tune_and_compile(mod: Any, target: Any, db_dir: Path, trials: int,
                     progress: Optional[Callable[[str], None]] = None, shipped: Optional[Path] = None,
                     rpc: Optional[tuple] = None, cc: Optional[str] = None,
                     allow_emulated: bool = False) -> tuple:
    """Tune ``mod`` (static shapes) for ``trials`` MetaSchedule trials (0: reuse the
    database only) and compile it with the database applied; ``shipped`` (a folder from
    :func:`shipped_dir`) is applied too, read-only: per task the faster record wins.
    ``rpc=(tracker HOST:PORT, key)``: candidates are built here and measured on the tracker's
    boards of that key (MetaSchedule's ``RPCRunner``, one worker per free board); the run is
    appended to ``db_dir/farm_tuning.json`` (tracker, key, boards, trials, records, date). ``cc``:
    the target's cross compiler, with which candidates are exported for the boards. A key with an
    emulated (qemu) server is refused unless ``allow_emulated`` (tests of the route only): then the
    run is recorded ``"emulated": true``, its times are not board times.

    Returns ``(executable, TuneReport)``. Functions with no record fall back to the
    default schedule (GPU: dlight rules).
    """
    ms = _ms()
    say = progress or (lambda msg: log.info(msg))
    before = database_size(db_dir)
    start = time.perf_counter()
    db = open_database(db_dir)
    mod = prepare_for_tuning(mod, target)
    tasks = ms.relax_integration.extract_tasks(mod, target)
    tunable = [t for t in tasks if _tunable(t)]
    user_tasks = sum(1 for t in tasks if db.has_workload(t.dispatched[0])) if before else 0
    copy = _ReadOnlyCopy(Path(shipped)) if shipped is not None else None
    try:
        shipped_tasks = sum(1 for t in tasks if _has_record(copy.db, t)) if copy is not None else 0
        if copy is not None:
            say(f"shipped tuning database {shipped}: records for {shipped_tasks} of {len(tasks)} tasks")
        servers = _board_servers(rpc, say, allow_emulated) if rpc is not None and trials > 0 and tunable else []
        executable = _tune_then_compile(ms, mod, target, db, db_dir, trials, tunable, tasks, before, say,
                                        copy.db if copy is not None and shipped_tasks else None, rpc, cc)
    finally:
        if copy is not None:
            copy.close()
    report = TuneReport(trials_requested=trials, tasks=len(tasks), records_before=before,
                        records_after=database_size(db_dir), seconds=time.perf_counter() - start,
                        database=str(db_dir), user_tasks=user_tasks, shipped_tasks=shipped_tasks,
                        shipped_database=str(shipped) if shipped is not None else "")
    say(f"tuning state {report.state}: {report.records_after} records, {report.seconds:.1f} s")
    if rpc is not None and trials > 0 and tunable:
        _record_farm_run(db_dir, rpc, trials, report, str(target), servers)
    return executable, report


def _board_servers(rpc: tuple, say: Callable[[str], None], allow_emulated: bool = False) -> List[Tuple[str, bool]]:
    """The addresses of the free servers of the tracker key ``rpc = (tracker, key)``, after
    checking that none declares itself emulated: MetaSchedule stores every candidate's measured
    time in the database as a board time, so a key with a qemu server (whose times say nothing
    about a board) is refused before tuning starts."""
    from ...profile.tracker_boards import survey_boards

    found = survey_boards(rpc[0], rpc[1])
    emulated = [f"{addr} ({label})" for addr, label in found if label is not None]
    if emulated and allow_emulated:
        say(f"tracker {rpc[0]} key {rpc[1]!r}: EMULATED server(s) {'; '.join(emulated)}: their times are not "
            "board times (the run is recorded as emulated)")
    elif emulated:
        raise RuntimeError(f"tracker {rpc[0]} key {rpc[1]!r}: {len(emulated)} of {len(found)} server(s) are "
                           f"emulated, not boards: {'; '.join(emulated)}. Tuning stores every measured time in the "
                           "database as a board time, so it refuses this key: register emulated servers under a "
                           "key of their own (edgeuq profile labels their reports emulated)")
    say(f"tracker {rpc[0]} key {rpc[1]!r}: {len(found)} board(s), none emulated: {', '.join(a for a, _ in found)}")
    return [(addr, label is not None) for addr, label in found]


def _record_farm_run(db_dir: Path, rpc: tuple, trials: int, report: Any, target: str,
                     servers: Sequence[Tuple[str, bool]] = ()) -> None:
    """Append where a database's records were measured (the boards of a tracker key) to
    ``farm_tuning.json`` next to it: tuning databases ship with their provenance."""
    import json

    path = Path(db_dir) / "farm_tuning.json"
    runs = json.loads(path.read_text()) if path.is_file() else []
    emulated = any(e for _, e in servers)
    runs.append({"tracker": rpc[0], "key": rpc[1],
                 "measured_on": (f"EMULATED (qemu) servers of key {rpc[1]!r}: not board times" if emulated
                                 else f"TVM RPC boards of key {rpc[1]!r}"),
                 "servers": [a for a, _ in servers], "emulated": emulated,
                 "target": target,
                 "trials_requested": trials, "records_before": report.records_before,
                 "records_after": report.records_after, "seconds": round(report.seconds, 1),
                 "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(runs, indent=2) + "\n")
    tmp.replace(path)


def _make_rpc_runner(rpc: tuple, say: Callable[[str], None]) -> Any:  # noqa: D401
    """MetaSchedule's RPCRunner on the free boards of a tracker key (one worker per board)."""
    from ...profile.tracker_boards import free_boards
    from ...profile.tvm_rpc import parse_address

    ms = _ms()
    host, port = parse_address(rpc[0], "--tracker")
    free = free_boards(rpc[0], rpc[1])
    if free < 1:
        raise RuntimeError(f"tracker {rpc[0]}: no free board of key {rpc[1]!r} to tune on")
    say(f"tuning on {free} board(s) of key {rpc[1]!r} through tracker {rpc[0]} (built here, measured there)")
    cfg = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=rpc[1], session_timeout_sec=120)
    return ms.runner.RPCRunner(rpc_config=cfg, evaluator_config=ms.runner.EvaluatorConfig(
        number=3, repeat=1, min_repeat_ms=20), max_workers=free)


#: MetaSchedule's own logger; its logging set-up refers to the handlers already on it by name
META_SCHEDULE_LOGGER = "tvm.s_tir.meta_schedule"


def drop_unnamed_meta_schedule_handlers() -> List[logging.Handler]:
    """Detach the handlers without a name from MetaSchedule's logger and return them.

    Every tuning run re-configures that logger with ``logging.config.dictConfig``, listing the
    handlers already on it by name; an unnamed one (attached by another library, a test harness
    or the user) makes that set-up fail with ``'NoneType' object has no attribute 'format'``. The
    set-up replaces the logger's handlers anyway, so dropping them first changes nothing else."""
    logger = logging.getLogger(META_SCHEDULE_LOGGER)
    dropped = [h for h in logger.handlers if h.get_name() is None]
    for h in dropped:
        logger.removeHandler(h)
    if dropped:
        log.warning("tuning: detached %d unnamed logging handler(s) from %s (MetaSchedule's logging set-up "
                    "replaces them and cannot refer to a handler without a name)", len(dropped), META_SCHEDULE_LOGGER)
    return dropped


def _tune_then_compile(ms: Any, mod: Any, target: Any, db: Any, db_dir: Path, trials: int, tunable: list,
                       tasks: list, before: int, say: Callable[[str], None], shipped_db: Any,
                       rpc: Optional[tuple] = None, cc: Optional[str] = None) -> Any:
    if trials > 0 and tunable:
        say(f"tuning {len(tunable)} of {len(tasks)} tasks, {trials} trials in all (database {db_dir}, "
            f"{before} records before)")
        drop_unnamed_meta_schedule_handlers()
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
            extracted_tasks=tunable, work_dir=str(db_dir), space="post-order-apply", strategy="evolutionary", seed=0)
        ms.tune.tune_tasks(
            tasks=contexts, task_weights=weights, work_dir=str(db_dir), max_trials_global=trials,
            max_trials_per_task=max(8, -(-trials // len(tunable))), num_trials_per_iter=min(64, max(8, trials)),
            builder=_make_in_process_builder(cc),
            runner=_make_rpc_runner(rpc, say) if rpc is not None else _make_in_process_runner(), database=db,
            cost_model="xgb", task_scheduler="round-robin",
        )
    import tvm
    from tvm import relax

    from .softmax_schedule import softmax_rows_pass

    apply = ms.database.UnionDatabase(db, shipped_db) if shipped_db is not None else db
    with target, apply, tvm.transform.PassContext(opt_level=3):
        mod = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
        mod = softmax_rows_pass()(mod)    # softmax kernels no record scheduled (CPU targets)
    return tvm.compile(mod, target=target)


def matching_records(mod: Any, target: Any, db_dir: Path, shipped: Optional[Path] = None) -> int:
    """How many of ``mod``'s tuning tasks (static shapes) have a workload in the user's database
    or a record in the ``shipped`` one."""
    ms = _ms()
    tasks = ms.relax_integration.extract_tasks(prepare_for_tuning(mod, target), target)
    dbs = [open_database(db_dir)] if database_size(db_dir) > 0 else []
    copy = _ReadOnlyCopy(Path(shipped)) if shipped is not None else None
    try:
        return sum(1 for t in tasks if any(db.has_workload(t.dispatched[0]) for db in dbs)
                   or (copy is not None and _has_record(copy.db, t)))
    finally:
        if copy is not None:
            copy.close()


def heavy_coverage(mod: Any, target: Any, db_dir: Path, shipped: Optional[Path] = None) -> tuple:
    """``(covered, total)``: how many of ``mod``'s heavy tuning tasks (:data:`HEAVY_KERNELS`, static
    shapes) have a record in the user's database or the ``shipped`` one."""
    ms = _ms()
    tasks = [t for t in ms.relax_integration.extract_tasks(prepare_for_tuning(mod, target), target)
             if any(k in t.task_name for k in HEAVY_KERNELS)]
    dbs = [open_database(db_dir)] if database_size(db_dir) > 0 else []
    copy = _ReadOnlyCopy(Path(shipped)) if shipped is not None else None
    try:
        covered = sum(1 for t in tasks if any(_has_record(db, t) for db in dbs)
                      or (copy is not None and _has_record(copy.db, t)))
    finally:
        if copy is not None:
            copy.close()
    return covered, len(tasks)
