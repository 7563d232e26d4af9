"""Transformer classifiers; the stochastic layers come from the scheme plug-ins (edgeuq.schemes).

The names below are loaded on first use (PEP 562): the package itself imports nothing, so a
scheme module importing :mod:`edgeuq.models.layers` does not pull in :mod:`edgeuq.models.config`
(which sits above the schemes: it validates ``scheme_options`` with the registered scheme).
"""
from __future__ import annotations

import importlib
from typing import Any, Dict

_API: Dict[str, str] = {
    "AttentionBase": "attention", "SelfAttention": "attention",
    "BlockShape": "config", "ModelConfig": "config",
    "StochasticLayer": "layers", "TORCH_NOISE_DRAWS": "layers", "is_stochastic_layer": "layers",
    "mc_sample_probs": "sampling", "tile_samples": "sampling",
    "DeployableModel": "transformer", "SignalTransformer": "transformer", "build_model": "transformer",
}

__all__ = [
    "ModelConfig", "BlockShape", "SignalTransformer", "DeployableModel", "build_model", "mc_sample_probs",
    "tile_samples", "StochasticLayer", "TORCH_NOISE_DRAWS", "is_stochastic_layer", "AttentionBase", "SelfAttention",
]


def __getattr__(name: str) -> Any:
    try:
        module = _API[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(_API))
