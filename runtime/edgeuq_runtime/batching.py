"""The one fixed-batch loop: run a graph compiled for exactly ``batch`` rows over any number of rows.

Used by the ``tvm`` executor (libraries compiled and tuned for a fixed batch) and by the host's
emulated checks (``edgeuq.lower.tvm.qemu``), so the device path and its emulation chunk and pad
in the same way: chunks of ``batch`` rows, the last one zero-padded, the padded rows dropped from
every output, so results never depend on the chunking.
"""
from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["run_fixed_batch", "run_planned"]


def run_planned(call: Callable[[List[np.ndarray], Any], Sequence[np.ndarray]], arrays: Sequence[np.ndarray],
                plan: Sequence[Tuple[Any, int, int]],
                pad: Optional[Callable[[int, np.ndarray, int], np.ndarray]] = None) -> List[np.ndarray]:
    """Run ``arrays`` through ``call(chunk, key)`` once per ``(key, size, rows)`` of ``plan``, in
    order: the next ``rows`` rows, zero-padded to ``size`` rows, the padded rows cut from every
    output. The plan's rows must add up to the arrays' rows (shape buckets of the ``tvm`` executor:
    ``key`` names the bucket's function). ``pad(i, chunk, size)``, if given, returns input ``i``'s
    ``chunk`` zero-padded to ``size`` rows (the ``tvm`` executor writes it straight into a reused
    aligned buffer); the default concatenates zeros."""
    arrays = list(arrays)
    n = arrays[0].shape[0]
    if not plan:
        raise ValueError("run_planned got no rows")
    if sum(rows for _, _, rows in plan) != n:
        raise ValueError(f"the plan covers {sum(r for _, _, r in plan)} rows, the inputs have {n}")
    parts: List[List[np.ndarray]] = []
    r0 = 0
    for key, size, rows in plan:
        if not 1 <= rows <= size:
            raise ValueError(f"a call of {size} rows cannot hold {rows} rows")
        chunk = [a[r0:r0 + rows] for a in arrays]
        r0 += rows
        if size > rows:
            chunk = [np.concatenate([c, np.zeros((size - rows, *c.shape[1:]), c.dtype)]) if pad is None
                     else pad(i, c, size) for i, c in enumerate(chunk)]
        parts.append([v[:rows] for v in call(chunk, key)])
    if len(parts) == 1:
        return parts[0]
    return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]


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
    plan = [(None, batch, min(batch, n - r0)) for r0 in range(0, n, batch)]
    if not plan:
        raise ValueError("run_fixed_batch got no rows")
    return run_planned(lambda chunk, _key: call(chunk), arrays, plan)
