"""The host CPU as edgeuq sees it: model name, feature flags and x86 ISA levels, with the
``EDGEUQ_HOST_ISA`` cap that lets one machine take the lower-ISA paths (tests, CI). One copy,
used by the TVM targets (native checks, host-ISA target), placement and benchmark provenance."""
from __future__ import annotations

import platform

# One copy, shared with the device runtime (the ``tvm`` executor's per-ISA library choice).
from edgeuq_runtime.hostcpu import HOST_ISA_ENV, X86_ISA_FLAGS, cpu_flags  # noqa: F401

__all__ = ["X86_ISA_FLAGS", "HOST_ISA_ENV", "cpu_flags", "cpu_model", "isa_name"]


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def isa_name() -> str:
    """The widest x86 vector ISA this host runs (honouring ``EDGEUQ_HOST_ISA``), or the machine."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return platform.machine()
    flags = cpu_flags()
    return "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "SSE (no AVX2)"
