"""Training with progress and validation-based early stopping; the loss is a function of the batch.

:func:`run_epochs` is the loop every trainer shares. Its ``loss_fn(model, batch)``
returns a :class:`LossOut` (the loss to minimise and the logits used for the
running accuracy); :func:`cross_entropy_loss` is the default, a scheme may give
its own (the ELBO of the variational scheme), and distillation can bring a
teacher's outputs in through ``batch.index`` (the rows of the training arrays).
Progress: a tqdm bar per epoch when stdout and stderr are terminals, else one
line per epoch (no bars in logs).
"""
from __future__ import annotations

import copy
import math
import sys
from dataclasses import dataclass
from typing import Callable, Iterable, List, Optional, Tuple, final

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from torch import nn

from .config import TrainConfig

__all__ = [
    "EpochStats", "TrainResult", "predict_logits", "run_epochs", "check_dataset", "Batch", "LossOut",
    "LossFn", "cross_entropy_loss", "deterministic_validation", "StepTotals", "run_steps", "warmup_linear_decay",
]


@final
@dataclass(frozen=True)
class Batch:
    """One training batch: inputs, labels and ``index``, the rows of the training arrays
    (a LongTensor) -- e.g. to look up a teacher's precomputed outputs."""

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor


@final
@dataclass(frozen=True)
class LossOut:
    """The loss to minimise and the logits of the forward pass (for the running accuracy)."""

    loss: torch.Tensor
    logits: torch.Tensor


LossFn = Callable[[nn.Module, Batch], LossOut]


def cross_entropy_loss(model: nn.Module, batch: Batch) -> LossOut:
    """Mean cross-entropy of ``model(batch.x)`` (stochastic layers draw in training mode)."""
    logits = model(batch.x)
    return LossOut(F.cross_entropy(logits, batch.y), logits)


def _bars_wanted(progress: bool) -> bool:
    """tqdm bars only on a terminal: in logs (redirected output) they become a flood."""
    return progress and sys.stdout.isatty() and sys.stderr.isatty()


@final
@dataclass(frozen=True)
class EpochStats:
    epoch: int
    train_loss: float
    train_acc: float
    val_nll: float
    val_acc: float


@final
@dataclass(frozen=True)
class TrainResult:
    history: tuple
    best_epoch: int
    best_val_nll: float
    stopped_early: bool

    def to_dict(self) -> dict:
        return {
            "best_epoch": self.best_epoch,
            "best_val_nll": self.best_val_nll,
            "stopped_early": self.stopped_early,
            "history": [vars(h) for h in self.history],
        }


@torch.no_grad()
def predict_logits(model: nn.Module, x: np.ndarray, batch_size: int = 256) -> torch.Tensor:
    """Deterministic logits (stochastic layers at their mean)."""
    model.eval()
    outs = [model(torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size]))) for i in range(0, len(x), batch_size)]
    return torch.cat(outs)


def check_dataset(name: str, x: np.ndarray, y: np.ndarray, model: nn.Module) -> None:
    """Refuse empty sets, a wrong input length, mismatched labels, labels out of range,
    and non-integer inputs for a token model."""
    if len(x) == 0:
        raise ValueError(f"{name} set is empty")
    if x.ndim != 2 or x.shape[1] != model.cfg.input_length:
        raise ValueError(f"{name} inputs have shape {x.shape}, model expects (N, {model.cfg.input_length})")
    if len(y) != len(x):
        raise ValueError(f"{name}: {len(x)} inputs but {len(y)} labels")
    if y.min() < 0 or y.max() >= model.cfg.num_classes:
        raise ValueError(f"{name} labels must be in [0, {model.cfg.num_classes}), got [{y.min()}, {y.max()}]")
    if model.cfg.embed == "token" and not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"{name} inputs of a token model must be integer ids, got {x.dtype}")


def warmup_linear_decay(opt: torch.optim.Optimizer, steps: int, warmup: float = 0.06):
    """Linear warm-up over the first ``warmup`` share of ``steps``, then linear decay to 0 (BERT's
    fine-tuning schedule; the text fine-tune and the text student's distillation use it)."""
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / (warmup * steps)) * max(0.0, 1 - s / steps))


@final
@dataclass(frozen=True)
class StepTotals:
    """Running sums over the optimiser steps of one epoch (so far)."""

    loss_sum: float   # sum over rows of the batch-mean loss
    correct: int      # rows whose logits' argmax is the label
    rows: int


def run_steps(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    sched,
    batches: Iterable[Batch],
    loss_fn: LossFn,
    clip_norm: Optional[float] = 1.0,
    on_step: Optional[Callable[[int, StepTotals], None]] = None,
) -> StepTotals:
    """The one optimiser-step loop every trainer shares (one epoch of ``batches``): ``loss_fn(model,
    batch)``, zeroed gradients, backward, gradient-norm clipping at ``clip_norm`` (None: none),
    optimiser and scheduler step; ``on_step(i, totals)`` after each step (progress). The caller
    owns the optimiser, the schedule, the batching and the mode (train / eval) of the model."""
    loss_sum, correct, total = 0.0, 0, 0
    for i, batch in enumerate(batches):
        out = loss_fn(model, batch)
        logits, loss = out.logits, out.loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        opt.step()
        sched.step()
        n = len(batch.index)
        loss_sum += loss.item() * n
        correct += int((logits.argmax(-1) == batch.y).sum())
        total += n
        if on_step is not None:
            on_step(i, StepTotals(loss_sum, correct, total))
    return StepTotals(loss_sum, correct, total)


