"""Per-operator tables from ONNX Runtime's profiling JSON (a Chrome trace), warm-up runs dropped.

ONNX Runtime profiles every run of a session, warm-up included (it cannot be told to
skip them). The trace holds one ``Session`` event ``model_run`` per ``session.run``
(``ts``/``dur`` in µs) and one ``Node`` event ``<node>_kernel_time`` per kernel call
(``args.op_name``, ``args.provider``). :func:`aggregate_trace` orders the runs by start
time, drops the first ``warmup`` of them, and keeps the kernel events that lie inside a
kept run, so a warm-up kernel can never leak into the table.

:func:`profile_onnx_graph` runs a graph with profiling on (same session options as the
runtime's ``onnxruntime`` executor) and returns the table.
"""
from __future__ import annotations

import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

__all__ = ["aggregate_trace", "load_trace", "profile_onnx_graph", "OrtTraceError"]

_KERNEL_SUFFIX = "_kernel_time"


class OrtTraceError(ValueError):
    """A profiling trace that is not what ONNX Runtime writes, or holds too few runs."""


def load_trace(path: Union[str, Path]) -> List[Dict[str, Any]]:
    try:
        events = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise OrtTraceError(f"cannot read ONNX Runtime profile {path}: {exc}") from exc
    if not isinstance(events, list):
        raise OrtTraceError(f"{path}: expected a JSON list of trace events, got {type(events).__name__}")
    return events


def _num(e: Mapping[str, Any], key: str) -> float:
    v = e.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise OrtTraceError(f"trace event {e.get('name')!r} has no numeric {key!r}: {v!r}")
    return float(v)


def aggregate_trace(events: Sequence[Mapping[str, Any]], warmup: int) -> Tuple[List[Dict[str, Any]], int]:
    """Per-node rows (sorted by time per run, largest first) over the runs after the first
    ``warmup``, and the number of runs kept.

    Row: ``name`` (node), ``op`` (op type), ``provider``, ``calls_per_run``, ``us_per_run``
    (mean kernel µs per kept run), ``median_us`` (median over kept runs), ``share`` (of the summed kernel time)."""
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise OrtTraceError(f"warmup must be an integer >= 0, got {warmup!r}")
    runs = sorted(((_num(e, "ts"), _num(e, "dur")) for e in events
                   if isinstance(e, Mapping) and e.get("cat") == "Session" and e.get("name") == "model_run"))
    if len(runs) <= warmup:
        raise OrtTraceError(f"the trace holds {len(runs)} model runs; nothing is left after dropping {warmup} "
                            "warm-up runs")
    kept = runs[warmup:]
    acc: Dict[str, Dict[str, Any]] = {}
    for e in events:
        if not isinstance(e, Mapping) or e.get("cat") != "Node" or not str(e.get("name", "")).endswith(_KERNEL_SUFFIX):
            continue
        ts, dur = _num(e, "ts"), _num(e, "dur")
        run = next((i for i, (t0, d0) in enumerate(kept) if t0 <= ts and ts + dur <= t0 + d0), None)
        if run is None:
            continue  # a warm-up run's kernel (or one outside every run)
        name = str(e["name"])[: -len(_KERNEL_SUFFIX)]
        args = e.get("args") or {}
        row = acc.setdefault(name, {"name": name, "op": str(args.get("op_name", "")),
                                    "provider": str(args.get("provider", "")), "calls": 0,
                                    "per_run": [0.0] * len(kept)})
        row["calls"] += 1
        row["per_run"][run] += dur
    n = len(kept)
    total = sum(sum(r["per_run"]) for r in acc.values())
    rows = [{"name": r["name"], "op": r["op"], "provider": r["provider"], "calls_per_run": r["calls"] / n,
             "us_per_run": sum(r["per_run"]) / n, "median_us": float(statistics.median(r["per_run"])),
             "share": (sum(r["per_run"]) / total) if total > 0 else 0.0} for r in acc.values()]
    rows.sort(key=lambda r: (-r["us_per_run"], r["name"]))
    return rows, n


def profile_onnx_graph(path: Union[str, Path], feeds: Mapping[str, Any], *, warmup: int = 3, repeats: int = 20,
                       threads: Optional[int] = 1) -> Tuple[List[Dict[str, Any]], int]:
    """Run the ONNX graph at ``path`` ``warmup + repeats`` times with profiling on; the per-node
    table of the last ``repeats`` runs (see :func:`aggregate_trace`)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = threads
    with tempfile.TemporaryDirectory(prefix="edgeuq-ort-profile-") as tmp:
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(tmp, "ort")
        sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        for _ in range(warmup + repeats):
            sess.run(None, dict(feeds))
        trace = sess.end_profiling()
        events = load_trace(trace if os.path.isabs(trace) else os.path.join(os.getcwd(), trace))
        try:
            os.remove(trace)
        except OSError:
            pass
    return aggregate_trace(events, warmup)
