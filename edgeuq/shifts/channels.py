"""A second sensor channel of the same recordings, when the record metadata points to one.

A record loaded from a MATLAB file whose meta names its channel variable (``meta["source"]``,
``meta["de_key"]``, e.g. CWRU's ``X105_DE_time``) may hold the other accelerometer under the
same name with the channel tag swapped (``X105_FE_time``: fan end). Records without that
metadata, or files without that variable, give nothing (the suite records why)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np

from ..data import SignalRecord, resample

__all__ = ["other_channel_segments"]


def other_channel_segments(segments: Sequence[Tuple[SignalRecord, int, int]], fs: float,
                           swap: Tuple[str, str] = ("_DE_", "_FE_")) -> Tuple[List[SignalRecord], str]:
    """The ``[lo, hi)`` span of each segment's record read from the other channel (resampled to
    ``fs`` like the first), and a note (why none, when empty)."""
    import scipy.io

    out: List[SignalRecord] = []
    why = ""
    for r, lo, hi in segments:
        src, key = r.meta.get("source"), r.meta.get("de_key")
        if not src or not key or swap[0] not in str(key) or not str(src).endswith(".mat"):
            why = "records carry no meta['source'] .mat file with a channel key (meta['de_key'])"
            continue
        other = str(key).replace(*swap)
        names = [v[0] for v in scipy.io.whosmat(str(src))]
        if other not in names:
            why = f"{Path(str(src)).name} has no variable {other}"
            continue
        sig = np.asarray(scipy.io.loadmat(str(src), variable_names=[other])[other], dtype=np.float64).reshape(-1)
        fs0 = float(r.meta.get("fs_original") or r.fs)
        if fs0 != fs:
            sig = resample(sig, fs0, fs)
        sig = sig[lo:hi]
        if len(sig) >= 2:
            out.append(SignalRecord(sig.astype(np.float32), fs, r.label,
                                    {**dict(r.meta), "record_id": f"{r.record_id}:{other}", "channel": other}))
    return out, ("" if out else why)
