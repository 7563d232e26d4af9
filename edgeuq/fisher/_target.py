"""How the estimators see a model: logits given (x, noise), noise draws, layers,
calibration batches and the labels each Fisher variant differentiates.

A model is any ``nn.Module`` mapping a batch ``x`` to logits ``(B, C)``. If it
has ``noise_specs()`` (edgeuq's stochastic models), its forward takes an
explicit noise dict and the estimators draw that noise with the device
runtime's own samplers, so "averaged over noise samples" means the same masks
the runtime would draw. Samples must not interact within a batch (no batch
norm): per-sample gradients are read off one backward pass of a summed loss.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from edgeuq_runtime.noise import sample_noise

from ..models.eval_mode import evaluating
from .config import EXACT_MAX_CLASSES, FisherConfig

__all__ = ["FisherTarget", "LabelDraw", "label_draws", "calibration_batches", "LAYER_TYPES", "layer_kind"]

Noise = Optional[Dict[str, torch.Tensor]]

#: Module types treated as quantizable "layers" (weight matrices / kernels).
LAYER_TYPES = (nn.Linear, nn.Conv1d)


def layer_kind(module: nn.Module) -> str:
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Conv1d):
        return "conv1d"
    raise TypeError(f"{type(module).__name__} is not a layer type ({[t.__name__ for t in LAYER_TYPES]})")


class FisherTarget:
    """A model seen through the estimators' eyes."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        specs = model.noise_specs() if hasattr(model, "noise_specs") else ()
        self.noise_specs = tuple(specs)

    @property
    def stochastic(self) -> bool:
        return bool(self.noise_specs)

    def draw_noise(self, n: int, rng: np.random.Generator) -> Noise:
        if not self.noise_specs:
            return None
        return {k: torch.from_numpy(v) for k, v in sample_noise(self.noise_specs, n, rng).items()}

    def logits(self, x: torch.Tensor, noise: Noise) -> torch.Tensor:
        out = self.model(x) if noise is None else self.model(x, noise)
        if out.dim() != 2:
            raise ValueError(f"model must return logits of shape (B, C), got {tuple(out.shape)}")
        return out

    def named_params(self) -> Dict[str, torch.Tensor]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def layers(self) -> Dict[str, nn.Module]:
        """Quantizable layers by module name, in registration order."""
        return {n: m for n, m in self.model.named_modules() if isinstance(m, LAYER_TYPES)}

    @contextmanager
    def evaluating(self) -> Iterator[None]:
        """Eval mode (:func:`edgeuq.models.eval_mode.evaluating`, the caller's gradient mode kept), MC
        sampling off (noise comes in explicitly); both restored on exit."""
        sampling = [(m, m.sampling) for m in self.model.modules() if hasattr(m, "sampling")]
        for m, _ in sampling:
            m.sampling = False
        try:
            with evaluating(self.model, grad=torch.is_grad_enabled()):
                yield
        finally:
            for m, s in sampling:
                m.sampling = s


@dataclass(frozen=True)
class LabelDraw:
    """Labels to differentiate log p(y|x) at, and the weight of each sample's term."""

    labels: torch.Tensor   # (B,) int64
    weights: torch.Tensor  # (B,) float64


def label_draws(
    logits: torch.Tensor, y: Optional[torch.Tensor], cfg: FisherConfig, gen: torch.Generator
) -> List[LabelDraw]:
    """The label sets for one forward pass; the weights sum to 1 per sample."""
    b, c = logits.shape
    if cfg.labels == "empirical":
        if y is None:
            raise ValueError("the empirical Fisher needs data labels")
        return [LabelDraw(y, torch.ones(b, dtype=torch.float64))]
    probs = torch.softmax(logits.detach().double(), dim=-1)
    exact = cfg.exact_expectation if cfg.exact_expectation is not None else c <= EXACT_MAX_CLASSES
    if exact:
        return [LabelDraw(torch.full((b,), k, dtype=torch.long), probs[:, k]) for k in range(c)]
    w = torch.full((b,), 1.0 / cfg.label_samples, dtype=torch.float64)
    return [LabelDraw(torch.multinomial(probs, 1, generator=gen).squeeze(1), w) for _ in range(cfg.label_samples)]


def calibration_batches(
    x: np.ndarray, y: Optional[np.ndarray], batch_size: int, progress: bool, desc: str
) -> Iterator[Tuple[torch.Tensor, Optional[torch.Tensor]]]:
    """Stream ``(x, y)`` in batches with a progress bar: float inputs as float32, integer inputs
    (token ids) as int64; labels as int64."""
    x = np.asarray(x)
    if len(x) == 0:
        raise ValueError("calibration set is empty")
    if y is not None and len(y) != len(x):
        raise ValueError(f"{len(x)} calibration inputs but {len(y)} labels")
    if y is not None and np.any(np.asarray(y) < 0):
        raise ValueError("calibration labels must be >= 0 (unlabelled windows cannot give an empirical Fisher)")
    for i in tqdm(range(0, len(x), batch_size), desc=desc, disable=not progress, leave=False):
        chunk = x[i : i + batch_size]
        dtype = np.float32 if np.issubdtype(chunk.dtype, np.floating) else np.int64
        xb = torch.from_numpy(np.ascontiguousarray(chunk, dtype=dtype))
        yb = None if y is None else torch.from_numpy(np.asarray(y[i : i + batch_size], dtype=np.int64))
        yield xb, yb


def check_labels_needed(cfg: FisherConfig, y: Optional[np.ndarray]) -> None:
    if cfg.labels == "empirical" and y is None:
        raise ValueError("labels='empirical' needs data labels y; the true Fisher (default) does not")


def passes(target: FisherTarget, cfg: FisherConfig) -> int:
    """Noise realisations per input (1 for a deterministic model)."""
    return cfg.noise_samples if target.stochastic else 1
