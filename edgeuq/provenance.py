"""Provenance of a results JSON, written by the script that measured it — never by hand.

Every ``results/*.json`` that ``scripts/render_tables.py`` renders carries::

    "command":    the command that regenerates it (as ``make bench`` / ``make bench-quick`` run it)
    "provenance": {"kind": "measured", "mode": "quick" | "full", "date_utc": ..., "commit": ...,
                   "dirty": bool, "cpu": ..., "isa": "AVX-512" | "AVX2" | ..., "cores": ...,
                   "threads": ..., "load_before": [1, 5, 15 min], "load_after": [...],
                   "python": ..., "versions": {...}}

:func:`start` takes the "before" half when a benchmark begins, :func:`finish` adds the "after"
half, and :func:`write_results` writes the document atomically. ``render_tables.py --check``
refuses a table whose provenance is not such a record (a hand-typed string, "transcribed").
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

from edgeuq_runtime.atomic import atomic_write

from .hostcpu import cpu_model, isa_name

__all__ = ["MODES", "start", "finish", "write_results", "describe", "is_script_provenance", "isa_name",
           "command_line"]  # isa_name: re-exported from edgeuq.hostcpu

MODES = ("quick", "full")
_ROOT = Path(__file__).resolve().parents[1]
_REQUIRED = ("kind", "mode", "date_utc", "commit", "cpu", "isa", "cores", "threads", "load_before", "load_after")


def _git(*args: str) -> Optional[str]:
    try:
        out = subprocess.run(["git", *args], cwd=_ROOT, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _load() -> list:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def _versions(packages: Sequence[str]) -> Dict[str, str]:
    from importlib import metadata

    found = {}
    for name in packages:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def command_line(script: str, argv: Optional[Sequence[str]] = None) -> str:
    """The command that reruns this benchmark as it was called: ``python SCRIPT ARGS``."""
    import shlex

    args = sys.argv[1:] if argv is None else list(argv)
    return " ".join(["python", script, *(shlex.quote(str(a)) for a in args)])


def start(mode: str, threads: int = 1, packages: Sequence[str] = ("torch", "numpy", "onnxruntime", "apache-tvm"),
          **extra: Any) -> Dict[str, Any]:
    """The "before" half of a provenance record (call when the benchmark starts)."""
    if mode not in MODES:
        raise ValueError(f"provenance mode must be one of {MODES}, not {mode!r}")
    commit = _git("rev-parse", "HEAD")
    # local changes to what the measurement runs (results JSON, rendered docs and plots do not count:
    # a benchmark run rewrites them itself)
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results",
                  ":(exclude)*.md", ":(exclude)*.png")
    return {"kind": "measured", "mode": mode,
            "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "commit": commit[:12] if commit else "unknown (not a git checkout)",
            "dirty": bool(status) if status is not None else None,
            "cpu": cpu_model(), "isa": isa_name(), "cores": os.cpu_count(), "threads": int(threads),
            "load_before": _load(), "python": platform.python_version(),
            "versions": _versions(packages), **extra}


def finish(prov: Mapping[str, Any], **extra: Any) -> Dict[str, Any]:
    """The whole record: ``prov`` from :func:`start` plus the load average now and ``extra``."""
    return {**prov, "load_after": _load(), "finished_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            **extra}


def write_results(path: Any, doc: Mapping[str, Any], command: str, prov: Mapping[str, Any]) -> Path:
    """Write a results JSON (``doc`` holds ``headers``/``rows`` or ``tables``) with its command and
    finished provenance, atomically. Returns the path."""
    if not command:
        raise ValueError("a results JSON needs the command that regenerates it")
    full = dict(doc)
    full["command"] = command
    full["provenance"] = prov if "load_after" in prov else finish(prov)
    return atomic_write(path, json.dumps(full, indent=2, ensure_ascii=False) + "\n")


def is_script_provenance(prov: Any) -> Optional[str]:
    """None when ``prov`` is a record this module wrote; else why it is not."""
    if not isinstance(prov, Mapping):
        return "provenance is hand-written text, not the record a benchmark writes (edgeuq.provenance)"
    missing = [k for k in _REQUIRED if k not in prov]
    if missing:
        return f"provenance lacks {missing}"
    if prov["kind"] != "measured" or prov["mode"] not in MODES:
        return f"provenance kind/mode {prov['kind']!r}/{prov['mode']!r} is not measured quick/full"
    return None


def describe(prov: Any) -> str:
    """One line for a rendered table: when, where, which mode, which commit."""
    if not isinstance(prov, Mapping):
        return str(prov)
    load = prov.get("load_before") or []
    lines = [f"{prov.get('mode')} run {prov.get('date_utc')}", f"{prov.get('cpu')} ({prov.get('isa')})",
             f"{prov.get('cores')} cores, {prov.get('threads')} thread(s)"]
    if load:
        lines.append(f"load {load[0]:.1f} before, {(prov.get('load_after') or [float('nan')])[0]:.1f} after")
    commit = f"commit {prov.get('commit')}" + (" + local changes" if prov.get("dirty") else "")
    lines.append(commit)
    if prov.get("note"):
        lines.append(str(prov["note"]))
    return "; ".join(lines)


if __name__ == "__main__":  # pragma: no cover - a quick look at this host's record
    json.dump(finish(start("quick")), sys.stdout, indent=2)
