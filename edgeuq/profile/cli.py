"""``edgeuq profile``: per-stage latency of one inference, latency vs S, per-operator tables,
on this host or on a board over TVM RPC -> a LatencyReport (JSON + PNG plots).

    edgeuq profile --bundle B [--board X] [--remote HOST:PORT | --tracker HOST:PORT --key K [--all]
                   | --agent HOST:PORT]
                   [--samples 1 8 32] [--repeats N] [--warmup W] [--out DIR]

On a board without the host toolchain (ONNX Runtime bundles, or the numpy stages of any
bundle) run the same command there: this module imports neither torch nor TVM unless a
TVM graph is profiled (``python -m edgeuq.profile.cli --bundle B`` also works).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

__all__ = ["register", "profile_bundle", "main"]


def _onnxruntime_operators(path: Path, role: str, spec: Any, feeds: Dict[str, np.ndarray], bundle: Any,
                           samples: int, warmup: int, repeats: int, seed: int) -> Optional[tuple]:
    from .ort_ops import profile_onnx_graph

    rows, runs = profile_onnx_graph(path, feeds, warmup=warmup, repeats=repeats)
    return rows, (f"ONNX Runtime profiling (CPU, 1 thread), {runs} runs after {warmup} warm-up runs "
                  f"dropped, S={samples if role == 'head' else 1}")


def _tvm_operators(path: Path, role: str, spec: Any, feeds: Dict[str, np.ndarray], bundle: Any,
                   samples: int, warmup: int, repeats: int, seed: int) -> Optional[tuple]:
    """Per-operator table of a CPU TVM library (None for another device: no profiler here)."""
    from .tvm_rpc import graph_inputs, tvm_kernel_table

    opts = spec.options or {}
    if opts.get("device", "cpu") != "cpu":
        return None
    from edgeuq_runtime.executors.tvm import call_plan

    # one call as the executor makes it for S samples (fixed batch / shape buckets: the first call's rows)
    entry, per_call, _ = call_plan(opts, samples if role == "head" else 1)[0]
    s_rows = samples if opts.get("batch") is None else 1
    b_rows = 1 if opts.get("batch") is None else per_call
    arrays = graph_inputs(bundle, role, s_rows if role == "head" else 1, b_rows, seed)
    rows, runs = tvm_kernel_table(path, arrays, warmup=warmup, repeats=repeats, entry=entry)
    return rows, (f"TVM Relax VM instrument (vm.set_instrument, this host), {runs} runs after {warmup} "
                  f"warm-up runs dropped; times include ~1 µs Python callback per VM instruction")


#: executor name -> per-operator profiler of its graphs on this host (no entry: no table, a note says so)
OPERATOR_PROFILERS: Dict[str, Any] = {"onnxruntime": _onnxruntime_operators, "tvm": _tvm_operators}


def _operators_here(profiler: Any, samples: int, warmup: int, repeats: int, seed: int):
    """Per-operator tables of both graphs, run on this host (ORT profiling / TVM instrument)."""
    from edgeuq_runtime.bundle import load_bundle

    from .stages import example_input

    rt = profiler.rt
    m = rt.manifest
    x = example_input(rt, 1, seed)
    windows, _ = profiler.validate_normalize(x)
    features = profiler.run_trunk(windows)
    feeds = {"trunk": {m.input.name: windows},
             "head": profiler.draw_noise(features, samples, np.random.default_rng(seed))}
    bundle = load_bundle(rt.bundle.root, verify=False)
    tables: Dict[str, tuple] = {}
    sources: Dict[str, str] = {}
    notes: List[str] = []
    for role, spec in (("trunk", m.trunk), ("head", m.head)):
        backend = spec.backend or m.backend
        path = rt.bundle.listed_path(spec.file, f"{role} graph")
        table = OPERATOR_PROFILERS.get(backend)
        got = table(path, role, spec, feeds[role], bundle, samples, warmup, repeats, seed) if table else None
        if got is None:
            notes.append(f"no per-operator table for the {role} graph: backend {backend!r} has no profiler here")
            continue
        rows, sources[role] = got
        tables[role] = tuple(rows)
    return tables, sources, notes


def _graph_targets(manifest: Any, key: str = "target") -> Dict[str, str]:
    """``{role: target}`` (or ``lowering``) as ``edgeuq compile`` recorded it in the manifest
    metadata (empty otherwise)."""
    recorded = (manifest.metadata or {}).get("targets") or {}
    return {role: str(v[key]) for role, v in recorded.items() if isinstance(v, dict) and isinstance(v.get(key), str)}


def profile_bundle(bundle: Any, out_dir: Optional[Path] = None, *, samples: Sequence[int] = (1, 8, 32),
                   warmup: int = 5, repeats: int = 50, board: Optional[str] = None, remote: Optional[str] = None,
                   tracker: Optional[str] = None, key: Optional[str] = None, operators: bool = True,
                   seed: int = 0, plot: bool = True, emulate: bool = False,
                   rpc_session: Optional[tuple] = None, agent: Optional[str] = None,
                   agent_token: Optional[str] = None):
    """Profile ``bundle`` here (``remote``/``tracker`` unset), over TVM RPC, or (``emulate``) over
    TVM RPC to a server under qemu-aarch64 (labelled "emulated"); write a LatencyReport to
    ``out_dir`` (if given) and return it. ``rpc_session``: ``(session, where)`` of an open TVM RPC
    session to use instead of connecting (the fleet profile holds one per board).

    A server that declares itself emulated (:data:`edgeuq.profile.fleet.EMULATED_FUNC`, as the
    qemu server does) gives a report labelled "emulated", however it was reached.
    ``agent`` (``HOST:PORT`` of ``python -m edgeuq_runtime agent``, with ``agent_token``): every
    stage timed on the board by the agent (location "agent")."""
    import platform
    import socket

    from edgeuq_runtime.bundle import load_bundle

    from .harness import cpu_name

    from ..artifact import digest_of
    from .report import LatencyReport, save_latency_report

    samples = tuple(int(s) for s in samples)
    if not samples or any(s < 1 for s in samples):
        raise ValueError(f"--samples must be integers >= 1, got {list(samples)}")
    if isinstance(repeats, bool) or int(repeats) < 1 or isinstance(warmup, bool) or int(warmup) < 0:
        raise ValueError(f"--repeats must be >= 1 and --warmup >= 0, got {repeats}, {warmup}")
    if remote is not None or tracker is not None:
        from .tvm_rpc import parse_address

        parse_address(remote or tracker, "--remote" if remote is not None else "--tracker")
        if tracker is not None and not key:
            raise ValueError("--tracker needs --key (the device key the board's server registered)")
    b = load_bundle(bundle, verify=True)
    board = board or (b.manifest.metadata or {}).get("board")
    notes: List[str] = []
    if agent is not None and (remote is not None or tracker is not None or emulate or rpc_session is not None):
        raise ValueError("--agent times on the board's agent: give no --remote / --tracker / --emulate")
    if rpc_session is not None and (remote is not None or tracker is not None or emulate):
        raise ValueError("rpc_session replaces --remote / --tracker / --emulate: give one of them")
    if emulate and (remote is not None or tracker is not None):
        raise ValueError("--emulate starts its own RPC server under qemu: give no --remote / --tracker")
    if emulate:
        from .emulated import EmulatedServer, bundle_qemu_cpu, emulated_note
        from .tvm_rpc import connect, profile_remote

        cpu = bundle_qemu_cpu(b)
        with EmulatedServer(cpu) as srv:
            session, rpc_where = connect(remote=f"{srv.host}:{srv.port}")
            times, backends, more = profile_remote(session, bundle, samples, warmup=warmup, repeats=repeats,
                                                   seed=seed)
            del session
        stages, e2e, tables, sources = dict(times), {}, {}, {}
        notes += [emulated_note(cpu)] + more
        where = f"qemu-aarch64 -cpu {cpu} on {socket.gethostname()} ({rpc_where})"
        env = {"rpc": rpc_where, "qemu_cpu": cpu, "host_machine": platform.machine()}
        location = "emulated"
    elif agent is not None:
        from .agent_client import agent_profile

        if not agent_token:
            raise ValueError("--agent needs the agent's token ($EDGEUQ_AGENT_TOKEN or --agent-token-file)")
        doc = agent_profile(agent, bundle, token=agent_token, samples=samples, warmup=warmup, repeats=repeats,
                            seed=seed)
        stages, e2e, backends = doc["stages"], doc["end_to_end"], doc["backends"]
        tables, sources = {}, {}
        env = {**doc["environment"], "agent": agent}
        notes += list(doc["notes"]) + ["agent: every stage timed on the board by `python -m edgeuq_runtime agent` "
                                       "with the runtime's own harness (edgeuq_runtime.harness); no per-operator "
                                       "tables over the agent"]
        location = "agent"
        where = f"agent {agent} ({env.get('hostname')}, {env.get('machine')}, 1 thread)"
    elif remote is None and tracker is None and rpc_session is None:
        from .stages import StageProfiler, profile_host

        profiler = StageProfiler(bundle, threads=1, seed=seed)
        prof = profile_host(profiler, samples, warmup=warmup, repeats=repeats, seed=seed)
        stages, e2e, backends, env = prof.stages, prof.end_to_end, prof.backends, prof.environment
        notes += prof.notes
        tables: Dict[str, tuple] = {}
        sources: Dict[str, str] = {}
        if operators:
            tables, sources, more = _operators_here(profiler, max(samples), warmup, max(5, repeats // 2), seed)
            notes += more
        location, where = "host", f"{socket.gethostname()} ({platform.machine()}, 1 thread)"
    else:
        from .tvm_rpc import connect, profile_remote

        from .fleet import remote_emulation

        session, where = rpc_session if rpc_session is not None else connect(remote, tracker, key)
        emulator = remote_emulation(session)
        times, backends, more = profile_remote(session, bundle, samples, warmup=warmup, repeats=repeats, seed=seed)
        stages, e2e, tables, sources = dict(times), {}, {}, {}
        env = {"rpc": where}
        location = "remote"
        if emulator is not None:
            location = "emulated"
            notes.append(f"emulated: the RPC server declares it runs under {emulator}; times are not board times")
            env["emulator"] = emulator
            where = f"{emulator} ({where})"
        notes += more
    import time

    env = {**env, "measured_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if location == "host":
        import os

        env["processor"], env["cores"] = cpu_name(), os.cpu_count()
    report = LatencyReport(
        location=location, where=where, bundle=str(Path(bundle)), bundle_digest=b.digest or "",
        backends=backends, samples=samples, warmup=int(warmup), repeats=int(repeats), stages=stages,
        end_to_end=e2e, operators=tables, operator_sources=sources, board=board, batch=1, notes=tuple(notes),
        environment=env, targets=_graph_targets(b.manifest), lowerings=_graph_targets(b.manifest, "lowering"),
        inputs=digest_of(b.digest, location, where, list(samples), int(warmup), int(repeats), seed))
    if out_dir is None:
        return report
    return save_latency_report(report, out_dir, plot=plot)


def print_report(report: Any, file: Any = None) -> None:
    from ..report import format_table
    from .report import operator_table, samples_table, stage_table

    out = file or sys.stdout
    print(f"measured: {report.measured_where}", file=out)
    print(f"bundle {report.bundle} (digest {report.bundle_digest[:12]}), board {report.board or '-'}, "
          f"graphs {dict(report.backends)}, {report.repeats} repeats after {report.warmup} warm-up", file=out)
    print(format_table(*stage_table(report)), file=out)
    print("\nlatency vs S (median ms)", file=out)
    print(format_table(*samples_table(report)), file=out)
    for graph in report.operators:
        print(f"\n{graph}: top operators ({report.operator_sources.get(graph, '')})", file=out)
        print(format_table(*operator_table(report, graph)), file=out)
    for n in report.notes:
        print(f"note: {n}", file=out)
    if report.directory is not None:
        print(f"\nreport: {report.directory / report.META_FILE} (digest {report.digest[:12]})"
              + (f"  plots: {', '.join(report.plots)}" if report.plots else ""), file=out)


def _run_fleet(a: argparse.Namespace) -> int:
    from ..report import format_table
    from .fleet import profile_fleet

    if not a.tracker or not a.key:
        raise ValueError("--all needs --tracker HOST:PORT and --key KEY (every free board of that key)")
    argv = sys.argv[1:]
    argv = argv[argv.index("profile") + 1:] if "profile" in argv else argv
    fleet = profile_fleet(Path(a.bundle), Path(a.out), tracker=a.tracker, key=a.key, samples=a.samples,
                          warmup=a.warmup, repeats=a.repeats, board=a.board, seed=a.seed, plot=not a.no_plots,
                          outlier_ratio=a.outlier_ratio, command=" ".join(["edgeuq profile", *argv]))
    for rep in fleet.reports:
        print(f"{rep.measured_where}: report {rep.directory}")
    t = fleet.table
    print(format_table(t["headers"], t["rows"]))
    print(f"note: {t['note']}")
    print(f"summary: {fleet.summary_path}")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(fleet.summary_path.read_text())
        print(f"table: {a.json}")
    return 0


def _agent_token(a: argparse.Namespace) -> Optional[str]:
    if a.agent is None:
        return None
    from .agent_client import read_agent_token

    return read_agent_token(Path(a.agent_token_file) if a.agent_token_file else None)


def _run(a: argparse.Namespace) -> int:
    if a.key and not a.tracker:
        raise ValueError("--key goes with --tracker HOST:PORT")
    if a.all:
        return _run_fleet(a)
    report = profile_bundle(Path(a.bundle), Path(a.out), samples=a.samples, warmup=a.warmup, repeats=a.repeats,
                            board=a.board, remote=a.remote, tracker=a.tracker, key=a.key,
                            operators=not a.no_operators, seed=a.seed, plot=not a.no_plots, emulate=a.emulate,
                            agent=a.agent, agent_token=_agent_token(a))
    print_report(report)
    if a.json:
        import json

        from .report import targets_table

        argv = sys.argv[1:]
        argv = argv[argv.index("profile") + 1:] if "profile" in argv else argv
        cmd = " ".join(["edgeuq profile", *argv])
        table = targets_table([report], max(report.samples), command=cmd)
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(table, indent=2) + "\n")
        print(f"table: {a.json}")
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", required=True, help="bundle directory (manifest.json)")
    p.add_argument("--board", default=None, help="board name recorded in the report (default: the bundle's)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--remote", metavar="HOST:PORT", default=None,
                       help="a board's TVM RPC server (bind it to 127.0.0.1 and use an SSH tunnel)")
    where.add_argument("--tracker", metavar="HOST:PORT", default=None, help="a TVM RPC tracker (with --key)")
    where.add_argument("--emulate", action="store_true",
                       help="aarch64 bundles: a TVM RPC server under qemu-aarch64 here (labelled emulated: "
                            "times are not board times)")
    where.add_argument("--agent", metavar="HOST:PORT", default=None,
                       help="a board's timing agent (python -m edgeuq_runtime agent; SSH tunnel): every stage, "
                            "ONNX Runtime graphs included, timed on the board")
    p.add_argument("--agent-token-file", default=None,
                   help="the agent's token file (default: $EDGEUQ_AGENT_TOKEN)")
    p.add_argument("--key", default=None, help="device key on the tracker")
    p.add_argument("--all", action="store_true",
                   help="with --tracker/--key: profile every free board of the key (one report each under --out, "
                        "plus fleet_summary.json: p50/p99 spread across boards, outliers flagged)")
    p.add_argument("--outlier-ratio", type=float, default=1.5,
                   help="--all: flag a board whose graphs p50 is more than this factor off the other boards' "
                        "median (default 1.5)")
    p.add_argument("--samples", type=int, nargs="+", default=[1, 8, 32], help="S values (default 1 8 32)")
    p.add_argument("--repeats", type=int, default=50, help="timed repeats per figure (default 50)")
    p.add_argument("--warmup", type=int, default=5, help="untimed warm-up calls (default 5)")
    p.add_argument("--out", default="profile", help="report directory (latency_report.json, PNG plots)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-operators", action="store_true", help="skip the per-operator tables")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--json", default=None, metavar="PATH",
                   help="also write the per-target table row (largest S) as results JSON for scripts/render_tables.py")


def register(subparsers) -> None:
    p = subparsers.add_parser("profile", help="per-stage latency of a bundle here or on a board over TVM RPC "
                                              "(LatencyReport + plots)")
    add_arguments(p)
    p.set_defaults(func=_run)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m edgeuq.profile.cli``: the same command without the rest of the edgeuq CLI."""
    p = argparse.ArgumentParser(prog="edgeuq profile", description=__doc__.splitlines()[0])
    add_arguments(p)
    a = p.parse_args(argv)
    try:
        return _run(a)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"edgeuq profile: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
