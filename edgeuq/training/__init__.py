"""Training loop and checkpoint artifacts."""
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .loop import EpochStats, TrainResult, predict_logits, train_model

__all__ = [
    "Checkpoint", "load_checkpoint", "save_checkpoint", "TrainConfig",
    "EpochStats", "TrainResult", "predict_logits", "train_model",
]
