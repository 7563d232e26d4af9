"""The host CPU's feature flags and the x86-64 ISA levels they make up, with the
``EDGEUQ_HOST_ISA`` cap that lets one machine take the lower-ISA paths (tests, CI).

The raw flags come from :mod:`.cpuinfo` (the one /proc/cpuinfo reader, also the timing agent's);
this module adds the ISA levels and the cap. One copy for the device runtime (the ``tvm`` executor picks the best per-ISA library the host's
flags allow) and the host toolchain (:mod:`edgeuq.hostcpu` re-exports it: host-ISA TVM target,
native checks, placement, benchmark provenance). numpy only; no torch, no edgeuq.
"""
from __future__ import annotations

import os
from pathlib import Path

from .cpuinfo import cpu_flags as read_flags

__all__ = ["X86_ISA_FLAGS", "HOST_ISA_ENV", "cpu_flags"]

# ISA levels an x86-64 target may ask for (its [tvm] mcpu) -> the /proc/cpuinfo flags they need.
X86_ISA_FLAGS = {
    "x86-64": frozenset(),
    "x86-64-v2": frozenset({"sse4_2", "popcnt", "ssse3"}),
    "x86-64-v3": frozenset({"avx", "avx2", "fma", "bmi2", "f16c"}),
    "x86-64-v4": frozenset({"avx", "avx2", "fma", "bmi2", "f16c", "avx512f", "avx512bw", "avx512dq", "avx512vl"}),
}
#: Environment variable that caps the host ISA the toolchain and runtime believe they have (an x86-64
#: ISA level ``x86-64``, ``x86-64-v2``, ``x86-64-v3``, ``x86-64-v4`` or the aliases ``sse``, ``avx2``,
#: ``avx512``): with ``EDGEUQ_HOST_ISA=avx2`` an AVX-512 machine takes the AVX2 paths (host-ISA
#: target, native checks, placement, the ``tvm`` executor's per-ISA library), so both branches can
#: be tested on one machine. It can only lower the level, never claim flags the CPU lacks.
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
    have = read_flags(cpuinfo) or frozenset()
    cap = os.environ.get(HOST_ISA_ENV, "").strip()
    if cap:
        hidden = _isa_cap(cap)
        have = frozenset(f for f in have if f not in hidden
                         and not (f.startswith("avx512") and "avx512f" in hidden))
    return have
