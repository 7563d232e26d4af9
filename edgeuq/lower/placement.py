"""Per-graph placement by measurement: of a board's candidate placements, keep the fastest per graph.

A board TOML may list, per graph, other placements besides its default::

    [graphs.trunk]
    target = "x86-64"                     # the default: tvm (the board's executor) on x86-64,
    isa_variants = ["x86-64-avx2", "x86-64-avx512"]   # shipped with AVX2 / AVX-512 libraries (run-time dispatch)
    candidates = [{ executor = "onnxruntime", target = "x86-64" }]

``edgeuq compile`` lowers every candidate (numerics checked by its lowering, as for the
default), then times each candidate graph with the one latency harness on the graph's real
workload (trunk: one window; head: S rows) through the device runtime's own executors:

* :class:`HostMeasurer` — here, only for a board that *is* this machine (``[placement]
  measure_on_host = true``); a candidate whose lowering did not run natively here cannot run
  on the board and is excluded, with its evidence named;
* :class:`RemoteMeasurer` — on the board over TVM RPC (``--remote``/``--tracker``): CPU TVM
  libraries are uploaded and timed there; other executors cannot be reached over RPC and are
  "not measured";
* :class:`NotMeasured` — anything else: nothing is timed.

A measurer that reaches the board asks it which CPU it has (the timing agent's ``/v1/health``:
``platform.machine()`` and ``/proc/cpuinfo`` flags; TVM RPC: the CPU its LLVM names) and
excludes a candidate whose compiled library needs another architecture or a CPU flag the board
lacks (the lowering declares what it needs: :meth:`edgeuq.lower.base.Lowerer.cpu_requirement`),
naming both in the evidence; where the board does not say, such a candidate is "not measured".

:func:`choose` keeps the fastest median only when every usable candidate of the graph was
measured; otherwise the board's default is kept and the reason recorded. Never a pretended
measurement: the figures, or "not measured" and why, go into the manifest's ``placement``
section (:mod:`edgeuq_runtime.placement`) and the compile report.
"""
from __future__ import annotations

import platform
import socket
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from edgeuq_runtime.placement import CandidateRecord, GraphPlacementRecord, PlacementRecord

from ..profile.harness import LatencyStats, measure_stages

__all__ = ["Option", "Timing", "Measurer", "HostMeasurer", "RemoteMeasurer", "NotMeasured", "BoardCpu",
           "isa_exclusion", "isa_unknown", "graph_feeds", "choose", "placement_rows"]

#: A measurer's answer per candidate: its statistics, or the reason it was not measured.
Timing = Union[LatencyStats, str]


@dataclass(frozen=True)
class Option:
    """One candidate placement of one graph after lowering: ``graph`` is the CompiledGraph (None when
    its lowering failed), ``check`` the lowering's evidence label, ``native`` whether it ran here."""

    executor: str
    target: str
    lowering: str
    default: bool
    graph: Any = None
    check: str = ""
    native: bool = False
    error: str = ""

    @property
    def key(self) -> Tuple[str, str, str]:
        return (self.executor, self.target, self.lowering)

    @property
    def label(self) -> str:
        return f"{self.executor} on {self.target}" + ("" if self.lowering == self.executor else f" ({self.lowering})")


@dataclass(frozen=True)
class BoardCpu:
    """What the board said about its CPU: ``machine`` (``platform.machine()`` there; None: not
    said), ``flags`` (its CPU feature flags, ``/proc/cpuinfo`` names; None: not said) and
    ``source`` (who said it, for the evidence); ``vendor``: its CPU vendor (``intel``, ``amd``:
    ``vendor_id`` there; None: not said)."""

    machine: Optional[str]
    flags: Optional[frozenset]
    source: str
    vendor: Optional[str] = None


_MACHINE_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}


def _same_arch(arch: str, machine: str) -> bool:
    m = machine.strip().lower()
    m = _MACHINE_ALIASES.get(m, m)
    return m == arch.lower() or m.startswith(arch.lower())  # armv7 code runs on an armv7l kernel


def _requirement(option: Option) -> Any:
    from ..catalog import get_target
    from .base import get_lowerer

    return get_lowerer(option.lowering).cpu_requirement(get_target(option.target))


