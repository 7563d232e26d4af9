"""The one latency harness: warm up, repeat, report median/p90/p99 (these machines are noisy).

    stats = measure(lambda: rt.predict(x, samples=16), warmup=3, repeats=50)
    stats.median_ms, stats.p90_ms, stats.p99_ms, stats.samples_ms

    timer = StageTimer()                 # wall time of the stages of one run
    with timer.stage("train"):
        ...
    timer.seconds                        # {"train": 12.3, ...}

    per = measure_stages({"trunk": run_trunk, "head": run_head}, repeats=30)   # interleaved

Benchmarks, compile checks, quantization costs and the demo's latency stage all time
through :func:`measure`, so every latency figure the project prints means the same thing.
"""
from __future__ import annotations

import operator
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

__all__ = ["LatencyStats", "measure", "measure_latency", "measure_stages", "StageTimer", "percentile", "cpu_name"]


def percentile(sorted_ms: Sequence[float], q: float) -> float:
    """The sample at rank ``int(q * n)`` of ascending ``sorted_ms`` (q in [0, 1]; clipped to the last)."""
    if not sorted_ms:
        raise ValueError("no samples")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {q}")
    return float(sorted_ms[min(len(sorted_ms) - 1, int(q * len(sorted_ms)))])


@dataclass(frozen=True)
class LatencyStats:
    """Summary of ``repeats`` timed calls (milliseconds); ``samples_ms`` in call order."""

    name: str
    median_ms: float
    p90_ms: float
    min_ms: float
    repeats: int
    p99_ms: float = float("nan")
    mean_ms: float = float("nan")
    samples_ms: Tuple[float, ...] = field(default=(), repr=False)

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float], name: str = "") -> "LatencyStats":
        if not samples_ms:
            raise ValueError("no samples")
        s = sorted(float(t) for t in samples_ms)
        return cls(name=name, median_ms=float(statistics.median(s)), p90_ms=percentile(s, 0.9), min_ms=s[0],
                   repeats=len(s), p99_ms=percentile(s, 0.99), mean_ms=float(statistics.fmean(s)),
                   samples_ms=tuple(float(t) for t in samples_ms))

    def ratio_to(self, other: "LatencyStats") -> float:
        return self.median_ms / other.median_ms

    def to_dict(self, samples: bool = False) -> dict:
        d = {k: v for k, v in vars(self).items() if k != "samples_ms"}
        if samples:
            d["samples_ms"] = list(self.samples_ms)
        return d


def _count(value: object, what: str, least: int) -> int:
    try:
        n = operator.index(value)  # ints and numpy integers; not floats or bools
    except TypeError:
        n = None
    if n is None or isinstance(value, bool) or n < least:
        raise ValueError(f"{what} must be an integer >= {least}, got {value!r}")
    return n


def _check(warmup: int, repeats: int, min_time_s: Optional[float]) -> None:
    _count(repeats, "repeats", 1)
    _count(warmup, "warmup", 0)
    if min_time_s is not None and not min_time_s >= 0:  # NaN-safe
        raise ValueError(f"min_time_s must be >= 0, got {min_time_s!r}")


def measure(fn: Callable[[], object], *, warmup: int = 3, repeats: int = 30, min_time_s: Optional[float] = None,
            name: str = "", clock: Callable[[], float] = time.perf_counter) -> LatencyStats:
    """Call ``fn()`` ``warmup`` times untimed, then time it ``repeats`` times (and keep
    going until ``min_time_s`` seconds of timed calls have passed, if given)."""
    _check(warmup, repeats, min_time_s)
    for _ in range(warmup):
        fn()
    times: List[float] = []
    start = clock()
    while len(times) < repeats or (min_time_s is not None and clock() - start < min_time_s):
        t0 = clock()
        fn()
        times.append((clock() - t0) * 1e3)
    return LatencyStats.from_samples(times, name)


def measure_latency(name: str, fn: Callable[[], object], repeats: int = 30, warmup: int = 3,
                    min_time_s: float = 0.0) -> LatencyStats:
    """``measure`` with a name first (the older spelling; same numbers)."""
    return measure(fn, warmup=warmup, repeats=repeats, min_time_s=min_time_s or None, name=name)


def measure_stages(stages: Mapping[str, Callable[[], object]], *, warmup: int = 3, repeats: int = 30,
                   clock: Callable[[], float] = time.perf_counter) -> Dict[str, LatencyStats]:
    """Time several stages of one pipeline, interleaved (stage 1, 2, ..., then again) so
    that drift in the machine's speed affects every stage alike. Adds ``"total"``: the
    sum per round."""
    _check(warmup, repeats, None)
    if not stages:
        raise ValueError("no stages to measure")
    for _ in range(warmup):
        for fn in stages.values():
            fn()
    times: Dict[str, List[float]] = {k: [] for k in stages}
    for _ in range(repeats):
        for k, fn in stages.items():
            t0 = clock()
            fn()
            times[k].append((clock() - t0) * 1e3)
    out = {k: LatencyStats.from_samples(v, k) for k, v in times.items()}
    out["total"] = LatencyStats.from_samples([sum(r) for r in zip(*times.values())], "total")
    return out


class StageTimer:
    """Wall time (seconds) of each named stage of a run: ``with timer.stage("train"): ...``.
    A stage entered twice accumulates."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self.seconds: Dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = self._clock()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + (self._clock() - t0)

    def total(self) -> float:
        return float(sum(self.seconds.values()))


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows: for provenance lines."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
