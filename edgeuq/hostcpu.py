"""The host CPU as edgeuq sees it: model name, feature flags and x86 ISA levels, with the
``EDGEUQ_HOST_ISA`` cap that lets one machine take the lower-ISA paths (tests, CI). One copy,
used by the TVM targets (native checks, host-ISA target), placement and benchmark provenance."""
from __future__ import annotations

import platform
import sys

# One copy, shared with the device runtime (the ``tvm`` executor's per-ISA library choice).
from edgeuq_runtime.hostcpu import HOST_ISA_ENV, X86_ISA_FLAGS, cpu_flags  # noqa: F401
from edgeuq_runtime.cpuinfo import check_vendor_name, cpu_vendor  # noqa: F401

__all__ = ["X86_ISA_FLAGS", "HOST_ISA_ENV", "cpu_flags", "cpu_vendor", "check_vendor_name", "cpu_model", "isa_name", "host_threads",
           "host_ort_session"]


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


def host_threads() -> int:
    """The threads this process may use for host-side compute: torch's setting when torch is loaded
    (``edgeuq search --workers N`` gives each worker its share of the cores there), else 0
    (the library's own default)."""
    torch = sys.modules.get("torch")
    return int(torch.get_num_threads()) if torch is not None else 0


def host_ort_session(path, threads: int = -1):
    """An ONNX Runtime CPU session for host-side checks and calibration (not the device runtime)
    whose intra-op pool keeps to :func:`host_threads` (``threads`` overrides; 0: ORT's default of
    every core). ORT's default pool would otherwise take every core and spin between runs,
    stealing the core of a search worker running beside it."""
    import onnxruntime as ort

    n = host_threads() if threads < 0 else int(threads)
    so = ort.SessionOptions()
    if n > 0:
        so.intra_op_num_threads = n
        so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