def isa_exclusion(option: Option, board: BoardCpu) -> Optional[str]:
    """Why ``option``'s compiled library cannot run on the CPU ``board`` described (None: it can,
    or the board did not say enough to tell)."""
    req = _requirement(option)
    if req is None:
        return None
    what = f"the {option.lowering} library for {option.target}"
    if board.machine and not _same_arch(req.arch, board.machine):
        return f"does not run on this board: {what} is {req.arch} code and the board's CPU is {board.machine} " \
               f"({board.source})"
    missing = sorted(req.flags - board.flags) if board.flags is not None else []
    if missing:
        return f"does not run on this board: {what} needs CPU flags {', '.join(missing)}, which the board's CPU " \
               f"lacks ({board.source})"
    return None


def isa_unknown(option: Option, board: BoardCpu) -> Optional[str]:
    """"not measured" and why, for a library that needs CPU flags when the board did not say which
    flags it has (timing it might crash the board's process or time the wrong code); else None."""
    req = _requirement(option)
    if req is None or not req.flags or board.flags is not None:
        return None
    return (f"not measured: the {option.lowering} library for {option.target} needs CPU flags "
            f"{', '.join(sorted(req.flags))} and the board did not say which it has ({board.source})")


class Measurer:
    """Times candidate graphs of one role; ``location`` is "host" or "remote" (or "not measured")."""

    location: str = "not measured"
    where: str = ""
    warmup: int = 3
    repeats: int = 20

    def board_cpu(self) -> Optional[BoardCpu]:
        """What the board says about its CPU (None: this measurer does not reach a board)."""
        return None

    def exclusion(self, option: Option) -> Optional[str]:
        """Why ``option`` cannot run on the board at all (None: it can): a library for another
        architecture or needing CPU flags the board's CPU lacks."""
        board = self.board_cpu()
        return isa_exclusion(option, board) if board is not None else None

    def measure(self, role: str, options: Sequence[Option], feeds: Mapping[str, np.ndarray]) -> Dict[tuple, Timing]:
        raise NotImplementedError


class NotMeasured(Measurer):
    """Nothing is timed; every candidate is "not measured" for ``reason``."""

    def __init__(self, reason: str, warmup: int = 3, repeats: int = 20) -> None:
        self.where, self.warmup, self.repeats = reason, warmup, repeats

    def measure(self, role: str, options: Sequence[Option], feeds: Mapping[str, np.ndarray]) -> Dict[tuple, Timing]:
        return {o.key: f"not measured: {self.where}" for o in options}


class HostMeasurer(Measurer):
    """Time each candidate here through the runtime's executors, candidates interleaved round by round
    (:func:`edgeuq.profile.harness.measure_stages`) so drift in this shared machine hits all alike."""

    location = "host"

    def __init__(self, warmup: int = 3, repeats: int = 20, threads: int = 1) -> None:
        self.warmup, self.repeats, self.threads = int(warmup), int(repeats), int(threads)
        self.where = f"this host: {socket.gethostname()} ({platform.machine()}, {self.threads} thread" \
                     f"{'s' if self.threads > 1 else ''})"

    def exclusion(self, option: Option) -> Optional[str]:
        if not option.native:
            return (f"does not run on this board: the board is this host and the {option.lowering} lowering for "
                    f"{option.target} did not run here (evidence: {option.check})")
        return None

    def measure(self, role: str, options: Sequence[Option], feeds: Mapping[str, np.ndarray]) -> Dict[tuple, Timing]:
        from edgeuq_runtime.executors import load_graph

        runners = {o.key: load_graph(o.graph.executor, o.graph.file, self.threads, dict(o.graph.options))
                   for o in options}
        fns = {"/".join(k): (lambda r=r: r.run(dict(feeds))) for k, r in runners.items()}
        stats = measure_stages(fns, warmup=self.warmup, repeats=self.repeats)
        return {k: stats["/".join(k)] for k in runners}


