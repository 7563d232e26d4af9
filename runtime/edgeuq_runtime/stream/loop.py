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

__all__ = ["BatchPlan", "LatencyHistogram", "StreamStats", "run_stream"]

Emit = Callable[[Dict[str, Any]], None]


class LatencyHistogram:
    """Constant-memory latency quantiles: log-spaced bins from 1 us to 100 s (0.5 % wide)."""

    def __init__(self, lo: float = 1e-6, hi: float = 100.0, ratio: float = 1.005) -> None:
        self._lo, self._lr = lo, math.log(ratio)
        # a list (constant length): one increment per window costs less than a numpy item update
        self._counts = [0] * (int(math.ceil(math.log(hi / lo) / self._lr)) + 2)
        self.n, self.max, self.sum = 0, 0.0, 0.0

    def add(self, seconds: float) -> None:
        i = 0 if seconds <= self._lo else min(int(math.log(seconds / self._lo) / self._lr) + 1, len(self._counts) - 1)
        self._counts[i] += 1
        self.n += 1
        self.sum += seconds
        self.max = max(self.max, seconds)

    def quantile(self, q: float) -> float:
        """Upper edge of the bin holding the q-quantile (overestimates by < 0.5 %)."""
        if self.n == 0:
            return math.nan
        i = int(np.searchsorted(np.cumsum(np.asarray(self._counts, dtype=np.int64)), math.ceil(q * self.n)))
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
    batches: int = 0          # model calls (a micro-batch of windows each)
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


