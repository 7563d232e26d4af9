"""Alarms with hysteresis: a fault is declared when k of the last n decisions agree on it,
and cleared when k of the last n say the normal class. Abstentions count for nothing."""
from __future__ import annotations

from collections import deque
from typing import Deque, Optional

from ..errors import InputError

__all__ = ["Hysteresis"]


class Hysteresis:
    """State machine over per-window labels (``None`` = abstained).

    ``state`` starts at ``normal``. After each :meth:`update`, with counts over the
    last ``n`` labels: if the current state is not ``normal`` and ``normal`` has at
    least ``k`` votes, the alarm clears; otherwise the fault class (not ``normal``,
    not the current state) with the most votes, ties going to the most recent
    label, is declared if it has at least ``k`` votes. Returns the new state if it
    changed, else None."""

    def __init__(self, k: int, n: int, normal: str = "normal") -> None:
        if not (1 <= k <= n):
            raise InputError(f"alarm hysteresis needs 1 <= k <= n, got k={k}, n={n}")
        self.k, self.n, self.normal = int(k), int(n), normal
        self.state = normal
        self._recent: Deque[Optional[str]] = deque(maxlen=self.n)
        self._counts: dict = {}

    def update(self, label: Optional[str]) -> Optional[str]:
        if len(self._recent) == self.n:
            old = self._recent[0]
            if old is not None:
                self._counts[old] -= 1
        self._recent.append(label)
        if label is not None:
            self._counts[label] = self._counts.get(label, 0) + 1
        before = self.state
        if self.state != self.normal and self._counts.get(self.normal, 0) >= self.k:
            self.state = self.normal
        else:
            best, best_key = None, None
            for pos, lab in enumerate(self._recent):
                if lab is None or lab == self.normal or lab == self.state:
                    continue
                key = (self._counts[lab], pos)
                if best_key is None or key > best_key:
                    best, best_key = lab, key
            if best is not None and best_key[0] >= self.k:
                self.state = best
        return self.state if self.state != before else None
