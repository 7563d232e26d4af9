"""Deep ensembles: M deterministic members trained independently (different seeds)."""
from __future__ import annotations

import dataclasses
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch

from ..models import ModelConfig, SignalTransformer
from ..models.ensemble import EnsembleTransformer, member_config
from ..training import TrainConfig, TrainResult
from .train import fit_model

__all__ = ["train_ensemble"]


def train_ensemble(
    cfg: ModelConfig,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    train_cfg: TrainConfig = TrainConfig(),
    progress: bool = True,
    log: Optional[Callable[[str], None]] = None,
    members: Optional[List[SignalTransformer]] = None,
) -> Tuple[EnsembleTransformer, Tuple[TrainResult, ...]]:
    """Train ``cfg.ensemble_members`` members (seed ``train_cfg.seed + m``: different
    initialisation and batch order) and assemble them. ``members`` may hold
    already trained members to reuse (e.g. cached); only the rest are trained."""
    if cfg.scheme != "ensemble":
        raise ValueError(f"train_ensemble needs scheme 'ensemble', got {cfg.scheme!r}")
    done = list(members or [])
    results = []
    for m in range(len(done), cfg.ensemble_members):
        if log is not None:
            log(f"ensemble member {m + 1}/{cfg.ensemble_members}")
        seed = train_cfg.seed + m
        torch.manual_seed(seed)
        member = SignalTransformer(member_config(cfg))
        results.append(fit_model(member, x_train, y_train, x_val, y_val, dataclasses.replace(train_cfg, seed=seed),
                                 kl_weight=0.0, progress=progress, log=log))
        done.append(member)
    return EnsembleTransformer.from_members(cfg, done[: cfg.ensemble_members]), tuple(results)
