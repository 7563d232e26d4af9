"""Serving from a device root: start from the bundle :func:`boot` chooses, report each
window's health so a trial release is marked good (or rolled back) in service.

    rt, started = open_runtime("/var/lib/edgeuq", threads=1)
    result = serve_window("/var/lib/edgeuq", rt, windows)   # counts toward mark-good
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Tuple

import numpy as np

from ..errors import InputError
from ..session import UncertaintyRuntime
from ..uncertainty import UncertaintyResult
from .slots import BootResult, boot, record_window

__all__ = ["open_runtime", "serve_window", "window_healthy"]


def open_runtime(root: Path, **runtime_kw: Any) -> Tuple[UncertaintyRuntime, BootResult]:
    """Boot the device root (count a trial boot, roll back if due) and load the chosen bundle."""
    started = boot(Path(root))
    return UncertaintyRuntime(started.bundle, **runtime_kw), started


def window_healthy(result: UncertaintyResult) -> bool:
    """A served window is healthy when every probability and uncertainty is finite."""
    return bool(np.isfinite(result.probs).all() and np.isfinite(result.total).all()
                and np.isfinite(result.epistemic).all())


def serve_window(root: Path, runtime: UncertaintyRuntime, x: Any, **predict_kw: Any) -> UncertaintyResult:
    """Predict, then report the window's health. Bad input (:class:`InputError`) is the
    caller's problem and does not count; a backend failure or a non-finite result counts as
    unhealthy (rolling a trial release back). After a rollback, re-open the runtime."""
    try:
        result = runtime.predict(x, **predict_kw)
    except InputError:
        raise
    except Exception:
        record_window(Path(root), False)
        raise
    record_window(Path(root), window_healthy(result))
    return result
