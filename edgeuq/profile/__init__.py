"""Latency profiling: one harness (warm-up, repeats, median/p90/p99, per-stage timings interleaved in a
seeded random order, paired ratios with bootstrap intervals)."""
from .harness import (LatencyStats, PairedRatio, StageTimer, bootstrap_median_ci, compare, measure,
                      measure_rounds, measure_stages, paired_ratio, percentile)

__all__ = ["LatencyStats", "PairedRatio", "StageTimer", "bootstrap_median_ci", "compare", "measure",
           "measure_rounds", "measure_stages", "paired_ratio", "percentile"]
