"""UQ benchmark: every stochastic scheme side by side on CWRU and SST-2/TREC (device runtime).

Same as ``edgeuq benchmark-uq``. Trained models are cached under ``--out`` (git-ignored
``runs/``), so a second run only re-evaluates. Data folders are arguments:

    python bench/uq_benchmark.py --cwru ../shared/data/cwru --text ../shared/data/text \\
        [--out runs/benchmark-uq] [--schemes mc_dropout variational ...] [--quick]

Prints markdown tables (also written to OUT/tables.md; raw numbers in OUT/results.json).
``--summary-json results/benchmark_uq.json`` also writes the README's one-row-per-scheme
summary for ``scripts/render_tables.py`` (``--summary-only`` rebuilds it from an existing
OUT/results.json without running anything).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, List, Mapping, Optional

from edgeuq.benchmark import SCHEME_NAMES, BenchmarkSettings, run_benchmark

#: README names of the variants
DISPLAY = {"mc_dropout": "MC dropout", "mc_dropout_attn": "MC dropout + attention", "variational": "variational",
           "hsa": "hierarchical stochastic attention", "ensemble": "deep ensemble (M=3)",
           "laplace": "last-layer Laplace"}
SUMMARY_HEADERS = ["scheme", "CWRU in-domain acc % / ECE %", "cross-load (0–2 → 3 hp) acc %",
                   "unseen fault (0.021 in) AUROC MI", "0 dB noise: acc % / AUROC MI", "SST-2 acc % / ECE %",
                   "TREC OOD AUROC MI / total", "latency ms S=32 (CWRU / SST-2)"]


def _num(v: Any) -> Optional[float]:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _fmt(v: Optional[float], spec: str, scale: float = 1.0) -> str:
    return "–" if v is None else format(v * scale, spec)


def summary_rows(results: List[Mapping[str, Any]], snr: str = "snr 0 dB", samples: int = 32) -> List[List[str]]:
    """One row per scheme (un-scaled variant; TREC MI also with temperature scaling when it differs)."""
    by = {(r["task"], r["variant"]): r for r in results}

    def get(task, variant, *path):
        d: Any = by.get((task, variant))
        for k in path:
            d = d.get(k) if isinstance(d, Mapping) else None
        return _num(d)

    def first_ood(task, variant, key):
        r = by.get((task, variant))
        if r is None or not r.get("ood"):
            return None
        return _num(next(iter(r["ood"].values())).get(key))

    rows = []
    for v in [v for v in SCHEME_NAMES if any(k[1] == v for k in by)]:
        trec_mi, trec_mi_t = first_ood("sst2", v, "auroc_mi"), first_ood("sst2", f"{v}+ts", "auroc_mi")
        trec = ("–" if trec_mi is None else f"{trec_mi:.3f} / {_fmt(first_ood('sst2', v, 'auroc_total'), '.3f')}"
                + (f" ({trec_mi_t:.3f} with T)" if trec_mi_t is not None and round(trec_mi_t, 3) != round(trec_mi, 3)
                   else ""))
        sst_acc = get("sst2", v, "test", "accuracy")
        rows.append([
            DISPLAY.get(v, v),
            f"{_fmt(get('cwru_in_domain', v, 'test', 'accuracy'), '.2f', 100)} / "
            f"{_fmt(get('cwru_in_domain', v, 'test', 'ece'), '.2f', 100)}",
            _fmt(get("cwru_cross_load", v, "test", "accuracy"), ".2f", 100),
            _fmt(first_ood("cwru_unseen_fault", v, "auroc_mi"), ".3f"),
            f"{_fmt(get('cwru_in_domain', v, 'shifts', snr, 'accuracy'), '.1f', 100)} / "
            f"{_fmt(get('cwru_in_domain', v, 'shifts', snr, 'auroc_mi'), '.3f')}",
            "–" if sst_acc is None else f"{sst_acc * 100:.2f} / {_fmt(get('sst2', v, 'test', 'ece'), '.2f', 100)}",
            trec,
            f"{_fmt(get('cwru_in_domain', v, 'latency_ms', f'S={samples}'), '.2f')} / "
            f"{_fmt(get('sst2', v, 'latency_ms', f'S={samples}'), '.2f')}".replace("– / –", "–"),
        ])
    return rows


def write_summary(results_json: Path, out: Path) -> Path:
    """The README summary of a run, with the command and provenance that run recorded
    (``provenance.json`` beside its ``results.json``)."""
    from edgeuq.provenance import write_results
    from edgeuq.report import results_table

    doc = json.loads(Path(results_json).read_text())
    run = Path(results_json).with_name("provenance.json")
    if not run.is_file():
        raise SystemExit(f"{run} not found: {results_json} was not written by this script; rerun it")
    rec = json.loads(run.read_text())
    return write_results(out, results_table(SUMMARY_HEADERS, summary_rows(doc["results"])),
                         rec["command"], rec["provenance"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cwru", help="CWRU folder (MANIFEST.csv + 12k_DE/)")
    ap.add_argument("--text", help="folder with sst2/ and trec/")
    ap.add_argument("--out", default="runs/benchmark-uq")
    ap.add_argument("--schemes", nargs="+", choices=SCHEME_NAMES)
    ap.add_argument("--quick", action="store_true", help="tiny models, few epochs (smoke run, not for reporting)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--summary-json", type=Path, help="also write the README summary table (e.g. "
                                                      "results/benchmark_uq.json) for scripts/render_tables.py")
    ap.add_argument("--summary-only", action="store_true", help="only rebuild --summary-json from OUT/results.json")
    a = ap.parse_args(argv)
    if a.summary_only:
        if not a.summary_json:
            ap.error("--summary-only needs --summary-json")
        print(f"summary: {write_summary(Path(a.out) / 'results.json', a.summary_json)}")
        return 0
    if not a.cwru and not a.text:
        ap.error("give --cwru and/or --text")
    from edgeuq.provenance import command_line, finish, start

    prov = start("quick" if a.quick else "full", 1,
                 note="trained models are cached in --out: a rerun re-evaluates the cached models")
    command = command_line("bench/uq_benchmark.py", argv)
    settings = BenchmarkSettings.quick() if a.quick else BenchmarkSettings()
    run_benchmark(Path(a.out), cwru_dir=Path(a.cwru) if a.cwru else None, text_dir=Path(a.text) if a.text else None,
                  settings=settings, schemes=a.schemes, progress=not a.no_progress)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "provenance.json").write_text(json.dumps({"command": command, "provenance": finish(prov)},
                                                            indent=2) + "\n")
    if a.summary_json:
        print(f"summary: {write_summary(Path(a.out) / 'results.json', a.summary_json)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
