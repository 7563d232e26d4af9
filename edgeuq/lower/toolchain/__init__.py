"""The local toolchain cache and the one "tool not found" error of every lowerer.

This folder holds everything the lowering toolchains need besides Python packages:
``setup_toolchains.sh`` (cross compilers, qemu, the aarch64 Python sysroot, ptxas,
the armv7 TVM runtime driver; ``scripts/setup_toolchains.sh`` runs it) and
``native/`` (the C++ sources of that driver, ``tvm_vm_driver.cc`` plus the support
headers the TVM wheels omit).

The cache lives in ``$EDGEUQ_TOOLCHAINS`` or, in a source checkout,
``<repo>/.toolchains`` (git-ignored), else ``~/.cache/edgeuq/toolchains``.
"""
from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Optional

__all__ = ["ToolchainError", "toolchains_dir", "require_tool", "tool_version", "TOOLCHAINS_ENV", "NATIVE_DIR",
           "SETUP_HINT"]

TOOLCHAINS_ENV = "EDGEUQ_TOOLCHAINS"
NATIVE_DIR = Path(__file__).resolve().parent / "native"
SETUP_HINT = "bash scripts/setup_toolchains.sh"


class ToolchainError(RuntimeError):
    """A compiler, emulator, sysroot or package that a lowering step needs is missing."""


def toolchains_dir() -> Path:
    """Root of the local toolchain cache (see the module docstring)."""
    env = os.environ.get(TOOLCHAINS_ENV)
    if env:
        return Path(env).expanduser()
    repo = Path(__file__).resolve().parents[3]
    if (repo / "pyproject.toml").is_file() and (repo / "edgeuq").is_dir():
        return repo / ".toolchains"
    return Path.home() / ".cache" / "edgeuq" / "toolchains"


def require_tool(name: str, why: str, how: str = SETUP_HINT) -> str:
    """Absolute path of ``name`` on PATH, or a ToolchainError saying why it is needed and how to get it."""
    path = shutil.which(name)
    if path is None:
        raise ToolchainError(f"{name} not found on PATH; it is needed to {why}. Install it with: {how}")
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
