"""TVM targets, cross compilers and the local toolchain cache, from compute-target descriptors.

Everything a target needs is data in ``targets/*.toml``: the TVM target dict
(``[tvm]``), the cross compiler that links the library, the qemu user-mode
emulator that runs its binaries here, and for CUDA targets the CPU target of the
host code (``[cuda] host``). This module turns those into ``tvm.target.Target``
objects and records the compiler versions that went into an artifact.

The toolchain cache (aarch64 sysroot with Python + TVM, CUDA 12 ptxas,
tuning databases) lives in ``$EDGEUQ_TOOLCHAINS`` or, in a source checkout,
``<repo>/.toolchains`` (git-ignored), else ``~/.cache/edgeuq/toolchains``.
``scripts/setup_toolchains.sh`` fills it.
"""
from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from ..catalog import ComputeTarget, get_target

__all__ = [
    "ToolchainError", "toolchains_dir", "tvm_target", "host_target", "cross_compiler", "is_native",
    "tool_version", "compiler_versions", "tuning_dir", "TOOLCHAINS_ENV",
]

TOOLCHAINS_ENV = "EDGEUQ_TOOLCHAINS"


class ToolchainError(RuntimeError):
    """A compiler, emulator or sysroot that a lowering step needs is missing."""


def toolchains_dir() -> Path:
    """Root of the local toolchain cache (see the module docstring)."""
    env = os.environ.get(TOOLCHAINS_ENV)
    if env:
        return Path(env).expanduser()
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").is_file() and (repo / "edgeuq").is_dir():
        return repo / ".toolchains"
    return Path.home() / ".cache" / "edgeuq" / "toolchains"


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


def is_native(target: ComputeTarget) -> bool:
    """True when this host can run the target's CPU code itself (no emulator)."""
    cpu = _cpu_of(target)
    triple = str(cpu.tvm.get("mtriple", ""))
    machine = os.uname().machine
    return cpu.cross_compiler is None and (not triple or triple.startswith(machine))


def require_tool(name: str, why: str) -> str:
    """Absolute path of ``name`` on PATH, or a ToolchainError saying how to get it."""
    path = shutil.which(name)
    if path is None:
        raise ToolchainError(f"{name} not found on PATH; it is needed to {why}. "
                             "Install the toolchains with: bash scripts/setup_toolchains.sh")
    return path


@functools.lru_cache(maxsize=None)
def tool_version(name: str) -> Optional[str]:
    """First version-looking line of ``name --version`` (None when absent)."""
    path = shutil.which(name)
    if path is None:
        return None
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [l.strip() for l in out.splitlines() if re.search(r"\d+\.\d+", l)]
    return lines[-1] if name.startswith("nvcc") and lines else (lines[0] if lines else None)


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
