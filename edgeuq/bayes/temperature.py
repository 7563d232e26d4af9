"""Temperature scaling of a trained model of any scheme (fitted on validation data)."""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from ..models.transformer import DeployableModel
from ..uq.calibration import TemperatureFit, fit_temperature
from .predict import sample_logits
from .train import uses_sampling

__all__ = ["calibrate_temperature", "with_temperature"]


def with_temperature(model: DeployableModel, temperature: float) -> DeployableModel:
    """Set ``model.cfg.temperature`` (the head divides its logits by it; exported as a constant)."""
    model.cfg = dataclasses.replace(model.cfg, temperature=float(temperature))
    return model


def calibrate_temperature(model: DeployableModel, x_val: np.ndarray, y_val: np.ndarray, samples: int = 16,
                          seed: int = 0, logits: Optional[np.ndarray] = None) -> TemperatureFit:
    """Fit T on the validation predictive (S fixed draws) and install it in ``model``.

    ``logits`` (S, N, C) may be passed when already computed at temperature 1.
    """
    if model.cfg.temperature != 1.0:
        raise ValueError(f"model already has temperature {model.cfg.temperature}; calibrate from T = 1")
    if logits is None:
        logits = sample_logits(model, x_val, samples if uses_sampling(model) else None, seed=seed)
    fit = fit_temperature(logits, y_val)
    with_temperature(model, fit.temperature)
    return fit
