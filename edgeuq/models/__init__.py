"""Transformer classifiers; the stochastic layers come from the scheme plug-ins (edgeuq.schemes).

The names below are loaded on first use (PEP 562): the package itself imports nothing, so a
scheme module importing :mod:`edgeuq.models.layers` does not pull in :mod:`edgeuq.models.config`
(which sits above the schemes: it validates ``scheme_options`` with the registered scheme).
"""
from __future__ import annotations

from typing import Dict

from .._lazy import lazy_exports

_API: Dict[str, str] = {
    "AttentionBase": "attention", "SelfAttention": "attention",
    "BlockShape": "config", "ModelConfig": "config",
    "StochasticLayer": "layers", "TORCH_NOISE_DRAWS": "layers", "is_stochastic_layer": "layers",
    "mc_sample_logits": "sampling", "mc_sample_probs": "sampling", "mc_sample_head_logits": "sampling",
    "noise_by_sample": "sampling", "tile_samples": "sampling",
    "DeployableModel": "transformer", "SignalTransformer": "transformer", "build_model": "transformer",
}

__all__ = [
    "ModelConfig", "BlockShape", "SignalTransformer", "DeployableModel", "build_model", "mc_sample_logits",
    "mc_sample_probs", "mc_sample_head_logits", "noise_by_sample",
    "tile_samples", "StochasticLayer", "TORCH_NOISE_DRAWS", "is_stochastic_layer", "AttentionBase", "SelfAttention",
]


__getattr__, __dir__ = lazy_exports(__name__, _API, globals())
