"""Compression stages on artifacts: teacher (checkpoint or bundle) -> transfer set -> student checkpoint."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional, Tuple, Union

import numpy as np
import torch

from ..data import Splits
from ..models import ModelConfig, build_model
from ..training import Checkpoint, load_checkpoint, save_checkpoint
from .distill import DistillConfig, distill_model
from .transfer import (TransferConfig, TransferSet, augment_windows, features_with_model, features_with_runtime,
                       label_with_model, label_with_runtime, save_transfer_set, with_teacher_features)

__all__ = ["Teacher", "load_teacher", "label_transfer", "distill_stage"]


@dataclass(frozen=True)
class Teacher:
    """A labeller of windows: ``label(x, samples, seed) -> (S, N, C)``; ``source`` says what it is."""

    source: str
    digest: str
    label: Callable[[np.ndarray, int, int], np.ndarray]
    num_classes: int
    #: pooled trunk features (N, d) of windows (feature distillation); None: not available
    features: Optional[Callable[[np.ndarray], np.ndarray]] = None


def load_teacher(path: Union[str, Path]) -> Teacher:
    """A checkpoint folder (``checkpoint.json``) -> PyTorch teacher; a bundle folder
    (``manifest.json``) -> the device runtime as teacher."""
    path = Path(path)
    if (path / "checkpoint.json").is_file():
        ck = load_checkpoint(path)
        model = ck.load_model()
        return Teacher(f"checkpoint {path} ({ck.config.scheme})", ck.sha256,
                       lambda x, s, seed: label_with_model(model, x, s, seed), ck.config.num_classes,
                       lambda x: features_with_model(model, x))
    if (path / "manifest.json").is_file():
        from edgeuq_runtime import load_bundle
        from edgeuq_runtime.bundle import sha256_file

        b = load_bundle(path)
        return Teacher(f"bundle {path}", sha256_file(path / "manifest.json"),
                       lambda x, s, seed: label_with_runtime(path, x, s, seed), len(b.manifest.class_names),
                       lambda x: features_with_runtime(path, x))
    raise FileNotFoundError(f"{path}: neither a checkpoint (checkpoint.json) nor a bundle (manifest.json)")


def _labels(n_real: int, y: np.ndarray, total: int) -> np.ndarray:
    out = np.full(total, -1, dtype=np.int64)
    out[:n_real] = y
    return out


def label_transfer(teacher: Teacher, splits: Splits, transfer: TransferConfig = TransferConfig(),
                   extra_windows: Optional[np.ndarray] = None) -> Tuple[TransferSet, TransferSet]:
    """The teacher-labelled transfer sets: perturbed training windows (+ ``extra_windows``) and,
    with the next seed, perturbed validation windows (model selection)."""
    x_tr = augment_windows(splits.train.x, transfer, extra_windows)
    train = TransferSet(x_tr, teacher.label(x_tr, transfer.teacher_samples, transfer.seed))
    vcfg = replace(transfer, seed=transfer.seed + 1)
    x_val = augment_windows(splits.val.x, vcfg)
    return train, TransferSet(x_val, teacher.label(x_val, transfer.teacher_samples, vcfg.seed))


def distill_stage(
    teacher: Teacher, student_cfg: ModelConfig, splits: Splits, out_dir: Path,
    transfer: TransferConfig = TransferConfig(), cfg: DistillConfig = DistillConfig(),
    extra_windows: Optional[np.ndarray] = None, progress: bool = True, log: Callable[[str], None] = print,
    init: Optional[torch.nn.Module] = None, labelled: Optional[Tuple[TransferSet, TransferSet]] = None,
) -> Checkpoint:
    """Label a transfer set with the teacher, train the student, write its checkpoint
    (``out_dir/checkpoint``) and the transfer set (``out_dir/transfer``), both hashed.

    ``init``: start from these weights (e.g. a pruned model) instead of a fresh student;
    ``labelled``: the (train, val) sets of :func:`label_transfer`, when already labelled
    by this teacher with these settings (several students, one labelling).
    """
    out_dir = Path(out_dir)
    if teacher.num_classes != student_cfg.num_classes:
        raise ValueError(f"teacher has {teacher.num_classes} classes, student config {student_cfg.num_classes}")
    if labelled is None:
        log(f"distill: teacher = {teacher.source}; labelling the transfer set with S={transfer.teacher_samples}")
        labelled = label_transfer(teacher, splits, transfer, extra_windows)
    train, val = labelled
    if cfg.feature_weight > 0 and (train.features is None or val.features is None):
        if teacher.features is None:
            raise ValueError(f"feature distillation needs the teacher's trunk features; {teacher.source} gives none")
        log("distill: teacher pooled trunk features for feature distillation")
        train, val = (ts if ts.features is not None else with_teacher_features(ts, teacher.features)
                      for ts in (train, val))
    art = save_transfer_set(train, out_dir / "transfer",
                            info={"teacher": teacher.source, "teacher_digest": teacher.digest,
                                  "transfer": transfer.to_dict()})
    log(f"distill: transfer set {len(train)} windows ({len(splits.train)} real) -> {art.directory}")
    torch.manual_seed(cfg.train.seed)
    student = init if init is not None else build_model(student_cfg)
    res = distill_model(student, train, _labels(len(splits.train), splits.train.y, len(train)),
                        val, _labels(len(splits.val), splits.val.y, len(val)), cfg, progress=progress, log=log)
    metrics = {"distill": {**res.to_dict(), "config": cfg.to_dict(), "teacher": teacher.source,
                           "teacher_digest": teacher.digest, "transfer_digest": art.digest}}
    return save_checkpoint(student, out_dir / "checkpoint", splits.class_names, splits.fs, "zscore", metrics=metrics)
