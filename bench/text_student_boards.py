"""Compile a trained text student for the boards, like any other bundle, and tabulate the result.

    python bench/text_student_boards.py --checkpoint runs/text_teacher2/student/checkpoint \\
        [--boards x86-host raspberry-pi-4 pynq-z2 ...] [--samples 32] [--json results/text_student_boards.json]

The checkpoint folder must hold the student's ``tokenizer.json`` (the device WordPiece).
For every board: ``edgeuq compile`` (``compile_board``, automatic per-graph placement where
the board is this host) and one row: how each graph was checked (native run, qemu
emulation, C simulation, compile only), weight bytes against the board's budget,
end-to-end latency where it could be measured on this host ("not measured" otherwise,
never "met"), and the FPGA resource *estimate* where there is one. A board whose
compile fails gets a row saying why. Default boards: the ``text-student`` recipe's.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

HEADERS = ["board", "trunk", "head", "weight bytes vs budget", "latency (1 input, S samples)", "FPGA resources",
           "budgets"]


def _graph_cell(report_meta: dict, role: str) -> str:
    t = report_meta["targets"][role]
    rec = next((r for r in report_meta["lowering"].values() if role in r.get("roles", ())), {})
    ev = rec.get("evidence", {})
    how = ev.get("label") or ev.get("how") or "?"
    err = ev.get("max_error")
    return f"{t['executor']} {t['target']} ({how}" + (f", max err {err:.2g})" if err is not None else ")")


def _estimate_cell(report: dict) -> str:
    est = report.get("estimates") or {}
    fits = [v.get("fits") for v in est.values() if isinstance(v, dict) and "fits" in v]
    if not fits:
        return "–"
    return ("fits" if all(fits) else "does **not** fit") + " (estimate, no synthesis)"


def _ok_cell(ok) -> str:
    return {True: "all met", False: "**missed**", None: "not all measured"}[ok]


def row_for(board: str, res) -> list:
    rep = res.report
    meta = dict(res.bundle.manifest.metadata)
    w = rep["weight_bytes"]
    lat = rep["latency_ms"]
    lat_cell = (f"{lat['measured']:.2f} ms (budget {lat['budget']:g}; measured on this host)"
                if lat.get("measured") is not None else f"not measured (budget {lat['budget']:g}): "
                f"{lat['how'].removeprefix('not measured: ')}")
    s = rep["mc_samples"]
    return [board, _graph_cell(meta, "trunk"), _graph_cell(meta, "head"),
            f"{w['measured']:,} / {w['budget']:,} " + ("within" if w["ok"] else "**over**"),
            lat_cell + ("" if s["ok"] else f"; S = {s['used']} over the board's {s['budget']}"),
            _estimate_cell(rep), _ok_cell(rep.get("ok"))]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="student checkpoint folder (with tokenizer.json)")
    p.add_argument("--boards", nargs="+", help="boards (default: the text-student recipe's)")
    p.add_argument("--samples", type=int, help="S (default: each board's budget)")
    p.add_argument("--json", type=Path, help="write the table for scripts/render_tables.py")
    p.add_argument("--quick", action="store_true", help="only the recipe's first board (mode quick)")
    a = p.parse_args(argv)

    from edgeuq.export import TOKENIZER_FILE, export_onnx
    from edgeuq.lower.compile import compile_board
    from edgeuq.report import format_table, results_table
    from edgeuq.text.recipe import text_recipe
    from edgeuq.training import load_checkpoint

    from edgeuq.provenance import command_line, start

    prov = start("quick" if a.quick else "full", 1)
    command = command_line("bench/text_student_boards.py", argv)
    ck = load_checkpoint(a.checkpoint)
    if not (Path(ck.directory) / TOKENIZER_FILE).is_file():
        print(f"{a.checkpoint}: no {TOKENIZER_FILE} next to the checkpoint (the device tokenizer)", file=sys.stderr)
        return 2
    boards = a.boards or list(text_recipe().boards)
    if a.quick and not a.boards:
        boards = boards[:1]
    work = Path(tempfile.mkdtemp(prefix="edgeuq-text-boards-"))
    art = export_onnx(ck, work / "onnx")
    rows = []
    for board in boards:
        t0 = time.time()
        print(f"[{board}] compiling ...", flush=True)
        try:
            res = compile_board(board, art, work / board, samples=a.samples, overwrite=True,
                                progress=lambda m: print("  " + m, flush=True))
            rows.append(row_for(board, res))
        except Exception as exc:  # a row that says why, never a silent gap
            traceback.print_exc()
            rows.append([board, f"compile failed: {type(exc).__name__}: {str(exc)[:160]}", "–", "–", "–", "–",
                         "not compiled"])
        print(f"[{board}] {time.time() - t0:.0f}s", flush=True)
    print(format_table(HEADERS, rows))
    if a.json:
        from edgeuq.provenance import finish, write_results

        cfg = ck.config
        note = (f"student d {cfg.d_model}, depth {cfg.depth}, {cfg.scheme} head, vocabulary {cfg.vocab_size}, ids of "
                f"{cfg.input_length}; qemu and C simulation check numerics only, their times are not board times")
        write_results(a.json, results_table(HEADERS, rows), command, finish(prov, note=note))
        print(f"table: {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