class RemoteMeasurer(Measurer):
    """Time CPU TVM libraries on the board over a TVM RPC ``session``; other candidates are not
    reachable over RPC and stay "not measured"."""

    location = "remote"

    def __init__(self, session: Any, where: str, warmup: int = 3, repeats: int = 20) -> None:
        self.session, self.where, self.warmup, self.repeats = session, where, int(warmup), int(repeats)
        self._board: Optional[BoardCpu] = None

    def board_cpu(self) -> BoardCpu:
        """The CPU the board's RPC server names (asked once): its LLVM's host CPU and process triple."""
        if self._board is None:
            from ..profile.tvm_rpc import rpc_board_cpu

            self._board = BoardCpu(*rpc_board_cpu(self.session))
        return self._board

    def measure(self, role: str, options: Sequence[Option], feeds: Mapping[str, np.ndarray]) -> Dict[tuple, Timing]:
        from ..profile.tvm_rpc import rpc_timeable, time_remote_library

        out: Dict[tuple, Timing] = {}
        rows = next(iter(feeds.values())).shape[0]
        board = self.board_cpu()
        for o in options:
            unknown = isa_unknown(o, board)
            if unknown:
                out[o.key] = unknown
                continue
            opts = dict(o.graph.options)
            if not rpc_timeable(o.graph.executor, opts):
                out[o.key] = (f"not measured: the {o.graph.executor} graph is not a CPU TVM library, which is all "
                              "TVM RPC can time on the board (run `edgeuq profile --bundle B` there)")
                continue
            # the executor's calls for these rows (fixed batch: chunks; shape buckets: the smallest bucket
            # holding them). Where the plan mixes buckets (rows above the largest, with a remainder), every
            # call is timed as the first (largest) one: an over- not an under-estimate of the library's time
            from edgeuq_runtime.executors.tvm import call_plan

            # per-ISA variants: the library the board's executor would pick by the flags the board named
            # (the graph's own, lowest-ISA library where it named none)
            plan = call_plan(opts, rows, path=o.graph.file, flags=board.flags or frozenset())
            entry, per_call, calls = plan[0][0], plan[0][1], len(plan)
            names = list(opts.get("inputs") or feeds)
            dtypes = opts.get("dtypes") or {}
            arrays = []
            for n in names:
                a = np.asarray(feeds[n])[:per_call]
                if a.shape[0] < per_call:  # zero-padded like the executor does
                    a = np.concatenate([a, np.zeros((per_call - a.shape[0],) + a.shape[1:], a.dtype)])
                arrays.append(np.ascontiguousarray(a, dtype=dtypes.get(n, str(a.dtype))))
            out[o.key] = time_remote_library(self.session, o.graph.file.parent / plan.library, arrays, entry=entry,
                                             warmup=self.warmup, repeats=self.repeats, calls=calls,
                                             name=f"{role} {o.label}")
        return out


def graph_feeds(art: Any, samples: int, seed: int = 0) -> Dict[str, Dict[str, np.ndarray]]:
    """Each graph's workload in one inference of one window: the trunk on one normalised window,
    the head on ``samples`` rows (the trunk's features tiled, noise drawn from the noise specs)."""
    from edgeuq_runtime.executors import load_graph
    from edgeuq_runtime.noise import sample_noise_samples
    from edgeuq_runtime.preprocess import normalize

    rng = np.random.default_rng(seed)
    if art.input_dtype != "float32":
        x = rng.integers(1, max(2, int(art.vocab_size)), size=(1, art.input_length)).astype(np.int64)
    else:
        x = normalize(rng.standard_normal((1, art.input_length)).astype(np.float32), art.normalization)
    trunk = load_graph("onnxruntime", art.trunk_path, 1)
    features = np.asarray(trunk.run({art.input_name: x})[art.feature_name], dtype=np.float32)
    head = {art.feature_name: np.ascontiguousarray(np.tile(features, (samples,) + (1,) * (features.ndim - 1)))}
    head.update(sample_noise_samples(tuple(art.noise), samples, 1, rng))
    return {"trunk": {art.input_name: x}, "head": head}


def _fmt(ms: Optional[float]) -> str:
    return "-" if ms is None else f"{ms:.3f}"


