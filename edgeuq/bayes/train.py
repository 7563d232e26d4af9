"""One training loop for every scheme: cross-entropy (+ KL for variational layers)."""
from __future__ import annotations

import copy
import math
from typing import Callable, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..models import SignalTransformer
from ..models.variational import kl_divergence
from ..training import EpochStats, TrainConfig, TrainResult
from ..uq import nll
from .predict import predictive_probs, sample_logits

__all__ = ["fit_model", "uses_sampling"]


def uses_sampling(model: SignalTransformer) -> bool:
    """True when the model's prediction is a sampled predictive (MC dropout, VI, HSA,
    ensembles); False for deterministic models and an unfitted Laplace head."""
    if not model.noise_specs():
        return False
    return model.cfg.scheme != "laplace" or bool(model.head.fc2.fitted)


def _check(name: str, x: np.ndarray, y: np.ndarray, model: SignalTransformer) -> None:
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


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list:
    """No weight decay on posterior scales (``*_rho``): decay would inflate sigma."""
    decay, free = [], []
    for name, p in model.named_parameters():
        (free if name.endswith("_rho") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": free, "weight_decay": 0.0}]


def fit_model(
    model: SignalTransformer,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    cfg: TrainConfig = TrainConfig(),
    kl_weight: float = 1.0,
    val_samples: int = 4,
    progress: bool = True,
    log: Optional[Callable[[str], None]] = None,
) -> TrainResult:
    """AdamW + one-cycle schedule, best-validation-NLL weights kept, early stopping.

    The loss is the mean cross-entropy of a sampled forward pass (stochastic
    layers draw in training mode) plus ``kl_weight * KL(q || p) / N_train`` for
    variational layers: with ``kl_weight = 1`` this is the negative ELBO per
    training example. Validation NLL is that of the predictive mean over
    ``val_samples`` samples (fixed seed) for sampled schemes, of the
    deterministic pass otherwise.
    """
    _check("training", x_train, y_train, model)
    _check("validation", x_val, y_val, model)
    if kl_weight < 0:
        raise ValueError(f"kl_weight must be >= 0, got {kl_weight}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    order_rng = np.random.default_rng(cfg.seed)
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr)
    steps = math.ceil(len(x_train) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps, pct_start=0.15)
    xt, yt = torch.from_numpy(np.ascontiguousarray(x_train)), torch.from_numpy(y_train.astype(np.int64))
    n_train = float(len(xt))
    s_val = val_samples if uses_sampling(model) else None
    best_state, best_nll, best_epoch, bad = None, math.inf, -1, 0
    history: List[EpochStats] = []
    stopped = False
    for epoch in range(cfg.epochs):
        model.train()
        perm = torch.from_numpy(order_rng.permutation(len(xt)))
        total, correct, loss_sum = 0, 0, 0.0
        bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False)
        for step in bar:
            idx = perm[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            logits = model(xt[idx])
            loss = F.cross_entropy(logits, yt[idx])
            if kl_weight:
                loss = loss + kl_weight * kl_divergence(model) / n_train
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(-1) == yt[idx]).sum())
            total += len(idx)
            bar.set_postfix(loss=f"{loss_sum / total:.3f}", acc=f"{correct / total:.3f}")
        probs = predictive_probs(sample_logits(model, x_val, s_val, seed=cfg.seed))
        val_nll = nll(probs, y_val)
        val_acc = float(np.mean(probs.argmax(-1) == y_val))
        stats = EpochStats(epoch + 1, loss_sum / total, correct / total, val_nll, val_acc)
        history.append(stats)
        if log is not None:
            log(f"epoch {stats.epoch:>2}: train loss {stats.train_loss:.4f} acc {stats.train_acc:.3f} | "
                f"val nll {stats.val_nll:.4f} acc {stats.val_acc:.4f}")
        if val_nll < best_nll - 1e-5:
            best_state, best_nll, best_epoch, bad = copy.deepcopy(model.state_dict()), val_nll, epoch + 1, 0
        else:
            bad += 1
            if bad >= cfg.patience:
                stopped = True
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return TrainResult(tuple(history), best_epoch, best_nll, stopped)
