#!/usr/bin/env python3
"""The host's CPU and vector ISA, and the environment that makes every library take the *other*
x86 kernels on this machine, so the test suite runs both paths wherever CI runs.

    python scripts/isa_env.py                # print the host: CPU model, ISA, what "other" means here
    eval "$(python scripts/isa_env.py --other)"   # export the overrides (then run pytest)
    python scripts/isa_env.py --qemu-cpu     # a qemu-x86_64 CPU model one level below the host (or nothing)

"Other" is one level below the host's best ISA:

* AVX-512 host -> AVX2: ``ATEN_CPU_CAPABILITY=avx2`` (PyTorch ATen), ``ONEDNN_MAX_CPU_ISA=AVX2``
  (oneDNN), ``NPY_DISABLE_CPU_FEATURES`` = numpy's dispatch targets above AVX2, and
  ``EDGEUQ_HOST_ISA=avx2`` (edgeuq's own host-ISA detection: TVM host target, native checks, placement);
* AVX2 host -> SSE: ``ATEN_CPU_CAPABILITY=default``, ``ONEDNN_MAX_CPU_ISA=SSE41``, numpy's AVX2 and above
  disabled, ``EDGEUQ_HOST_ISA=x86-64``.

ONNX Runtime (MLAS) has no such switch: CI runs its ISA-sensitive tests once more inside
``qemu-x86_64`` with an older CPU model (``--qemu-cpu``; Zen 2 "EPYC-Rome": AVX2, no AVX-512), where
cpuid reports that CPU and every library really takes its AVX2 kernels (slow: a few tests only).
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from edgeuq.lower.tvm.targets import HOST_ISA_ENV, cpu_flags  # noqa: E402

#: qemu-x86_64 CPU model with AVX2 (+FMA, BMI2, F16C) and no AVX-512.
QEMU_AVX2_CPU = "EPYC-Rome"


def host_isa() -> str:
    flags = cpu_flags()
    return "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "sse"


def _numpy_dispatch() -> list:
    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__
    except ImportError:  # numpy 1.x
        from numpy.core._multiarray_umath import __cpu_dispatch__
    return list(__cpu_dispatch__)


def other_env(isa: str) -> dict:
    dispatch = _numpy_dispatch()
    if isa == "avx512":
        above = [d for d in dispatch if d.startswith("AVX512") or d == "X86_V4"]
        return {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "NPY_DISABLE_CPU_FEATURES": " ".join(above),
                HOST_ISA_ENV: "avx2"}
    if isa == "avx2":
        above = [d for d in dispatch if d.startswith(("AVX", "X86_V3", "X86_V4", "FMA"))]
        return {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41",
                "NPY_DISABLE_CPU_FEATURES": " ".join(above), HOST_ISA_ENV: "x86-64"}
    return {}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--other", action="store_true", help="print `export` lines for the other ISA")
    ap.add_argument("--qemu-cpu", action="store_true", help="print the qemu CPU model below this host (or nothing)")
    a = ap.parse_args(argv)
    if platform.machine() != "x86_64":
        if not (a.other or a.qemu_cpu):
            print(f"host: {cpu_model()} ({platform.machine()}): no x86 ISA overrides")
        return 0
    isa = host_isa()
    if a.other:
        for k, v in other_env(isa).items():
            print(f"export {k}={shlex.quote(v)}")
        return 0
    if a.qemu_cpu:
        if isa == "avx512":
            print(QEMU_AVX2_CPU)
        return 0
    env = other_env(isa)
    print(f"host: {cpu_model()}, {os.cpu_count()} cores, ISA {isa}"
          + (f" ({HOST_ISA_ENV}={os.environ[HOST_ISA_ENV]} in force)" if os.environ.get(HOST_ISA_ENV) else ""))
    print("other ISA pass: " + (", ".join(f"{k}={v}" for k, v in env.items()) or "none (no lower x86 level)"))
    print("ONNX Runtime AVX2 kernels: " + (f"qemu-x86_64 -cpu {QEMU_AVX2_CPU}" if isa == "avx512"
                                           else "native (this host)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
