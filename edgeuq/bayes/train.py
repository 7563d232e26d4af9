"""One training loop for every scheme: cross-entropy (+ KL for variational layers)."""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import numpy as np
import torch

from ..models import SignalTransformer
from ..models.variational import kl_divergence
from ..training import TrainConfig, TrainResult
from ..training.loop import check_dataset, run_epochs
from ..uq import nll
from .predict import predictive_probs, sample_logits

__all__ = ["fit_model", "uses_sampling"]


def uses_sampling(model: SignalTransformer) -> bool:
    """True when the model's prediction is a sampled predictive (MC dropout, VI, HSA,
    ensembles); False for deterministic models and an unfitted Laplace head."""
    if not model.noise_specs():
        return False
    return model.cfg.scheme != "laplace" or bool(model.head.fc2.fitted)


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
    check_dataset("training", x_train, y_train, model)
    check_dataset("validation", x_val, y_val, model)
    if kl_weight < 0:
        raise ValueError(f"kl_weight must be >= 0, got {kl_weight}")
    n_train = float(len(x_train))
    s_val = val_samples if uses_sampling(model) else None

    def validate() -> Tuple[float, float]:
        probs = predictive_probs(sample_logits(model, x_val, s_val, seed=cfg.seed))
        return nll(probs, y_val), float(np.mean(probs.argmax(-1) == y_val))

    extra = (lambda: kl_weight * kl_divergence(model) / n_train) if kl_weight else None
    return run_epochs(model, x_train, y_train, cfg, _param_groups(model, cfg.weight_decay), validate,
                      extra_loss=extra, progress=progress, log=log)
