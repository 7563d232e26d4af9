"""Building one TVM library per graph: ONNX import (Relax), compile or tune, export with the
target's cross compiler, CUDA kernels assembled offline for the target's arch."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

from .targets import cross_compiler, tvm_target

__all__ = ["GraphBuild", "graph_io", "import_onnx", "import_buckets", "bucket_function", "build_graph", "has_records",
           "tuned_buckets", "overall_state", "ROLES"]

ROLES = ("trunk", "head")


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
    buckets: tuple = ()                                     # shape buckets (rows) compiled, () = one batch
    bucket_coverage: Dict[int, str] = field(default_factory=dict)  # candidate rows -> "covered/total" heavy tasks


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


def import_onnx(onnx_path: Path, inputs: Sequence[tuple], batch: Optional[int]) -> Any:
    import onnx
    from tvm.relax.frontend.onnx import from_onnx

    shapes = None if batch is None else {n: [batch, *dims] for n, _, dims in inputs}
    return from_onnx(onnx.load(str(onnx_path)), shape_dict=shapes, keep_params_in_input=False)


def bucket_function(rows: int, entry: str = "main") -> str:
    """The library function compiled for a shape bucket of ``rows`` rows (the ``tvm`` executor's
    naming: ``<entry>_b<rows>``)."""
    return f"{entry}_b{int(rows)}"


def import_buckets(onnx_path: Path, inputs: Sequence[tuple], buckets: Sequence[int]) -> Any:
    """One Relax module with a function per shape bucket (:func:`bucket_function`), each the ONNX
    graph imported for exactly that many rows. Tuning tasks are per kernel shape, so the buckets'
    kernels are tuned (and looked up in a database) one by one."""
    import tvm

    funcs = {}
    for rows in buckets:
        name = bucket_function(rows)
        funcs[tvm.ir.GlobalVar(name)] = import_onnx(onnx_path, inputs, int(rows))["main"].with_attr(
            "global_symbol", name)
    return tvm.IRModule(funcs)


def tuned_buckets(onnx_path: Path, target: Any, db_dir: Path, candidates: Sequence[int], keep: int,
                  shipped: Optional[Path] = None) -> tuple:
    """The shape buckets worth compiling: ``keep`` (the batch the graph is tuned for) and each
    candidate whose heavy kernels (matmul, conv) all have tuning records. An untuned bucket would
    run default schedules, which can be slower than padding to a tuned one, so it is left out.

    Returns ``(buckets ascending, {rows: "covered/total heavy tasks"} of every candidate)``."""
    from .tune import heavy_coverage

    inputs, _ = graph_io(onnx_path)
    tt = tvm_target(target, num_cores=1)
    chosen, coverage = {int(keep)}, {}
    for rows in sorted({int(r) for r in candidates} - {int(keep)}):
        covered, total = heavy_coverage(import_onnx(onnx_path, inputs, rows), tt, db_dir, shipped)
        coverage[rows] = f"{covered}/{total}"
        if total and covered == total:
            chosen.add(rows)
    return tuple(sorted(chosen)), coverage


def build_graph(role: str, onnx_path: Path, target: Any, workdir: Path, batch: Optional[int], trials: int,
                db_dir: Path, say: Callable[[str], None], shipped: Optional[Path] = None,
                buckets: Sequence[int] = (), rpc: Optional[tuple] = None) -> GraphBuild:
    """Compile one graph: dynamic batch (``batch=None``, untuned), one fixed ``batch``, or with
    ``buckets`` (ascending, the largest is ``batch``) one function per shape bucket in one library.
    ``rpc`` = ``(tracker HOST:PORT, key)``: tuning candidates are measured on the tracker's boards."""
    import tvm

    from .cuda import compile_kernels, cuda_source
    from .tune import tune_and_compile

    start = time.perf_counter()
    inputs, outputs = graph_io(onnx_path)
    tt = tvm_target(target, num_cores=1 if batch is not None else None)
    buckets = tuple(int(b) for b in buckets) if batch is not None and len(buckets) > 1 else ()
    if buckets and (list(buckets) != sorted(set(buckets)) or buckets[-1] != batch):
        raise ValueError(f"{role}: shape buckets {list(buckets)} must be ascending with the batch {batch} largest")
    mod = import_buckets(onnx_path, inputs, buckets) if buckets else import_onnx(onnx_path, inputs, batch)
    if batch is None:
        say(f"{role}: compiling for {target.name} (default schedules, dynamic batch)")
        if target.kind == "cpu":
            from .softmax_schedule import softmax_rows_pass
            from .tune import prepare_for_tuning

            with tt:      # fast transcendental functions, fused kernels, the row schedule for softmax
                mod = softmax_rows_pass()(prepare_for_tuning(mod, tt))
        ex = tvm.compile(mod, target=tt)
        tuning = {"state": "untuned", "trials": 0}
    else:
        say(f"{role}: compiling for {target.name} (batch {batch}"
            + (f", shape buckets {list(buckets)}" if buckets else "") + f", {trials} tuning trials)")
        ex, report = tune_and_compile(mod, tt, db_dir, trials, progress=say, shipped=shipped, rpc=rpc,
                                      cc=cross_compiler(target))
        tuning = report.to_json()
    lib = workdir / f"{role}.so"
    cc = cross_compiler(target)
    ex.export_library(str(lib), **({"cc": cc} if cc else {}))
    options: Dict[str, Any] = {
        "inputs": [n for n, _, _ in inputs], "outputs": list(outputs), "batch": batch,
        "shapes": {n: list(d) for n, _, d in inputs}, "dtypes": {n: t for n, t, _ in inputs},
    }
    if buckets:
        options["buckets"] = list(buckets)
    cuda = None
    if target.kind == "gpu":
        kernels = compile_kernels(cuda_source(ex), target.arch, workdir / f"{role}.{target.arch}.cubin")
        options.update(device="cuda", cuda_kernels={kernels.source_sha256: kernels.path.name})
        cuda = {"file": kernels.path.name, "arch": kernels.arch, "method": kernels.method,
                "compiler": kernels.compiler, "kernels": kernels.kernels, "bytes": kernels.path.stat().st_size}
        say(f"{role}: {kernels.kernels} CUDA kernels -> {kernels.path.name} ({kernels.method})")
    return GraphBuild(role, lib, options, batch, tuning, cuda, time.perf_counter() - start, buckets)


def has_records(onnx_path: Path, target: Any, db_dir: Path, batch: int, shipped: Optional[Path] = None) -> bool:
    """True when the target's tuning database (or the ``shipped`` one) holds a record for any
    task of this graph."""
    from .tune import database_size, matching_records

    if database_size(db_dir) == 0 and shipped is None:
        return False
    inputs, _ = graph_io(onnx_path)
    return matching_records(import_onnx(onnx_path, inputs, batch), tvm_target(target, num_cores=1), db_dir,
                            shipped) > 0


def overall_state(builds: Dict[str, GraphBuild]) -> str:
    states = sorted({b.tuning["state"] for b in builds.values()})
    return states[0] if len(states) == 1 else "mixed: " + ", ".join(f"{r}={b.tuning['state']}"
                                                                      for r, b in builds.items())
