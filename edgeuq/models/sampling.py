"""Multi-sample prediction in PyTorch: trunk once, head S times, batched."""
from __future__ import annotations

from typing import Mapping, Optional

import numpy as np
import torch

from edgeuq_runtime.noise import sample_noise

__all__ = ["tile_samples", "mc_sample_probs"]


def tile_samples(features: torch.Tensor, samples: int) -> torch.Tensor:
    """Repeat features s-major: row ``s * B + b`` is sample ``s`` of input ``b``
    (the runtime's convention)."""
    return features.repeat((samples,) + (1,) * (features.dim() - 1))


@torch.no_grad()
def mc_sample_probs(
    model: torch.nn.Module,
    x: torch.Tensor,
    samples: int,
    rng: Optional[np.random.Generator] = None,
    noise: Optional[Mapping[str, np.ndarray]] = None,
) -> torch.Tensor:
    """Probabilities of shape (S, B, C).

    Noise is drawn with the runtime's numpy samplers (so a seed gives the same
    masks as ``edgeuq_runtime``), or passed in explicitly.
    """
    model.eval()
    b = x.shape[0]
    feats = tile_samples(model.trunk(x), samples)
    if noise is None:
        noise = sample_noise(model.noise_specs(), samples * b, rng or np.random.default_rng())
    tnoise = {k: torch.from_numpy(np.asarray(v)) for k, v in noise.items()}
    logits = model.head_forward(feats, tnoise)
    return torch.softmax(logits, dim=-1).reshape(samples, b, -1)