def choose(role: str, options: Sequence[Option], measurer: Measurer,
           feeds: Mapping[str, np.ndarray]) -> GraphPlacementRecord:
    """Measure the usable ``options`` of ``role`` with ``measurer`` and keep the fastest median when
    every usable one was measured; otherwise the board's default (the first option)."""
    default = options[0]
    excluded: Dict[tuple, str] = {}
    board = measurer.board_cpu() if any(o.graph is None for o in options) else None
    for o in options:
        if o.graph is None:
            # a library the board's CPU cannot run is excluded for that reason, whether or not this
            # host managed to lower and check it (an AVX2 host cannot check an AVX-512 library)
            isa = isa_exclusion(o, board) if board is not None else None
            excluded[o.key] = isa or f"lowering failed: {o.error}"
        else:
            why = measurer.exclusion(o)
            if why:
                excluded[o.key] = why
    if default.key in excluded:
        raise RuntimeError(f"the board's default placement of the {role} graph ({default.label}) is not usable: "
                           f"{excluded[default.key]}")
    usable = [o for o in options if o.key not in excluded]
    timings = measurer.measure(role, usable, feeds) if len(usable) > 1 else \
        {o.key: "not measured: only one usable placement, nothing to choose" for o in usable}
    records = []
    for o in options:
        t = timings.get(o.key)
        if o.key in excluded:
            rec = CandidateRecord(o.executor, o.target, o.lowering, o.default, "excluded", check=o.check,
                                  reason=excluded[o.key])
        elif isinstance(t, LatencyStats):
            rec = CandidateRecord(o.executor, o.target, o.lowering, o.default, "measured", median_ms=t.median_ms,
                                  p90_ms=t.p90_ms, repeats=t.repeats, check=o.check)
        else:
            rec = CandidateRecord(o.executor, o.target, o.lowering, o.default, "not measured", check=o.check,
                                  reason=str(t or "not measured"))
        records.append(rec)
    timed = [r for r in records if r.status == "measured"]
    missing = [r for r in records if r.status == "not measured"]
    if timed and not missing:
        best = min(timed, key=lambda r: (r.median_ms, not r.default))
        others = ", ".join(f"{r.executor}/{r.target} {_fmt(r.median_ms)} ms" for r in timed if r is not best)
        chosen_by = "fastest measured"
        reason = (f"fastest median over {best.repeats} repeats ({measurer.where}): "
                  f"{best.executor}/{best.target} {_fmt(best.median_ms)} ms vs {others}")
    else:
        best = records[0]
        chosen_by = "board default"
        unmeasured = "; ".join(f"{r.executor}/{r.target}: {r.reason}" for r in missing) or "-"
        reason = f"board default kept: not every usable candidate was measured ({unmeasured})"
    return GraphPlacementRecord(executor=best.executor, target=best.target, lowering=best.lowering,
                                chosen_by=chosen_by, reason=reason, candidates=tuple(records))


def placement_record(graphs: Mapping[str, GraphPlacementRecord], measurer: Measurer, samples: int) -> PlacementRecord:
    measured = any(c.status == "measured" for g in graphs.values() for c in g.candidates)
    return PlacementRecord(measured=measurer.location if measured else "not measured",
                           where=measurer.where or "-", samples=int(samples), warmup=int(measurer.warmup),
                           repeats=int(measurer.repeats), graphs=dict(graphs))


def placement_rows(rec: Any) -> Tuple[list, list]:
    """Headers and rows (one per graph and candidate) of a placement record (or its JSON)."""
    data = rec.to_json() if hasattr(rec, "to_json") else rec
    headers = ["graph", "candidate", "check", "status", "median ms", "p90 ms", "chosen"]
    rows = []
    for role in ("trunk", "head"):
        g = data["graphs"][role]
        for c in g["candidates"]:
            chosen = (c["executor"], c["target"], c["lowering"]) == (g["executor"], g["target"], g["lowering"])
            status = c["status"] + ("" if c["status"] == "measured" else f" ({c['reason']})")
            rows.append([role, f"{c['executor']} on {c['target']}" + (" (default)" if c["default"] else ""),
                         c["check"] or "-", status, _fmt(c["median_ms"]), _fmt(c["p90_ms"]),
                         f"yes: {g['chosen_by']}" if chosen else ""])
    return headers, rows
