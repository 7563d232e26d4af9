"""The host CPU as edgeuq sees it: model name, feature flags and x86 ISA levels, with the
``EDGEUQ_HOST_ISA`` cap that lets one machine take the lower-ISA paths (tests, CI). One copy,
used by the TVM targets (native checks, host-ISA target), placement and benchmark provenance."""
from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

__all__ = ["X86_ISA_FLAGS", "HOST_ISA_ENV", "cpu_flags", "cpu_model", "isa_name", "host_threads",
           "host_ort_session"]

# ISA levels an x86-64 target may ask for (its [tvm] mcpu) -> the /proc/cpuinfo flags they need.
X86_ISA_FLAGS = {
    "x86-64": frozenset(),
    "x86-64-v2": frozenset({"sse4_2", "popcnt", "ssse3"}),
    "x86-64-v3": frozenset({"avx", "avx2", "fma", "bmi2", "f16c"}),
    "x86-64-v4": frozenset({"avx", "avx2", "fma", "bmi2", "f16c", "avx512f", "avx512bw", "avx512dq", "avx512vl"}),
}
# Host-ISA target descriptors, best first: the one detect_host_target() picks.
#: Environment variable that caps the host ISA the toolchain believes it has (an x86-64 ISA level
#: ``x86-64``, ``x86-64-v2``, ``x86-64-v3``, ``x86-64-v4`` or the aliases ``sse``, ``avx2``,
#: ``avx512``): with ``EDGEUQ_HOST_ISA=avx2`` an AVX-512 machine takes the AVX2 paths (host-ISA
#: target, native checks, placement), so both branches can be tested on one machine. It can only
#: lower the level, never claim flags the CPU lacks.
HOST_ISA_ENV = "EDGEUQ_HOST_ISA"
_ISA_ALIASES = {"sse": "x86-64", "sse2": "x86-64", "avx2": "x86-64-v3", "avx512": "x86-64-v4"}


def _isa_cap(value: str) -> frozenset:
    """The flags an ISA level above ``value`` would add: the ones the override hides."""
    level = _ISA_ALIASES.get(value.strip().lower(), value.strip().lower())
    if level not in X86_ISA_FLAGS:
        raise ValueError(f"{HOST_ISA_ENV}={value!r}: unknown ISA level; known: "
                         f"{sorted(set(X86_ISA_FLAGS) | set(_ISA_ALIASES))}")
    order = list(X86_ISA_FLAGS)
    hidden = set().union(*(X86_ISA_FLAGS[lv] for lv in order[order.index(level) + 1:])) if level != order[-1] else set()
    return frozenset(hidden - X86_ISA_FLAGS[level])


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset:
    """The host CPU's feature flags (``flags`` line of /proc/cpuinfo; empty when unreadable),
    less those above the level named by ``EDGEUQ_HOST_ISA`` when it is set (every ``avx512*``
    flag is hidden below ``x86-64-v4``)."""
    from edgeuq_runtime.cpuinfo import cpu_flags as read_flags

    have = read_flags(cpuinfo) or frozenset()
    cap = os.environ.get(HOST_ISA_ENV, "").strip()
    if cap:
        hidden = _isa_cap(cap)
        have = frozenset(f for f in have if f not in hidden
                         and not (f.startswith("avx512") and "avx512f" in hidden))
    return have


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
