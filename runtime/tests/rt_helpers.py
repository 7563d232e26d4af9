"""Helpers for the runtime tests: a tiny two-graph bundle built with onnx.helper (no torch, no edgeuq).

trunk: signal (B, 16) -> features = signal @ W            W: (16, 8)
head:  features (N, 8), mask_0 (N, 8) -> logits = (features * mask_0) @ V    V: (8, 3)
"""
from __future__ import annotations

import importlib
import math
import os
import statistics
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Dict, Tuple

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeuq_runtime import GraphSpec, InputSpec, Manifest, NoiseSpec

L, F, C = 16, 8, 3
CLASSES = ("rest", "walk", "run")


def _save(nodes, name, inputs, outputs, inits, path: Path) -> Path:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="rt-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def make_trunk(path: Path, W: np.ndarray, input_name: str = "signal") -> Path:
    vi = helper.make_tensor_value_info
    return _save(
        [helper.make_node("MatMul", [input_name, "W"], ["features"])], "trunk",
        [vi(input_name, TensorProto.FLOAT, ["B", L])], [vi("features", TensorProto.FLOAT, ["B", F])],
        [numpy_helper.from_array(W.astype(np.float32), "W")], path,
    )


def make_head(path: Path, V: np.ndarray) -> Path:
    vi = helper.make_tensor_value_info
    return _save(
        [helper.make_node("Mul", ["features", "mask_0"], ["masked"]),
         helper.make_node("MatMul", ["masked", "V"], ["logits"])], "head",
        [vi("features", TensorProto.FLOAT, ["N", F]), vi("mask_0", TensorProto.FLOAT, ["N", F])],
        [vi("logits", TensorProto.FLOAT, ["N", C])],
        [numpy_helper.from_array(V.astype(np.float32), "V")], path,
    )


def tiny_weights(seed: int = 1234) -> Tuple[np.ndarray, np.ndarray]:
    """The tiny graphs' seeded float32 weights ``W`` (L, F) and ``V`` (F, C)."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((L, F)).astype(np.float32), rng.standard_normal((F, C)).astype(np.float32)


def make_graphs(root: Path, W: np.ndarray, V: np.ndarray, trunk_input: str = "signal") -> Dict[str, Path]:
    """``{"trunk.onnx": path, "head.onnx": path}``: the tiny trunk and head written into ``root``."""
    return {"trunk.onnx": make_trunk(root / "trunk.onnx", W, trunk_input), "head.onnx": make_head(root / "head.onnx", V)}


def exact_fraction(v: Any) -> Fraction:
    """``v`` (a number, a numpy scalar of any float width, or a Fraction) exactly as a Fraction."""
    if isinstance(v, Fraction):
        return v
    if isinstance(v, np.longdouble):
        return Fraction(*v.as_integer_ratio())
    return Fraction(*np.asarray(v).item().as_integer_ratio())


def exact_zscore(row) -> np.ndarray:
    """Per-window z-score in exact rational arithmetic (one rounding at the end; a constant row is 0)."""
    vals = [exact_fraction(v) for v in row]
    n = len(vals)
    mean = sum(vals) / n
    d = [v - mean for v in vals]
    var = sum(x * x for x in d) / n
    if var == 0:
        return np.zeros(n)
    return np.array([(1.0 if x > 0 else -1.0) * math.sqrt(float(x * x / var)) for x in d])


def make_manifest(**overrides: Any) -> Manifest:
    """A draft manifest matching the tiny graphs; keyword overrides replace fields."""
    fields: Dict[str, Any] = dict(
        model_name="tiny-har", model_version="1.0.0",
        input=InputSpec(length=L, sample_rate_hz=50.0),
        class_names=CLASSES, default_samples=16,
        noise=(NoiseSpec("mask_0", "dropout_mask", (F,), {"p": 0.5}),),
        trunk=GraphSpec("trunk.onnx", ("signal",), ("features",)),
        head=GraphSpec("head.onnx", ("features", "mask_0"), ("logits",)),
        feature_name="features", logits_name="logits",
        metadata={"created_by": "rt-tests", "recipe": "tiny", "metrics": {"acc": 0.5}, "target": "cpu"},
    )
    fields.update(overrides)
    return Manifest(**fields)


@dataclass
class Tiny:
    dir: Path
    manifest: Manifest
    W: np.ndarray
    V: np.ndarray

    def zscore(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        return (x - x.mean(-1, keepdims=True)) / np.maximum(x.std(-1, keepdims=True), np.float32(1e-8))

    def features(self, x: np.ndarray) -> np.ndarray:
        return self.zscore(x) @ self.W

    def logits(self, features: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return (features * mask) @ self.V


BuildFn = Callable[..., Tiny]


def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def entropy(p: np.ndarray) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    return -(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)).sum(-1)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def require_extra(module: str, why: str, needed: bool = True) -> ModuleType:
    """Import ``module`` for a test module; when it is missing, skip on a developer machine
    but FAIL under ``CI=true`` where ``needed`` (an extra that ``make test`` installs into
    this environment must be there). Use at module level instead of ``importorskip``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        msg = f"{module!r} is not importable ({exc}): {why}"
        if needed and in_ci():
            pytest.fail(f"CI=true and {msg}", pytrace=False)
        pytest.skip(msg, allow_module_level=True)
        raise  # unreachable


