"""Training loop and checkpoint artifacts.

The names below are loaded on first use (PEP 562), so the training loop
(:mod:`edgeuq.training.loop`, below the schemes) can be imported without the checkpoint
(:mod:`edgeuq.training.checkpoint`, above them: it rebuilds a model from its config).
"""
from __future__ import annotations

import importlib
from typing import Any, Dict

_API: Dict[str, str] = {
    "Checkpoint": "checkpoint", "load_checkpoint": "checkpoint", "save_checkpoint": "checkpoint",
    "TrainConfig": "config", "UqConfig": "config",
    "EpochStats": "loop", "TrainResult": "loop", "predict_logits": "loop", "train_model": "loop",
}

__all__ = [
    "Checkpoint", "load_checkpoint", "save_checkpoint", "TrainConfig", "UqConfig",
    "EpochStats", "TrainResult", "predict_logits", "train_model",
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
