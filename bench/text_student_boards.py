"""Compile the text student for the boards, like any other bundle, and tabulate the result.

    nice -n 10 python bench/text_student_boards.py --student /work/shared-runs/text-student \\
        [--boards x86-host raspberry-pi-4 pynq-z2 ...] [--samples N] [--work runs/bench/text_student_boards] \\
        [--json results/text_student_boards.json]

``--student``: the output folder of the compression chain (``edgeuq text-student --out DIR`` /
``bench/text_student_cut.py --out DIR``: its ``text_student.json`` names the deployed network,
``DIR/student``: the last step's checkpoint whose trunk also emits the student's Avg-Avg density
feature, with the pruned ``tokenizer.json`` beside it; the last step's checkpoint where the chain
wrote none), or a checkpoint folder with its ``tokenizer.json``.

For every board, :func:`edgeuq.text.boards.compile_text_student` (the library path, nothing
bench-only): the head the board's head lowering builds (the student's own, or its weights under
another scheme's text head where the lowering takes other noise, e.g. MC dropout for the FPGA),
fp32 weights where they fit the board's weight budget, int8 trunk weights where they do not, then
``compile_board`` (automatic per-graph placement where the board is this host). One row per board:
each graph's executor, target and how it was checked (native run, qemu emulation, C simulation,
compile only; the accepted error and its rule: the float tolerance, + the rounding-flip allowance
for an int8 trunk), the density feature's trunk columns (what ``edgeuq calibrate`` fits the density
score on), the head's scheme, the weights and why, weight bytes against the budget, end-to-end
latency where it could be measured on this host ("not measured" otherwise, never "met"), and the
FPGA resource *estimate* where there is one, and for an FPGA head the runtime's pynq executor run on
a simulated device over the lowering's canary rows (bench/pynq_head_check.py in .venv-pynq: exact
against the C simulation, error against the float head). A board whose compile fails gets a row
saying why.
Default boards: the ``text-student`` recipe's.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

HEADERS = ["board", "trunk", "head", "weights", "density feature", "weight bytes vs budget",
           "latency (1 input, S samples)", "FPGA resources", "FPGA head on the pynq executor (simulated device)",
           "budgets"]
PYNQ_PYTHON = REPO / ".venv-pynq" / "bin" / "python"


def pynq_sim_check(bundle) -> dict:
    """The bundle's FPGA head through the runtime's pynq executor on a simulated device
    (bench/pynq_head_check.py in .venv-pynq, where pynq lives); ``{"checked": False, "why": ...}``
    when the head is not an FPGA head descriptor or the environment is missing."""
    import json
    import subprocess

    from edgeuq.lower.hls4ml.lowerer import DESCRIPTOR_FORMAT

    head = bundle.root / bundle.manifest.head.file
    try:
        fpga = json.loads(head.read_text()).get("format") == DESCRIPTOR_FORMAT
    except (UnicodeDecodeError, ValueError):
        fpga = False
    if not fpga:
        return {"checked": False, "why": "no FPGA head"}
    if not PYNQ_PYTHON.is_file():
        return {"checked": False, "why": f"not run: no {PYNQ_PYTHON.parent.parent} (scripts/setup_pynq_env.sh)"}
    proc = subprocess.run([str(PYNQ_PYTHON), str(REPO / "bench" / "pynq_head_check.py"), str(bundle.root)],
                          env={**os.environ, "PYTHONPATH": str(REPO / "runtime")}, capture_output=True, text=True,
                          timeout=600)
    if proc.returncode != 0:
        return {"checked": False, "why": f"failed: {(proc.stderr or proc.stdout).strip()[-300:]}"}
    return {"checked": True, **json.loads(proc.stdout.strip().splitlines()[-1])}


def _sim_cell(check: dict) -> str:
    if not check["checked"]:
        return "–" if check["why"] == "no FPGA head" else check["why"]
    same = "equal to" if check["equals_csim"] else "**differ from**"
    return (f"{check['rows']} canary rows {same} the C simulation; max err vs float head "
            f"{check['max_err_vs_float']:.2g}, argmax agreement {check['argmax_agreement']:.0%} (simulated, no timing)")


def check_rules(report_meta: dict) -> dict:
    """Per graph role: how its numeric check ran and the rule it met (max error, accepted error, the
    float tolerance and, for dynamically quantised activations, the rounding-flip allowance)."""
    out = {}
    for role in ("trunk", "head"):
        rec = next((r for r in report_meta["lowering"].values() if role in r.get("roles", ())), {})
        ev = rec.get("evidence", {})
        det = ev.get("detail") or {}
        rule = (det.get("rule") or {}).get(role) or {}
        out[role] = {"how": ev.get("label") or ev.get("how") or "?",
                     "max_error": (det.get("max_abs_err") or {}).get(role, ev.get("max_error")),
                     "accepted": (det.get("tolerance") or {}).get(role, ev.get("tolerance")), **rule}
    return out


def _graph_cell(report_meta: dict, role: str) -> str:
    t = report_meta["targets"][role]
    c = check_rules(report_meta)[role]
    err, acc = c.get("max_error"), c.get("accepted")
    if err is None:
        return f"{t['executor']} {t['target']} ({c['how']})"
    rule = (f": float tol {c['float_tolerance']:.2g} + rounding-flip allowance {c['flip_allowance']:.2g}"
            if "flip_allowance" in c else ": float tol" if "float_tolerance" in c else "")
    return f"{t['executor']} {t['target']} ({c['how']}, max err {err:.2g} <= {acc:.2g}{rule})"


def _density_cell(sb) -> str:
    cols = sb.density_columns
    if not cols:
        return "none (the network emits no density feature)"
    return (f"trunk columns {cols[0]}:{cols[1]} (the student's Avg-Avg over its layers; manifest density_columns, "
            f"edgeuq calibrate fits the density on them)")


def _estimate_cell(report: dict) -> str:
    est = report.get("estimates") or {}
    fits = [v.get("fits") for v in est.values() if isinstance(v, dict) and "fits" in v]
    if not fits:
        return "–"
    return ("fits" if all(fits) else "does **not** fit") + " (estimate, no synthesis)"


def _ok_cell(ok) -> str:
    return {True: "all met", False: "**missed**", None: "not all measured"}[ok]


def row_for(sb, sim: dict) -> list:
    """One table row for a :class:`edgeuq.text.boards.StudentOnBoard` and its :func:`pynq_sim_check`."""
    rep = sb.result.report
    meta = dict(sb.result.bundle.manifest.metadata)
    w = rep["weight_bytes"]
    lat = rep["latency_ms"]
    lat_cell = (f"{lat['measured']:.2f} ms (budget {lat['budget']:g}; measured on this host)"
                if lat.get("measured") is not None else f"not measured (budget {lat['budget']:g}): "
                f"{lat['how'].removeprefix('not measured: ')}")
    s = rep["mc_samples"]
    return [sb.board, _graph_cell(meta, "trunk"), f"{_graph_cell(meta, 'head')}; {sb.head_reason}",
            f"{sb.weights}: {sb.weights_reason}", _density_cell(sb),
            f"{w['measured']:,} / {w['budget']:,} " + ("within" if w["ok"] else "**over**"),
            lat_cell + ("" if s["ok"] else f"; S = {s['used']} over the board's {s['budget']}"),
            _estimate_cell(rep), _sim_cell(sim), _ok_cell(rep.get("ok"))]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--student", "--checkpoint", dest="student", type=Path, required=True,
                   help="the chain's output folder (text_student.json) or a checkpoint folder with tokenizer.json")
    p.add_argument("--boards", nargs="+", help="boards (default: the text-student recipe's)")
    p.add_argument("--samples", type=int, help="S (default: each board's budget)")
    p.add_argument("--work", type=Path, default=REPO / "runs" / "bench" / "text_student_boards",
                   help="bundles, moved heads and exports (reused)")
    p.add_argument("--json", type=Path, help="write the table for scripts/render_tables.py")
    p.add_argument("--quick", action="store_true", help="only the recipe's first board (mode quick)")
    a = p.parse_args(argv)

    from edgeuq.provenance import command_line, start
    from edgeuq.report import format_table, results_table
    from edgeuq.text.boards import compile_text_student, student_checkpoint
    from edgeuq.text.recipe import text_recipe

    prov = start("quick" if a.quick else "full", 1)
    command = command_line("bench/text_student_boards.py", argv)
    try:
        ck = student_checkpoint(a.student)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        print(f"{a.student}: not a text student ({exc})", file=sys.stderr)
        return 2
    boards = a.boards or list(text_recipe().boards)
    if a.quick and not a.boards:
        boards = boards[:1]
    rows, raw = [], {}
    for board in boards:
        t0 = time.time()
        print(f"[{board}] compiling ...", flush=True)
        try:
            # workdir kept: hls4ml's C-simulation library reads its weights from the HLS project there
            sb = compile_text_student(ck, board, a.work / board, a.work / "work", samples=a.samples,
                                      workdir=a.work / "lower" / board,
                                      log=lambda m: print("  " + m, flush=True),
                                      progress=lambda m: print("  " + m, flush=True))
            sim = pynq_sim_check(sb.result.bundle)
            rows.append(row_for(sb, sim))
            meta = dict(sb.result.bundle.manifest.metadata)
            checks = check_rules(meta)
            for role, c in checks.items():
                print(f"  {role} check: {c}", flush=True)
            print(f"  density feature: columns {list(sb.density_columns) if sb.density_columns else None}; manifest "
                  f"density_columns {meta.get('density_columns')}", flush=True)
            raw[board] = {"checkpoint": str(sb.checkpoint.directory), "head_scheme": sb.head_scheme,
                          "head_reason": sb.head_reason, "weights": sb.weights,
                          "weights_reason": sb.weights_reason, "fp32_weight_bytes": sb.fp32_weight_bytes,
                          "density_columns": list(sb.density_columns) if sb.density_columns else None,
                          "manifest_density_columns": meta.get("density_columns"),
                          "checks": checks, "pynq_executor_simulated": sim,
                          "report": sb.result.report, "bundle": str(sb.result.bundle.root)}
        except Exception as exc:  # a row that says why, never a silent gap
            traceback.print_exc()
            rows.append([board, f"compile failed: {type(exc).__name__}: {str(exc)[:200]}", "–", "–", "–", "–", "–",
                         "–", "–", "not compiled"])
            raw[board] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"[{board}] {time.time() - t0:.0f}s", flush=True)
    print(format_table(HEADERS, rows))
    if a.json:
        from edgeuq.provenance import finish, write_results

        cfg = ck.config
        params = sum(p.numel() for p in ck.load_model().parameters())
        dens = getattr(cfg.trunk_options, "density_features", "none")
        what = ("the deployed network: the chain's last checkpoint whose trunk also emits the "
                f"'{dens}' density feature" if dens != "none" else "no density feature")
        note = (f"chain student {ck.directory} ({what}; {params / 1e6:.2f}M parameters, d {cfg.d_model}, depth "
                f"{cfg.depth}, {cfg.scheme} head, vocabulary {cfg.vocab_size}, ids of {cfg.input_length}); int8 trunks "
                f"checked by the float tolerance + the rounding-flip allowance (edgeuq.lower.tvm.numerics); latency only where "
                f"every graph runs natively here; qemu and C simulation check numerics only, their times are not "
                f"board times; FPGA resources are an analytic estimate (no synthesis)")
        write_results(a.json, results_table(HEADERS, rows, boards=raw), command, finish(prov, note=note))
        print(f"table: {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
