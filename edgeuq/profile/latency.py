"""Latency harness: warm up, repeat, report medians (these machines are noisy)."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

__all__ = ["LatencyStats", "measure_latency"]


@dataclass(frozen=True)
class LatencyStats:
    name: str
    median_ms: float
    p90_ms: float
    min_ms: float
    repeats: int

    def ratio_to(self, other: "LatencyStats") -> float:
        return self.median_ms / other.median_ms

    def to_dict(self) -> dict:
        return dict(vars(self))


def measure_latency(
    name: str, fn: Callable[[], object], repeats: int = 30, warmup: int = 3, min_time_s: float = 0.0
) -> LatencyStats:
    """Time ``fn()`` ``repeats`` times (more while ``min_time_s`` has not passed)."""
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - start) < min_time_s:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return LatencyStats(
        name=name,
        median_ms=statistics.median(times),
        p90_ms=times[min(len(times) - 1, int(0.9 * len(times)))],
        min_ms=times[0],
        repeats=len(times),
    )
