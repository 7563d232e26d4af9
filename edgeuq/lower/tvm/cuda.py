"""CUDA kernels of a TVM executable: extract the generated source and compile it offline.

TVM 0.27 keeps the CUDA kernels of an exported library as *source* (module format
``cuda``) and compiles them when the library is loaded, through the
``tvm_callback_cuda_compile`` hook (NVRTC or nvcc on the device). A board should
not need a CUDA compiler, so the lowering compiles the kernels here into a cubin
for the target's arch and ships it next to the library; the runtime's ``tvm``
executor registers the hook and serves that cubin for the matching source
(keyed by the source's sha256), so the device never compiles anything.

Compilers:

* ``nvcc`` (here CUDA 13.0) compiles sm_75 and newer directly to a cubin;
* CUDA 13 dropped sm_53 and sm_72 (Maxwell, Volta). For those the kernels are
  compiled by nvcc to PTX for the oldest virtual arch it has (compute_75), the
  PTX ``.target``/``.version`` header is lowered, and ``ptxas`` from CUDA 12.9
  (the ``nvidia-cuda-nvcc-cu12`` wheel in the toolchain cache) assembles it for
  the real arch. ptxas rejects any instruction the arch lacks, so a success is a
  real check; it is labelled ``ptx-retarget`` in the artifact metadata.
"""
from __future__ import annotations

import hashlib
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from .targets import ToolchainError, require_tool, tool_version, toolchains_dir

__all__ = ["CudaKernels", "cuda_source", "compile_kernels", "nvcc_arches", "ptxas_path", "source_key"]

_PTX_VERSION_FOR_RETARGET = "7.0"  # PTX ISA of CUDA 11.0: old enough for every retarget arch, new enough for shfl.sync


@dataclass(frozen=True)
class CudaKernels:
    """One compiled kernel binary and how it was made."""

    path: Path
    arch: str
    source_sha256: str
    method: str          # "nvcc" or "ptx-retarget"
    compiler: str        # version lines of the tools used
    kernels: int         # number of __global__ functions


def _walk(mod: Any) -> Iterator[Any]:
    yield mod
    for imp in getattr(mod, "imports", ()):
        yield from _walk(imp)


def cuda_source(executable: Any) -> str:
    """The generated CUDA C source inside a compiled Relax executable (or library)."""
    root = getattr(executable, "mod", executable)
    for m in _walk(root):
        if getattr(m, "kind", None) == "cuda":
            return m.inspect_source()
    raise ValueError("the executable holds no CUDA module (was it compiled for a cuda target?)")


def source_key(source: str) -> str:
    """The key the runtime uses to find the binary for a source: its sha256."""
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


def nvcc_arches() -> tuple:
    """Real archs (``sm_XX``) the installed nvcc compiles for."""
    nvcc = require_tool("nvcc", "compile CUDA kernels")
    out = subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True, timeout=60).stdout
    return tuple(sorted({"sm_" + a.split("_", 1)[1] for a in out.split() if a.startswith("compute_")}))


def ptxas_path() -> Optional[Path]:
    """ptxas of CUDA 12 from the toolchain cache (for archs CUDA 13 dropped)."""
    p = toolchains_dir() / "cuda12" / "nvidia" / "cuda_nvcc" / "bin" / "ptxas"
    return p if p.is_file() else None


def _run(cmd: list, what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed ({' '.join(map(str, cmd[:3]))} ...): {proc.stderr.strip()[-2000:]}")


def _retarget(ptx: str, arch: str) -> str:
    ptx, n_target = re.subn(r"^\.target\s+sm_\d+", f".target {arch}", ptx, count=1, flags=re.M)
    ptx, n_version = re.subn(r"^\.version\s+\d+\.\d+", f".version {_PTX_VERSION_FOR_RETARGET}", ptx, count=1,
                             flags=re.M)
    if not (n_target and n_version):
        raise RuntimeError("unexpected PTX header: no .version/.target line to retarget")
    return ptx


def compile_kernels(source: str, arch: str, out_path: Path) -> CudaKernels:
    """Compile ``source`` for ``arch`` (e.g. ``sm_87``) into the cubin ``out_path``."""
    if not re.fullmatch(r"sm_\d+", arch):
        raise ValueError(f"CUDA arch must look like sm_87, got {arch!r}")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    nvcc = require_tool("nvcc", "compile CUDA kernels")
    supported = nvcc_arches()
    with tempfile.TemporaryDirectory(prefix="edgeuq-cuda-") as tmp:
        src = Path(tmp) / "kernels.cu"
        src.write_text(source)
        if arch in supported:
            _run([nvcc, f"-arch={arch}", "-cubin", "-O3", "-w", "-o", str(out_path), str(src)], f"nvcc for {arch}")
            method, tools = "nvcc", f"nvcc {tool_version('nvcc')}"
        else:
            ptxas = ptxas_path()
            if ptxas is None:
                raise ToolchainError(
                    f"{arch} is not supported by the installed nvcc ({tool_version('nvcc')}; it knows "
                    f"{', '.join(supported)}) and CUDA 12's ptxas is not in {toolchains_dir() / 'cuda12'}; "
                    "run: bash scripts/setup_toolchains.sh")
            oldest = supported[0]
            ptx = Path(tmp) / "kernels.ptx"
            _run([nvcc, f"-arch=compute_{oldest[3:]}", "-ptx", "-O3", "-w", "-o", str(ptx), str(src)], "nvcc -ptx")
            retargeted = Path(tmp) / f"kernels.{arch}.ptx"
            retargeted.write_text(_retarget(ptx.read_text(), arch))
            _run([str(ptxas), f"-arch={arch}", "-O3", "-o", str(out_path), str(retargeted)], f"ptxas for {arch}")
            ver = subprocess.run([str(ptxas), "--version"], capture_output=True, text=True).stdout.strip().splitlines()
            method, tools = "ptx-retarget", f"nvcc {tool_version('nvcc')} (PTX from compute_{oldest[3:]}); " \
                                            f"ptxas {ver[-1] if ver else '?'}"
    return CudaKernels(path=out_path, arch=arch, source_sha256=source_key(source), method=method, compiler=tools,
                       kernels=source.count("__global__"))
