"""The streaming loop: source -> ring buffer -> one decision per window (with its deadline)
-> JSON-lines records, alarms with hysteresis, and a summary. Nothing a window or the
source does stops the loop: bad windows give flagged decisions, model errors give error
decisions (``status: "error"`` with the message; counted in ``errors``, never as abstentions:
an erroring model must not look like a cautious one), a stalled or closed source gives a
status record."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

import numpy as np

from ..errors import InputError
from .alarm import Hysteresis
from .ring import Windower
from .sources import Source

__all__ = ["LatencyHistogram", "StreamStats", "run_stream"]

Emit = Callable[[Dict[str, Any]], None]


class LatencyHistogram:
    """Constant-memory latency quantiles: log-spaced bins from 1 us to 100 s (0.5 % wide)."""

    def __init__(self, lo: float = 1e-6, hi: float = 100.0, ratio: float = 1.005) -> None:
        self._lo, self._lr = lo, math.log(ratio)
        self._counts = np.zeros(int(math.ceil(math.log(hi / lo) / self._lr)) + 2, dtype=np.int64)
        self.n, self.max, self.sum = 0, 0.0, 0.0

    def add(self, seconds: float) -> None:
        i = 0 if seconds <= self._lo else min(int(math.log(seconds / self._lo) / self._lr) + 1, self._counts.size - 1)
        self._counts[i] += 1
        self.n += 1
        self.sum += seconds
        self.max = max(self.max, seconds)

    def quantile(self, q: float) -> float:
        """Upper edge of the bin holding the q-quantile (overestimates by < 0.5 %)."""
        if self.n == 0:
            return math.nan
        i = int(np.searchsorted(np.cumsum(self._counts), math.ceil(q * self.n)))
        return min(self._lo * math.exp(self._lr * i), self.max)


@dataclass
class StreamStats:
    windows: int = 0
    decided: int = 0          # the model ran
    abstained: int = 0
    flagged: int = 0          # quality flags
    errors: int = 0           # the model raised: no decision (not an abstention)
    late: int = 0
    samples_sum: int = 0
    stalls: int = 0
    closes: int = 0
    alarms: int = 0
    signal_seconds: float = 0.0
    compute_seconds: float = 0.0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    error_examples: list = field(default_factory=list)   # the first few error messages (bounded)

    #: how many distinct error messages the summary keeps
    MAX_ERROR_EXAMPLES = 5

    def record_error(self, message: str) -> None:
        self.errors += 1
        if len(self.error_examples) < self.MAX_ERROR_EXAMPLES and message not in self.error_examples:
            self.error_examples.append(message)

    def to_json(self) -> Dict[str, Any]:
        ms = lambda v: None if math.isnan(v) else round(v * 1e3, 4)  # noqa: E731
        return {
            "windows": self.windows, "decided": self.decided, "abstained": self.abstained, "flagged": self.flagged,
            "errors": self.errors, "error_examples": list(self.error_examples), "late": self.late, "stalls": self.stalls, "closes": self.closes,
            "alarms": self.alarms,
            "mean_samples": round(self.samples_sum / self.decided, 4) if self.decided else None,
            "signal_seconds": round(self.signal_seconds, 4), "compute_seconds": round(self.compute_seconds, 4),
            "real_time_factor": round(self.signal_seconds / self.compute_seconds, 2) if self.compute_seconds else None,
            "latency_p50_ms": ms(self.latency.quantile(0.5)), "latency_p99_ms": ms(self.latency.quantile(0.99)),
            "latency_max_ms": ms(self.latency.max) if self.latency.n else None,
        }


def run_stream(diagnoser: Any, source: Source, emit: Emit, hop: Optional[int] = None,
               alarm: Optional[Hysteresis] = None, max_windows: Optional[int] = None,
               max_stalls: Optional[int] = None, clock: Callable[[], float] = time.monotonic,
               wall: Callable[[], float] = time.time, per_window: bool = True) -> StreamStats:
    """Run until the source ends, ``max_windows`` decisions, or ``max_stalls`` stalls/closes in a row.

    Window ``i`` is due ``hop / rate`` seconds after its last sample became available
    (the deadline); a later decision is counted ``late`` and still emitted. With
    ``per_window`` false only alarms, status records and the summary are emitted."""
    rt = diagnoser.rt
    length = rt.input_length
    rate = float(source.rate)
    hop = int(hop or length)
    budget = hop / rate
    win = Windower(length, hop)
    stats = StreamStats()
    digest = diagnoser.digest
    simulated = bool(getattr(source, "simulated", False))
    quiet_streak = 0
    while max_windows is None or stats.windows < max_windows:
        chunk = source.read(hop)
        if chunk.status != "ok":
            if chunk.status == "eof":
                emit({"type": "status", "event": "eof", "message": chunk.note or "source ended", "time": wall()})
                break
            stats.stalls += chunk.status == "stalled"
            stats.closes += chunk.status == "closed"
            quiet_streak += 1
            emit({"type": "status", "event": chunk.status, "message": chunk.note, "time": wall()})
            if max_stalls is not None and quiet_streak >= max_stalls:
                emit({"type": "status", "event": "giving_up", "message": f"{quiet_streak} stalls/closes in a row",
                      "time": wall()})
                break
            continue
        quiet_streak = 0
        if chunk.samples.size == 0:
            continue
        win.push(chunk.samples)
        while win.ready() > 0 and (max_windows is None or stats.windows < max_windows):
            index = win.next_index
            window = win.pop()
            t0 = clock()
            try:
                d = diagnoser.decide(window)
                rec = {"status": "ok", **d.to_json()}
                if d.flags:
                    stats.flagged += 1
                if d.samples:
                    stats.decided += 1
                    stats.samples_sum += d.samples
            except Exception as exc:  # noqa: BLE001 - a window must never stop the service: counted, emitted
                message = (f"{type(exc).__name__}: {exc}".splitlines() or [type(exc).__name__])[0]
                stats.record_error(message)
                # an error is not an abstention: no class, no abstain verdict, the message
                rec = {"status": "error", "class": None, "abstain": None, "reasons": ["error"], "flags": [],
                       "samples": 0, "error": message}
            t1 = clock()
            latency = t1 - min(chunk.t_available, t0)
            late = latency > budget
            stats.windows += 1
            stats.late += late
            ok = rec["status"] == "ok"
            stats.abstained += ok and bool(rec["abstain"])
            stats.compute_seconds += t1 - t0
            stats.latency.add(latency)
            stats.signal_seconds = win.window_end(index) / rate
            if per_window:
                rec.update({"type": "decision", "window": index, "t_signal": round(win.window_end(index) / rate, 6),
                            "time": wall(), "latency_ms": round(latency * 1e3, 4),
                            "deadline_ms": round(budget * 1e3, 4), "late": late})
                if digest:
                    rec["bundle_digest"] = digest
                if simulated:
                    rec["simulated"] = True
                emit(rec)
            if alarm is not None:
                changed = alarm.update(rec["class"] if ok and not rec["abstain"] else None)
                if changed is not None:
                    stats.alarms += 1
                    emit({"type": "alarm", "state": changed, "window": index,
                          "t_signal": round(win.window_end(index) / rate, 6), "time": wall(),
                          "rule": f"{alarm.k} of {alarm.n}"})
    summary = {"type": "summary", **stats.to_json(), "deadline_ms": round(budget * 1e3, 4), "hop": hop,
               "window": length, "rate_hz": rate, "adaptive": diagnoser.adaptive,
               "samples_setting": diagnoser.cfg.s_max if diagnoser.adaptive else diagnoser.samples,
               "source": source.description}
    if digest:
        summary["bundle_digest"] = digest
    emit(summary)
    return stats


def check_hop(hop: Optional[int], length: int) -> int:
    h = int(hop or length)
    if h < 1:
        raise InputError(f"hop must be >= 1, got {hop}")
    return h
