"""Generation time of the embedded synthetic dataset (a speed target lives here, not in a test).

    python bench/synthetic_speed.py [--repeats 5]

Prints the median wall time of ``synthetic_records(SyntheticBearingConfig())`` (48 records
of 4 s at 12 kHz) and the ratio to one second of signal per record, measured in one run.
"""
from __future__ import annotations

import argparse
import sys

from edgeuq.data import SyntheticBearingConfig, synthetic_records
from edgeuq.profile import measure
from edgeuq.report import format_table


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args(argv)
    cfg = SyntheticBearingConfig()
    full = measure(lambda: synthetic_records(cfg), warmup=1, repeats=a.repeats, name="default dataset")
    n_records = len(synthetic_records(cfg))
    rows = [["default dataset (48 records x 4 s @ 12 kHz)", f"{full.median_ms:.0f}", f"{full.p90_ms:.0f}",
             f"{full.median_ms / n_records:.1f}"]]
    print(format_table(("what", "median ms", "p90 ms", "ms per record"), rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