def _augmenter(cfg: TrainConfig) -> Callable[[torch.Tensor], torch.Tensor]:
    """The batch transform of ``cfg``'s noise augmentation (identity without one); its own
    generator, seeded from ``cfg.seed``, so the batch order and dropout draws are unchanged."""
    if not cfg.augment_noise:
        return lambda x: x
    from ..data.augment import augment_batch

    rng = np.random.default_rng([int(cfg.seed), 7919])

    def augment(x: torch.Tensor) -> torch.Tensor:
        if not x.is_floating_point():
            raise ValueError(f"augment_noise needs float signal windows, got {x.dtype} (a token model cannot take it)")
        return torch.from_numpy(augment_batch(x.numpy(), cfg.augment_noise, cfg.augment_snr_db,
                                              cfg.augment_fraction, rng))

    return augment


def run_epochs(
    model: torch.nn.Module,
    x_train: np.ndarray,
    y_train: np.ndarray,
    cfg: TrainConfig,
    param_groups: Iterable,
    validate: Callable[[], Tuple[float, float]],
    loss_fn: LossFn = cross_entropy_loss,
    progress: bool = True,
    log: Optional[Callable[[str], None]] = None,
) -> TrainResult:
    """The loop every trainer shares: AdamW + one-cycle schedule, gradient clipping,
    ``loss_fn(model, batch)`` (cross-entropy by default) on batches with ``cfg``'s noise
    augmentation applied (:mod:`edgeuq.data.augment`; none by default), ``validate() -> (nll, acc)``
    after each epoch; keeps the weights of the epoch with the lowest validation NLL
    and stops after ``patience`` epochs without improvement. ``log`` gets one line
    per epoch; with ``progress`` and no ``log``, that line is printed when no
    progress bar is drawn (output is not a terminal)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    order_rng = np.random.default_rng(cfg.seed)
    opt = torch.optim.AdamW(param_groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = math.ceil(len(x_train) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps, pct_start=0.15)
    xt, yt = torch.from_numpy(np.ascontiguousarray(x_train)), torch.from_numpy(y_train.astype(np.int64))
    augment = _augmenter(cfg)
    best_state, best_nll, best_epoch, bad_epochs = None, math.inf, -1, 0
    history: List[EpochStats] = []
    stopped_early = False
    bars = _bars_wanted(progress)
    epoch_line = log if log is not None else (print if progress and not bars else None)
    for epoch in range(cfg.epochs):
        model.train()
        perm = torch.from_numpy(order_rng.permutation(len(xt)))
        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not bars, leave=False)

        def batches(perm=perm):
            for step in range(steps):
                idx = perm[step * cfg.batch_size : (step + 1) * cfg.batch_size]
                yield Batch(augment(xt[idx]), yt[idx], idx)

        def on_step(_i: int, t: StepTotals, bar=bar) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{t.loss_sum / t.rows:.3f}", acc=f"{t.correct / t.rows:.3f}")

        totals = run_steps(model, opt, sched, batches(), loss_fn, clip_norm=1.0, on_step=on_step)
        bar.close()
        val_nll, val_acc = validate()
        stats = EpochStats(epoch + 1, totals.loss_sum / totals.rows, totals.correct / totals.rows, val_nll, val_acc)
        history.append(stats)
        if epoch_line is not None:
            epoch_line(
                f"epoch {stats.epoch:>2}: train loss {stats.train_loss:.4f} acc {stats.train_acc:.3f} | "
                f"val nll {stats.val_nll:.4f} acc {stats.val_acc:.4f}"
            )
        if val_nll < best_nll - 1e-5:
            best_state, best_nll, best_epoch, bad_epochs = copy.deepcopy(model.state_dict()), val_nll, epoch + 1, 0
        else:
            bad_epochs += 1
            if bad_epochs >= cfg.patience:
                stopped_early = True
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return TrainResult(tuple(history), best_epoch, best_nll, stopped_early)


def deterministic_validation(model: nn.Module, x_val: np.ndarray, y_val: np.ndarray) -> Callable[[], Tuple[float, float]]:
    """``validate() -> (cross-entropy, accuracy)`` of the deterministic pass on the validation set."""
    yv = torch.from_numpy(y_val.astype(np.int64))

    def validate() -> Tuple[float, float]:
        val_logits = predict_logits(model, x_val)
        return float(F.cross_entropy(val_logits, yv)), float((val_logits.argmax(-1) == yv).float().mean())

    return validate
