"""Pareto sets of objective vectors (numpy; the reference the search is checked against)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["dominates", "non_dominated"]


def _as_min(points: np.ndarray, senses: Sequence[str]) -> np.ndarray:
    if points.ndim != 2 or points.shape[1] != len(senses):
        raise ValueError(f"points must have shape (N, {len(senses)}), got {points.shape}")
    bad = [s for s in senses if s not in ("min", "max")]
    if bad:
        raise ValueError(f"senses must be 'min' or 'max', got {bad}")
    return np.where(np.array([s == "max" for s in senses]), -points, points)


def dominates(a: np.ndarray, b: np.ndarray, senses: Sequence[str]) -> bool:
    """``a`` is at least as good as ``b`` in every objective and better in one."""
    m = _as_min(np.stack([a, b]).astype(np.float64), senses)
    return bool(np.all(m[0] <= m[1]) and np.any(m[0] < m[1]))


def non_dominated(points: np.ndarray, senses: Sequence[str]) -> np.ndarray:
    """Indices of the points no other point dominates (duplicates all kept)."""
    m = _as_min(np.asarray(points, dtype=np.float64), senses)
    keep = []
    for i in range(len(m)):
        dominated = np.any(np.all(m <= m[i], axis=1) & np.any(m < m[i], axis=1))
        if not dominated:
            keep.append(i)
    return np.asarray(keep, dtype=np.int64)
