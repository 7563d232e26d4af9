"""Checks of a raw window before the model sees it: NaN bursts, clipping, a stuck sensor,
implausible magnitudes (typically the wrong sample format, e.g. int16 bytes read as float32)."""
from __future__ import annotations

from typing import List

import numpy as np

__all__ = ["window_flags", "BLOCKING_FLAGS"]

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
    flags: List[str] = []
    finite = np.isfinite(x)
    if not finite.all():
        flags.append("nonfinite_input")
        x = x[finite]
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
