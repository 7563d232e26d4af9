"""One training loop for every scheme: the scheme's loss of the batch, early stopping on validation."""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..models.scheme_slot import SCHEMES
from ..training.config import TrainConfig
from ..training.loop import LossFn, TrainResult, check_dataset, deterministic_validation, run_epochs
from ..uq import nll
from .predict import predictive_probs, sample_logits

__all__ = ["fit_model", "uses_sampling"]


def uses_sampling(model: nn.Module) -> bool:
    """True when the model's prediction is a sampled predictive (MC dropout, VI, HSA,
    ensembles, a fitted Laplace head); False for deterministic models and an unfitted Laplace head."""
    return SCHEMES.get(model.cfg.scheme).uses_sampling(model)


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list:
    """No weight decay on the parameters the scheme exempts (posterior scales: decay would
    inflate sigma); :meth:`edgeuq.schemes.base.Scheme.decay_exempt` decides."""
    scheme = SCHEMES.get(model.cfg.scheme)
    decay, free = [], []
    for name, p in model.named_parameters():
        (free if scheme.decay_exempt(name) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}] + ([{"params": free, "weight_decay": 0.0}] if free else [])


def fit_model(
    model: nn.Module,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    cfg: TrainConfig = TrainConfig(),
    kl_weight: float = 1.0,
    val_samples: int = 4,
    progress: bool = True,
    log: Optional[Callable[[str], None]] = None,
    loss_fn: Optional[LossFn] = None,
) -> TrainResult:
    """AdamW + one-cycle schedule, best-validation-NLL weights kept, early stopping.

    The loss is ``loss_fn`` or, by default, the scheme's loss
    (:meth:`edgeuq.schemes.base.Scheme.loss_fn`): the mean cross-entropy of a
    sampled forward pass (stochastic layers draw in training mode), plus
    ``kl_weight * KL(q || p) / N_train`` for variational layers (with
    ``kl_weight = 1`` the negative ELBO per training example). Validation NLL is
    that of the predictive mean over ``val_samples`` samples (fixed seed) for
    sampled schemes, of the deterministic pass otherwise; ``val_samples = 0``
    validates the deterministic pass with torch's cross-entropy
    (:func:`edgeuq.training.loop.deterministic_validation`): plain training of a deterministic network.
    """
    check_dataset("training", x_train, y_train, model)
    check_dataset("validation", x_val, y_val, model)
    if kl_weight < 0:
        raise ValueError(f"kl_weight must be >= 0, got {kl_weight}")
    if val_samples < 0:
        raise ValueError(f"val_samples must be >= 0, got {val_samples}")
    if loss_fn is None:
        loss_fn = SCHEMES.get(model.cfg.scheme).loss_fn(model, kl_weight, len(x_train))
    if val_samples == 0:
        validate = deterministic_validation(model, x_val, y_val)
    else:
        s_val = val_samples if uses_sampling(model) else None

        def validate() -> Tuple[float, float]:
            probs = predictive_probs(sample_logits(model, x_val, s_val, seed=cfg.seed))
            return nll(probs, y_val), float(np.mean(probs.argmax(-1) == y_val))

    return run_epochs(model, x_train, y_train, cfg, _param_groups(model, cfg.weight_decay), validate,
                      loss_fn=loss_fn, progress=progress, log=log)
