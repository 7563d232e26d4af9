"""Distil the fine-tuned MiniLM teacher into a small edge student through the
compression stage (:func:`edgeuq.compress.stages.distill_stage`, the stage behind
``edgeuq distill``).

The teacher labels WordPiece ids of the training phrases with S sample
probability vectors (its MC-dropout or Laplace head over features computed
through the cached frozen layers — the same numbers the teacher bundle gives,
without re-running the frozen layers), and the validation sentences likewise.
The student is a token :class:`~edgeuq.models.SignalTransformer` on the same
WordPiece ids (so the bundle ships the same device tokenizer), stochastic only
in its MC-dropout head (trunk once, head S times). Its token embedding starts
from the teacher's word embeddings projected onto their top principal
directions (a cheap transfer of the pretrained lexicon; ``init_embeddings``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import torch

from ..compress.distill import DistillConfig
from ..compress.stages import Teacher, distill_stage
from ..compress.transfer import TransferSet
from ..data.text import TokenDataset
from ..models import ModelConfig, build_model
from ..training import Checkpoint, save_checkpoint
from .cache import HiddenCache
from .classifier import TextClassifier
from .finetune import TEXT_PRIOR_GRID, features_from_cache, sample_probs

__all__ = ["student_config", "student_loss", "init_embeddings", "teacher_transfer_sets", "distill_text_student",
           "fit_student_laplace", "STUDENT_PRIOR_GRID"]


def student_config(vocab_size: int, max_length: int, d_model: int = 64, depth: int = 2, heads: int = 4,
                   ffn: int = 128, dropout: float = 0.1, scheme: str = "mc_dropout",
                   num_classes: int = 2) -> ModelConfig:
    """A small token transformer whose only stochastic part is its head (trunk once, head S
    times): e.g. ``mc_dropout``, or ``laplace`` (a last-layer posterior fitted after
    distillation, :func:`fit_student_laplace`). The scheme registry validates ``scheme``."""
    return ModelConfig(input_length=max_length, num_classes=num_classes, patch=1, embed="token",
                       vocab_size=vocab_size, d_model=d_model, heads=heads, depth=depth, ffn=ffn, dropout=dropout,
                       stochastic_blocks=(), stochastic_head=True, scheme=scheme)


def student_loss(cfg: ModelConfig) -> str:
    """The distillation loss for a student: ``kl+uq`` (match the teacher's mean and its uncertainty)
    when its stochastic layers sample while it learns, ``kl`` (the mean) when they do not (a
    post-hoc posterior such as last-layer Laplace has nothing to match yet)."""
    from ..models.layers import StochasticLayer

    model = build_model(cfg)
    samples = any(m.sample_in_training for m in model.modules() if isinstance(m, StochasticLayer))
    return "kl+uq" if samples else "kl"


@torch.no_grad()
def init_embeddings(student: torch.nn.Module, teacher: TextClassifier) -> float:
    """Student token embedding := teacher word embeddings on their top-d principal
    directions, scaled to unit average row norm; returns the explained variance share."""
    e = teacher.encoder.embeddings.word_embeddings.weight.detach().double()
    d = student.embed.weight.shape[1]
    if e.shape[0] != student.embed.weight.shape[0]:
        raise ValueError(f"teacher vocab {e.shape[0]} != student vocab {student.embed.weight.shape[0]}")
    centred = e - e.mean(0, keepdim=True)
    _, s, v = torch.linalg.svd(centred, full_matrices=False)
    proj = centred @ v[:d].T
    proj = proj / proj.norm(dim=1).mean()
    student.embed.weight.copy_(proj.float())
    student.embed.weight[0].zero_()  # padding
    return float((s[:d] ** 2).sum() / (s ** 2).sum())


def teacher_transfer_sets(teacher: TextClassifier, train_cache: HiddenCache, train_ids: np.ndarray,
                          val_feats: np.ndarray, val_ids: np.ndarray, samples: int,
                          seed: int = 0) -> Tuple[TransferSet, TransferSet]:
    """(train, val) transfer sets: ids and the teacher's (S, N, C) sample probabilities."""
    if len(train_ids) != len(train_cache):
        raise ValueError(f"{len(train_ids)} training ids for a cache of {len(train_cache)} phrases")
    train_feats = features_from_cache(teacher, train_cache)
    return (TransferSet(train_ids, sample_probs(teacher, train_feats, samples, seed).astype(np.float32)),
            TransferSet(val_ids, sample_probs(teacher, val_feats, samples, seed + 1).astype(np.float32)))


@dataclass(frozen=True)
class _TokenSplits:
    """The fields of :class:`~edgeuq.data.Splits` that ``distill_stage`` reads, for token ids."""

    train: TokenDataset
    val: TokenDataset
    class_names: Tuple[str, ...]
    fs: float = 1.0


def distill_text_student(teacher: TextClassifier, teacher_source: str, teacher_digest: str,
                         labelled: Tuple[TransferSet, TransferSet], train_y: np.ndarray, val_y: np.ndarray,
                         student_cfg: ModelConfig, out_dir: Path, class_names: Sequence[str],
                         cfg: DistillConfig = DistillConfig(), log: Callable[[str], None] = print,
                         progress: bool = False, init_from_teacher: bool = True) -> Checkpoint:
    """Train the student with the compression stage; its checkpoint lands in ``out_dir/checkpoint``."""
    train, val = labelled
    names = tuple(class_names)
    splits = _TokenSplits(TokenDataset(train.x, train_y, names, "transfer-train"),
                          TokenDataset(val.x, val_y, names, "transfer-val"), names)
    torch.manual_seed(cfg.train.seed)
    student = build_model(student_cfg)
    if init_from_teacher:
        share = init_embeddings(student, teacher)
        log(f"student embedding from the teacher's word embeddings (top {student_cfg.d_model} principal "
            f"directions, {share:.1%} of their variance)")

    def _no_relabel(x: np.ndarray, s: int, seed: int) -> np.ndarray:
        raise RuntimeError("the transfer sets are labelled already")

    t = Teacher(teacher_source, teacher_digest, _no_relabel, teacher.num_classes)
    return distill_stage(t, student_cfg, splits, Path(out_dir), cfg=cfg, progress=progress, log=log,
                         init=student, labelled=labelled)


#: Prior precisions tried for a student's Laplace posterior (the text heads' grid).
STUDENT_PRIOR_GRID = TEXT_PRIOR_GRID


def fit_student_laplace(ck: Checkpoint, x_fit: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                        prior_grid: Sequence[float] = STUDENT_PRIOR_GRID,
                        log: Callable[[str], None] = print) -> Checkpoint:
    """Fit the last-layer Laplace posterior (K-FAC GGN of the student's own last layer on
    ``x_fit``, prior precision by validation NLL) of a distilled ``laplace`` student and
    rewrite its checkpoint (same folder, atomically) with the fit in its metrics."""
    from ..schemes.laplace import fit_laplace

    model = ck.load_model()  # fit_laplace refuses a model without a last-layer Laplace head
    fit = fit_laplace(model, np.asarray(x_fit), np.asarray(x_val), np.asarray(y_val), prior_grid=prior_grid)
    edge = " (the grid's edge)" if fit.prior_precision in (min(prior_grid), max(prior_grid)) else ""
    log(f"student Laplace: GGN on {fit.n_train} phrases, prior precision {fit.prior_precision:g}{edge} "
        f"(validation NLL {min(fit.val_nll):.4f})")
    metrics = {**dict(ck.metrics), "laplace": fit.to_dict()}
    return save_checkpoint(model, ck.directory, ck.class_names, ck.sample_rate_hz, ck.normalization, metrics=metrics,
                           inputs=ck.inputs)
