"""``edgeuq profile``: per-stage latency of one inference, latency vs S, per-operator tables,
on this host or on a board over TVM RPC -> a LatencyReport (JSON + PNG plots).

    edgeuq profile --bundle B [--board X] [--remote HOST:PORT | --tracker HOST:PORT --key K [--all]
                   [--timing-agents] | --agent HOST:PORT]
                   [--samples 1 8 32] [--repeats N] [--warmup W] [--out DIR]

On a board without the host toolchain (ONNX Runtime bundles, or the numpy stages of any
bundle) run the same command there: this module imports neither torch nor TVM unless a
TVM graph is profiled (``python -m edgeuq.profile.cli --bundle B`` also works).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from .bundle_profile import print_report, profile_bundle  # noqa: F401  (the command's library API)

__all__ = ["register", "profile_bundle", "main"]


def _agent_pool(a: argparse.Namespace):
    """``--tracker T --key K --timing-agents``: the key's timing agents in the tracker's pool."""
    if not a.timing_agents:
        return None
    if not a.tracker or not a.key:
        raise ValueError("--timing-agents needs --tracker HOST:PORT and --key KEY (the agents' board key)")
    from .agent_client import read_agent_token
    from .agent_pool import AgentPool

    return AgentPool(a.tracker, a.key, read_agent_token(Path(a.agent_token_file) if a.agent_token_file else None))


def _run_fleet(a: argparse.Namespace) -> int:
    from ..report import format_table
    from .fleet import profile_agent_fleet, profile_fleet

    if not a.tracker or not a.key:
        raise ValueError("--all needs --tracker HOST:PORT and --key KEY (every free board of that key)")
    argv = sys.argv[1:]
    argv = argv[argv.index("profile") + 1:] if "profile" in argv else argv
    common = dict(samples=a.samples, warmup=a.warmup, repeats=a.repeats, board=a.board, seed=a.seed,
                  plot=not a.no_plots, outlier_ratio=a.outlier_ratio, command=" ".join(["edgeuq profile", *argv]))
    pool = _agent_pool(a)
    if pool is not None:
        fleet = profile_agent_fleet(Path(a.bundle), Path(a.out), pool, **common)
    else:
        fleet = profile_fleet(Path(a.bundle), Path(a.out), tracker=a.tracker, key=a.key, **common)
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
    pool = _agent_pool(a)
    report = profile_bundle(Path(a.bundle), Path(a.out), samples=a.samples, warmup=a.warmup, repeats=a.repeats,
                            board=a.board, remote=a.remote, tracker=None if pool else a.tracker,
                            key=None if pool else a.key, operators=not a.no_operators, seed=a.seed,
                            plot=not a.no_plots, emulate=a.emulate, agent=a.agent, agent_token=_agent_token(a),
                            agent_pool=pool)
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
    p.add_argument("--timing-agents", action="store_true",
                   help="with --tracker/--key: time on the key's timing agents (python -m edgeuq_runtime agent "
                        "--tracker T --key K; every stage, ONNX Runtime included) instead of its TVM RPC servers")
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
