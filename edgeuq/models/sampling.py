"""Multi-sample prediction in PyTorch: trunk once, head S times, batched."""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence

import numpy as np
import torch

from edgeuq_runtime.noise import NoiseSpec, mean_noise, sample_noise

__all__ = ["tile_samples", "mc_sample_logits", "mc_sample_head_logits", "mc_sample_probs", "noise_by_sample"]


def tile_samples(features: torch.Tensor, samples: int) -> torch.Tensor:
    """Repeat features s-major: row ``s * B + b`` is sample ``s`` of input ``b``
    (the runtime's convention)."""
    return features.repeat((samples,) + (1,) * (features.dim() - 1))


def noise_by_sample(specs: Sequence[NoiseSpec], samples: int, batch: int,
                    rng: np.random.Generator) -> Dict[str, np.ndarray]:
    """Noise for ``samples`` x ``batch`` head rows drawn one sample at a time with
    :func:`edgeuq_runtime.noise.sample_noise` (every spec for ``batch`` rows, then the next
    sample), stacked s-major: row ``s * batch + b``. With several noise inputs this differs from
    one draw of ``samples * batch`` rows (the default of :func:`mc_sample_head_logits`); the text
    heads' host-side sampling has always drawn this way."""
    draws = [sample_noise(specs, batch, rng) for _ in range(samples)]
    return {s.name: np.concatenate([d[s.name] for d in draws], axis=0) for s in specs}


def mc_sample_head_logits(
    model: torch.nn.Module,
    features: torch.Tensor,
    samples: int,
    rng: Optional[np.random.Generator] = None,
    noise: Optional[Mapping[str, np.ndarray]] = None,
    mean: bool = False,
) -> torch.Tensor:
    """The one PyTorch MC sampler, on trunk features already computed: logits of shape (S, B, C),
    the head on S tiled copies (row ``s * B + b`` is sample ``s`` of input ``b``, the runtime's
    convention).

    Noise: ``noise`` as given; else every noise input at its mean (``mean``, the deterministic
    pass); else drawn with the runtime's per-kind numpy samplers (``sample_noise``) from ``rng``:
    the same distributions as ``edgeuq_runtime``, not its stream (the runtime's ``predict`` draws
    fixed-size rows from ``random_raw``, so the same seed gives other values there; pass ``noise``
    to compare draw for draw). A model without noise inputs gets none. Gradients flow; callers
    that only predict wrap it in ``torch.no_grad()``.
    """
    b = features.shape[0]
    feats = tile_samples(features, samples)
    if noise is None:
        specs = model.noise_specs()
        if specs:
            noise = (mean_noise(specs, samples * b) if mean
                     else sample_noise(specs, samples * b, rng if rng is not None else np.random.default_rng()))
    tnoise = None if noise is None else {k: torch.from_numpy(np.asarray(v)) for k, v in noise.items()}
    return model.head_forward(feats, tnoise).reshape(samples, b, -1)


def mc_sample_logits(
    model: torch.nn.Module,
    x: torch.Tensor,
    samples: int,
    rng: Optional[np.random.Generator] = None,
    noise: Optional[Mapping[str, np.ndarray]] = None,
    mean: bool = False,
) -> torch.Tensor:
    """:func:`mc_sample_head_logits` on ``model.trunk(x)``: the trunk once, the head S times."""
    return mc_sample_head_logits(model, model.trunk(x), samples, rng=rng, noise=noise, mean=mean)


@torch.no_grad()
def mc_sample_probs(model: torch.nn.Module, x: torch.Tensor, samples: int, rng: Optional[np.random.Generator] = None,
                    noise: Optional[Mapping[str, np.ndarray]] = None) -> torch.Tensor:
    """Probabilities of shape (S, B, C) (:func:`mc_sample_logits`, softmaxed; eval mode)."""
    model.eval()
    return torch.softmax(mc_sample_logits(model, x, samples, rng=rng, noise=noise), dim=-1)
