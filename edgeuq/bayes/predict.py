"""Batched multi-sample prediction in PyTorch with the runtime's noise samplers."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ..models.sampling import mc_sample_logits
from ..models.transformer import DeployableModel

__all__ = ["sample_logits", "predictive_probs"]


@torch.no_grad()
def sample_logits(model: DeployableModel, x: np.ndarray, samples: Optional[int], seed: int = 0,
                  batch_size: int = 128) -> np.ndarray:
    """Logits of shape (S, N, C): trunk once per batch, head on S stacked samples.

    ``samples=None`` gives the deterministic pass (every noise input at its
    mean), shape (1, N, C). Noise comes from ``edgeuq_runtime.noise`` with a
    generator seeded by ``seed``, so results are reproducible.
    """
    model.eval()
    rng = np.random.default_rng(seed)
    s = 1 if samples is None else int(samples)
    if s < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    out = []
    for i in range(0, len(x), batch_size):
        xb = torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size]))
        out.append(mc_sample_logits(model, xb, s, rng=rng, mean=samples is None).numpy())
    return np.concatenate(out, axis=1)


def predictive_probs(logits: np.ndarray) -> np.ndarray:
    """mean_s softmax(logits_s): (S, N, C) -> (N, C)."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    p = np.exp(z)
    return (p / p.sum(axis=-1, keepdims=True)).mean(axis=0)
