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

from ...hostcpu import HOST_ISA_ENV, X86_ISA_FLAGS, cpu_flags  # noqa: F401  (re-exported here)

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


# Host-ISA target descriptors, best first: the one detect_host_target() picks.
HOST_ISA_TARGETS = (("x86-64-v4", "x86-64-avx512"), ("x86-64-v3", "x86-64-avx2"), ("x86-64", "x86-64"))


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
