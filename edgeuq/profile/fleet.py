"""A fleet profile: every free board of a TVM RPC tracker key, one LatencyReport each, and a
summary table (p50/p99 spread across boards, outliers flagged).

    edgeuq profile --bundle B --tracker HOST:PORT --key KEY --all [--out DIR]

The tracker is TVM's own (``python -m tvm.exec.rpc_tracker``); each board runs
``python -m tvm.exec.rpc_server --tracker HOST:PORT --key KEY``. The tracker hands a free
server of the key to each request and marks it busy while the session lives, so holding one
session per request and asking ``free`` times (``summary()["queue_info"][key]["free"]``)
reaches every free board exactly once (no scheduler of our own). Each session is then
profiled in turn (one board at a time: boards that share a host, as in the tests, would
otherwise slow each other down) with the same code as ``--remote`` (graphs timed with
``time_evaluator`` on the board).

A server that declares itself emulated (the qemu-aarch64 server of
:mod:`edgeuq.profile.emulated` registers the global function ``edgeuq.rpc.emulated``) gives a
report labelled ``"emulated"``: its times are shown but never enter the spread or the
outlier test (they are not board times).

Outliers: a board whose graphs p50 (trunk + head medians at the largest S) is more than
``outlier_ratio`` times the median of the *other* boards' (or less than 1/ratio of it) is
flagged. With two boards that disagree both are flagged: two cannot say which one is off.
"""
from __future__ import annotations

import gc
import json
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

__all__ = ["FleetProfile", "profile_fleet", "profile_agent_fleet", "fleet_table", "request_board", "free_boards", "EMULATED_FUNC",
           "remote_emulation"]

from ..report import results_table  # noqa: E402
from .tracker_boards import free_boards, request_board  # noqa: E402  (re-exported)
from .tvm_rpc import EMULATED_FUNC, remote_emulation  # noqa: E402  (re-exported: where they live)

@dataclass(frozen=True)
class FleetProfile:
    """The reports (one per board, in the order the tracker gave them) and the summary table."""

    reports: Tuple[Any, ...]
    servers: Tuple[str, ...]
    table: Dict[str, Any]
    summary_path: Optional[Path] = None


def _graphs_stats(report: Any, samples: int) -> Tuple[Optional[float], Optional[float]]:
    """(p50, p99) of trunk + head at ``samples`` (sums of the two graphs' figures)."""
    per = report.stages.get(str(samples), {})
    if "trunk" not in per or "head" not in per:
        return None, None
    return (per["trunk"]["median_ms"] + per["head"]["median_ms"], per["trunk"]["p99_ms"] + per["head"]["p99_ms"])


def fleet_table(reports: Sequence[Any], servers: Sequence[str], samples: int, *, outlier_ratio: float = 1.5,
                command: str = "edgeuq profile --all") -> Dict[str, Any]:
    """The summary table in the ``results/NAME.json`` form: one row per board (server, where
    measured, trunk / head p50 and p99, graphs p50, ratio to the other boards' median, flag),
    then the spread across the boards (emulated rows excluded)."""
    if not outlier_ratio > 1.0:
        raise ValueError(f"outlier_ratio must be > 1, got {outlier_ratio!r}")
    f = "{:.3f}".format
    nm = "not measured"
    headers = ["server", "measured", "trunk p50 ms", "trunk p99 ms", f"head p50 ms (S={samples})",
               f"head p99 ms (S={samples})", f"graphs p50 ms (S={samples})", "x median of others", "flag"]
    boards = [(i, _graphs_stats(r, samples)) for i, r in enumerate(reports) if r.location != "emulated"]
    p50 = {i: s[0] for i, s in boards if s[0] is not None}
    rows: List[List[str]] = []
    outliers: List[str] = []
    for i, (r, server) in enumerate(zip(reports, servers)):
        per = r.stages.get(str(samples), {})
        cells = [f(per[g][k]) if g in per else nm for g in ("trunk", "head") for k in ("median_ms", "p99_ms")]
        g50, _ = _graphs_stats(r, samples)
        ratio, flag = "-", ""
        if r.location == "emulated":
            flag = "emulated: not a board time, not in the spread"
        elif i in p50 and len(p50) >= 2:
            others = statistics.median(v for j, v in p50.items() if j != i)
            x = p50[i] / others if others > 0 else float("inf")
            ratio = f"{x:.2f}"
            if not 1.0 / outlier_ratio <= x <= outlier_ratio:
                flag = f"OUTLIER (> {outlier_ratio:g}x off the others' median)"
                outliers.append(server)
        elif i in p50:
            flag = "only board: no spread"
        rows.append([server, r.measured_where, *cells, f(g50) if g50 is not None else nm, ratio, flag])
    spread: Dict[str, Any] = {"boards": len(boards), "emulated": len(reports) - len(boards), "outliers": outliers}
    for name, idx in (("graphs p50 ms", 0), ("graphs p99 ms", 1)):
        vals = [s[idx] for _, s in boards if s[idx] is not None]
        if vals:
            spread[name] = {"min": min(vals), "median": statistics.median(vals), "max": max(vals),
                            "max/min": max(vals) / min(vals) if min(vals) > 0 else None}
            rows.append([f"spread of {name} ({len(vals)} boards)", "min / median / max", "", "", "", "",
                         f"{f(min(vals))} / {f(statistics.median(vals))} / {f(max(vals))}",
                         f"max/min {max(vals) / min(vals):.2f}" if min(vals) > 0 else "-", ""])
    places = "; ".join(f"{s} = {r.measured_where}" for r, s in zip(reports, servers))
    return {"command": command, **results_table(
        headers, rows, spread=spread,
        provenance=f"measured by edgeuq profile --all, one board at a time: {places}",
        note=(f"graphs = trunk + head (TVM RPC times the graphs only); outlier: graphs p50 more than "
              f"{outlier_ratio:g}x off the median of the other boards (with two boards that disagree both "
              "are flagged); emulated (qemu) rows are not board times and are left out of the spread"))}


