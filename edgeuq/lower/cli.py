"""``edgeuq compile --board B``: lower a checkpoint or an ONNX export into one bundle per board."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

__all__ = ["register", "summary_rows"]


def _progress(quiet: bool):
    return (lambda msg: None) if quiet else (lambda msg: print(f"  {msg}", file=sys.stderr, flush=True))


def _onnx_artifact(a: argparse.Namespace, say):
    from ..export import export_onnx, load_onnx_artifact
    from ..training import load_checkpoint

    if a.onnx:
        return load_onnx_artifact(Path(a.onnx))
    out = Path(a.workdir or f"{a.out}.work") / "onnx"
    say(f"exporting {a.checkpoint} to {out}")
    return export_onnx(load_checkpoint(Path(a.checkpoint)), out)


def summary_rows(report: Dict[str, Any], lowering: Dict[str, Any]) -> List[list]:
    """Rows (what, value, budget, ok, how) of the budget check, then estimates (labelled so),
    then one row per lowered graph group with its evidence."""
    from .base import Evidence

    rows = []
    for key in ("latency_ms", "weight_bytes", "mc_samples"):
        v = report[key]
        got = v.get("measured", v.get("used"))
        ok = {True: "yes", False: "NO", None: "not measured"}[v.get("ok")]
        rows.append([key, "-" if got is None else got, v["budget"], ok, v.get("how", "")])
    for key, est in (report.get("estimates") or {}).items():
        if "fits" in est:
            ok = {True: "fits (estimate)", False: "does NOT fit (estimate)", None: "unknown (estimate)"}[est["fits"]]
            value = est.get("part", "-")
        else:
            ok, value = "(estimate)", est.get("value", "-")
        rows.append([key, value, "-", ok, est.get("how", "estimate")])
    for name, meta in lowering.items():
        ev = Evidence.from_json(meta["evidence"])
        rows.append([name, "+".join(meta.get("roles", [])), meta.get("tuning", "-"), ev.label, ev.summary()])
    return rows


def verdict(report: Dict[str, Any]) -> str:
    """One line: met only when every budget was measured and met; never met on "not measured"."""
    ok = report["ok"]
    if ok is True:
        return "budgets met"
    if ok is False:
        return "budgets NOT met"
    missing = [k for k in ("latency_ms", "weight_bytes", "mc_samples") if report[k].get("ok") is None]
    return f"budgets NOT CONFIRMED: {', '.join(missing)} not measured here (the rest within budget)"


def _cmd_compile(a: argparse.Namespace) -> int:
    from .toolchain import ToolchainError

    try:
        return _compile(a)
    except (ToolchainError, RuntimeError) as exc:  # missing compilers, failed numerical checks
        print(f"edgeuq compile: error: {exc}", file=sys.stderr)
        return 2


def _compile(a: argparse.Namespace) -> int:
    from ..report import format_table
    from .compile import compile_board

    cpu_vendor = _cpu_vendor_arg(getattr(a, "cpu_vendor", None))    # refused before anything is exported
    say = _progress(a.quiet)
    art = _onnx_artifact(a, say)
    precision = None
    if a.quant_plan:
        from ..quantize import load_quant_plan, plan_to_hls4ml_precision

        precision = plan_to_hls4ml_precision(load_quant_plan(Path(a.quant_plan)))
        say(f"per-layer precisions from {a.quant_plan}: {precision}")
    measurer = None
    if getattr(a, "agent", None):
        from ..catalog import get_board
        from ..profile.agent_client import read_agent_token
        from .placement_agent import AgentMeasurer

        b = get_board(a.board)
        measurer = AgentMeasurer(art, a.agent, read_agent_token(Path(a.agent_token_file) if a.agent_token_file
                                                                else None),
                                 int(a.samples or b.budgets.mc_samples), warmup=b.placement.warmup,
                                 repeats=b.placement.repeats)
        if cpu_vendor is None:       # auto: the board's vendor, as its agent reports it
            cpu_vendor = _agent_vendor(measurer.board_cpu(), say)
    res = compile_board(a.board, art, Path(a.out), tune_trials=a.tune, samples=a.samples,
                        tuning_root=Path(a.tuning_db) if a.tuning_db else None, model_name=a.name,
                        model_version=a.version, workdir=Path(a.workdir) if a.workdir else None,
                        overwrite=a.overwrite, progress=say, precision=precision, placement=a.placement,
                        remote=a.remote, tracker=a.tracker, key=a.key, measurer=measurer,
                        isa_variants=_isa_variants_arg(a.isa_variants), cpu_vendor=cpu_vendor)
    m = res.bundle.manifest
    print(f"bundle {res.bundle.root} for board {res.board}: trunk={m.trunk.file} ({m.trunk.backend}), "
          f"head={m.head.file} ({m.head.backend}), {len(m.files)} files, S={m.default_samples}")
    print(format_table(("check", "value", "budget", "ok", "how"), summary_rows(res.report, m.metadata["lowering"])))
    if "placement" in res.report:
        from .placement import placement_rows

        pl = res.report["placement"]
        print(f"placement ({pl['measured']}: {pl['where']}; median/p90 of {pl['repeats']} repeats after "
              f"{pl['warmup']} warm-up, trunk 1 window, head S={pl['samples']} rows)")
        print(format_table(*placement_rows(pl)))
    print(verdict(res.report))
    if a.json:
        Path(a.json).write_text(json.dumps({"report": res.report, "manifest": m.to_json()}, indent=2))
    return 0


def _isa_variants_arg(text: Optional[str]) -> Optional[tuple]:
    """``--isa-variants``: None (not given: the board's), ``()`` for "none" or "", else the names."""
    if text is None:
        return None
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if names == ("none",):
        return ()
    if "none" in names or len(set(names)) != len(names):
        raise ValueError(f"--isa-variants must be distinct target names separated by commas, or 'none'; got {text!r}")
    return names


def _agent_vendor(board: Any, say: Any) -> Optional[str]:
    """``--cpu-vendor auto`` with ``--agent``: the vendor the board's agent reports, else None (the
    lowering's own choice), said either way."""
    if board.vendor:
        say(f"board CPU vendor: {board.vendor} ({board.source}); TVM builds take the tuning databases "
            f"re-timed on {board.vendor} CPUs where there are any")
        return board.vendor
    say(f"board CPU vendor: not reported ({board.source}); TVM builds take this host's choice "
        "(--cpu-vendor to set it)")
    return None


def _cpu_vendor_arg(text: Optional[str]) -> Optional[str]:
    """``--cpu-vendor``: None ("auto" or not given), ``""`` for "none", else a lower-case vendor name."""
    if text is None or text == "auto":
        return None
    if text == "none":
        return ""
    from ..hostcpu import check_vendor_name

    try:
        return check_vendor_name(text)
    except ValueError as exc:
        raise ValueError(f"--cpu-vendor must be auto, none or a vendor name: {exc}") from None


def register(sub: Any) -> None:
    """Add the ``compile`` subcommand to the ``edgeuq`` parser."""
    c = sub.add_parser("compile", help="lower a model for a board (TVM / hls4ml) into one bundle")
    c.add_argument("--board", required=True, help="board name (see `edgeuq boards`)")
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="checkpoint directory (exported to ONNX first)")
    src.add_argument("--onnx", help="directory written by `edgeuq export`")
    c.add_argument("--out", required=True, help="bundle directory to write")
    c.add_argument("--tune", type=int, default=0, metavar="N",
                   help="MetaSchedule trials per graph (targets runnable here; default 0: untuned, or reuse the "
                        "target's tuning database when it has records for these graphs)")
    c.add_argument("--samples", type=int, help="MC samples S (default: the board's mc_samples budget)")
    c.add_argument("--isa-variants", metavar="T1,T2|none",
                   help="higher ISA levels to compile next to each TVM graph for run-time dispatch (the executor "
                        "runs the best one the CPU allows), e.g. x86-64-avx2,x86-64-avx512; replaces the board's "
                        "isa_variants; 'none' builds only the placement's own target (default: the board's)")
    c.add_argument("--cpu-vendor", metavar="auto|none|VENDOR",
                   help="the board CPU's vendor (intel, amd, ...: /proc/cpuinfo's vendor_id there), so TVM builds "
                        "use the shipped tuning database re-timed on that vendor's CPUs (tuning/<target>@<vendor>/) "
                        "where there is one; none: the targets' own databases; auto (default): this host's vendor "
                        "for code that runs on this host, none otherwise")
    c.add_argument("--tuning-db", help="folder of per-target tuning databases (default <toolchains>/tuning)")
    c.add_argument("--workdir", help="keep intermediate build files here (default: a temporary folder)")
    c.add_argument("--quant-plan", help="quant_plan.json (or a folder holding it) from `edgeuq quantize`: "
                                        "its head precisions become the FPGA head's ap_fixed types")
    c.add_argument("--placement", choices=("auto", "default"), default="auto",
                   help="auto (default): lower every candidate placement the board lists, time them (here only when "
                        "the board is this host, else over --remote/--tracker) and keep the fastest per graph; "
                        "default: only the board's default placements")
    where = c.add_mutually_exclusive_group()
    where.add_argument("--remote", metavar="HOST:PORT", help="the board's TVM RPC server, to time candidate "
                                                             "placements there (bind it to 127.0.0.1, SSH tunnel)")
    where.add_argument("--tracker", metavar="HOST:PORT", help="a TVM RPC tracker (with --key)")
    where.add_argument("--agent", metavar="HOST:PORT",
                       help="the board's timing agent (python -m edgeuq_runtime agent; SSH tunnel): every candidate, "
                            "ONNX Runtime included, timed on the board")
    c.add_argument("--agent-token-file", help="the agent's token file (default $EDGEUQ_AGENT_TOKEN)")
    c.add_argument("--key", help="device key on the tracker")
    c.add_argument("--name", default="edgeuq-model")
    c.add_argument("--version", default="0.1.0")
    c.add_argument("--overwrite", action="store_true", help="replace an existing bundle directory")
    c.add_argument("--json", help="also write the budget report and manifest as JSON")
    c.add_argument("--quiet", action="store_true", help="no progress messages")
    c.set_defaults(func=_cmd_compile)
