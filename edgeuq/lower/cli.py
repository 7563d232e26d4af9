"""``edgeuq compile --board B``: lower a checkpoint or an ONNX export into one bundle per board."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List

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
    """Rows (what, value, budget, ok) of the budget check, then one per lowered graph group."""
    rows = []
    for key in ("latency_ms", "weight_bytes", "mc_samples"):
        v = report[key]
        got = v.get("measured", v.get("used"))
        ok = {True: "yes", False: "NO", None: "n/a"}[v.get("ok")]
        rows.append([key, "-" if got is None else got, v["budget"], ok, v.get("how", "")])
    from .compile import check_method

    for name, meta in lowering.items():
        check = meta.get("check") or {}
        err = check.get("max_abs_err")
        csim = (meta.get("checks") or {}).get("csim_vs_float_head") or {}
        detail = (f"max|err| {max(err.values()):.2g} vs ONNX Runtime" if err else
                  f"C-sim max|err| {csim['max_abs_error']:.2g} vs float head" if "max_abs_error" in csim else
                  check.get("reason", ""))
        rows.append([name, "+".join(meta.get("roles", [])), meta.get("tuning", "-"), check_method(meta), detail])
    return rows


def _cmd_compile(a: argparse.Namespace) -> int:
    from .tvm_targets import ToolchainError

    try:
        return _compile(a)
    except (ToolchainError, RuntimeError) as exc:  # missing compilers, failed numerical checks
        print(f"edgeuq compile: error: {exc}", file=sys.stderr)
        return 2


def _compile(a: argparse.Namespace) -> int:
    from ..report import format_table
    from .compile import compile_board

    say = _progress(a.quiet)
    art = _onnx_artifact(a, say)
    precision = None
    if a.quant_plan:
        from ..quantize import load_quant_plan, plan_to_hls4ml_precision

        precision = plan_to_hls4ml_precision(load_quant_plan(Path(a.quant_plan)))
        say(f"FPGA head precisions from {a.quant_plan}: {precision}")
    res = compile_board(a.board, art, Path(a.out), tune_trials=a.tune, samples=a.samples,
                        tuning_root=Path(a.tuning_db) if a.tuning_db else None, model_name=a.name,
                        model_version=a.version, workdir=Path(a.workdir) if a.workdir else None,
                        overwrite=a.overwrite, progress=say, fpga_precision=precision)
    m = res.bundle.manifest
    print(f"bundle {res.bundle.root} for board {res.board}: trunk={m.trunk.file} ({m.trunk.backend}), "
          f"head={m.head.file} ({m.head.backend}), {len(m.files)} files, S={m.default_samples}")
    print(format_table(("check", "value", "budget", "ok", "how"), summary_rows(res.report, m.metadata["lowering"])))
    lat = res.report["latency_ms"]
    print(f"budgets {'met' if res.report['ok'] else 'NOT met'}"
          + ("" if lat["ok"] is not None else " (weights, samples; latency not measured here)"))
    if a.json:
        Path(a.json).write_text(json.dumps({"report": res.report, "manifest": m.to_json()}, indent=2))
    return 0


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
    c.add_argument("--tuning-db", help="folder of per-target tuning databases (default <toolchains>/tuning)")
    c.add_argument("--workdir", help="keep intermediate build files here (default: a temporary folder)")
    c.add_argument("--quant-plan", help="quant_plan.json (or a folder holding it) from `edgeuq quantize`: "
                                        "its head precisions become the FPGA head's ap_fixed types")
    c.add_argument("--name", default="edgeuq-model")
    c.add_argument("--version", default="0.1.0")
    c.add_argument("--overwrite", action="store_true", help="replace an existing bundle directory")
    c.add_argument("--json", help="also write the budget report and manifest as JSON")
    c.add_argument("--quiet", action="store_true", help="no progress messages")
    c.set_defaults(func=_cmd_compile)