def _folder_name(i: int, server: str) -> str:
    return f"board-{i:02d}-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", server)


def profile_fleet(bundle: Any, out_dir: Optional[Path], *, tracker: str, key: str, samples: Sequence[int] = (1, 8, 32),
                  warmup: int = 5, repeats: int = 50, board: Optional[str] = None, seed: int = 0, plot: bool = True,
                  outlier_ratio: float = 1.5, wait_s: float = 60.0, command: str = "edgeuq profile --all",
                  expect: Optional[int] = None) -> FleetProfile:
    """Profile ``bundle`` on every free server of ``key`` (``expect``: fail unless exactly that
    many are free); write ``out_dir/board-NN-HOST_PORT/`` reports and ``out_dir/fleet_summary.json``."""
    from .bundle_profile import profile_bundle

    if not key:
        raise ValueError("--all needs --tracker HOST:PORT and --key KEY")
    n = free_boards(tracker, key)
    if expect is not None and n != expect:
        raise RuntimeError(f"tracker {tracker}: {n} free server(s) of key {key!r}, expected {expect}")
    if n < 1:
        raise RuntimeError(f"tracker {tracker}: no free server of key {key!r} (is every board busy or down?)")
    sessions: List[Tuple[Any, str]] = []
    try:
        for _ in range(n):  # hold each session, so the tracker hands the next request another board
            sessions.append(request_board(tracker, key, wait_s=wait_s))
        reports, servers = [], []
        for i, (session, server) in enumerate(sessions):
            where = f"tracker {tracker} key {key} server {server}"
            sub = None if out_dir is None else Path(out_dir) / _folder_name(i, server)
            reports.append(profile_bundle(bundle, sub, samples=samples, warmup=warmup, repeats=repeats, board=board,
                                          seed=seed, plot=plot, rpc_session=(session, where)))
            servers.append(server)
        del session
    finally:
        # a session closes when its last reference goes (devices and modules hold it, some in
        # reference cycles): drop them and collect, so the tracker lists the boards free again
        del sessions[:]
        gc.collect()
    return _fleet_summary(reports, servers, samples, outlier_ratio, command, out_dir)


def _fleet_summary(reports: Sequence[Any], servers: Sequence[str], samples: Sequence[int], outlier_ratio: float,
                   command: str, out_dir: Optional[Path]) -> FleetProfile:
    table = fleet_table(reports, servers, max(int(s) for s in samples), outlier_ratio=outlier_ratio, command=command)
    table["measured_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    path = None
    if out_dir is not None:
        path = Path(out_dir) / "fleet_summary.json"
        path.write_text(json.dumps(table, indent=2) + "\n")
    return FleetProfile(reports=tuple(reports), servers=tuple(servers), table=table, summary_path=path)


def profile_agent_fleet(bundle: Any, out_dir: Optional[Path], pool: Any, *, samples: Sequence[int] = (1, 8, 32),
                        warmup: int = 5, repeats: int = 50, board: Optional[str] = None, seed: int = 0,
                        plot: bool = True, outlier_ratio: float = 1.5, command: str = "edgeuq profile --all",
                        expect: Optional[int] = None) -> FleetProfile:
    """:func:`profile_fleet` on the timing agents of a tracker key (``pool``: an
    :class:`edgeuq.profile.agent_pool.AgentPool`): every stage, ONNX Runtime graphs included,
    timed on each free agent in turn. An agent goes back into the pool after each measurement,
    so each next one is asked for with the boards already profiled excluded: every agent that
    was free when the profile started is reached exactly once."""
    from .bundle_profile import profile_bundle
    from .report import save_latency_report

    n = int(pool.status()["free"])
    if expect is not None and n != expect:
        raise RuntimeError(f"tracker {pool.tracker}: {n} free timing agent(s) of key {pool.key!r}, expected {expect}")
    if n < 1:
        raise RuntimeError(f"tracker {pool.tracker}: no free timing agent of key {pool.key!r} (pool {pool.pool_key}; "
                           "is every board busy or down?)")
    reports, servers = [], []
    for i in range(n):
        rep = profile_bundle(bundle, None, samples=samples, warmup=warmup, repeats=repeats, board=board, seed=seed,
                             plot=False, agent_pool=pool, agent_exclude=tuple(servers))
        server = str(rep.environment["agent"])
        if out_dir is not None:  # written once its board is known (the folder names it)
            rep = save_latency_report(rep, Path(out_dir) / _folder_name(i, server), plot=plot)
        reports.append(rep)
        servers.append(server)
    return _fleet_summary(reports, servers, samples, outlier_ratio, command, out_dir)
