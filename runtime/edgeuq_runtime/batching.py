"""The one fixed-batch loop: run a graph compiled for exactly ``batch`` rows over any number of rows.

Used by the ``tvm`` executor (libraries compiled and tuned for a fixed batch) and by the host's
emulated checks (``edgeuq.lower.tvm.qemu``), so the device path and its emulation chunk and pad
in the same way: chunks of ``batch`` rows, the last one zero-padded, the padded rows dropped from
every output, so results never depend on the chunking.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import numpy as np

__all__ = ["run_fixed_batch"]


def run_fixed_batch(call: Callable[[List[np.ndarray]], Sequence[np.ndarray]], arrays: Sequence[np.ndarray],
                    batch: Optional[int]) -> List[np.ndarray]:
    """``call`` (a list of input arrays sharing their first axis -> a list of outputs with that
    first axis) over ``arrays`` in chunks of exactly ``batch`` rows (``None``: one call, any batch).
    The last chunk is zero-padded to ``batch`` rows and its padded rows are cut from the outputs."""
    arrays = list(arrays)
    if batch is None:
        return list(call(arrays))
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be None or an integer >= 1, got {batch!r}")
    n = arrays[0].shape[0]
    parts: List[List[np.ndarray]] = []
    for r0 in range(0, n, batch):
        chunk = [a[r0:r0 + batch] for a in arrays]
        short = batch - chunk[0].shape[0]
        if short:
            chunk = [np.concatenate([c, np.zeros((short, *c.shape[1:]), c.dtype)]) for c in chunk]
        parts.append([v[: batch - short] for v in call(chunk)])
    if not parts:
        raise ValueError("run_fixed_batch got no rows")
    return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]
