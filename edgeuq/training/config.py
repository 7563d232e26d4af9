"""Training settings."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, final

from ..settings import settings_from_dict

__all__ = ["TrainConfig"]


@final
@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 15
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-2
    patience: int = 4
    seed: int = 0
    threads: int = 0  # 0: leave torch's default

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1:
            raise ValueError(f"epochs, batch_size and patience must be >= 1: {self}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], **overrides: Any) -> "TrainConfig":
        return settings_from_dict(cls, d, "training", **overrides)
