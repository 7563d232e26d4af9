"""TVM lowering (Relax): OnnxArtifact + cpu/CUDA ComputeTarget -> one library per graph.

The :class:`TvmLowerer` is registered as ``"tvm"``; its options are :class:`TvmOptions`. Per graph
(trunk, head) it imports the ONNX graph (``relax.frontend.onnx``), compiles it for
the target and exports ``<graph>.so`` with the target's cross compiler; CUDA
kernels are compiled offline into ``<graph>.<arch>.cubin`` (:mod:`.cuda`).

Batch: an untuned library keeps the ONNX graphs' symbolic batch axis (any batch).
Tuning needs static shapes, so a tuned library (``tune_trials > 0``, or a tuning
database that already holds records for these graphs) is compiled for a fixed
batch: the trunk for ``batch`` windows (default 1, one window at a time), the head
for ``samples * batch`` rows. The ``tvm`` executor chunks and zero-pads other
batch sizes (see ``edgeuq_runtime.executors.tvm``).

Shape buckets (``head_buckets``, default S = 1, 4, 8, 16, 32): a tuned head library
also holds one function per bucket whose heavy kernels (matmul) the databases cover,
so a call with few samples runs in the smallest bucket that holds it instead of
being padded to ``samples`` rows. Buckets without tuning records are left out (default
schedules can be slower than padding to a tuned bucket); the metadata lists each
candidate's coverage.

A tuning database for the demo architecture ships with the package per x86 target
(:func:`.tune.shipped_dir`); with ``tune_trials=0`` it is applied when its tasks match
these graphs (the evidence's tuning state then says ``tuned (shipped database)``), and
the libraries are compiled for the fixed batch it was tuned for. ``shipped_database=False``
ignores it (a plain untuned build).

Tuning runs only where the code runs (this host's own CPU); for cross and CUDA
targets it needs the device (a MetaSchedule RPC runner), so they are compiled
with the default schedules (CUDA: dlight GPU rules) and say so.

Checks (``check="auto"``): a native target runs both libraries here through the
runtime's own executor and compares them with ONNX Runtime on the same inputs and
noise (and times them); cross targets are run under qemu when the toolchain cache
holds what that needs (:mod:`.qemu`); otherwise the artifact is labelled
"compile only".
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from ..base import (CompiledArtifact, CompiledGraph, CompileSettings, CpuRequirement, Lowerer, options_from_kwargs,
                    register_lowerer)
from .build import ROLES, GraphBuild, build_graph, has_records, overall_state, tuned_buckets
from .check import CHECK_MODES, check_artifact
from .targets import compiler_versions, host_target, is_native, required_flags, tuning_dir, tvm_target
from .tune import shipped_dir

__all__ = ["TvmLowerer", "TvmOptions", "compile_tvm"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TvmOptions:
    """Options of the TVM lowering.

    ``tune_trials`` (0: no new tuning; reuse the target's database when it holds records
    for these graphs), ``tuning_root`` (folder of per-target databases, default
    ``<toolchains>/tuning``), ``samples`` (MC samples S the head is tuned for), ``batch``
    (trunk rows of a tuned library), ``graphs`` (roles to compile; the other graph is
    passed through as ONNX for onnxruntime), ``check`` (``"auto"``, ``"none"`` or
    ``"require"``), ``atol``, ``threads`` (for the latency check), ``progress`` (a
    ``str -> None`` callable), ``shipped_database`` (apply the package's tuning database
    for the target when its tasks match the graphs; default True).
    """

    tune_trials: int = 0
    tuning_root: Optional[Path] = None
    samples: int = 16
    batch: int = 1
    graphs: Tuple[str, ...] = ROLES
    check: str = "auto"
    atol: Optional[float] = None
    threads: Optional[int] = None
    progress: Optional[Callable[[str], None]] = None
    shipped_database: bool = True
    head_buckets: Tuple[int, ...] = (1, 4, 8, 16, 32)
    #: ``(tracker HOST:PORT, key)``: MetaSchedule measures candidates on the tracker's boards (RPCRunner)
    tune_rpc: Optional[Tuple[str, str]] = None

    def __post_init__(self) -> None:
        graphs = tuple(self.graphs or ROLES)
        if not graphs or not set(graphs) <= set(ROLES):
            raise ValueError(f"graphs must be a non-empty subset of {ROLES}, got {self.graphs!r}")
        object.__setattr__(self, "graphs", graphs)
        object.__setattr__(self, "samples", int(self.samples or 16))
        object.__setattr__(self, "batch", int(self.batch or 1))
        object.__setattr__(self, "tune_trials", int(self.tune_trials or 0))
        buckets = tuple(self.head_buckets or ())
        if not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in buckets):
            raise ValueError(f"head_buckets must be integers >= 1 (MC samples), got {self.head_buckets!r}")
        object.__setattr__(self, "head_buckets", tuple(sorted(set(buckets))))
        if self.check not in CHECK_MODES:
            raise ValueError(f"check must be one of {CHECK_MODES}, got {self.check!r}")


@register_lowerer("tvm")
class TvmLowerer(Lowerer):
    """cpu and CUDA targets through TVM Relax (see the module docstring)."""

    Options = TvmOptions

    def options_for(self, settings: CompileSettings, roles: Sequence[str]) -> TvmOptions:
        return TvmOptions(graphs=tuple(roles), tune_trials=settings.tune_trials, samples=settings.samples,
                          tuning_root=settings.tuning_root, progress=settings.progress,
                          tune_rpc=settings.tune_rpc)

    def cpu_requirement(self, target: Any) -> CpuRequirement:
        """A TVM library is machine code for the target's CPU (a CUDA target's: its host CPU): that
        architecture, with every flag of the target's ISA level (``[tvm] mcpu``)."""
        return CpuRequirement((host_target(target) or target).arch, required_flags(target))

    def lower(self, art: Any, target: Any, workdir: Path, options: TvmOptions) -> CompiledArtifact:
        if target.kind not in ("cpu", "gpu") or not target.tvm:
            raise ValueError(f"target {target.name!r} is a {target.kind} target: TVM compiles cpu and CUDA "
                             "targets (FPGA targets are lowered by hls4ml)")
        say = options.progress or (lambda msg: log.info(msg))
        workdir = Path(workdir).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        samples, trunk_batch, trials = options.samples, options.batch, options.tune_trials
        notes = []
        runnable_here = is_native(target) and target.kind == "cpu"
        if trials and not runnable_here:
            notes.append(f"tuning skipped: {target.name} code does not run on this host (needs a MetaSchedule "
                         "RPC runner on the device); default schedules used")
            say(notes[-1])
            trials = 0
        db_dir = tuning_dir(target.name, options.tuning_root)
        shipped = shipped_dir(target.name) if options.shipped_database else None
        builds: Dict[str, GraphBuild] = {}
        for role in options.graphs:
            onnx_path = Path(art.trunk_path if role == "trunk" else art.head_path)
            batch: Optional[int] = trunk_batch if role == "trunk" else samples * trunk_batch
            if trials == 0 and not has_records(onnx_path, target, db_dir, batch, shipped):
                batch = None
            buckets, coverage = (), {}
            if role == "head" and batch is not None and options.head_buckets:
                buckets, coverage = tuned_buckets(onnx_path, target, db_dir,
                                                  [b * trunk_batch for b in options.head_buckets], batch, shipped)
                say(f"head: shape buckets {list(buckets)} rows (heavy tasks with tuning records per candidate: "
                    + ", ".join(f"{r} rows {c}" for r, c in coverage.items()) + ")")
                batch = buckets[-1]
            build = build_graph(role, onnx_path, target, workdir, batch, trials, db_dir, say, shipped, buckets,
                                rpc=options.tune_rpc)
            builds[role] = GraphBuild(**{**build.__dict__, "bucket_coverage": coverage})
        evidence = check_artifact(art, target, builds, mode=options.check, samples=samples, atol=options.atol,
                                  threads=options.threads, progress=say)
        graphs = {role: (CompiledGraph(file=b.library, backend="tvm", options=b.options) if b is not None else
                         CompiledGraph(file=Path(art.trunk_path if role == "trunk" else art.head_path),
                                       backend="onnxruntime"))
                  for role, b in ((r, builds.get(r)) for r in ROLES)}
        extra = {b.cuda["file"]: b.library.parent / b.cuda["file"] for b in builds.values() if b.cuda}
        cuda_versions = {"cuda": sorted({b.cuda["compiler"] for b in builds.values() if b.cuda})} if extra else {}
        metadata = {
            "backend": "tvm", "target": target.name, "tvm_target": str(tvm_target(target)),
            "compilers": compiler_versions(target, cuda_versions),
            "graphs": {r: {"batch": b.batch, "tuning": b.tuning, "cuda": b.cuda, "seconds": round(b.seconds, 2),
                           "bytes": b.library.stat().st_size,
                           **({"buckets": list(b.buckets) or [b.batch],
                               "bucket_coverage": {str(k): v for k, v in b.bucket_coverage.items()}}
                              if b.batch is not None and r == "head" else {})}
                       for r, b in builds.items()},
            "tuning": overall_state(builds), "notes": notes,
            "shipped_database": _shipped_record(target.name, shipped, options.shipped_database),
        }
        return CompiledArtifact(target=target.name, trunk=graphs["trunk"], head=graphs["head"], evidence=evidence,
                                extra_files=extra, metadata=metadata)


def _shipped_record(target_name: str, shipped: Optional[Path], enabled: bool) -> Dict[str, Any]:
    """Which shipped tuning database the build consulted: its target (the ISA it was tuned for, which
    must be this target's), when, where and how many trials; or why none."""
    if not enabled:
        return {"used": False, "why": "switched off (shipped_database=False)"}
    if shipped is None:
        return {"used": False, "why": f"the package ships no tuning database for {target_name}"}
    prov_file = Path(shipped) / "provenance.json"
    prov = json.loads(prov_file.read_text()) if prov_file.is_file() else {}
    if prov.get("target", target_name) != target_name:
        raise ValueError(f"shipped database {shipped} was tuned for {prov.get('target')!r}, not {target_name!r}")
    return {"used": True, "target": target_name, "folder": Path(shipped).name,
            **{k: prov[k] for k in ("tuned", "cpu", "records_measured", "tasks") if k in prov}}


def compile_tvm(art: Any, target: Any, workdir: Path, **options: Any) -> CompiledArtifact:
    """Keyword form of :meth:`TvmLowerer.lower` (options as in :class:`TvmOptions`)."""
    return TvmLowerer().lower(art, target, workdir, options_from_kwargs(TvmOptions, "tvm", options))
