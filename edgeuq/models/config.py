"""Model configuration: architecture plus which parts are stochastic."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Tuple

from ..settings import settings_from_dict

__all__ = ["ModelConfig"]


@dataclass(frozen=True)
class ModelConfig:
    """A 1-D signal transformer classifier.

    ``stochastic_blocks`` lists the encoder blocks whose dropout stays on at
    inference (MC dropout); ``stochastic_head`` does the same for the classifier
    head. The deterministic trunk ends at the first stochastic layer: everything
    before it runs once per input, everything after it S times.
    """

    input_length: int
    num_classes: int
    patch: int = 32
    d_model: int = 64
    heads: int = 4
    depth: int = 3
    ffn: int = 128
    dropout: float = 0.1
    stochastic_blocks: Tuple[int, ...] = (2,)
    stochastic_head: bool = True
    scheme: str = "mc_dropout"
    embed: str = "conv"
    stem_channels: int = 32

    def __post_init__(self) -> None:
        object.__setattr__(self, "stochastic_blocks", tuple(sorted({int(b) for b in self.stochastic_blocks})))
        problems = []
        if self.input_length <= 0 or self.patch <= 0 or self.input_length % self.patch:
            problems.append(f"input_length ({self.input_length}) must be a positive multiple of patch ({self.patch})")
        if self.num_classes < 2:
            problems.append(f"num_classes must be >= 2, got {self.num_classes}")
        if self.d_model % self.heads:
            problems.append(f"d_model ({self.d_model}) must be divisible by heads ({self.heads})")
        if self.depth < 1 or self.ffn < 1:
            problems.append("depth and ffn must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        bad = [b for b in self.stochastic_blocks if not 0 <= b < self.depth]
        if bad:
            problems.append(f"stochastic_blocks {bad} out of range for depth {self.depth}")
        if self.embed not in ("conv", "linear"):
            problems.append(f"unknown embed {self.embed!r}; use 'conv' or 'linear'")
        if self.embed == "conv" and self.patch % 8:
            problems.append(f"the conv patch embedding needs patch divisible by 8, got {self.patch}")
        if self.scheme != "mc_dropout":
            problems.append(f"unknown stochastic scheme {self.scheme!r}; available: ['mc_dropout']")
        if problems:
            raise ValueError("invalid ModelConfig: " + "; ".join(problems))

    @property
    def tokens(self) -> int:
        return self.input_length // self.patch

    @property
    def split_index(self) -> int:
        """Index of the first stochastic block (``depth`` when only the head is)."""
        return self.stochastic_blocks[0] if self.stochastic_blocks else self.depth

    @property
    def is_stochastic(self) -> bool:
        return bool(self.stochastic_blocks) or self.stochastic_head

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stochastic_blocks"] = list(self.stochastic_blocks)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], **overrides: Any) -> "ModelConfig":
        return settings_from_dict(cls, d, "model", **overrides)