class BatchPlan:
    """How many consecutive windows one model call may decide (a micro-batch), from the deadline.

    In real time the first window of a batch of ``b`` waits ``b - 1`` hops for the last to arrive,
    then all ``b`` are computed: its latency is ``(b - 1) * hop / rate + b * cost``. The plan picks
    the largest ``b <= max_batch`` with ``(b - 1) * hop_s + safety * b * cost <= deadline``, where
    ``cost`` is the measured compute per window (the slowest of the recent batches, so one fast
    batch never widens the next). Until ``warmup`` windows have been measured, ``b = 1``. With the
    default deadline (one hop) ``b`` is always 1."""

    def __init__(self, hop_s: float, deadline_s: float, max_batch: int = 32, safety: float = 2.0,
                 warmup: int = 8, memory: int = 16) -> None:
        if not (deadline_s > 0 and hop_s > 0):
            raise InputError(f"deadline and hop must be > 0 s, got {deadline_s} and {hop_s}")
        if max_batch < 1:
            raise InputError(f"max_batch must be >= 1, got {max_batch}")
        self.hop_s, self.deadline_s, self.max_batch = float(hop_s), float(deadline_s), int(max_batch)
        self.safety, self.warmup = float(safety), int(warmup)
        self._recent = [0.0] * int(memory)     # per-window cost of the last batches (a ring; a list: read every window)
        self._n = 0
        self.measured = 0

    @property
    def cost(self) -> float:
        """The per-window compute the plan assumes (s): the largest of the recent batches' costs."""
        k = min(self._n, len(self._recent))
        return float(max(self._recent[:k])) if k else math.inf

    def size(self) -> int:
        if self.measured < self.warmup or self.max_batch == 1:
            return 1
        c = self.safety * self.cost
        b = int((self.deadline_s + self.hop_s) // (self.hop_s + c)) if c < math.inf else 1
        return max(1, min(b, self.max_batch))

    def observe(self, windows: int, seconds: float) -> None:
        self._recent[self._n % len(self._recent)] = seconds / max(1, windows)
        self._n += 1
        self.measured += windows


def run_stream(diagnoser: Any, source: Source, emit: Emit, hop: Optional[int] = None,
               alarm: Optional[Hysteresis] = None, max_windows: Optional[int] = None,
               max_stalls: Optional[int] = None, clock: Callable[[], float] = time.monotonic,
               wall: Callable[[], float] = time.time, per_window: bool = True,
               deadline: Optional[float] = None, max_batch: int = 32) -> StreamStats:
    """Run until the source ends, ``max_windows`` decisions, or ``max_stalls`` stalls/closes in a row.

    Window ``i`` is due ``deadline`` seconds (default ``hop / rate``) after its last sample became
    available; a later decision is counted ``late`` and still emitted. A deadline longer than one
    hop lets consecutive windows be decided together (:class:`BatchPlan`, through the diagnoser's
    ``decide_batch`` where it has one, same decisions): a window's latency is then the larger of
    the time since its last sample arrived and what a real-time source would make it, the hops
    its batch waited for the later windows plus the batch's compute (a replay played as fast as
    possible is charged the same wait). With ``per_window`` false only alarms, status records and
    the summary are emitted."""
    rt = diagnoser.rt
    length = rt.input_length
    rate = float(source.rate)
    hop = int(hop or length)
    hop_s = hop / rate
    budget = hop_s if deadline is None else float(deadline)
    budget_ms = round(budget * 1e3, 4)
    batched = bool(getattr(diagnoser, "batched", False)) and hasattr(diagnoser, "decide_batch")
    # a single window goes to ``decide`` where the diagnoser has a one-window fast path (HopPath;
    # same decision as decide_batch of one row), else to decide_batch as any batch
    one_by_one = not batched or getattr(diagnoser, "hop_path", None) is not None
    plan = BatchPlan(hop_s, budget, max_batch if batched else 1)
    win = Windower(length, hop, backlog=max(64, 2 * plan.max_batch))
    batch_buf = np.empty((plan.max_batch, length), dtype=np.float32)
    avail: list = []     # arrival time of each complete window not yet decided, in order
    stats = StreamStats()
    digest = diagnoser.digest
    simulated = bool(getattr(source, "simulated", False))
    quiet_streak = 0

    def finish(index: int, rec: Dict[str, Any], latency: float) -> None:
        late = latency > budget
        stats.windows += 1
        stats.late += late
        ok = rec["status"] == "ok"
        stats.abstained += ok and bool(rec["abstain"])
        stats.latency.add(latency)
        t_sig = win.window_end(index) / rate
        stats.signal_seconds = t_sig
        if per_window:   # the record's keys in this order (as one update of these keys would add them)
            rec["type"] = "decision"
            rec["window"] = index
            rec["t_signal"] = round(t_sig, 6)
            rec["time"] = wall()
            rec["latency_ms"] = round(latency * 1e3, 4)
            rec["deadline_ms"] = budget_ms
            rec["late"] = late
            if digest:
                rec["bundle_digest"] = digest
            if simulated:
                rec["simulated"] = True
            emit(rec)
        if alarm is not None:
            changed = alarm.update(rec["class"] if ok and not rec["abstain"] else None)
            if changed is not None:
                stats.alarms += 1
                emit({"type": "alarm", "state": changed, "window": index, "t_signal": round(t_sig, 6),
                      "time": wall(), "rule": f"{alarm.k} of {alarm.n}"})

    def record(d: Any) -> Dict[str, Any]:
        rec = d.record({"status": "ok"})
        if d.flags:
            stats.flagged += 1
        if d.samples:
            stats.decided += 1
            stats.samples_sum += d.samples
        return rec

    def one(window: np.ndarray) -> Dict[str, Any]:
        try:
            return record(diagnoser.decide(window))
        except Exception as exc:  # noqa: BLE001 - a window must never stop the service: counted, emitted
            message = (f"{type(exc).__name__}: {exc}".splitlines() or [type(exc).__name__])[0]
            stats.record_error(message)
            # an error is not an abstention: no class, no abstain verdict, the message
            return {"status": "error", "class": None, "abstain": None, "reasons": ["error"], "flags": [],
                    "samples": 0, "error": message}

    def decide_pending(k: int) -> None:
        t0 = clock()
        if k == 1 and one_by_one:   # one window (a deadline of one hop: every window): no batch lists
            first = win.next_index
            rec = one(win.pop())
            t1 = clock()
            stats.compute_seconds += t1 - t0
            stats.batches += 1
            plan.observe(1, t1 - t0)
            finish(first, rec, max(t1 - min(avail[0], t0), t1 - t0))   # waited: its own compute
            del avail[0]
            return
        rows = batch_buf[:k]
        first = win.pop_into(rows)
        try:
            recs = [record(d) for d in diagnoser.decide_batch(rows)]
        except Exception:  # noqa: BLE001 - the batch failed: decide its windows one by one (errors counted each)
            recs = [one(w) for w in rows]
        t1 = clock()
        stats.compute_seconds += t1 - t0
        stats.batches += 1
        plan.observe(k, t1 - t0)
        for j, rec in enumerate(recs):
            waited = (k - 1 - j) * hop_s + (t1 - t0)      # real-time equivalent: later windows' hops + compute
            finish(first + j, rec, max(t1 - min(avail[j], t0), waited))
        del avail[:k]

    def room() -> int:
        return plan.max_batch if max_windows is None else min(plan.max_batch, max_windows - stats.windows)

    while max_windows is None or stats.windows < max_windows:
        chunk = source.read(hop)
        if chunk.status != "ok":
            while avail and room() > 0:   # decide what is complete before reporting the source's state
                decide_pending(min(len(avail), room()))
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
        avail.extend([chunk.t_available] * (win.ready() - len(avail)))
        while avail and (max_windows is None or stats.windows < max_windows):
            k = min(plan.size(), room())
            if len(avail) < k:
                break   # wait for the batch to fill (the plan keeps the first window's wait in its deadline)
            decide_pending(k)
    summary = {"type": "summary", **stats.to_json(), "deadline_ms": round(budget * 1e3, 4), "hop": hop,
               "window": length, "rate_hz": rate, "adaptive": diagnoser.adaptive,
               "samples_setting": diagnoser.cfg.s_max if diagnoser.adaptive else diagnoser.samples,
               "batches": stats.batches, "mean_batch": round(stats.windows / stats.batches, 4) if stats.batches else None,
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
