"""Board orchestrator: OnnxArtifact + Board -> one bundle with everything the board's runtime needs.

For each graph (trunk, head) the board descriptor names a target, a lowering
backend and a runtime executor (``[graphs.trunk]``, ``[graphs.head]``). Graphs that
share a (backend, target) are lowered together with :func:`edgeuq.lower.lower`;
each graph then comes from its own lowering. The bundle's manifest records per
graph the executor, its loader options, the target, and the lowering metadata
(compiler versions, tuning state, how it was checked). Finally the result is
compared with the board's budgets (weight bytes measured from the graphs' weights;
latency measured end to end through ``UncertaintyRuntime`` only when every graph
runs natively here, otherwise labelled with why it was not measured).
"""
from __future__ import annotations

import importlib
import shutil
import time
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional

import numpy as np

from edgeuq_runtime.bundle import Bundle, load_bundle, write_bundle
from edgeuq_runtime.manifest import GraphSpec, InputSpec, Manifest

from .. import __version__
from ..catalog import Board, get_board, get_target
from . import LOWERERS, CompiledArtifact, CompiledGraph, lower, register_lowerer

__all__ = ["CompileResult", "compile_board", "LoweringNotAvailable", "lowering_options"]


class LoweringNotAvailable(LookupError, ValueError):
    """A board names a lowering backend that is not registered (or cannot be imported)."""


@dataclass(frozen=True)
class CompileResult:
    board: str
    bundle: Bundle
    report: Dict[str, Any]


@register_lowerer("onnxruntime")
def passthrough_onnxruntime(art: Any, target: Any, workdir: Path, **options: Any) -> CompiledArtifact:
    """No lowering: the ONNX graphs themselves, for the onnxruntime executor."""
    return CompiledArtifact(target=target.name, trunk=CompiledGraph(Path(art.trunk_path), "onnxruntime"),
                            head=CompiledGraph(Path(art.head_path), "onnxruntime"),
                            metadata={"backend": "onnxruntime", "check": {"method": "native (ONNX Runtime)"}})


