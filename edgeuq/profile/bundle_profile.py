"""Profile one bundle: per-stage latency of one inference, latency vs S and per-operator tables,
on this host or on a board over TVM RPC -> a LatencyReport (JSON + PNG plots). The command is
``edgeuq profile`` (:mod:`edgeuq.profile.cli`); the fleet profile calls this once per board."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

__all__ = ["profile_bundle", "print_report"]


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

    # one call as the executor makes it for S samples (fixed batch / shape buckets: the first call's rows),
    # in the library the executor picks on this host (a per-ISA variant, with its own batch and buckets)
    plan = call_plan(opts, samples if role == "head" else 1, path=path)
    entry, per_call, _ = plan[0]
    fixed = plan.batch is not None
    s_rows = 1 if fixed else samples
    b_rows = per_call if fixed else 1
    arrays = graph_inputs(bundle, role, s_rows if role == "head" else 1, b_rows, seed)
    rows, runs = tvm_kernel_table(path.parent / plan.library, arrays, warmup=warmup, repeats=repeats, entry=entry)
    return rows, (f"TVM Relax VM instrument (vm.set_instrument, this host), {runs} runs after {warmup} "
                  f"warm-up runs dropped; times include ~1 µs Python callback per VM instruction; library "
                  f"{plan.choice}")


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
                   agent_token: Optional[str] = None, agent_pool: Any = None, agent_exclude: Sequence[str] = ()):
    """Profile ``bundle`` here (``remote``/``tracker`` unset), over TVM RPC, or (``emulate``) over
    TVM RPC to a server under qemu-aarch64 (labelled "emulated"); write a LatencyReport to
    ``out_dir`` (if given) and return it. ``rpc_session``: ``(session, where)`` of an open TVM RPC
    session to use instead of connecting (the fleet profile holds one per board).

    A server that declares itself emulated (:data:`edgeuq.profile.tvm_rpc.EMULATED_FUNC`, as the
    qemu server does) gives a report labelled "emulated", however it was reached.
    ``agent`` (``HOST:PORT`` of ``python -m edgeuq_runtime agent``, with ``agent_token``): every
    stage timed on the board by the agent (location "agent"). ``agent_pool``
    (:class:`edgeuq.profile.agent_pool.AgentPool`): the same on a free agent of a tracker key
    (none of ``agent_exclude``); the report's environment names the agent, key and tracker."""
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
    if agent is not None and agent_pool is not None:
        raise ValueError("give --agent HOST:PORT or a tracker's pool of agents, not both")
    if agent_pool is not None and (remote is not None or tracker is not None or emulate or rpc_session is not None):
        raise ValueError("a tracker's timing agents time the bundle: give no --remote / TVM --tracker / --emulate")
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
    elif agent is not None or agent_pool is not None:
        from .agent_client import agent_profile

        pooled = ""
        if agent_pool is not None:
            doc, got = agent_pool.profile(bundle, samples=samples, warmup=warmup, repeats=repeats, seed=seed,
                                          exclude=agent_exclude)
            agent, pooled = got["agent"], f", key {agent_pool.key} through tracker {agent_pool.tracker}"
        elif not agent_token:
            raise ValueError("--agent needs the agent's token ($EDGEUQ_AGENT_TOKEN or --agent-token-file)")
        else:
            doc = agent_profile(agent, bundle, token=agent_token, samples=samples, warmup=warmup, repeats=repeats,
                                seed=seed)
        stages, e2e, backends = doc["stages"], doc["end_to_end"], doc["backends"]
        tables, sources = {}, {}
        env = {**doc["environment"], "agent": agent}
        if agent_pool is not None:
            env.update(tracker=agent_pool.tracker, key=agent_pool.key)
        notes += list(doc["notes"]) + ["agent: every stage timed on the board by `python -m edgeuq_runtime agent` "
                                       "with the runtime's own harness (edgeuq_runtime.harness); no per-operator "
                                       "tables over the agent"]
        location = "agent"
        where = f"agent {agent} ({env.get('hostname')}, {env.get('machine')}, 1 thread{pooled})"
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

        from .tvm_rpc import remote_emulation

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
