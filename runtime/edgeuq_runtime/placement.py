"""The ``placement`` manifest section: which executor runs each graph, and the figures that chose it.

A board may offer several placements per graph (e.g. the trunk on ONNX Runtime or on a TVM
library); ``edgeuq compile`` builds each, measures them where it can and keeps the fastest
per graph. The bundle records that choice::

    "placement": {
      "measured": "host",                       # "host" | "remote" | "not measured"
      "where": "this host: box (x86_64, 1 thread)",
      "samples": 16, "warmup": 3, "repeats": 20,
      "graphs": {
        "trunk": {"executor": "onnxruntime", "target": "x86-64", "lowering": "onnxruntime",
                  "chosen_by": "fastest measured", "reason": "...",
                  "candidates": [
                    {"executor": "tvm", "target": "x86-64", "lowering": "tvm", "default": true,
                     "status": "measured", "median_ms": 0.13, "p90_ms": 0.15, "repeats": 20,
                     "check": "native", "reason": ""},
                    {"executor": "onnxruntime", ..., "status": "measured", "median_ms": 0.03, ...}]},
        "head": {...}}}

The parser is strict: unknown keys, wrong types, non-finite numbers, a chosen placement that
is not among the candidates, a "fastest measured" choice that is not the fastest measured
candidate (or made while a usable candidate was not measured), and "not measured" with
figures are all refused. :func:`check_placement` (called by ``UncertaintyRuntime`` on load)
refuses a bundle whose graphs do not run on the executors this section says were chosen.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

from . import _checks as c
from .errors import ManifestError

__all__ = ["SECTION", "MEASURED", "STATUSES", "CHOSEN_BY", "CandidateRecord", "GraphPlacementRecord",
           "PlacementRecord", "parse_placement", "placement_to_json", "placement_of", "check_placement"]

SECTION = "placement"
#: Where the candidates were timed (``"not measured"``: nowhere; the board's default was kept).
MEASURED = ("host", "remote", "not measured")
#: A candidate was timed, could not be timed, or cannot run on the board (failed lowering, not native).
STATUSES = ("measured", "not measured", "excluded")
CHOSEN_BY = ("fastest measured", "board default")
_ROLES = ("trunk", "head")
_TOP = {"measured", "where", "samples", "warmup", "repeats", "graphs"}
_GRAPH = {"executor", "target", "lowering", "chosen_by", "reason", "candidates"}
_CAND = {"executor", "target", "lowering", "default", "status", "median_ms", "p90_ms", "repeats", "check", "reason"}


_fail = c.fail        # the strict-JSON toolkit (edgeuq_runtime._checks)


def _obj(where: str, v: Any, keys: set) -> Mapping[str, Any]:
    if not isinstance(v, dict):
        raise _fail(where, f"must be an object, got {type(v).__name__}")
    extra, missing = sorted(set(v) - keys), sorted(keys - set(v))
    if extra or missing:
        raise _fail(where, f"unknown keys {extra} / missing keys {missing}; expected exactly {sorted(keys)}")
    return v


def _text(where: str, v: Any, empty: bool = False) -> str:
    if not isinstance(v, str) or (not empty and not v.strip()) or len(v) > 4096:
        raise _fail(where, f"must be a {'' if empty else 'non-empty '}string of at most 4096 characters, got {v!r:.80}")
    return v


def _choice(where: str, v: Any, choices: Tuple[str, ...]) -> str:
    if not isinstance(v, str) or v not in choices:
        raise _fail(where, f"must be one of {list(choices)}, got {v!r:.80}")
    return v


def _count(where: str, v: Any, least: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not least <= v <= 2 ** 31 - 1:
        raise _fail(where, f"must be an integer >= {least}, got {v!r:.80}")
    return v


def _ms(where: str, v: Any) -> Optional[float]:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v >= 0):
        raise _fail(where, f"must be a finite number >= 0 or null, got {v!r:.80}")
    return float(v)


@dataclass(frozen=True)
class CandidateRecord:
    """One placement of a graph that was considered, and what measuring it gave."""

    executor: str
    target: str
    lowering: str
    default: bool
    status: str
    median_ms: Optional[float] = None
    p90_ms: Optional[float] = None
    repeats: Optional[int] = None
    check: str = ""
    reason: str = ""

    @property
    def key(self) -> Tuple[str, str, str]:
        return (self.executor, self.target, self.lowering)

    def to_json(self) -> Dict[str, Any]:
        return {"executor": self.executor, "target": self.target, "lowering": self.lowering, "default": self.default,
                "status": self.status, "median_ms": self.median_ms, "p90_ms": self.p90_ms, "repeats": self.repeats,
                "check": self.check, "reason": self.reason}


@dataclass(frozen=True)
class GraphPlacementRecord:
    """The placement chosen for one graph, how, and every candidate with its figures."""

    executor: str
    target: str
    lowering: str
    chosen_by: str
    reason: str
    candidates: Tuple[CandidateRecord, ...]

    @property
    def chosen(self) -> CandidateRecord:
        return next(c for c in self.candidates if c.key == (self.executor, self.target, self.lowering))

    def to_json(self) -> Dict[str, Any]:
        return {"executor": self.executor, "target": self.target, "lowering": self.lowering,
                "chosen_by": self.chosen_by, "reason": self.reason,
                "candidates": [c.to_json() for c in self.candidates]}


@dataclass(frozen=True)
class PlacementRecord:
    measured: str
    where: str
    samples: int
    warmup: int
    repeats: int
    graphs: Mapping[str, GraphPlacementRecord]

    def to_json(self) -> Dict[str, Any]:
        return {"measured": self.measured, "where": self.where, "samples": self.samples, "warmup": self.warmup,
                "repeats": self.repeats, "graphs": {r: self.graphs[r].to_json() for r in _ROLES}}


def _candidate(where: str, v: Any) -> CandidateRecord:
    d = _obj(where, v, _CAND)
    if not isinstance(d["default"], bool):
        raise _fail(f"{where}.default", f"must be true or false, got {d['default']!r:.80}")
    status = _choice(f"{where}.status", d["status"], STATUSES)
    median, p90 = _ms(f"{where}.median_ms", d["median_ms"]), _ms(f"{where}.p90_ms", d["p90_ms"])
    repeats = None if d["repeats"] is None else _count(f"{where}.repeats", d["repeats"], 1)
    figures = (median, p90, repeats)
    if status == "measured":
        if any(x is None for x in figures):
            raise _fail(where, "a measured candidate needs median_ms, p90_ms and repeats")
        if not median <= p90:
            raise _fail(where, f"median_ms {median} exceeds p90_ms {p90}")
    elif any(x is not None for x in figures):
        raise _fail(where, f"a candidate whose status is {status!r} carries no figures (median_ms, p90_ms, "
                           "repeats must be null): never a pretended measurement")
    reason = _text(f"{where}.reason", d["reason"], empty=status == "measured")
    return CandidateRecord(executor=_text(f"{where}.executor", d["executor"]),
                           target=_text(f"{where}.target", d["target"]),
                           lowering=_text(f"{where}.lowering", d["lowering"]), default=d["default"], status=status,
                           median_ms=median, p90_ms=p90, repeats=repeats,
                           check=_text(f"{where}.check", d["check"], True), reason=reason)


def _graph(where: str, v: Any, measured: str) -> GraphPlacementRecord:
    d = _obj(where, v, _GRAPH)
    raw = d["candidates"]
    if not isinstance(raw, list) or not raw or len(raw) > 64:
        raise _fail(f"{where}.candidates", "must be a non-empty list (at most 64)")
    cands = tuple(_candidate(f"{where}.candidates[{i}]", c) for i, c in enumerate(raw))
    keys = [c.key for c in cands]
    if len(set(keys)) != len(keys):
        raise _fail(f"{where}.candidates", "lists a placement twice")
    defaults = [c for c in cands if c.default]
    if len(defaults) != 1:
        raise _fail(f"{where}.candidates",
                    f"must mark exactly one candidate as the board's default, got {len(defaults)}")
    rec = GraphPlacementRecord(executor=_text(f"{where}.executor", d["executor"]),
                               target=_text(f"{where}.target", d["target"]),
                               lowering=_text(f"{where}.lowering", d["lowering"]),
                               chosen_by=_choice(f"{where}.chosen_by", d["chosen_by"], CHOSEN_BY),
                               reason=_text(f"{where}.reason", d["reason"]), candidates=cands)
    if (rec.executor, rec.target, rec.lowering) not in keys:
        raise _fail(where, f"the chosen placement {rec.executor}/{rec.target}/{rec.lowering} is not among its "
                           "candidates")
    chosen = rec.chosen
    timed = [c for c in cands if c.status == "measured"]
    if measured == "not measured" and timed:
        raise _fail(where, "holds measured candidates although the section says 'not measured'")
    if rec.chosen_by == "board default":
        if not chosen.default:
            raise _fail(f"{where}.chosen_by", "'board default' but the chosen candidate is not the default")
    else:
        usable = [c for c in cands if c.status != "excluded"]
        if chosen.status != "measured" or len(timed) != len(usable):
            raise _fail(f"{where}.chosen_by", "'fastest measured' needs every usable candidate measured")
        if any(c.median_ms < chosen.median_ms for c in timed):
            raise _fail(f"{where}.chosen_by", f"'fastest measured' but {chosen.median_ms} ms is not the smallest "
                                              f"median ({min(c.median_ms for c in timed)} ms)")
    return rec


def parse_placement(obj: Any, where: str = SECTION) -> PlacementRecord:
    """Validate the ``placement`` manifest section (errors name the field, e.g. ``placement.graphs.head``)."""
    d = _obj(where, obj, _TOP)
    measured = _choice(f"{where}.measured", d["measured"], MEASURED)
    graphs = d["graphs"]
    if not isinstance(graphs, dict) or sorted(graphs) != sorted(_ROLES):
        raise _fail(f"{where}.graphs", f"must hold exactly {list(_ROLES)}, got "
                                       f"{sorted(graphs) if isinstance(graphs, dict) else type(graphs).__name__}")
    return PlacementRecord(measured=measured, where=_text(f"{where}.where", d["where"]),
                           samples=_count(f"{where}.samples", d["samples"], 1),
                           warmup=_count(f"{where}.warmup", d["warmup"], 0),
                           repeats=_count(f"{where}.repeats", d["repeats"], 1),
                           graphs={r: _graph(f"{where}.graphs.{r}", graphs[r], measured) for r in _ROLES})


def placement_to_json(rec: PlacementRecord) -> Dict[str, Any]:
    out = rec.to_json()
    parse_placement(out)  # what we write must parse back
    return out


def placement_of(manifest: Any) -> Optional[PlacementRecord]:
    """The bundle's ``placement`` section, or None."""
    return (getattr(manifest, "sections", None) or {}).get(SECTION)


def check_placement(manifest: Any) -> None:
    """Refuse a manifest whose graphs do not run on the executors its ``placement`` section chose."""
    rec = placement_of(manifest)
    if rec is None:
        return
    for role in _ROLES:
        spec = getattr(manifest, role)
        backend = spec.backend or manifest.backend
        want = rec.graphs[role].executor
        if backend != want:
            raise ManifestError(f"graphs.{role}.backend: the graph runs on {backend!r}, but the placement section "
                                f"chose {want!r} for it (placement.graphs.{role}.executor)")


def _register() -> None:
    from .manifest import register_manifest_section

    register_manifest_section(SECTION, parse_placement, placement_to_json)


_register()
