"""Fan-out of stream records to the open pages, with bounded memory whatever the uptime
and the number of pages.

The streaming loop calls :meth:`Hub.publish` (never blocks: one JSON encoding per record,
then a non-blocking put into each client's bounded queue; a client whose queue is full
is dropped). The hub keeps a bounded history (the last minutes of decisions, compacted,
plus alarms/status/errors) for a page that connects late, and live latency/real-time
statistics over the last windows."""
from __future__ import annotations

import json
import queue
import threading
import time
from collections import deque
from typing import Any, Deque, Dict, Iterator, List, Mapping, Optional, Tuple

__all__ = ["Hub", "Subscriber", "LiveStats", "compact"]

_COMPACT_KEYS = ("type", "window", "time", "t_signal", "class", "class_index", "confidence", "total", "aleatoric",
                 "epistemic", "density", "abstain", "reasons", "flags", "late", "samples", "error")


def compact(rec: Mapping[str, Any]) -> Dict[str, Any]:
    """The fields of a decision the page's history needs (chart, counters, abstention reasons)."""
    return {k: rec[k] for k in _COMPACT_KEYS if k in rec and rec[k] is not None}


def _dumps(obj: Any) -> str:
    return json.dumps(obj, allow_nan=False, separators=(",", ":"), default=str)


def _pieces(head: str, hist: List[str], tail: str, step: int = 100) -> Iterator[str]:
    yield head
    for i in range(0, len(hist), step):
        yield ",".join(hist[i:i + step]) + ("," if i + step < len(hist) else "")
    yield tail


class Subscriber:
    """One open page: a bounded queue of encoded records; ``dropped`` once it fell behind."""

    def __init__(self, maxsize: int) -> None:
        self.queue: "queue.Queue[str]" = queue.Queue(maxsize=maxsize)
        self.dropped = False
        self.since = time.monotonic()

    def get(self, timeout: float) -> Optional[str]:
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            return None


class LiveStats:
    """Latency quantiles and the real-time factor over the last ``n`` windows (constant memory)."""

    def __init__(self, n: int = 1000) -> None:
        self._lat: Deque[float] = deque(maxlen=n)
        self._work: Deque[Tuple[float, float]] = deque(maxlen=n)   # (signal seconds, compute seconds)
        self.windows = self.abstained = self.late = self.errors = 0

    def add(self, rec: Mapping[str, Any], compute_s: Optional[float], signal_s: Optional[float]) -> None:
        self.windows += 1
        self.abstained += bool(rec.get("abstain"))
        self.late += bool(rec.get("late"))
        self.errors += "error" in rec
        lat = rec.get("latency_ms")
        if isinstance(lat, (int, float)):
            self._lat.append(float(lat))
        if compute_s is not None and signal_s is not None:
            self._work.append((signal_s, compute_s))

    @staticmethod
    def _q(sorted_vals: List[float], q: float) -> Optional[float]:
        if not sorted_vals:
            return None
        i = min(len(sorted_vals) - 1, max(0, int(-(-q * len(sorted_vals) // 1)) - 1))   # ceil(q n) - 1
        return round(sorted_vals[i], 4)

    def to_json(self) -> Dict[str, Any]:
        lat = sorted(self._lat)
        sig = sum(s for s, _ in self._work)
        comp = sum(c for _, c in self._work)
        return {"type": "stats", "windows": self.windows, "abstained": self.abstained, "late": self.late,
                "errors": self.errors, "latency_p50_ms": self._q(lat, 0.5), "latency_p99_ms": self._q(lat, 0.99),
                "real_time_factor": round(sig / comp, 2) if comp > 0 else None, "over_windows": len(lat)}


class Hub:
    """Thread-safe publisher. ``history``: records kept for late pages; ``queue_size``:
    records a page may fall behind before it is dropped; ``max_clients``: open pages."""

    def __init__(self, info: Optional[Mapping[str, Any]] = None, history: int = 3000, queue_size: int = 256,
                 max_clients: int = 16) -> None:
        self._lock = threading.Lock()
        self._subs: List[Subscriber] = []
        self._history: Deque[str] = deque(maxlen=history)
        self.info: Dict[str, Any] = dict(info or {})
        self.queue_size, self.max_clients = int(queue_size), int(max_clients)
        self.stats = LiveStats()
        self.last: Optional[str] = None
        self.alarm: Optional[str] = None
        self.published = 0
        self.dropped_clients = 0

    # -- the loop side (never blocks on a client) --
    def publish(self, rec: Mapping[str, Any], compute_s: Optional[float] = None,
                signal_s: Optional[float] = None) -> None:
        text = _dumps(rec)
        kind = rec.get("type")
        with self._lock:
            self.published += 1
            if kind == "decision":
                self.stats.add(rec, compute_s, signal_s)
                self.last = text
                self._history.append(_dumps(compact(rec)))
            elif kind in ("alarm", "status", "error"):
                if kind == "alarm":
                    self.alarm = rec.get("state")
                elif kind == "error":    # a window the model failed on, reported on its own
                    self.stats.errors += 1
                self._history.append(text)
            self._fanout(text)

    def set_info(self, info: Mapping[str, Any]) -> None:
        with self._lock:
            self.info = dict(info)
            self._fanout(_dumps({"type": "info", "info": self.info}))

    def publish_stats(self) -> None:
        with self._lock:
            self._fanout(_dumps(self.stats.to_json()))

    def _fanout(self, text: str) -> None:
        for sub in list(self._subs):
            try:
                sub.queue.put_nowait(text)
            except queue.Full:   # a slow page: drop it rather than wait or grow
                sub.dropped = True
                self._subs.remove(sub)
                self.dropped_clients += 1

    # -- the server side --
    def subscribe(self, register: bool = True) -> Tuple[Optional[Subscriber], Iterator[str]]:
        """A new subscriber (``register`` false: none, just the snapshot) and the snapshot to
        send first, as pieces of one JSON document (no piece holds a newline; joined with
        anything JSON allows between tokens, e.g. SSE's data-line breaks). ``(None, [])`` when
        full. The history is not copied into one big string: the pieces are made lazily from
        groups of the stored records (the list holds references only), so a connecting page
        (even one that blocks while reading it) holds no more than a few tens of kB."""
        with self._lock:
            sub = None
            if register:
                if len(self._subs) >= self.max_clients:
                    return None, iter(())
                sub = Subscriber(self.queue_size)
                self._subs.append(sub)
            hist = list(self._history)
            head = '{"type":"snapshot","info":' + _dumps(self.info) + ',"history":['
            tail = ('],"last":' + (self.last or "null") + ',"alarm":' + _dumps(self.alarm)
                    + ',"stats":' + _dumps(self.stats.to_json()) + "}")
        return sub, _pieces(head, hist, tail)

    def unsubscribe(self, sub: Subscriber) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)

    @property
    def clients(self) -> int:
        with self._lock:
            return len(self._subs)

    @property
    def history_len(self) -> int:
        with self._lock:
            return len(self._history)
