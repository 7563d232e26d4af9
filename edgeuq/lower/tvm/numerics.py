"""Reference numerics for TVM checks: the same inputs and noise for both graphs, ONNX Runtime's
outputs on them, the largest difference, and the tolerance it must stay within."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import numpy as np

from edgeuq_runtime.noise import sample_noise

__all__ = ["TvmNumericsError", "reference_feeds", "ort_outputs", "max_error", "tolerance", "CHECK_BATCH",
           "CHECK_SAMPLES"]

CHECK_BATCH = 3      # windows in the numerical check (exercises chunking and padding of fixed-batch libraries)
CHECK_SAMPLES = 4    # MC samples in the numerical check


class TvmNumericsError(RuntimeError):
    """A compiled library disagrees with ONNX Runtime beyond the tolerance."""


def reference_feeds(art: Any, seed: int = 0, batch: int = CHECK_BATCH, samples: int = CHECK_SAMPLES) -> Dict[str, Dict]:
    """Inputs for both graphs: windows (or token ids) for the trunk; ONNX Runtime's features
    tiled s-major plus sampled noise for the head (so head errors do not include trunk errors)."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(getattr(art, "input_dtype", "float32"))
    if dtype.kind in "iu":
        vocab = int(getattr(art, "vocab_size", None) or 2)
        x = rng.integers(0, vocab, size=(batch, art.input_length)).astype(dtype)
    else:
        x = rng.standard_normal((batch, art.input_length)).astype(np.float32)
    trunk = {art.input_name: x}
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
    """Largest |difference| over the outputs both dicts have (inf on a shape mismatch, NaN propagates)."""
    errs = []
    for k, r in ref.items():
        g = np.asarray(got[k])
        errs.append(float("inf") if g.shape != r.shape else float(np.max(np.abs(g - r))) if r.size else 0.0)
    return float("nan") if any(e != e for e in errs) else max(errs)


def tolerance(ref: Mapping[str, np.ndarray], atol: Optional[float]) -> float:
    if atol is not None:
        return float(atol)
    scale = max(float(np.max(np.abs(v))) for v in ref.values())
    return 1e-4 + 1e-4 * scale
