"""Latency profiling entry points (the harness lives in :mod:`.harness`)."""
from __future__ import annotations

from .harness import LatencyStats, measure, measure_latency, measure_stages, StageTimer

__all__ = ["LatencyStats", "measure", "measure_latency", "measure_stages", "StageTimer"]
