"""Latency profiling."""
from .latency import LatencyStats, measure_latency

__all__ = ["LatencyStats", "measure_latency"]
