"""Checks of TVM artifacts: numerics against ONNX Runtime, latency, and how they were run.

Every artifact gets one :class:`~edgeuq.lower.base.Evidence` saying *how* it was checked:

* ``native``: run here through the runtime's own ``tvm`` executor, compared with
  ONNX Runtime on the same inputs and noise, and timed (median of repeats; the
  per-input latency is one trunk pass on 1 window + one head pass on S rows);
* ``qemu`` (``detail.arch`` aarch64 / armv7): run under user-mode emulation with the
  target's CPU pinned, compared with ONNX Runtime here (no timing: an emulator's
  speed says nothing about the board);
* ``compile-only``: built (and, for CUDA, its kernels assembled for the arch) but
  not run, with the reason. When ``check="auto"`` falls back to it because an
  emulator or sysroot is missing, a warning is printed on the console too.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional

import numpy as np

from ...profile import measure
from ..base import Evidence
from ..toolchain import ToolchainError
from .numerics import TvmNumericsError, judge, ort_outputs, reference_feeds
from .qemu import check_under_qemu
from .targets import is_native

__all__ = ["check_artifact", "CHECK_MODES", "REFERENCE"]

CHECK_MODES = ("auto", "none", "require")
REFERENCE = "ONNX Runtime (same inputs and noise)"
LATENCY_REPEATS = 30


def _worst(errors: Mapping[str, float], tols: Mapping[str, float]) -> tuple:
    role = max(errors, key=lambda r: (errors[r] / tols[r]) if tols[r] else errors[r])
    return errors[role], tols[role]


def _native(art: Any, builds: Mapping[str, Any], samples: int, atol: Optional[float],
            threads: Optional[int]) -> Evidence:
    from edgeuq_runtime.executors.tvm import load_tvm

    feeds = reference_feeds(art)
    errors: Dict[str, float] = {}
    tols: Dict[str, float] = {}
    rules: Dict[str, Any] = {}
    latency: Dict[str, Any] = {}
    library: Dict[str, Any] = {}
    for role, b in builds.items():
        onnx_path = Path(art.trunk_path if role == "trunk" else art.head_path)
        ref = ort_outputs(onnx_path, feeds[role])
        graph = load_tvm(b.library, threads, b.options)
        # which of the graph's libraries ran here (a per-ISA variant picked by this host's CPU flags) and
        # the shape buckets the executor runs it with
        library[role] = {"file": graph.path.name, "choice": graph.library_choice, "batch": graph.batch,
                         "buckets": list(graph.buckets)}
        j = judge(onnx_path, feeds[role], graph.run(feeds[role]), ref, atol)
        errors[role], tols[role], rules[role] = j.max_error, j.tolerance, dict(j.detail)
        if not j.ok:
            raise TvmNumericsError(f"{role} library {b.library.name} differs from ONNX Runtime: max {j.max_error:.3g} "
                                   f"(accepted up to {j.tolerance:.3g}); {dict(j.detail)}")
        rows = 1 if role == "trunk" else samples
        timed = {k: np.ascontiguousarray(np.resize(v, (rows, *v.shape[1:]))) for k, v in feeds[role].items()}
        latency[role] = measure(lambda: graph.run(timed), warmup=3, repeats=LATENCY_REPEATS, name=role).median_ms
    per_input = latency["trunk"] + latency["head"] if set(latency) == {"trunk", "head"} else None
    worst, tol = _worst(errors, tols)
    return Evidence(how="native", reference=REFERENCE, max_error=worst, tolerance=tol, latency_ms=per_input,
                    reason="" if per_input is not None else "only one graph compiled: no per-input latency",
                    detail={"max_abs_err": errors, "tolerance": tols, "rule": rules, "library": library,
                            "latency_ms": {**latency, "samples": samples,
                                           "how": f"this host, median of {LATENCY_REPEATS} runs"}})


def downgrade(reason: str) -> Evidence:
    """``check="auto"`` could not run the artifact: say so on the console (always, even when
    progress messages are off) and record why in the evidence."""
    print(f"edgeuq: WARNING: evidence downgraded to compile-only: {reason}", file=sys.stderr, flush=True)
    return Evidence(how="compile-only", reason=f"downgraded by check='auto': {reason}")


def check_artifact(art: Any, target: Any, builds: Mapping[str, Any], mode: str = "auto", samples: int = 16,
                   atol: Optional[float] = None, threads: Optional[int] = None,
                   progress: Optional[Callable[[str], None]] = None) -> Evidence:
    """Run the strongest check this host allows (see the module docstring)."""
    if mode not in CHECK_MODES:
        raise ValueError(f"check must be one of {CHECK_MODES}, got {mode!r}")
    say = progress or (lambda msg: None)
    if mode == "none":
        return Evidence(how="compile-only", reason="checks disabled (check='none')")
    if target.kind == "gpu":
        reason = "no GPU on this host; host code is for " + str(target.cuda_host)
        if mode == "require":
            raise ToolchainError(f"cannot run {target.name} artifacts here: {reason}")
        return Evidence(how="compile-only", reason=reason)
    if is_native(target):
        say(f"checking {target.name} libraries natively against ONNX Runtime")
        return _native(art, builds, samples, atol, threads)
    try:
        say(f"checking {target.name} libraries under qemu against ONNX Runtime")
        return check_under_qemu(art, target, builds, atol=atol)
    except ToolchainError as exc:
        if mode == "require":
            raise
        return downgrade(f"{target.name}: {exc}")
