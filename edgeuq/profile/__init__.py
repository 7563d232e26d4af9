"""Latency profiling: one harness (warm-up, repeats, median/p90/p99, per-stage timings)."""
from .harness import LatencyStats, StageTimer, measure, measure_latency, measure_stages, percentile

__all__ = ["LatencyStats", "StageTimer", "measure", "measure_latency", "measure_stages", "percentile"]
