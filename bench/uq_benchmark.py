"""UQ benchmark: every stochastic scheme side by side on CWRU and SST-2/TREC (device runtime).

Same as ``edgeuq benchmark-uq``. Trained models are cached under ``--out`` (git-ignored
``runs/``), so a second run only re-evaluates. Data folders are arguments:

    python bench/uq_benchmark.py --cwru ../shared/data/cwru --text ../shared/data/text \\
        [--out runs/benchmark-uq] [--schemes mc_dropout variational ...] [--quick]

Prints markdown tables (also written to OUT/tables.md; raw numbers in OUT/results.json).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edgeuq.benchmark import SCHEME_NAMES, BenchmarkSettings, run_benchmark


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cwru", help="CWRU folder (MANIFEST.csv + 12k_DE/)")
    ap.add_argument("--text", help="folder with sst2/ and trec/")
    ap.add_argument("--out", default="runs/benchmark-uq")
    ap.add_argument("--schemes", nargs="+", choices=SCHEME_NAMES)
    ap.add_argument("--quick", action="store_true", help="tiny models, few epochs (smoke run, not for reporting)")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    if not a.cwru and not a.text:
        ap.error("give --cwru and/or --text")
    settings = BenchmarkSettings.quick() if a.quick else BenchmarkSettings()
    run_benchmark(Path(a.out), cwru_dir=Path(a.cwru) if a.cwru else None, text_dir=Path(a.text) if a.text else None,
                  settings=settings, schemes=a.schemes, progress=not a.no_progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