def ref_flag(row) -> str:
    """Brute-force input-quality flag of one window (a plain-Python loop, the tests' reference
    for ``edgeuq_runtime.preprocess.input_quality``): "flat", "clipped" or ""."""
    if len(set(row)) == 1:
        return "flat"
    need = max(3, math.ceil(0.05 * len(row)))
    for extreme in (max(row), min(row)):
        hits = [v == extreme for v in row]
        run = best = 0
        for h in hits:
            run = run + 1 if h else 0
            best = max(best, run)
        if sum(hits) >= need and best >= 3:
            return "clipped"
    return ""


def ref_noise_rows(specs, rows: int, rng: np.random.Generator) -> Dict[str, np.ndarray]:
    """Brute-force reference of the runtime's noise stream (edgeuq_runtime.noise, stream 2), element by
    element in plain Python from the documented layout: each head row takes, spec by spec in manifest
    order, whole 64-bit words of ``rng.bit_generator.random_raw``, read little-endian: b = 8 or 16 bits
    per dropout element (8 where |round(p 2**8) / 2**8 - p| <= 0.02 min(p, 1 - p)), keep where
    u >= t = round(p 2**b), kept value 2**b / (2**b - t)), 16 bits per
    uniform element ((u + 1/2) / 2**16), 16 bits per normal element (the mean of N(0, 1) over quantile
    cell u of 2**16: 2**16 * (phi(a) - phi(b)) with a, b = Phi^-1(u / 2**16), Phi^-1((u + 1) / 2**16),
    here straight from statistics.NormalDist, no mirroring), 32 bits per categorical one-hot row
    (index (u * k) >> 32)."""
    nd = statistics.NormalDist()

    def cell_mean(v: int) -> float:
        a = nd.inv_cdf(v / 65536) if v else -math.inf
        b = nd.inv_cdf((v + 1) / 65536) if v < 65535 else math.inf
        pdf = [0.0 if math.isinf(x) else nd.pdf(x) for x in (a, b)]
        return (pdf[0] - pdf[1]) * 65536

    out: Dict[str, list] = {s.name: [] for s in specs}
    for _ in range(rows):
        for s in specs:
            e = int(np.prod(s.shape))
            if s.kind == "dropout_mask":   # 8 bits where p moves by <= 2 % of min(p, 1 - p), else 16
                p = s.params["p"]
                bits = 8 if abs(min(round(p * 256), 255) / 256 - p) <= 0.02 * min(p, 1 - p) else 16
            else:
                bits = 32 if s.kind == "categorical" else 16
            count = e // int(s.params["k"]) if s.kind == "categorical" else e
            words = -(-count * bits // 64)
            raw = b"".join(int(w).to_bytes(8, "little") for w in rng.bit_generator.random_raw(words))
            vals = [int.from_bytes(raw[i * bits // 8:(i + 1) * bits // 8], "little") for i in range(count)]
            if s.kind == "dropout_mask":
                full = 2 ** bits
                t = min(round(s.params["p"] * full), full - 1)
                row = [full / (full - t) if v >= t else 0.0 for v in vals]
            elif s.kind == "uniform":
                row = [(v + 0.5) / 2 ** 16 for v in vals]
            elif s.kind == "standard_normal":
                row = [cell_mean(v) for v in vals]
            else:
                k = int(s.params["k"])
                row = [1.0 if j == (v * k) >> 32 else 0.0 for v in vals for j in range(k)]
            out[s.name].append(np.array(row, dtype=np.float64).reshape(s.shape))
    return {name: np.stack(v) for name, v in out.items()}
