"""The one latency harness: warm up, repeat, report median/p90/p99 (these machines are noisy).

    stats = measure(lambda: rt.predict(x, samples=16), warmup=3, repeats=50)
    stats.median_ms, stats.p90_ms, stats.p99_ms, stats.samples_ms

    timer = StageTimer()                 # wall time of the stages of one run
    with timer.stage("train"):
        ...
    timer.seconds                        # {"train": 12.3, ...}

    per = measure_stages({"trunk": run_trunk, "head": run_head}, repeats=30)   # interleaved
    r = compare(run_a, run_b, names=("a", "b"), repeats=30)    # paired: a/b per round
    r.median, r.ci_low, r.ci_high                              # median ratio, 95 % bootstrap CI
    r = paired_ratio(per["head"], per["trunk"])                # ratio of two stages of one run

Benchmarks, compile checks, quantization costs and the demo's latency stage all time
through :func:`measure` / :func:`measure_stages`, so every latency figure the project prints
means the same thing.

Comparisons cannot be biased by call order: :func:`measure_stages` runs the callables of
one comparison in a seeded random order every round (``np.random.default_rng(seed)``,
one permutation per round, warm-up rounds shuffled too and discarded) and keeps every
round's samples, so a ratio is computed per round (paired: both calls saw the same load)
and reported as the median of those ratios with a seeded percentile-bootstrap interval
(:class:`PairedRatio`). A callable that is only faster because it runs second (a cache the
other one warmed) no longer wins; ``shuffle=False`` (fixed order) is for pipelines whose
stages read each other's output and must run in order, never for comparisons.
"""
from __future__ import annotations

import operator
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = ["LatencyStats", "PairedRatio", "measure", "measure_stages", "measure_rounds",
           "compare", "paired_ratio", "bootstrap_median_ci", "StageTimer", "percentile"]


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


def measure_rounds(stages: Mapping[str, Callable[[], object]], *, warmup: int = 3, repeats: int = 30,
                   seed: int = 0, shuffle: bool = True,
                   clock: Callable[[], float] = time.perf_counter) -> Tuple[Dict[str, List[float]], List[Tuple[str, ...]]]:
    """Per-round samples (ms) of each stage, and the order each timed round ran in.

    Every round calls each stage once; with ``shuffle`` (the default) the order of a round is
    ``rng.permutation`` of the stages with ``rng = np.random.default_rng(seed)``, drawn afresh
    for every round (warm-up rounds included; they are run, then discarded)."""
    _check(warmup, repeats, None)
    _count(seed, "seed", 0)
    if not stages:
        raise ValueError("no stages to measure")
    names = list(stages)
    rng = np.random.default_rng(seed)

    def order() -> List[str]:
        return [names[i] for i in rng.permutation(len(names))] if shuffle else names

    for _ in range(warmup):
        for k in order():
            stages[k]()
    times: Dict[str, List[float]] = {k: [] for k in names}
    orders: List[Tuple[str, ...]] = []
    for _ in range(repeats):
        ks = order()
        orders.append(tuple(ks))
        for k in ks:
            fn = stages[k]
            t0 = clock()
            fn()
            times[k].append((clock() - t0) * 1e3)
    return times, orders


def measure_stages(stages: Mapping[str, Callable[[], object]], *, warmup: int = 3, repeats: int = 30,
                   clock: Callable[[], float] = time.perf_counter, seed: int = 0,
                   shuffle: bool = True) -> Dict[str, LatencyStats]:
    """Time several callables round by round (each once per round), in a seeded random order
    every round (see :func:`measure_rounds`), so that neither drift in the machine's speed nor
    the position in a round (a cache warmed by the previous call) favours one of them.
    ``samples_ms[i]`` of every stage comes from round ``i``: pair them with
    :func:`paired_ratio`. Adds ``"total"``: the sum per round. ``shuffle=False`` keeps the
    mapping's order: only for pipelines whose stages feed each other (not for comparisons)."""
    times, _ = measure_rounds(stages, warmup=warmup, repeats=repeats, seed=seed, shuffle=shuffle, clock=clock)
    out = {k: LatencyStats.from_samples(v, k) for k, v in times.items()}
    out["total"] = LatencyStats.from_samples([sum(r) for r in zip(*times.values())], "total")
    return out


@dataclass(frozen=True)
class PairedRatio:
    """``numerator`` / ``denominator`` time, computed per round (both timed in the same round, in
    random order) and summarized as the median of the per-round ratios with a percentile-bootstrap
    interval at ``confidence`` (``resamples`` resamples of the rounds, seeded by ``seed``).
    ``median > 1``: the numerator is slower. ``excludes_one()``: the interval says which is faster."""

    numerator: str
    denominator: str
    median: float
    ci_low: float
    ci_high: float
    rounds: int
    confidence: float
    resamples: int
    seed: int
    numerator_median_ms: float = float("nan")
    denominator_median_ms: float = float("nan")
    ratios: Tuple[float, ...] = field(default=(), repr=False)

    def excludes_one(self) -> bool:
        """True when the whole interval is on one side of 1 (NaN-safe: False for NaN bounds)."""
        return bool(self.ci_low > 1.0 or self.ci_high < 1.0)

    def format(self, digits: int = 2) -> str:
        """``1.23x [1.10, 1.31]``."""
        return f"{self.median:.{digits}f}x [{self.ci_low:.{digits}f}, {self.ci_high:.{digits}f}]"

    def to_dict(self, ratios: bool = False) -> dict:
        d = {k: v for k, v in vars(self).items() if k != "ratios"}
        d["interval"] = f"{self.confidence:.0%} percentile bootstrap over rounds (median of per-round ratios)"
        if ratios:
            d["ratios"] = list(self.ratios)
        return d


