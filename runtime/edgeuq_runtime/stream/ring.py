"""Fixed-size ring buffer of samples and the windows-with-hop it yields (no allocation per push)."""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..errors import InputError

__all__ = ["RingBuffer", "Windower"]


class RingBuffer:
    """The last ``capacity`` samples (float32), preallocated once: memory never grows."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise InputError(f"ring buffer capacity must be >= 1, got {capacity}")
        self._buf = np.zeros(capacity, dtype=np.float32)
        self._cap = int(capacity)
        self.total = 0  # samples ever pushed

    @property
    def capacity(self) -> int:
        return self._cap

    def push(self, samples: np.ndarray) -> None:
        x = np.asarray(samples, dtype=np.float32)
        if x.ndim != 1:
            x = x.reshape(-1)
        if x.size >= self._cap:  # only the newest capacity samples survive
            self.total += x.size
            pos = np.arange(self.total - self._cap, self.total) % self._cap
            self._buf[pos] = x[-self._cap:]
            return
        start = self.total % self._cap
        end = start + x.size
        if end <= self._cap:
            self._buf[start:end] = x
        else:
            k = self._cap - start
            self._buf[start:] = x[:k]
            self._buf[: x.size - k] = x[k:]
        self.total += x.size

    def get(self, end: int, length: int, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Samples ``[end - length, end)`` by absolute position (must still be held)."""
        if length > self._cap or end > self.total or end - length < max(0, self.total - self._cap):
            raise InputError(f"samples [{end - length}, {end}) are not in the ring buffer "
                             f"(holds [{max(0, self.total - self._cap)}, {self.total}))")
        out = np.empty(length, dtype=np.float32) if out is None else out
        start = (end - length) % self._cap
        k = min(length, self._cap - start)
        out[:k] = self._buf[start:start + k]
        if k < length:   # the window wraps around the end of the buffer
            out[k:] = self._buf[: length - k]
        return out


class Windower:
    """Windows of ``length`` every ``hop`` samples over a :class:`RingBuffer`.

    Window ``i`` covers samples ``[i * hop, i * hop + length)``. :meth:`ready` tells
    how many complete windows wait; the buffer keeps enough history that a backlog
    of ``backlog`` windows is never overwritten (a longer backlog is an error, not a
    silent drop)."""

    def __init__(self, length: int, hop: int, backlog: int = 64) -> None:
        if length < 1 or hop < 1:
            raise InputError(f"window length and hop must be >= 1, got {length}, {hop}")
        self.length, self.hop = int(length), int(hop)
        self.ring = RingBuffer(self.length + self.hop * max(1, int(backlog)))
        self.next_index = 0
        self._out = np.empty(self.length, dtype=np.float32)

    def push(self, samples: np.ndarray) -> None:
        self.ring.push(samples)

    def window_end(self, index: int) -> int:
        return index * self.hop + self.length

    def ready(self) -> int:
        t = self.ring.total
        if t < self.length:
            return 0
        return (t - self.length) // self.hop + 1 - self.next_index

    def pop(self) -> np.ndarray:
        """The next complete window (a view reused across calls: copy it to keep it)."""
        if self.ready() < 1:
            raise InputError("no complete window is ready")
        end = self.window_end(self.next_index)
        self.ring.get(end, self.length, self._out)
        self.next_index += 1
        return self._out

    def pop_into(self, out: np.ndarray) -> int:
        """The next ``len(out)`` complete windows, in order, into the rows of ``out`` (k, length);
        returns the index of the first."""
        k = out.shape[0]
        if self.ready() < k:
            raise InputError(f"{k} windows asked for, {self.ready()} ready")
        first = self.next_index
        for j in range(k):
            self.ring.get(self.window_end(first + j), self.length, out[j])
        self.next_index += k
        return first
