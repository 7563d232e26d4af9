"""``LatencyReport``: what ``edgeuq profile`` measured for one bundle, where, and how.

One artifact (``latency_report.json``, hashed, written atomically; PNG plots as hashed
payload files). Every report names where its times were taken (``location``):

* ``"host"``     — this machine, natively (the runtime itself, in this process);
* ``"remote"``   — a board reached over TVM RPC (``where`` names the address);
* ``"agent"``    — a board's timing agent (``python -m edgeuq_runtime agent``): every stage
  timed on the board with the runtime's own harness;
* ``"emulated"`` — a qemu user-mode emulator: times are *not* board times.

``stages[S][stage]`` and ``end_to_end[S]`` hold :class:`~edgeuq.profile.LatencyStats`
as dicts (median/p90/p99 in ms after warm-up); ``operators[graph]`` is a per-operator
table (rows of dicts, ``operator_sources[graph]`` says how it was gathered); ``notes``
says in words what was *not* measured (never silently omitted).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Tuple, Union

from ..artifact import Artifact, ArtifactError, ArtifactWriter
from ..report import results_table
from .stage_names import STAGES, ordered_stages as _ordered

__all__ = ["LatencyReport", "LOCATIONS", "STAGES", "save_latency_report", "load_latency_report", "stage_table",
           "samples_table", "operator_table", "targets_table", "source_label", "profile_table", "graph_places"]

#: Where a report's times were taken (see the module docstring).
LOCATIONS = ("host", "remote", "emulated", "agent")
#: The stages of one inference, in order (a report may hold a subset; ``notes`` say why).
_STAT_KEYS = ("median_ms", "p90_ms", "p99_ms", "min_ms", "mean_ms", "repeats")


def _check_stats(d: Any, where: str) -> Dict[str, float]:
    if not isinstance(d, Mapping):
        raise ArtifactError(f"{where}: expected latency statistics (an object), got {type(d).__name__}")
    out: Dict[str, float] = {}
    for k in _STAT_KEYS:
        v = d.get(k)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ArtifactError(f"{where}: {k} must be a finite number >= 0, got {v!r}")
        out[k] = int(v) if k == "repeats" else float(v)
    if not out["min_ms"] <= out["median_ms"] <= out["p90_ms"] <= out["p99_ms"]:
        raise ArtifactError(f"{where}: expected min <= median <= p90 <= p99, got {out}")
    return out


def stats_dict(stats: Any) -> Dict[str, float]:
    """A ``LatencyStats`` (or a dict of one) as the report stores it."""
    d = stats.to_dict() if hasattr(stats, "to_dict") else dict(stats)
    return _check_stats(d, "latency statistics")


@dataclass(frozen=True)
class LatencyReport(Artifact):
    KIND: ClassVar[str] = "latency_report"
    FORMAT_VERSION: ClassVar[int] = 1
    META_FILE: ClassVar[str] = "latency_report.json"

    location: str
    where: str
    bundle: str
    bundle_digest: str
    backends: Mapping[str, str]
    samples: Tuple[int, ...]
    warmup: int
    repeats: int
    stages: Mapping[str, Mapping[str, Mapping[str, float]]]
    end_to_end: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    operators: Mapping[str, Tuple[Mapping[str, Any], ...]] = field(default_factory=dict)
    operator_sources: Mapping[str, str] = field(default_factory=dict)
    board: Optional[str] = None
    batch: int = 1
    notes: Tuple[str, ...] = ()
    plots: Tuple[str, ...] = ()
    environment: Mapping[str, Any] = field(default_factory=dict)
    #: The compute target each graph was compiled for (``{"trunk": "x86-64", ...}``, from the bundle's
    #: manifest metadata; empty for bundles that do not record it).
    targets: Mapping[str, str] = field(default_factory=dict)
    #: The lowerer that produced each graph (``{"trunk": "tvm", ...}``), likewise.
    lowerings: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.location not in LOCATIONS:
            raise ArtifactError(f"latency report location must be one of {list(LOCATIONS)}, got {self.location!r}")
        if not self.samples or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in self.samples):
            raise ArtifactError(f"latency report samples must be integers >= 1, got {self.samples!r}")
        for s, per in self.stages.items():
            if str(s) not in {str(x) for x in self.samples}:
                raise ArtifactError(f"latency report has stages for S={s}, which is not among samples {self.samples}")
            for name, st in per.items():
                _check_stats(st, f"stages[{s}][{name}]")
        for s, st in self.end_to_end.items():
            _check_stats(st, f"end_to_end[{s}]")
        if self.location == "emulated" and not any("not board times" in n for n in self.notes):
            raise ArtifactError("an emulated latency report must say in its notes that its times are not board times")

    @property
    def measured_where(self) -> str:
        """One line for every table: location and place."""
        label = {"host": "host (native)", "remote": "remote (TVM RPC)", "agent": "remote (timing agent)",
                 "emulated": "emulated (qemu; times are not board times)"}[self.location]
        return f"{label}: {self.where}"

    def payload_files(self) -> Tuple[str, ...]:
        return tuple(self.plots)

    def to_meta(self) -> Dict[str, Any]:
        return {
            "location": self.location, "where": self.where, "bundle": self.bundle, "bundle_digest": self.bundle_digest,
            "backends": dict(self.backends), "samples": list(self.samples), "warmup": self.warmup,
            "repeats": self.repeats, "batch": self.batch, "board": self.board,
            "stages": {str(s): {k: dict(v) for k, v in per.items()} for s, per in self.stages.items()},
            "end_to_end": {str(s): dict(v) for s, v in self.end_to_end.items()},
            "operators": {g: [dict(r) for r in rows] for g, rows in self.operators.items()},
            "operator_sources": dict(self.operator_sources), "notes": list(self.notes), "plots": list(self.plots),
            "environment": dict(self.environment), "targets": dict(self.targets),
            "lowerings": dict(self.lowerings),
        }

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], **base: Any) -> "LatencyReport":
        return cls(
            location=meta["location"], where=meta["where"], bundle=meta["bundle"],
            bundle_digest=meta["bundle_digest"], backends=dict(meta["backends"]),
            samples=tuple(meta["samples"]), warmup=int(meta["warmup"]), repeats=int(meta["repeats"]),
            batch=int(meta.get("batch", 1)), board=meta.get("board"),
            stages={str(s): {k: dict(v) for k, v in per.items()} for s, per in meta["stages"].items()},
            end_to_end={str(s): dict(v) for s, v in meta.get("end_to_end", {}).items()},
            operators={g: tuple(dict(r) for r in rows) for g, rows in meta.get("operators", {}).items()},
            operator_sources=dict(meta.get("operator_sources", {})), notes=tuple(meta.get("notes", ())),
            plots=tuple(meta.get("plots", ())), environment=dict(meta.get("environment", {})),
            targets=dict(meta.get("targets", {})), lowerings=dict(meta.get("lowerings", {})), **base)


def save_latency_report(report: LatencyReport, out_dir: Union[str, Path], plot: bool = True) -> LatencyReport:
    """Write ``report`` (and, with ``plot``, its PNG plots) atomically to ``out_dir``; return it as loaded.

    Without matplotlib the plots are left out and a note says so."""
    from dataclasses import replace

    with ArtifactWriter(out_dir) as w:
        plots: List[str] = []
        notes = list(report.notes)
        if plot:
            try:
                from .plots import write_plots
            except ImportError as exc:  # pragma: no cover - matplotlib is a host dependency
                notes.append(f"plots not written: {exc}")
            else:
                plots = write_plots(report, Path(w.path))
        return w.commit(replace(report, plots=tuple(plots), notes=tuple(notes)))


def load_latency_report(path: Union[str, Path]) -> LatencyReport:
    return LatencyReport.load(path)


def _fmt(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.3f}"


def stage_table(report: LatencyReport, samples: Optional[int] = None) -> Tuple[List[str], List[List[str]]]:
    """Headers and rows: one row per (S, stage), p50/p90/p99 ms (all S unless ``samples``)."""
    headers = ["S", "stage", "p50 ms", "p90 ms", "p99 ms", "repeats"]
    rows: List[List[str]] = []
    for s in report.samples:
        if samples is not None and s != samples:
            continue
        per = report.stages.get(str(s), {})
        for name in _ordered(per):
            st = per[name]
            rows.append([str(s), name, _fmt(st["median_ms"]), _fmt(st["p90_ms"]), _fmt(st["p99_ms"]),
                         str(int(st["repeats"]))])
        e2e = report.end_to_end.get(str(s))
        if e2e is not None:
            rows.append([str(s), "end-to-end (predict)", _fmt(e2e["median_ms"]), _fmt(e2e["p90_ms"]),
                         _fmt(e2e["p99_ms"]), str(int(e2e["repeats"]))])
    return headers, rows


def samples_table(report: LatencyReport) -> Tuple[List[str], List[List[str]]]:
    """Latency against S: per S, the median of each stage and of the whole inference."""
    names: List[str] = []
    for per in report.stages.values():
        names += [n for n in _ordered(per) if n not in names]
    headers = ["S", *[f"{n} ms" for n in names], "end-to-end ms"]
    rows = []
    for s in report.samples:
        per = report.stages.get(str(s), {})
        e2e = report.end_to_end.get(str(s))
        rows.append([str(s), *[_fmt(per[n]["median_ms"]) if n in per else "-" for n in names],
                     _fmt(e2e["median_ms"]) if e2e else "not measured"])
    return headers, rows


def operator_table(report: LatencyReport, graph: str, top: int = 10) -> Tuple[List[str], List[List[str]]]:
    """The ``top`` operators of ``graph`` by time per run."""
    headers = ["operator", "op type", "calls/run", "mean µs/run", "median µs/run", "share"]
    rows = []
    for r in list(report.operators.get(graph, ()))[:top]:
        med = r.get("median_us")
        rows.append([str(r["name"])[:48], str(r.get("op", "")), f"{r.get('calls_per_run', 0):g}",
                     f"{r['us_per_run']:.1f}", "-" if med is None else f"{med:.1f}", f"{100 * r.get('share', 0):.1f}%"])
    return headers, rows


def figures_at(report: LatencyReport, samples: int) -> Tuple[Mapping[str, Any], Optional[Mapping[str, Any]]]:
    """(per-stage statistics, end-to-end statistics or None) of ``report`` at S = ``samples``; a report
    without figures at that S is an error naming it and the S it has."""
    per = report.stages.get(str(samples))
    if per is None:
        raise ValueError(f"report {report.directory or report.bundle} has no figures for S={samples} "
                         f"(it has S = {list(report.samples)})")
    return per, report.end_to_end.get(str(samples))


def targets_table(reports: Any, samples: int, command: str = "edgeuq profile") -> Dict[str, Any]:
    """The per-target table (one row per report, at ``samples``) in the ``results/NAME.json`` form
    ``scripts/render_tables.py`` renders: where it was measured, graph backends, trunk / head /
    end-to-end medians and end-to-end p99. A figure a report lacks is "not measured"."""
    headers = ["board", "measured", "graphs (trunk / head)", "trunk p50 ms", f"head p50 ms (S={samples})",
               f"end-to-end p50 ms (S={samples})", f"end-to-end p99 ms (S={samples})"]
    rows = []
    places = []
    for r in reports:
        per, e2e = figures_at(r, samples)
        nm = "not measured"
        graphs = f"{r.backends.get('trunk', '-')} / {r.backends.get('head', '-')}"
        rows.append([r.board or "-", r.measured_where, graphs,
                     _fmt(per["trunk"]["median_ms"]) if "trunk" in per else nm,
                     _fmt(per["head"]["median_ms"]) if "head" in per else nm,
                     _fmt(e2e["median_ms"]) if e2e else nm, _fmt(e2e["p99_ms"]) if e2e else nm])
        places.append(f"{r.location} {r.where}")
    return results_table(headers, rows, command=command,
                         provenance="measured by edgeuq profile: " + "; ".join(places),
                         note="remote (TVM RPC) reports time the graphs only; emulated times are not board times")


def source_label(report: LatencyReport) -> str:
    """Short label of where a report's times come from, for tables: ``host``, ``TVM RPC (localhost)``,
    ``TVM RPC``, or ``emulated qemu (not board times)``."""
    if report.location == "host":
        return "host"
    if report.location in ("remote", "agent"):
        local = any(h in report.where for h in ("127.0.0.1", "localhost", "[::1]"))
        name = "TVM RPC" if report.location == "remote" else "timing agent"
        return f"{name} (localhost)" if local else name
    return "emulated qemu (not board times)"


def graph_places(report: LatencyReport) -> str:
    """``trunk: tvm@x86-64, head: onnxruntime@x86-64`` (the target where the report records it)."""
    def one(role: str) -> str:
        t = report.targets.get(role)
        return f"{report.backends.get(role, '-')}" + (f"@{t}" if t else "")
    return f"trunk: {one('trunk')}, head: {one('head')}"


def profile_table(reports: Any, samples: int, command: str, provenance: str = "") -> Dict[str, Any]:
    """Per-stage latency of one inference at ``samples`` from several reports, one row per report, in
    the ``results/NAME.json`` form ``scripts/render_tables.py`` renders: board, graphs (executor@target),
    source label, the median of each stage, the sum of stages and end to end (median and p99).
    A figure a report lacks is "not measured" (e.g. the numpy stages over TVM RPC)."""
    nm = "not measured"
    headers = ["board", "graphs", "measured on", *[f"{st} p50 ms" for st in STAGES], "sum of stages p50 ms",
               f"end-to-end p50 ms (S={samples})", f"end-to-end p99 ms (S={samples})"]
    rows = []
    for r in reports:
        per, e2e = figures_at(r, samples)
        cells = [_fmt(per[st]["median_ms"]) if st in per else nm for st in STAGES]
        total = per.get("sum of stages")
        rows.append([r.board or "-", graph_places(r), source_label(r), *cells,
                     _fmt(total["median_ms"]) if total else nm,
                     _fmt(e2e["median_ms"]) if e2e else nm, _fmt(e2e["p99_ms"]) if e2e else nm])
    labels = "; ".join(f"{source_label(r)} = {r.measured_where}" for r in reports)
    return results_table(headers, rows, command=command,
                         provenance=provenance or f"measured by edgeuq profile: {labels}",
                         note=("TVM RPC reports time the graphs only (the numpy stages run in the board's Python, "
                               "out of RPC's reach); emulated (qemu) times are not board times; \"not measured\" "
                               "is never a zero."))
