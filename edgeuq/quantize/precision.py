"""Precisions, what each layer type supports on ONNX Runtime, and quantization noise.

    fp32   unchanged
    fp16   weights (and bias) stored in fp16, the kernel runs in fp16, Casts at its boundary
    int8   QDQ: weights per-output-channel symmetric int8, input activation per-tensor
           asymmetric uint8 calibrated on data (min/max)
    int4   weight-only, MatMulNBits (blocks of ``int4_block`` along K, symmetric, 16 levels);
           activations stay fp32. MatMul/Gemm only (no int4 Conv kernel in ONNX Runtime)

Noise models (per element, the E[δ²] of FIT): uniform quantization with step Δ
has E[δ²] = Δ²/12, Δ from the tensor's actual range (per channel / per block
for weights, the calibrated range for activations); fp16 rounds with relative
error u = 2⁻¹¹, E[δ²] ≈ E[x²]·u²/3. :func:`weight_error` is the *realised*
error ‖Q(W) − W‖² per element (HAWQ's perturbation), by simulating the rounding.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping, Tuple

import numpy as np

__all__ = ["PRECISIONS", "BITS", "QuantSettings", "options_for", "weight_noise", "weight_error",
           "activation_noise", "FP16_RELATIVE_VARIANCE"]

PRECISIONS = ("fp32", "fp16", "int8", "int4")
BITS = {"fp32": 32, "fp16": 16, "int8": 8, "int4": 4}
#: E[δ²/x²] of fp16 rounding for log-uniform mantissas: 2^-20/12 · E[1/m²], m ∈ [1, 2)
FP16_RELATIVE_VARIANCE = 2.0 ** -20 / 12.0 * (0.375 / np.log(2.0))
_FP16_MIN_NORMAL = 2.0 ** -14


def _fp16_spacing(x: np.ndarray) -> np.ndarray:
    return 2.0 ** (np.floor(np.log2(np.maximum(np.abs(x), _FP16_MIN_NORMAL))) - 10)


@dataclass(frozen=True)
class QuantSettings:
    int4_block: int = 32
    calibration_windows: int = 128
    head_calibration_samples: int = 2   # noise draws per calibration window for the head graph
    #: int8 layers keep their bias in float32 (False) or store it as ONNX Runtime's QDQ int32 bias
    #: with its own per-channel scale and zero point (True: three tensors of the bias's size).
    #: Layer outputs stay float (no QLinearConv/QGemm fusion), so an int32 bias only costs bytes.
    quantize_bias: bool = False
    #: rename every tensor of the finished graphs but their inputs/outputs to short ids
    #: (:func:`edgeuq.quantize.compact.compact_tensor_names`); node names are kept
    compact_names: bool = True

    def __post_init__(self) -> None:
        b = self.int4_block
        if b < 16 or b & (b - 1):
            raise ValueError(f"int4_block must be a power of two >= 16 (MatMulNBits), got {b}")
        if self.calibration_windows < 1 or self.head_calibration_samples < 1:
            raise ValueError("calibration_windows and head_calibration_samples must be >= 1")
        for name in ("quantize_bias", "compact_names"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"QuantSettings.{name} must be true or false, got {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def options_for(op_type: str, shape: Tuple[int, ...]) -> Tuple[str, ...]:
    if op_type in ("MatMul", "Gemm") and len(shape) == 2:
        return PRECISIONS
    return ("fp32", "fp16", "int8")


def _blocks(w: np.ndarray, block: int) -> np.ndarray:
    """(out, K) -> (out, nblocks, block), zero-padded along K like MatMulNBits."""
    out, k = w.shape
    nb = -(-k // block)
    padded = np.zeros((out, nb * block), dtype=np.float64)
    padded[:, :k] = w
    return padded.reshape(out, nb, block)


def weight_noise(w: np.ndarray, precision: str, block: int = 32) -> float:
    """FIT's E[δw²] per element from the ranges of ``w`` (canonical layout: (out, ...))."""
    w = np.asarray(w, dtype=np.float64)
    if precision == "fp32":
        return 0.0
    if precision == "fp16":
        return float(np.mean(_fp16_spacing(w) ** 2) / 12.0)
    flat = w.reshape(w.shape[0], -1)
    if precision == "int8":
        step = 2.0 * np.abs(flat).max(axis=1) / 255.0
        return float(np.mean(step**2) / 12.0)
    if precision == "int4":
        absmax = np.abs(_blocks(flat, block)).max(axis=2)
        step = absmax / 8.0  # the block's extreme maps to -8 (see onnx_apply.pack_int4)
        return float(np.mean(step**2) / 12.0)
    raise ValueError(f"unknown precision {precision!r}; known: {PRECISIONS}")


def weight_error(w: np.ndarray, precision: str, block: int = 32) -> float:
    """Realised mean squared rounding error of ``w`` at ``precision`` (simulated)."""
    w = np.asarray(w, dtype=np.float64)
    if precision == "fp32":
        return 0.0
    if precision == "fp16":
        return float(np.mean((w.astype(np.float16).astype(np.float64) - w) ** 2))
    flat = w.reshape(w.shape[0], -1)
    if precision == "int8":
        scale = np.abs(flat).max(axis=1, keepdims=True) / 127.0
        scale[scale == 0] = 1.0
        q = np.clip(np.round(flat / scale), -127, 127) * scale
        return float(np.mean((q - flat) ** 2))
    if precision == "int4":
        b = _blocks(flat, block)
        idx = np.abs(b).argmax(axis=2)[..., None]
        scale = np.take_along_axis(b, idx, axis=2) / -8.0
        scale[scale == 0] = 1.0
        q = np.clip(np.round(b / scale), -8, 7) * scale
        err = ((q - b) ** 2).reshape(flat.shape[0], -1)[:, : flat.shape[1]]
        return float(np.mean(err))
    raise ValueError(f"unknown precision {precision!r}; known: {PRECISIONS}")


def activation_noise(stats: Mapping[str, float], precision: str) -> float:
    """E[δa²] per element of a layer's input activation (``stats``: min, max, mean_square)."""
    if precision in ("fp32", "int4"):
        return 0.0
    if precision == "fp16":
        return float(stats["mean_square"]) * FP16_RELATIVE_VARIANCE
    if precision == "int8":
        lo, hi = min(float(stats["min"]), 0.0), max(float(stats["max"]), 0.0)
        step = (hi - lo) / 255.0
        return step**2 / 12.0
    raise ValueError(f"unknown precision {precision!r}; known: {PRECISIONS}")