def _lowerer(name: str, board: Board, roles: list) -> None:
    """Make sure lowering backend ``name`` is registered (importing ``edgeuq.lower.<name>``)."""
    if name in LOWERERS:
        return
    try:
        importlib.import_module(f"{__package__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__package__}.{name}":
            raise LoweringNotAvailable(f"lowering backend {name!r} (board {board.name!r}, graphs {roles}) could "
                                       f"not be imported: {exc}") from exc
    if name not in LOWERERS:
        raise LoweringNotAvailable(f"board {board.name!r} needs lowering backend {name!r} for graphs {roles}, but "
                                   f"it is not registered; registered backends: {sorted(LOWERERS)}")


def lowering_options(name: str, roles: list, tune_trials: int, samples: int, tuning_root: Optional[Path],
                     progress: Callable[[str], None],
                     fpga_precision: Optional[Mapping[str, str]] = None) -> Dict[str, Any]:
    """Options passed to a lowering backend: the TVM ones for "tvm", the per-layer
    ``ap_fixed`` precisions (from a quantization plan) for "hls4ml", none otherwise."""
    if name == "hls4ml":
        return {"precision": dict(fpga_precision)} if fpga_precision else {}
    if name != "tvm":
        return {}
    return {"graphs": roles, "tune_trials": tune_trials, "samples": samples, "tuning_root": tuning_root,
            "progress": progress}


def _graph_file(role: str, graph: CompiledGraph) -> str:
    suffix = "".join(graph.file.suffixes[-2:]) if graph.file.name.endswith(".fpga.json") else graph.file.suffix
    return f"{role}{suffix}"


def compile_board(board: Any, art: Any, out_dir: Path, *, tune_trials: int = 0, samples: Optional[int] = None,
                  tuning_root: Optional[Path] = None, model_name: str = "edgeuq-model", model_version: str = "0.1.0",
                  workdir: Optional[Path] = None, overwrite: bool = False,
                  progress: Optional[Callable[[str], None]] = None,
                  fpga_precision: Optional[Mapping[str, str]] = None) -> CompileResult:
    """Lower ``art`` for every graph placement of ``board`` and write one bundle to ``out_dir``.

    ``fpga_precision`` (``{layer: "ap_fixed<W,I>"}``, e.g. from
    :func:`edgeuq.quantize.plan_to_hls4ml_precision`) sets the FPGA head's
    per-layer fixed-point types; without it hls4ml's defaults apply.
    """
    board = board if isinstance(board, Board) else get_board(str(board))
    say = progress or (lambda msg: None)
    samples = int(samples or board.budgets.mc_samples)
    groups: Dict[tuple, list] = {}
    for role, p in board.graphs.items():
        groups.setdefault((p.lowering, p.target), []).append(role)
    for (name, _), roles in groups.items():
        _lowerer(name, board, roles)
    tmp = None if workdir is not None else tempfile.TemporaryDirectory(prefix="edgeuq-compile-")
    work = Path(workdir) if workdir is not None else Path(tmp.name)
    try:
        graphs: Dict[str, CompiledGraph] = {}
        extra: Dict[str, Path] = {}
        lowered: Dict[str, Any] = {}
        for (name, target_name), roles in groups.items():
            target = get_target(target_name)
            say(f"[{board.name}] lowering {'+'.join(roles)} with {name} for {target_name}")
            result = lower(name, art, target, work / f"{name}-{target_name}",
                           **lowering_options(name, roles, tune_trials, samples, tuning_root, say, fpga_precision))
            for role in roles:
                graphs[role] = getattr(result, role)
                expected = getattr(board.graphs, role).executor
                if graphs[role].backend != expected:
                    raise ValueError(f"board {board.name!r}: lowering {name!r} produced the {role} graph for "
                                     f"executor {graphs[role].backend!r}, but the board declares {expected!r}")
            extra.update(result.extra_files)
            lowered[f"{name}:{target_name}"] = {**dict(result.metadata), "roles": roles}
        files = {_graph_file(role, g): g.file for role, g in graphs.items()}
        clash = set(files) & set(extra)
        if clash or len(files) != 2:
            raise ValueError(f"bundle file names collide: {sorted(clash) or sorted(files)}")
        manifest = _manifest(art, board, graphs, files, samples, model_name, model_version, lowered)
        if overwrite and Path(out_dir).exists():
            shutil.rmtree(out_dir)
        write_bundle(Path(out_dir), manifest, {**files, **extra})
        bundle = load_bundle(Path(out_dir), verify=True)
        say(f"[{board.name}] bundle {out_dir}: {len(bundle.manifest.files)} files")
        report = budget_report(board, art, bundle, lowered, samples)
    finally:
        if tmp is not None:
            tmp.cleanup()
    return CompileResult(board=board.name, bundle=bundle, report=report)


def _manifest(art: Any, board: Board, graphs: Mapping[str, CompiledGraph], files: Mapping[str, Path],
              samples: int, name: str, version: str, lowered: Mapping[str, Any]) -> Manifest:
    names = {role: next(k for k, v in files.items() if v == g.file and k.startswith(role))
             for role, g in graphs.items()}
    io = {"trunk": ((art.input_name,), (art.feature_name,)),
          "head": ((art.feature_name, *[s.name for s in art.noise]), (art.logits_name,))}
    specs = {role: GraphSpec(file=names[role], inputs=io[role][0], outputs=io[role][1], backend=g.backend,
                             options=dict(g.options)) for role, g in graphs.items()}
    return Manifest(
        model_name=name, model_version=version,
        input=InputSpec(name=art.input_name, length=art.input_length, sample_rate_hz=art.sample_rate_hz,
                        normalization=art.normalization),
        class_names=tuple(art.class_names), default_samples=samples, noise=tuple(art.noise),
        trunk=specs["trunk"], head=specs["head"], feature_name=art.feature_name, logits_name=art.logits_name,
        backend=board.executor,
        metadata={"created_by": f"edgeuq {__version__}", "opset": art.opset, "board": board.name,
                  "targets": {role: {"target": p.target, "lowering": p.lowering, "executor": p.executor}
                              for role, p in board.graphs.items()},
                  "lowering": dict(lowered)},
    )


def weight_bytes(art: Any) -> int:
    """Bytes of the weights (ONNX initializers) of the trunk and head graphs together."""
    import onnx
    from onnx import numpy_helper

    total = 0
    for path in (art.trunk_path, art.head_path):
        total += sum(numpy_helper.to_array(t).nbytes for t in onnx.load(str(path)).graph.initializer)
    return int(total)


def check_method(meta: Mapping[str, Any]) -> str:
    """How a lowering's result was checked (its ``check.method``; hls4ml reports C-simulation ``checks``)."""
    if meta.get("check"):
        return str(meta["check"].get("method", "compile only"))
    return "C simulation" if meta.get("checks") else "compile only"


def _runs_here(lowered: Mapping[str, Any]) -> tuple:
    methods = {k: check_method(v) for k, v in lowered.items()}
    blocked = {k: m for k, m in methods.items() if not m.startswith("native")}
    return not blocked, blocked


def measure_latency(bundle: Bundle, samples: int, repeats: int = 20) -> float:
    """Median ms of ``UncertaintyRuntime.predict`` on one window with ``samples`` samples (this host)."""
    from edgeuq_runtime import UncertaintyRuntime
    from edgeuq_runtime.executors.tvm import ensure_registered

    ensure_registered()

    rt = UncertaintyRuntime(bundle.root, seed=0, verify=False)
    x = np.random.default_rng(0).standard_normal((1, rt.input_length)).astype(np.float32)
    for _ in range(3):
        rt.predict(x, samples=samples)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        rt.predict(x, samples=samples)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def budget_report(board: Board, art: Any, bundle: Bundle, lowered: Mapping[str, Any], samples: int) -> Dict[str, Any]:
    """Compare the compiled bundle with ``board.budgets`` (measured where this host can)."""
    b = board.budgets
    weights = weight_bytes(art)
    files = sum(bundle.path(f).stat().st_size for f in bundle.manifest.files)
    runnable, blocked = _runs_here(lowered)
    report: Dict[str, Any] = {
        "board": board.name,
        "weight_bytes": {"measured": weights, "budget": b.weight_bytes, "ok": weights <= b.weight_bytes},
        "bundle_bytes": files,
        "mc_samples": {"used": samples, "budget": b.mc_samples, "ok": samples <= b.mc_samples},
    }
    if runnable:
        ms = measure_latency(bundle, samples)
        report["latency_ms"] = {"measured": round(ms, 3), "budget": b.latency_ms, "ok": ms <= b.latency_ms,
                                "how": f"this host, UncertaintyRuntime.predict of 1 window, S={samples}, median"}
    else:
        why = "; ".join(f"{k}: {m}" for k, m in blocked.items())
        report["latency_ms"] = {"measured": None, "budget": b.latency_ms, "ok": None,
                                "how": f"not measured: not runnable natively on this host ({why})"}
    report["ok"] = all(v.get("ok") is not False for v in report.values() if isinstance(v, dict))
    return report
