"""TVM targets, cross compilers and the local toolchain cache, from compute-target descriptors.

Everything a target needs is data in ``targets/*.toml``: the TVM target dict
(``[tvm]``), the cross compiler that links the library, the qemu user-mode
emulator that runs its binaries here, and for CUDA targets the CPU target of the
host code (``[cuda] host``). This module turns those into ``tvm.target.Target``
objects and records the compiler versions that went into an artifact.

The toolchain cache (aarch64 sysroot with Python + TVM, CUDA 12 ptxas,
tuning databases) is :func:`edgeuq.lower.toolchain.toolchains_dir`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from ...catalog import ComputeTarget, get_target
from ..toolchain import TOOLCHAINS_ENV, ToolchainError, require_tool, tool_version, toolchains_dir

__all__ = [
    "ToolchainError", "toolchains_dir", "tvm_target", "host_target", "cross_compiler", "is_native",
    "tool_version", "compiler_versions", "tuning_dir", "TOOLCHAINS_ENV", "require_tool", "cpu_flags",
    "required_flags", "detect_host_target", "X86_ISA_FLAGS", "HOST_ISA_ENV",
]


def tuning_dir(target_name: str, root: Optional[Path] = None) -> Path:
    """The MetaSchedule database folder of one target (one database per target)."""
    return (Path(root) if root is not None else toolchains_dir() / "tuning") / target_name


def host_target(target: ComputeTarget) -> Optional[ComputeTarget]:
    """The CPU target that runs a GPU target's host code; None for CPU targets."""
    if target.kind == "cpu":
        return None
    if target.kind == "gpu" and target.cuda_host:
        return get_target(target.cuda_host)
    raise ValueError(f"target {target.name!r} ({target.kind}) has no TVM host: TVM lowers cpu and CUDA gpu targets")


def tvm_target(target: ComputeTarget, num_cores: Optional[int] = None) -> Any:
    """A ``tvm.target.Target`` for a cpu or CUDA target (CUDA: with its host CPU target).

    ``num_cores`` is added to CPU targets (MetaSchedule needs it to tune)."""
    import tvm

    if target.kind == "fpga" or not target.tvm:
        raise ValueError(f"target {target.name!r} is a {target.kind} target without a [tvm] table: "
                         "TVM cannot compile for it (FPGA targets are lowered by hls4ml)")
    spec: Dict[str, Any] = dict(target.tvm)
    host = host_target(target)
    if host is None:
        if num_cores:
            spec["num-cores"] = int(num_cores)
        return tvm.target.Target(spec)
    host_spec = dict(host.tvm)
    return tvm.target.Target(spec, host=host_spec)


def _cpu_of(target: ComputeTarget) -> ComputeTarget:
    return host_target(target) or target


def cross_compiler(target: ComputeTarget) -> Optional[str]:
    """The C++ compiler that links the library (None: the host's own ``g++``)."""
    return _cpu_of(target).cross_compiler


# ISA levels an x86-64 target may ask for (its [tvm] mcpu) -> the /proc/cpuinfo flags they need.
X86_ISA_FLAGS = {
    "x86-64": frozenset(),
    "x86-64-v2": frozenset({"sse4_2", "popcnt", "ssse3"}),
    "x86-64-v3": frozenset({"avx", "avx2", "fma", "bmi2", "f16c"}),
    "x86-64-v4": frozenset({"avx", "avx2", "fma", "bmi2", "f16c", "avx512f", "avx512bw", "avx512dq", "avx512vl"}),
}
# Host-ISA target descriptors, best first: the one detect_host_target() picks.
HOST_ISA_TARGETS = (("x86-64-v4", "x86-64-avx512"), ("x86-64-v3", "x86-64-avx2"), ("x86-64", "x86-64"))


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
    have: frozenset = frozenset()
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                have = frozenset(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    cap = os.environ.get(HOST_ISA_ENV, "").strip()
    if cap:
        hidden = _isa_cap(cap)
        have = frozenset(f for f in have if f not in hidden
                         and not (f.startswith("avx512") and "avx512f" in hidden))
    return have


def required_flags(target: ComputeTarget) -> frozenset:
    """CPU flags the target's code may use (from its ``mcpu`` ISA level; x86-64 only)."""
    cpu = _cpu_of(target)
    if cpu.arch != "x86_64":
        return frozenset()
    mcpu = str(cpu.tvm.get("mcpu", "x86-64"))
    if mcpu not in X86_ISA_FLAGS:
        raise ValueError(f"target {cpu.name!r}: unknown x86-64 ISA level mcpu={mcpu!r}; "
                         f"known: {sorted(X86_ISA_FLAGS)}")
    return X86_ISA_FLAGS[mcpu]


def detect_host_target(flags: Optional[frozenset] = None) -> str:
    """The best host-ISA target descriptor this x86-64 host runs (``x86-64-avx512``,
    ``x86-64-avx2`` or the generic ``x86-64``), from /proc/cpuinfo's flags."""
    have = cpu_flags() if flags is None else frozenset(flags)
    for level, name in HOST_ISA_TARGETS:
        if X86_ISA_FLAGS[level] <= have:
            return name
    return "x86-64"


def is_native(target: ComputeTarget) -> bool:
    """True when this host can run the target's CPU code itself (no emulator): same machine,
    no cross compiler, and (x86-64) every ISA extension the target's code may use."""
    cpu = _cpu_of(target)
    triple = str(cpu.tvm.get("mtriple", ""))
    machine = os.uname().machine
    if cpu.cross_compiler is not None or (triple and not triple.startswith(machine)):
        return False
    return required_flags(target) <= cpu_flags() if cpu.arch == "x86_64" and machine == "x86_64" else True


def compiler_versions(target: ComputeTarget, extra: Optional[Mapping[str, str]] = None) -> Dict[str, Any]:
    """TVM, LLVM and C++/CUDA compiler versions used for an artifact (manifest metadata)."""
    import tvm
    from tvm.target import codegen

    versions: Dict[str, Any] = {"tvm": tvm.__version__, "llvm_major": int(codegen.llvm_version_major())}
    try:
        import tvm_ffi

        versions["tvm_ffi"] = tvm_ffi.__version__
    except (ImportError, AttributeError):
        pass
    cc = cross_compiler(target) or "g++"
    versions["cxx"] = {"name": cc, "version": tool_version(cc)}
    versions.update(dict(extra or {}))
    return versions
