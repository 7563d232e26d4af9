"""TVM lowering (Relax): OnnxArtifact + cpu/CUDA ComputeTarget -> one library per graph.

``compile_tvm(art, target, workdir, **options)`` is registered as ``"tvm"``. Per graph
(trunk, head) it imports the ONNX graph (``relax.frontend.onnx``), compiles it for
the target and exports ``<graph>.so`` with the target's cross compiler; CUDA
kernels are compiled offline into ``<graph>.<arch>.cubin`` (:mod:`.tvm_cuda`).

Batch: an untuned library keeps the ONNX graphs' symbolic batch axis (any batch).
Tuning needs static shapes, so a tuned library (``tune_trials > 0``, or a tuning
database that already holds records for these graphs) is compiled for a fixed
batch: the trunk for ``batch`` windows (default 1, one window at a time), the head
for ``samples * batch`` rows. The ``tvm`` executor chunks and zero-pads other
batch sizes (see ``edgeuq_runtime.executors.tvm``).

Tuning runs only where the code runs (this host's own CPU); for cross and CUDA
targets it needs the device (a MetaSchedule RPC runner), so they are compiled
with the default schedules (CUDA: dlight GPU rules) and say so.

Checks (``check="auto"``): a native target runs both libraries here through the
runtime's own executor and compares them with ONNX Runtime on the same inputs and
noise (and times them); cross targets are run under qemu when the toolchain cache
holds what that needs (:mod:`.tvm_qemu`); otherwise the artifact is labelled
"compile only".
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

from . import CompiledArtifact, CompiledGraph, register_lowerer
from .tvm_targets import compiler_versions, cross_compiler, is_native, tuning_dir, tvm_target

__all__ = ["compile_tvm", "GraphBuild", "graph_io", "TvmNumericsError"]

log = logging.getLogger(__name__)
ROLES = ("trunk", "head")
_OPTIONS = {"tune_trials", "tuning_root", "samples", "batch", "graphs", "check", "atol", "progress", "threads"}


class TvmNumericsError(RuntimeError):
    """A compiled library disagrees with ONNX Runtime beyond the tolerance."""


@dataclass(frozen=True)
class GraphBuild:
    """One compiled graph and how it was made."""

    role: str
    library: Path
    options: Dict[str, Any]
    batch: Optional[int]
    tuning: Dict[str, Any]
    cuda: Optional[Dict[str, Any]]
    seconds: float


def graph_io(onnx_path: Path) -> tuple:
    """``([(name, dtype, dims_without_batch)], [output names])`` of an ONNX graph."""
    import onnx
    from onnx import helper

    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    inputs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        t = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim][1:]
        if any(d is None for d in dims):
            raise ValueError(f"{onnx_path.name}: input {vi.name!r} has a dynamic non-batch axis {dims}; "
                             "only the batch axis may be dynamic")
        inputs.append((vi.name, str(helper.tensor_dtype_to_np_dtype(t.elem_type)), tuple(dims)))
    return inputs, [o.name for o in model.graph.output]


def _import(onnx_path: Path, inputs: Sequence[tuple], batch: Optional[int]) -> Any:
    import onnx
    from tvm.relax.frontend.onnx import from_onnx

    shapes = None if batch is None else {n: [batch, *dims] for n, _, dims in inputs}
    return from_onnx(onnx.load(str(onnx_path)), shape_dict=shapes, keep_params_in_input=False)


def _build_graph(role: str, onnx_path: Path, target: Any, workdir: Path, batch: Optional[int], trials: int,
                 db_dir: Path, say: Callable[[str], None]) -> GraphBuild:
    import tvm

    from .tvm_cuda import compile_kernels, cuda_source
    from .tvm_tune import tune_and_compile

    start = time.perf_counter()
    inputs, outputs = graph_io(onnx_path)
    tt = tvm_target(target, num_cores=1 if batch is not None else None)
    mod = _import(onnx_path, inputs, batch)
    if batch is None:
        say(f"{role}: compiling for {target.name} (default schedules, dynamic batch)")
        ex = tvm.compile(mod, target=tt)
        tuning = {"state": "untuned", "trials": 0}
    else:
        say(f"{role}: compiling for {target.name} (batch {batch}, {trials} tuning trials)")
        ex, report = tune_and_compile(mod, tt, db_dir, trials, progress=say)
        tuning = report.to_json()
    lib = workdir / f"{role}.so"
    cc = cross_compiler(target)
    ex.export_library(str(lib), **({"cc": cc} if cc else {}))
    options: Dict[str, Any] = {
        "inputs": [n for n, _, _ in inputs], "outputs": list(outputs), "batch": batch,
        "shapes": {n: list(d) for n, _, d in inputs}, "dtypes": {n: t for n, t, _ in inputs},
    }
    cuda = None
    if target.kind == "gpu":
        kernels = compile_kernels(cuda_source(ex), target.arch, workdir / f"{role}.{target.arch}.cubin")
        options.update(device="cuda", cuda_kernels={kernels.source_sha256: kernels.path.name})
        cuda = {"file": kernels.path.name, "arch": kernels.arch, "method": kernels.method,
                "compiler": kernels.compiler, "kernels": kernels.kernels, "bytes": kernels.path.stat().st_size}
        say(f"{role}: {kernels.kernels} CUDA kernels -> {kernels.path.name} ({kernels.method})")
    return GraphBuild(role, lib, options, batch, tuning, cuda, time.perf_counter() - start)


@register_lowerer("tvm")
def compile_tvm(art: Any, target: Any, workdir: Path, **options: Any) -> CompiledArtifact:
    """Lower ``art`` for the cpu or CUDA ``target`` into ``workdir`` (see the module docstring).

    Options: ``tune_trials`` (0: no new tuning; reuse the target's database when it
    holds records for these graphs), ``tuning_root`` (folder of per-target databases,
    default ``<toolchains>/tuning``), ``samples`` (MC samples S the head is tuned for,
    default 16), ``batch`` (trunk rows of a tuned library, default 1), ``graphs``
    (roles to compile, default both; the other graph is passed through as ONNX for
    onnxruntime), ``check`` (``"auto"``, ``"none"`` or ``"require"``), ``atol``,
    ``threads`` (for the latency check), ``progress`` (a ``str -> None`` callable).
    """
    unknown = sorted(set(options) - _OPTIONS)
    if unknown:
        raise TypeError(f"unknown tvm lowering options {unknown}; known: {sorted(_OPTIONS)}")
    from .tvm_check import check_artifact

    if target.kind not in ("cpu", "gpu") or not target.tvm:
        raise ValueError(f"target {target.name!r} is a {target.kind} target: TVM compiles cpu and CUDA targets "
                         "(FPGA targets are lowered by hls4ml)")
    say = options.get("progress") or (lambda msg: log.info(msg))
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    samples = int(options.get("samples") or 16)
    trunk_batch = int(options.get("batch") or 1)
    roles = tuple(options.get("graphs") or ROLES)
    if not set(roles) <= set(ROLES) or not roles:
        raise ValueError(f"graphs must be a non-empty subset of {ROLES}, got {roles!r}")
    trials = int(options.get("tune_trials") or 0)
    notes = []
    runnable_here = is_native(target) and target.kind == "cpu"
    if trials and not runnable_here:
        notes.append(f"tuning skipped: {target.name} code does not run on this host (needs a MetaSchedule RPC "
                     "runner on the device); default schedules used")
        say(notes[-1])
        trials = 0
    db_dir = tuning_dir(target.name, options.get("tuning_root"))
    builds: Dict[str, GraphBuild] = {}
    for role in roles:
        onnx_path = Path(art.trunk_path if role == "trunk" else art.head_path)
        batch = trunk_batch if role == "trunk" else samples * trunk_batch
        if trials == 0 and not _has_records(onnx_path, target, db_dir, batch):
            batch = None
        builds[role] = _build_graph(role, onnx_path, target, workdir, batch, trials, db_dir, say)
    check = check_artifact(art, target, builds, mode=options.get("check", "auto"), samples=samples,
                           atol=options.get("atol"), threads=options.get("threads"), progress=say)
    graphs = {role: (CompiledGraph(file=b.library, backend="tvm", options=b.options) if role in builds else
                     CompiledGraph(file=Path(art.trunk_path if role == "trunk" else art.head_path),
                                   backend="onnxruntime"))
              for role, b in ((r, builds.get(r)) for r in ROLES)}
    extra = {b.cuda["file"]: b.library.parent / b.cuda["file"] for b in builds.values() if b.cuda}
    cuda_versions = {"cuda": sorted({b.cuda["compiler"] for b in builds.values() if b.cuda})} if extra else {}
    metadata = {
        "backend": "tvm", "target": target.name, "tvm_target": str(tvm_target(target)),
        "compilers": compiler_versions(target, cuda_versions),
        "graphs": {r: {"batch": b.batch, "tuning": b.tuning, "cuda": b.cuda, "seconds": round(b.seconds, 2),
                       "bytes": b.library.stat().st_size} for r, b in builds.items()},
        "tuning": _overall_state(builds), "check": check, "notes": notes,
    }
    return CompiledArtifact(target=target.name, trunk=graphs["trunk"], head=graphs["head"], extra_files=extra,
                            metadata=metadata)


def _has_records(onnx_path: Path, target: Any, db_dir: Path, batch: int) -> bool:
    """True when the target's tuning database holds a record for any task of this graph."""
    from .tvm_tune import database_size, matching_records

    if database_size(db_dir) == 0:
        return False
    inputs, _ = graph_io(onnx_path)
    return matching_records(_import(onnx_path, inputs, batch), tvm_target(target, num_cores=1), db_dir) > 0


def _overall_state(builds: Dict[str, GraphBuild]) -> str:
    states = sorted({b.tuning["state"] for b in builds.values()})
    return states[0] if len(states) == 1 else "mixed: " + ", ".join(f"{r}={b.tuning['state']}"
                                                                      for r, b in builds.items())
