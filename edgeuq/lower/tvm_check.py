"""Checks of TVM artifacts: numerics against ONNX Runtime, latency, and how they were run.

Every artifact gets a ``check`` record in its metadata saying *how* it was checked:

* ``native``: run here through the runtime's own ``tvm`` executor, compared with
  ONNX Runtime on the same inputs and noise, and timed (median of repeats; the
  per-input latency is one trunk pass on 1 window + one head pass on S rows);
* ``qemu-aarch64`` / ``qemu-armv7``: run under user-mode emulation, compared with
  ONNX Runtime here (no timing: an emulator's speed says nothing about the board);
* ``compile only``: built (and, for CUDA, its kernels assembled for the arch) but
  not run, with the reason.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional

import numpy as np

from edgeuq_runtime.noise import sample_noise

from .tvm_targets import ToolchainError, is_native

__all__ = ["check_artifact", "reference_feeds", "ort_outputs", "max_error", "median_ms"]

CHECK_BATCH = 3      # windows in the numerical check (exercises chunking and padding of fixed-batch libraries)
CHECK_SAMPLES = 4    # MC samples in the numerical check


def reference_feeds(art: Any, seed: int = 0, batch: int = CHECK_BATCH, samples: int = CHECK_SAMPLES) -> Dict[str, Dict]:
    """Inputs for both graphs: windows for the trunk; ONNX Runtime's features tiled
    s-major plus sampled noise for the head (so head errors do not include trunk errors)."""
    rng = np.random.default_rng(seed)
    trunk = {art.input_name: rng.standard_normal((batch, art.input_length)).astype(np.float32)}
    feats = ort_outputs(Path(art.trunk_path), trunk)[art.feature_name]
    head = {art.feature_name: np.tile(feats, (samples,) + (1,) * (feats.ndim - 1)),
            **sample_noise(art.noise, samples * batch, rng)}
    return {"trunk": trunk, "head": head}


def ort_outputs(path: Path, feeds: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, dict(feeds))))


def max_error(got: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray]) -> float:
    """Largest |difference| over the outputs both dicts have (inf on a shape mismatch)."""
    errs = []
    for k, r in ref.items():
        g = np.asarray(got[k])
        errs.append(float("inf") if g.shape != r.shape else float(np.max(np.abs(g - r))) if r.size else 0.0)
    return max(errs)


def tolerance(ref: Mapping[str, np.ndarray], atol: Optional[float]) -> float:
    if atol is not None:
        return float(atol)
    scale = max(float(np.max(np.abs(v))) for v in ref.values())
    return 1e-4 + 1e-4 * scale


def median_ms(fn: Callable[[], Any], repeats: int = 30, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def _native(art: Any, builds: Mapping[str, Any], samples: int, atol: Optional[float],
            threads: Optional[int]) -> Dict[str, Any]:
    from edgeuq_runtime.executors.tvm import load_tvm

    feeds = reference_feeds(art)
    out: Dict[str, Any] = {"method": "native", "max_abs_err": {}, "tolerance": {}, "latency_ms": {}}
    for role, b in builds.items():
        onnx_path = Path(art.trunk_path if role == "trunk" else art.head_path)
        ref = ort_outputs(onnx_path, feeds[role])
        graph = load_tvm(b.library, threads, b.options)
        err, tol = max_error(graph.run(feeds[role]), ref), tolerance(ref, atol)
        out["max_abs_err"][role], out["tolerance"][role] = err, tol
        if not err <= tol:
            from .tvm import TvmNumericsError

            raise TvmNumericsError(f"{role} library {b.library.name} differs from ONNX Runtime by {err:.3g} "
                                   f"> tolerance {tol:.3g}")
        rows = 1 if role == "trunk" else samples
        timed = {k: np.ascontiguousarray(np.resize(v, (rows, *v.shape[1:]))) for k, v in feeds[role].items()}
        out["latency_ms"][role] = median_ms(lambda: graph.run(timed))
    if set(out["latency_ms"]) == {"trunk", "head"}:
        out["latency_ms"]["per_input"] = out["latency_ms"]["trunk"] + out["latency_ms"]["head"]
        out["latency_ms"]["samples"] = samples
    return out


def check_artifact(art: Any, target: Any, builds: Mapping[str, Any], mode: str = "auto", samples: int = 16,
                   atol: Optional[float] = None, threads: Optional[int] = None,
                   progress: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """Run the strongest check this host allows (see the module docstring)."""
    if mode not in ("auto", "none", "require"):
        raise ValueError(f"check must be 'auto', 'none' or 'require', got {mode!r}")
    say = progress or (lambda msg: None)
    if mode == "none":
        return {"method": "compile only", "reason": "checks disabled (check='none')"}
    if target.kind == "gpu":
        reason = "no GPU on this host; host code is for " + str(target.cuda_host)
        if mode == "require":
            raise ToolchainError(f"cannot run {target.name} artifacts here: {reason}")
        return {"method": "compile only", "reason": reason}
    if is_native(target):
        say(f"checking {target.name} libraries natively against ONNX Runtime")
        return _native(art, builds, samples, atol, threads)
    from .tvm_qemu import check_under_qemu

    try:
        say(f"checking {target.name} libraries under qemu against ONNX Runtime")
        return check_under_qemu(art, target, builds, atol=atol)
    except ToolchainError as exc:
        if mode == "require":
            raise
        return {"method": "compile only", "reason": str(exc)}
