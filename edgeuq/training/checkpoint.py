"""Checkpoint artifact: weights + everything needed to rebuild and deploy the model."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Tuple

import torch

from edgeuq_runtime.bundle import sha256_file as _sha256

from ..models import ModelConfig, SignalTransformer

__all__ = ["Checkpoint", "save_checkpoint", "load_checkpoint", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = 1
_WEIGHTS = "model.pt"
_META = "checkpoint.json"


@dataclass(frozen=True)
class Checkpoint:
    """A trained model on disk: ``<dir>/model.pt`` + ``<dir>/checkpoint.json``."""

    directory: Path
    config: ModelConfig
    class_names: Tuple[str, ...]
    sample_rate_hz: float
    normalization: str
    sha256: str
    metrics: Mapping[str, Any] = field(default_factory=dict)

    @property
    def weights_path(self) -> Path:
        return self.directory / _WEIGHTS

    def load_model(self) -> SignalTransformer:
        actual = _sha256(self.weights_path)
        if actual != self.sha256:
            raise ValueError(
                f"checkpoint weights {self.weights_path} changed since saving: "
                f"sha256 {actual[:12]}… != recorded {self.sha256[:12]}…"
            )
        model = SignalTransformer(self.config)
        state = torch.load(self.weights_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        model.eval()
        return model


def save_checkpoint(
    model: SignalTransformer,
    directory: Path,
    class_names: Tuple[str, ...],
    sample_rate_hz: float,
    normalization: str = "zscore",
    metrics: Mapping[str, Any] | None = None,
) -> Checkpoint:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if len(class_names) != model.cfg.num_classes:
        raise ValueError(f"{len(class_names)} class names for a {model.cfg.num_classes}-class model")
    tmp = directory / (_WEIGHTS + ".tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(directory / _WEIGHTS)
    ckpt = Checkpoint(
        directory=directory,
        config=model.cfg,
        class_names=tuple(class_names),
        sample_rate_hz=float(sample_rate_hz),
        normalization=normalization,
        sha256=_sha256(directory / _WEIGHTS),
        metrics=dict(metrics or {}),
    )
    meta = {
        "format": CHECKPOINT_FORMAT,
        "config": ckpt.config.to_dict(),
        "class_names": list(ckpt.class_names),
        "sample_rate_hz": ckpt.sample_rate_hz,
        "normalization": ckpt.normalization,
        "weights": _WEIGHTS,
        "sha256": ckpt.sha256,
        "metrics": ckpt.metrics,
    }
    tmp_meta = directory / (_META + ".tmp")
    tmp_meta.write_text(json.dumps(meta, indent=2, sort_keys=True))
    tmp_meta.replace(directory / _META)
    return ckpt


def load_checkpoint(directory: Path) -> Checkpoint:
    directory = Path(directory)
    meta_path = directory / _META
    if not meta_path.is_file():
        raise FileNotFoundError(f"no checkpoint at {directory}: {_META} missing")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{meta_path} is not valid JSON: {exc}") from exc
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{meta_path}: unsupported checkpoint format {meta.get('format')!r}")
    if not (directory / _WEIGHTS).is_file():
        raise FileNotFoundError(f"checkpoint weights missing: {directory / _WEIGHTS}")
    return Checkpoint(
        directory=directory,
        config=ModelConfig.from_dict(meta["config"]),
        class_names=tuple(meta["class_names"]),
        sample_rate_hz=float(meta["sample_rate_hz"]),
        normalization=meta["normalization"],
        sha256=meta["sha256"],
        metrics=meta.get("metrics", {}),
    )
