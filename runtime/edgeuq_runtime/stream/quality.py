"""Checks of a raw window before the model sees it: NaN bursts, clipping, a stuck sensor,
implausible magnitudes (typically the wrong sample format, e.g. int16 bytes read as float32)."""
from __future__ import annotations

import math
from typing import List

import numpy as np

__all__ = ["window_flags", "window_flags_batch", "BLOCKING_FLAGS"]

#: flags after which the model is not run (its output would be meaningless)
BLOCKING_FLAGS = ("nonfinite_input", "flatline_input", "implausible_values")


def window_flags(x: np.ndarray, max_abs: float = 1e6, clip_count: int = 4) -> List[str]:
    """Problems of one raw window (empty list: none).

    * ``nonfinite_input``: NaN or inf samples;
    * ``implausible_values``: a peak above ``max_abs``, or non-zero samples all below
      1e-20 in magnitude (wrong sample format?);
    * ``flatline_input``: every sample equal (stuck or disconnected sensor);
    * ``clipped_input``: at least ``clip_count`` samples sit exactly on the window's
      peak magnitude (a saturated ADC or amplifier)."""
    x = np.asarray(x)
    hi, lo = np.maximum.reduce(x, axis=None), np.minimum.reduce(x, axis=None)   # = x.max(), x.min(): NaN
    # propagates, inf shows (then the masked path below)
    if not (math.isfinite(hi) and math.isfinite(lo)):
        return _window_flags_nonfinite(x, max_abs, clip_count)
    # finite: the peak magnitude and how many samples sit on it, from the extremes (no |x| array)
    hi, lo = float(hi), float(lo)
    peak = max(hi, -lo)
    if hi == peak and lo == -peak:
        at_peak = int(np.count_nonzero(x == hi)) + (int(np.count_nonzero(x == lo)) if peak > 0 else 0)
    else:
        at_peak = int(np.count_nonzero(x == hi)) if hi == peak else int(np.count_nonzero(x == lo))
    flags: List[str] = []
    if peak > max_abs or (peak > 0 and peak < 1e-20):
        flags.append("implausible_values")
    if at_peak == x.size and not flags:    # every |x| equals the peak magnitude
        flags.append("flatline_input")
    elif peak > 0 and at_peak >= clip_count:
        flags.append("clipped_input")
    return flags


def _window_flags_nonfinite(x: np.ndarray, max_abs: float, clip_count: int) -> List[str]:
    """:func:`window_flags` of a window holding NaN or inf: the rules on its finite samples."""
    flags: List[str] = ["nonfinite_input"]
    x = x[np.isfinite(x)]
    if x.size == 0:
        return flags
    a = np.abs(x)
    peak = float(a.max())
    if peak > max_abs or (peak > 0 and peak < 1e-20):
        flags.append("implausible_values")
    if peak == float(a.min()) and not flags:
        flags.append("flatline_input")
    elif peak > 0 and int(np.count_nonzero(a == peak)) >= clip_count:
        flags.append("clipped_input")
    return flags


def window_flags_batch(x: np.ndarray, max_abs: float = 1e6, clip_count: int = 4) -> List[List[str]]:
    """:func:`window_flags` of every row of ``x`` (B, n), with a few whole-batch reductions instead
    of one set per window (a stream's micro-batch). Rows holding NaN or inf go through
    :func:`window_flags` itself; the others get the same flags by the same rules: ``peak`` is
    ``max(max x, -min x)``, and the smallest magnitude and the count of samples at the peak
    magnitude are reduced over the batch."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"window_flags_batch needs (batch, samples), got shape {x.shape}")
    hi, lo = x.max(axis=1), x.min(axis=1)   # NaN propagates; inf shows up here too
    a = np.abs(x)
    peak = np.maximum(hi, -lo)
    amin = a.min(axis=1)
    at_peak = np.count_nonzero(a == peak[:, None], axis=1)
    finite = np.isfinite(hi) & np.isfinite(lo)
    out: List[List[str]] = []
    for i in range(x.shape[0]):
        if not finite[i]:
            out.append(window_flags(x[i], max_abs, clip_count))
            continue
        flags: List[str] = []
        p = float(peak[i])
        if p > max_abs or (p > 0 and p < 1e-20):
            flags.append("implausible_values")
        if p == float(amin[i]) and not flags:
            flags.append("flatline_input")
        elif p > 0 and int(at_peak[i]) >= clip_count:
            flags.append("clipped_input")
        out.append(flags)
    return out
