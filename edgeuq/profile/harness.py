"""The one latency harness (``measure``, ``measure_stages``, ``compare``, ``LatencyStats``, ...).

It lives in the device runtime, :mod:`edgeuq_runtime.harness` (numpy only), so that the
timing agent on a board (``python -m edgeuq_runtime agent``) times with the very same code
as benches, compile checks and ``edgeuq profile`` here; this module re-exports it.
"""
from __future__ import annotations

from edgeuq_runtime.harness import *  # noqa: F401,F403
from edgeuq_runtime.harness import __all__ as _runtime_all

__all__ = [*_runtime_all, "cpu_name"]


def cpu_name() -> str:
    """The CPU's model name, for provenance lines (one copy: :func:`edgeuq.hostcpu.cpu_model`)."""
    from ..hostcpu import cpu_model

    return cpu_model()
