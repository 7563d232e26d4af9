"""Checkpoint artifact: weights + everything needed to rebuild and deploy the model."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Dict, Mapping, Tuple

import torch

from ..artifact import Artifact, ArtifactWriter
from ..models.config import ModelConfig
from ..models.transformer import SignalTransformer, build_model

__all__ = ["Checkpoint", "save_checkpoint", "load_checkpoint", "CHECKPOINT_FORMAT", "TOKENIZER_FILE"]

#: a token model's tokenizer, kept next to its checkpoint (not part of it): the compression chain carries
#: it from step to step (a step may replace it), ``export_onnx`` copies it into the export and the bundle
TOKENIZER_FILE = "tokenizer.json"

_WEIGHTS = "model.pt"


@dataclass(frozen=True)
class Checkpoint(Artifact):
    """A trained model on disk: ``<dir>/model.pt`` + ``<dir>/checkpoint.json`` (the envelope)."""

    KIND: ClassVar[str] = "checkpoint"
    FORMAT_VERSION: ClassVar[int] = 2
    META_FILE: ClassVar[str] = "checkpoint.json"

    config: ModelConfig
    class_names: Tuple[str, ...]
    sample_rate_hz: float
    normalization: str
    metrics: Mapping[str, Any] = field(default_factory=dict)

    def payload_files(self) -> Tuple[str, ...]:
        return (_WEIGHTS,)

    def to_meta(self) -> Dict[str, Any]:
        return {"config": self.config.to_dict(), "class_names": list(self.class_names),
                "sample_rate_hz": self.sample_rate_hz, "normalization": self.normalization,
                "weights": _WEIGHTS, "metrics": dict(self.metrics)}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], **base: Any) -> "Checkpoint":
        return cls(config=ModelConfig.from_dict(meta["config"]), class_names=tuple(meta["class_names"]),
                   sample_rate_hz=float(meta["sample_rate_hz"]), normalization=meta["normalization"],
                   metrics=meta.get("metrics", {}), **base)

    @property
    def weights_path(self) -> Path:
        return self.file_path(_WEIGHTS)

    @property
    def sha256(self) -> str:
        """sha256 of the weights file (``digest`` covers the weights and the metadata)."""
        return self.files[_WEIGHTS]

    def load_model(self) -> SignalTransformer:
        self.verify_files()
        model = build_model(self.config)
        state = torch.load(self.weights_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        model.eval()
        return model


CHECKPOINT_FORMAT = Checkpoint.FORMAT_VERSION


def save_checkpoint(
    model: SignalTransformer,
    directory: Path,
    class_names: Tuple[str, ...],
    sample_rate_hz: float,
    normalization: str = "zscore",
    metrics: Mapping[str, Any] | None = None,
    inputs: str = "",
) -> Checkpoint:
    """Write ``model`` atomically to ``directory`` and return the verified Checkpoint.
    Other files already in ``directory`` (e.g. ``tokenizer.json``) are kept."""
    if len(class_names) != model.cfg.num_classes:
        raise ValueError(f"{len(class_names)} class names for a {model.cfg.num_classes}-class model")
    ckpt = Checkpoint(config=model.cfg, class_names=tuple(class_names), sample_rate_hz=float(sample_rate_hz),
                      normalization=normalization, metrics=dict(metrics or {}), inputs=inputs)
    with ArtifactWriter(Path(directory)) as w:
        torch.save(model.state_dict(), w.path / _WEIGHTS)
        return w.commit(ckpt)


def load_checkpoint(directory: Path) -> Checkpoint:
    """Load and verify the checkpoint in ``directory`` (raises ArtifactError naming the problem)."""
    return Checkpoint.load(Path(directory))