def bootstrap_median_ci(values: Sequence[float], *, resamples: int = 2000, confidence: float = 0.95,
                        seed: int = 0) -> Tuple[float, float]:
    """Percentile-bootstrap interval of the median of ``values``: ``resamples`` resamples with
    replacement (``np.random.default_rng(seed)``), the median of each, and the ``(1 - c)/2`` and
    ``(1 + c)/2`` quantiles of those medians (inverted-CDF quantiles: each bound is one of the
    resampled medians)."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"values must be a non-empty 1-d sequence, got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ValueError("values must be finite (a timing came out NaN or infinite)")
    _count(resamples, "resamples", 1)
    _count(seed, "seed", 0)
    if not 0.0 < confidence < 1.0:  # NaN-safe
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    rng = np.random.default_rng(seed)
    meds = np.empty(resamples, dtype=np.float64)
    for start in range(0, resamples, 256):  # chunks: bounded memory for many rounds
        stop = min(resamples, start + 256)
        meds[start:stop] = np.median(v[rng.integers(0, v.size, size=(stop - start, v.size))], axis=1)
    alpha = 1.0 - confidence
    lo, hi = np.quantile(meds, [alpha / 2, 1 - alpha / 2], method="inverted_cdf")
    return float(lo), float(hi)


Samples = Union[LatencyStats, Sequence[float]]


def _samples(x: Samples, what: str) -> Tuple[str, Tuple[float, ...]]:
    if isinstance(x, LatencyStats):
        return x.name, x.samples_ms
    return what, tuple(float(t) for t in x)


def paired_ratio(numerator: Samples, denominator: Samples, *, resamples: int = 2000, confidence: float = 0.95,
                 seed: int = 0, names: Optional[Tuple[str, str]] = None) -> PairedRatio:
    """Per-round ratios ``numerator[i] / denominator[i]`` of two callables timed in the same rounds
    (two :class:`LatencyStats` of one :func:`measure_stages` run, or two per-round sample lists),
    their median and bootstrap interval (:func:`bootstrap_median_ci`)."""
    n_name, a = _samples(numerator, "numerator")
    d_name, b = _samples(denominator, "denominator")
    if names is not None:
        n_name, d_name = names
    if len(a) != len(b) or not a:
        raise ValueError(f"paired samples need the same number of rounds (>= 1), got {len(a)} and {len(b)}")
    if not min(b) > 0:
        raise ValueError(f"{d_name}: a round took {min(b)!r} ms; a ratio needs positive times")
    r = np.asarray(a, dtype=np.float64) / np.asarray(b, dtype=np.float64)
    lo, hi = bootstrap_median_ci(r, resamples=resamples, confidence=confidence, seed=seed)
    return PairedRatio(numerator=n_name, denominator=d_name, median=float(np.median(r)), ci_low=lo, ci_high=hi,
                       rounds=len(r), confidence=float(confidence), resamples=int(resamples), seed=int(seed),
                       numerator_median_ms=float(statistics.median(a)),
                       denominator_median_ms=float(statistics.median(b)), ratios=tuple(float(x) for x in r))


def compare(a: Callable[[], object], b: Callable[[], object], *, names: Tuple[str, str] = ("a", "b"),
            warmup: int = 3, repeats: int = 30, seed: int = 0, resamples: int = 2000, confidence: float = 0.95,
            clock: Callable[[], float] = time.perf_counter) -> PairedRatio:
    """Time ``a`` and ``b`` in the same rounds, in a seeded random order every round, and return
    the paired ratio time(a) / time(b) (median of per-round ratios, bootstrap interval)."""
    if len(names) != 2 or names[0] == names[1]:
        raise ValueError(f"names must be two different labels, got {names!r}")
    times, _ = measure_rounds({names[0]: a, names[1]: b}, warmup=warmup, repeats=repeats, seed=seed, clock=clock)
    return paired_ratio(times[names[0]], times[names[1]], resamples=resamples, confidence=confidence, seed=seed,
                        names=names)


class StageTimer:
    """Wall time (seconds) of each named stage of a run: ``with timer.stage("train"): ...``.
    A stage entered twice accumulates. ``cpu_seconds`` holds the CPU time (user + system, all
    threads of this process: :func:`time.process_time` by default) of each stage, which other
    jobs on a shared machine do not inflate."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter,
                 cpu_clock: Callable[[], float] = time.process_time) -> None:
        self._clock = clock
        self._cpu_clock = cpu_clock
        self.seconds: Dict[str, float] = {}
        self.cpu_seconds: Dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0, c0 = self._clock(), self._cpu_clock()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + (self._clock() - t0)
            self.cpu_seconds[name] = self.cpu_seconds.get(name, 0.0) + (self._cpu_clock() - c0)

    def cpu_total(self) -> float:
        return float(sum(self.cpu_seconds.values()))

    def total(self) -> float:
        return float(sum(self.seconds.values()))

