"""Training loop and checkpoint artifacts.

The names below are loaded on first use (PEP 562), so the training loop
(:mod:`edgeuq.training.loop`, below the schemes) can be imported without the checkpoint
(:mod:`edgeuq.training.checkpoint`, above them: it rebuilds a model from its config).
"""
from __future__ import annotations

from typing import Dict

from .._lazy import lazy_exports

_API: Dict[str, str] = {
    "Checkpoint": "checkpoint", "load_checkpoint": "checkpoint", "save_checkpoint": "checkpoint",
    "TrainConfig": "config", "UqConfig": "config",
    "EpochStats": "loop", "TrainResult": "loop", "predict_logits": "loop",
}

__all__ = [
    "Checkpoint", "load_checkpoint", "save_checkpoint", "TrainConfig", "UqConfig",
    "EpochStats", "TrainResult", "predict_logits",
]


__getattr__, __dir__ = lazy_exports(__name__, _API, globals())
