"""The chained stages every conformance test runs (after ExecuTorch's tester): a tiny model of a
scheme -> checkpoint -> ONNX export -> bundle -> device runtime, and the PyTorch reference drawn
with the runtime's own noise stream (row ``s * B + b`` of ``sample_noise_rows``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Tuple

import numpy as np
import torch

from edgeuq.bayes import uses_sampling
from edgeuq.export import OnnxArtifact, export_onnx
from edgeuq.models import ModelConfig, build_model, mc_sample_probs
from edgeuq.schemes import SCHEMES
from edgeuq.schemes.base import FitContext
from edgeuq.training import TrainConfig, save_checkpoint
from edgeuq_runtime.noise import sample_noise_rows

TINY = dict(input_length=128, num_classes=3, patch=16, d_model=16, heads=2, depth=2, ffn=16, dropout=0.2)
#: where a scheme's stochastic layers may sit, most stochastic first; each scheme takes the first
#: it accepts (its own validation decides: schemes declare what they support, no name is compared)
PLACEMENTS = (((1,), True), ((), True), ((), False))
CLASSES = ("a", "b", "c")
FS = 1000.0


def tiny_config(scheme: str) -> ModelConfig:
    errors = []
    for blocks, head in PLACEMENTS:
        try:
            return ModelConfig(**TINY, scheme=scheme, stochastic_blocks=blocks, stochastic_head=head)
        except ValueError as exc:
            errors.append(str(exc))
    raise AssertionError(f"scheme {scheme!r} accepts none of the conformance placements: {errors}")


def fit_tiny(scheme: str, seed: int = 0) -> torch.nn.Module:
    """The tiny model of ``scheme`` fitted by the scheme itself (training and its post-hoc parts, e.g.
    a Laplace posterior) on 96 seeded windows for 2 epochs: enough for noise to move the outputs."""
    rng = np.random.default_rng(seed + 1)
    x = windows(96, seed + 1)
    y = rng.integers(0, len(CLASSES), len(x))
    ctx = FitContext(x[:64], y[:64], x[64:], y[64:], TrainConfig(epochs=2, batch_size=32, patience=2, seed=seed),
                     uq={"laplace_samples": 8}, progress=False)
    torch.manual_seed(seed)
    return SCHEMES.get(scheme).fit(tiny_config(scheme), ctx).model.eval()


def export_tiny(scheme: str, root: Path, seed: int = 0) -> Tuple[torch.nn.Module, OnnxArtifact]:
    """The tiny model, untrained, unless it has a noise stream its prediction does not use yet (a
    post-hoc part left unfitted): then :func:`fit_tiny`, so the noise stream matters to the output."""
    torch.manual_seed(seed)
    model = build_model(tiny_config(scheme)).eval()
    ck = save_checkpoint(model, root / "ck", CLASSES, FS)
    art = export_onnx(ck, root / "onnx")
    if art.noise and not uses_sampling(model):
        model = fit_tiny(scheme, seed)
        ck = save_checkpoint(model, root / "ck-fitted", CLASSES, FS)
        art = export_onnx(ck, root / "onnx-fitted")
    return model, art


def windows(n: int, seed: int = 0) -> np.ndarray:
    """Windows already z-scored per row, so the runtime's normalisation leaves them as they are
    and PyTorch sees the same input without borrowing the runtime's preprocessing."""
    x = np.random.default_rng(seed).standard_normal((n, TINY["input_length"])).astype(np.float64)
    x = (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)
    return x.astype(np.float32)


def torch_reference(model: Any, art: OnnxArtifact, x: np.ndarray, samples: int, seed: int) -> np.ndarray:
    """(S, N, C) PyTorch sample probabilities with the runtime's noise stream for ``seed``."""
    noise = sample_noise_rows(art.noise, samples * len(x), np.random.default_rng(seed))
    with torch.no_grad():
        return mc_sample_probs(model, torch.from_numpy(x), samples, noise=noise).numpy()


def max_err(a: np.ndarray, b: np.ndarray) -> float:
    """NaN-safe: a NaN anywhere makes the error NaN, which fails every ``not err <= tol``."""
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
