"""Provenance of a measurement, written by the script that measured it (never by hand).

    prov = run_provenance("python bench/mc_overhead.py --quick --json results/mc_overhead.json",
                          quick=True, threads=1)
    doc = {"provenance": prov, ...}

Fields: the command that regenerates the JSON, the git commit (and whether the tree had local
changes), the CPU model and its SIMD flags (avx2 / avx512*), threads, the load average before
the run, the UTC date and time, and ``quick`` / ``full``. What cannot be read is written as
``"unknown: <why>"``, never left out.
"""
from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Dict, Optional

from .harness import cpu_name

__all__ = ["run_provenance", "git_commit", "isa_flags", "provenance_line"]

#: SIMD flags worth naming: float kernels (PyTorch, oneDNN, ONNX Runtime, TVM) differ by these.
_ISA = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni", "avx512_bf16",
        "amx_tile", "asimd", "sve")
#: environment variables that force other kernels than the CPU's best; recorded when set
_FORCING = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "NPY_DISABLE_CPU_FEATURES",
            "OMP_NUM_THREADS")


def isa_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> Optional[list]:
    """The CPU's SIMD flags among a fixed list (None when /proc/cpuinfo has no flags line)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            have = set(line.split(":", 1)[1].split())
            return [f for f in _ISA if f in have]
    return None


def git_commit(root: Optional[Path] = None) -> str:
    """``HEAD``'s hash of the checkout in ``root`` (default: the current directory; benches run
    from the repository root) with ``+dirty`` when tracked files differ, or ``unknown: why``."""
    cwd = str(root or Path.cwd())
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=20)
        if head.returncode != 0:
            return f"unknown: git rev-parse failed ({head.stderr.strip()[:120]})"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as e:
        return f"unknown: {type(e).__name__}: {e}"
    return head.stdout.strip() + ("+dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def run_provenance(command: str, *, quick: bool, threads: int, **extra: Any) -> Dict[str, Any]:
    """The provenance block of a results JSON (see the module docstring); ``extra`` is merged in."""
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError as e:
        load = f"unknown: {e}"
    flags = isa_flags()
    doc: Dict[str, Any] = {
        "command": command,
        "git_commit": git_commit(),
        "cpu": cpu_name(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "isa_flags": flags if flags is not None else "unknown: no flags line in /proc/cpuinfo",
        "threads": int(threads),
        "load_average_before": load,
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "mode": "quick" if quick else "full",
        "forced_isa_env": {k: os.environ[k] for k in _FORCING if k in os.environ},
    }
    doc.update(extra)
    return doc


def provenance_line(p: Dict[str, Any]) -> str:
    """One line for a table caption: date, CPU, ISA, threads, load, mode, commit."""
    isa = p.get("isa_flags")
    isa_s = "/".join(f for f in isa if f.startswith("avx")) if isinstance(isa, list) else str(isa)
    load = p.get("load_average_before")
    load_s = f"{load[0]:.1f}" if isinstance(load, list) else str(load)
    return (f"measured {p.get('date_utc')} on {p.get('cpu')} ({p.get('machine')}, {isa_s or 'no AVX'}), "
            f"{p.get('threads')} thread(s), load {load_s} on {p.get('cpu_count')} cores, {p.get('mode')} run, "
            f"commit {_short(str(p.get('git_commit')))}")


def _short(commit: str) -> str:
    return commit if commit.startswith("unknown") else commit[:12] + ("+dirty" if commit.endswith("+dirty") else "")
