"""Run armv7 (hard-float) TVM libraries under qemu-arm: a minimal TVM C++ runtime + driver.

There are no armv7 wheels of TVM, numpy or onnxruntime, so an armv7 library cannot be
loaded by the runtime's Python executor under emulation. Instead this module cross-builds
a small native program, ``tvm_vm_driver`` (``edgeuq/lower/toolchain/native/tvm_vm_driver.cc``), statically linked
with the TVM C++ runtime (Relax VM, library-module loader, CPU device, thread pool) compiled
from the C++ sources that the installed ``apache-tvm`` / ``apache-tvm-ffi`` wheels ship.
The wheels omit a few support headers (byte streams and serializers, base64, NVTX); the
replacements in ``native/include`` and ``native/support`` are edgeuq's own, byte-compatible
with the Relax VM executable format written by the host TVM (see ``native/include/tvm/support/io.h``).

The driver loads ``LIB.so``, builds the Relax VM on CPU, reads the inputs from a small tensor
file, calls the entry function and writes its outputs (format in the driver's header).
Build: ``python -m edgeuq.lower.tvm.armv7`` (``scripts/setup_toolchains.sh`` does it), cached
in ``<toolchains>/armv7-tvm-runtime``; about 2 min from scratch on 2 cores (``-O1``).
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..toolchain import NATIVE_DIR, ToolchainError, require_tool, toolchains_dir

__all__ = ["driver_path", "build_driver", "up_to_date", "QEMU_CPUS", "run_armv7", "write_tensors", "read_tensors",
           "SYSROOT", "CXX"]

CXX = "arm-linux-gnueabihf-g++"
SYSROOT = "/usr/arm-linux-gnueabihf"
CXXFLAGS = ["-O1", "-std=c++17", "-march=armv7-a", "-mfpu=neon", "-mfloat-abi=hard", "-fPIC",
            "-DTVM_FFI_USE_LIBBACKTRACE=0", "-DTVM_FFI_BACKTRACE_ON_SEGFAULT=0", "-DNDEBUG",
            "-Wno-deprecated-declarations"]
NATIVE = NATIVE_DIR
MAGIC = b"EUQTENS1"

# Runtime sources (relative to the wheels' src/ dirs): enough for the Relax VM on CPU.
TVM_SOURCES = [
    "runtime/cpu_device_api.cc", "runtime/device_api.cc", "runtime/file_utils.cc",
    "runtime/logging.cc", "runtime/memory/memory_manager.cc", "runtime/module.cc", "runtime/tensor.cc",
    "runtime/thread_pool.cc", "runtime/threading_backend.cc", "runtime/workspace_pool.cc",
    "runtime/vm/builtin.cc", "runtime/vm/bytecode.cc", "runtime/vm/executable.cc", "runtime/vm/vm.cc",
]
FFI_EXCLUDE = {"backtrace_win.cc"}


def _wheel_dirs() -> Tuple[Path, Path]:
    """The installed ``tvm`` and ``tvm_ffi`` package folders (located without importing them)."""
    dirs = []
    for name in ("tvm", "tvm_ffi"):
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.origin:
            raise ToolchainError(f"package {name!r} not installed: the armv7 runtime is built from its sources")
        dirs.append(Path(spec.origin).resolve().parent)
    return dirs[0], dirs[1]


def driver_path() -> Path:
    """The cross-built driver, or a ToolchainError saying how to build it."""
    path = toolchains_dir() / "armv7-tvm-runtime" / "tvm_vm_driver"
    if not path.is_file():
        raise ToolchainError(f"no armv7 TVM runtime driver at {path}; run: bash scripts/setup_toolchains.sh")
    return path


def _stamp() -> str:
    """Identifies a build: compiler flags, edgeuq's native sources, the wheels' versions."""
    h = hashlib.sha256(" ".join(CXXFLAGS + TVM_SOURCES).encode())
    h.update(f"{version('apache-tvm')} {version('apache-tvm-ffi')}".encode())
    for f in sorted(NATIVE.rglob("*")):
        if f.is_file() and f.suffix in (".h", ".cc"):
            h.update(f.relative_to(NATIVE).as_posix().encode() + f.read_bytes())
    return h.hexdigest()[:16]


def up_to_date(out_dir: Optional[Path] = None) -> bool:
    """True if ``out_dir`` holds a driver built from the current sources, flags and wheels."""
    out_dir = Path(out_dir or toolchains_dir() / "armv7-tvm-runtime")
    done = out_dir / ".done"
    return (out_dir / "tvm_vm_driver").is_file() and done.is_file() and done.read_text().strip() == _stamp()


def _ffi_sources(ffi_src: Path) -> List[Path]:
    files = sorted((ffi_src / "ffi").glob("*.cc")) + sorted((ffi_src / "ffi" / "extra").glob("*.cc"))
    return [f for f in files if f.name not in FFI_EXCLUDE]


def build_driver(out_dir: Optional[Path] = None, jobs: Optional[int] = None, verbose: bool = True) -> Path:
    """Cross-build ``tvm_vm_driver`` for armv7 hard-float into ``out_dir`` (cached: object files
    are reused while their source and flags are unchanged). Returns the driver's path."""
    require_tool(CXX, "cross-build the armv7 TVM runtime driver")
    out_dir = Path(out_dir or toolchains_dir() / "armv7-tvm-runtime")
    tvm_dir, ffi_dir = _wheel_dirs()
    # A private source tree: the wheel's runtime sources with edgeuq's support headers beside
    # them, so their relative includes ("../support/bytes_io.h") resolve.
    tree = out_dir / "src"
    if tree.exists():
        shutil.rmtree(tree)
    shutil.copytree(tvm_dir / "src" / "runtime", tree / "runtime",
                    ignore=shutil.ignore_patterns("extra", "rpc"))
    shutil.copytree(NATIVE / "support", tree / "support")
    includes = [NATIVE / "include", tvm_dir / "include", ffi_dir / "include",
                ffi_dir / "3rdparty" / "dlpack" / "include", tree / "runtime"]
    flags = CXXFLAGS + [f"-I{p}" for p in includes]
    sources = [tree / s for s in TVM_SOURCES] + _ffi_sources(ffi_dir / "src") + [NATIVE / "tvm_vm_driver.cc"]
    obj_dir = out_dir / "obj"
    obj_dir.mkdir(parents=True, exist_ok=True)
    headers = sorted((NATIVE / "include").rglob("*.h")) + sorted((NATIVE / "support").glob("*.h"))
    stamp = hashlib.sha256(" ".join(flags).encode() + b"".join(h.read_bytes() for h in headers)).hexdigest()[:16]

    def compile_one(src: Path) -> Path:
        key = hashlib.sha256(src.read_bytes() + stamp.encode()).hexdigest()[:16]
        obj = obj_dir / f"{src.stem}-{key}.o"
        if not obj.is_file():
            proc = subprocess.run([CXX, *flags, "-c", str(src), "-o", str(obj) + ".tmp"],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"compiling {src.name} for armv7 failed:\n{proc.stderr[-4000:]}")
            os.replace(str(obj) + ".tmp", obj)
        return obj

    t0 = time.time()
    with ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 2) as pool:
        objs = list(pool.map(compile_one, sources))
    for stale in set(obj_dir.glob("*.o")) - set(objs):      # objects of older sources / flags
        stale.unlink()
    driver = out_dir / "tvm_vm_driver"
    proc = subprocess.run([CXX, *CXXFLAGS, "-rdynamic", "-o", str(driver) + ".tmp", *map(str, objs),
                           "-ldl", "-lpthread"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"linking tvm_vm_driver failed:\n{proc.stderr[-4000:]}")
    os.replace(str(driver) + ".tmp", driver)
    (out_dir / ".done").write_text(_stamp() + "\n")
    if verbose:
        print(f"armv7 tvm_vm_driver built in {time.time() - t0:.0f} s: {driver}")
    return driver


_CODES = {"i": 0, "u": 1, "f": 2}


def write_tensors(path: Path, arrays: Sequence[np.ndarray]) -> None:
    """Write arrays in the driver's tensor-file format."""
    with open(path, "wb") as f:
        f.write(MAGIC + np.uint32(len(arrays)).tobytes())
        for a in arrays:
            a = np.asarray(a)
            a = a if a.flags.c_contiguous else a.copy(order="C")   # (ascontiguousarray makes 0-d 1-d)
            if a.dtype.kind not in _CODES or a.dtype.byteorder == ">":
                raise ValueError(f"unsupported dtype {a.dtype} for the armv7 driver")
            f.write(bytes([_CODES[a.dtype.kind], a.dtype.itemsize * 8]) + np.uint16(a.ndim).tobytes())
            f.write(np.asarray(a.shape, dtype="<i8").tobytes() + a.tobytes())


def read_tensors(path: Path) -> List[np.ndarray]:
    """Read a tensor file written by the driver."""
    data = Path(path).read_bytes()
    if data[:8] != MAGIC:
        raise ValueError(f"{path}: not a tensor file")
    count, pos, out = int(np.frombuffer(data, "<u4", 1, 8)[0]), 12, []
    kinds = {v: k for k, v in _CODES.items()}
    for _ in range(count):
        code, bits = data[pos], data[pos + 1]
        ndim = int(np.frombuffer(data, "<u2", 1, pos + 2)[0])
        pos += 4
        shape = tuple(int(d) for d in np.frombuffer(data, "<i8", ndim, pos)) if ndim else ()
        pos += 8 * ndim
        dtype = np.dtype(f"<{kinds[code]}{bits // 8}")
        n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        out.append(np.frombuffer(data[pos:pos + n], dtype).reshape(shape).copy())
        pos += n
    return out


QEMU_CPUS = frozenset({"cortex-a7", "cortex-a8", "cortex-a9", "cortex-a15"})   # qemu-arm CPU models


def run_armv7(library: Path, arrays: Sequence[np.ndarray], workdir: Path, entry: str = "main",
              timeout: float = 600, cpu: Optional[str] = None) -> List[np.ndarray]:
    """Run ``entry`` of an armv7 library on ``arrays`` under qemu-arm; returns its outputs.
    ``cpu`` (one of ``QEMU_CPUS``) makes qemu emulate that core's instruction set instead of
    its permissive default ("max"), so instructions the core lacks fault."""
    driver = driver_path()
    qemu = require_tool("qemu-arm-static", "run armv7 libraries under user-mode emulation")
    workdir = Path(workdir)
    inp, outp = workdir / f"{Path(library).stem}.in.bin", workdir / f"{Path(library).stem}.out.bin"
    write_tensors(inp, arrays)
    if cpu is not None and cpu not in QEMU_CPUS:
        raise ValueError(f"qemu-arm CPU {cpu!r} not in {sorted(QEMU_CPUS)}")
    cmd = [qemu, *(["-cpu", cpu] if cpu else []), "-L", SYSROOT, str(driver), str(library), str(inp), str(outp),
           entry]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"qemu-arm run of {Path(library).name} timed out after {timeout} s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"qemu-arm run of {Path(library).name} failed (exit {proc.returncode}): "
                           f"{(proc.stderr or proc.stdout).strip()[-3000:]}")
    return read_tensors(outp)


if __name__ == "__main__":
    # python -m edgeuq.lower.tvm.armv7 [--if-needed] [OUT_DIR]
    args = [a for a in sys.argv[1:] if a != "--if-needed"]
    out = Path(args[0]) if args else None
    if "--if-needed" in sys.argv[1:] and up_to_date(out):
        print(f"armv7 tvm_vm_driver up to date ({out or toolchains_dir() / 'armv7-tvm-runtime'})")
    else:
        build_driver(out)
