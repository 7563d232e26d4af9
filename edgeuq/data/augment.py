"""Noise augmentation for robustness (declared in a recipe, recorded with what it trained).

``TrainConfig.augment_noise`` names the noise family added to a random ``augment_fraction`` of
each training batch, at a per-window signal-to-noise ratio drawn uniformly from
``augment_snr_db`` (dB), after which the window is z-scored again with the runtime's own
:func:`edgeuq_runtime.preprocess.zscore_windows` (as the evaluation's shifted copies are). The
distillation transfer set's ``pink_noise`` kind (:mod:`edgeuq.compress.transfer`) uses the same
noise. The families:

* ``pink``: Gaussian noise with power spectral density proportional to 1/f (a 1/sqrt(f)
  amplitude spectrum; the DC bin is zero), i.e. coloured, not white.

A robustness method must never be the evaluation's shift: the demo's noise-shift set is *white*
Gaussian noise at 0 dB (:func:`edgeuq.data.add_noise`), and the demo recipes use pink noise at
6-20 dB only (another family, and a level range that excludes 0 dB).
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from edgeuq_runtime.preprocess import zscore_windows

__all__ = ["NOISE_FAMILIES", "pink_noise", "add_noise_at_snr", "augment_batch"]


def pink_noise(shape: Tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise with a 1/f power spectrum along the last axis (float64, zero DC bin)."""
    n = int(shape[-1])
    spec = np.fft.rfft(rng.standard_normal(shape), axis=-1)
    k = np.arange(spec.shape[-1], dtype=np.float64)
    scale = np.zeros_like(k)
    scale[1:] = 1.0 / np.sqrt(k[1:])
    return np.fft.irfft(spec * scale, n=n, axis=-1)


#: name -> sampler(shape, rng); the names a recipe's ``augment_noise`` may give.
NOISE_FAMILIES = {"pink": pink_noise}


def add_noise_at_snr(x: np.ndarray, family: str, snr_db: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``x`` (N, L) plus noise of ``family`` scaled per row to ``snr_db`` (shape (N, 1) or scalar;
    signal power = the row's mean square). Not z-scored."""
    if family not in NOISE_FAMILIES:
        raise ValueError(f"noise family {family!r} is not known; known: {sorted(NOISE_FAMILIES)}")
    x = np.asarray(x, dtype=np.float64)
    noise = NOISE_FAMILIES[family](x.shape, rng)
    p_sig = np.mean(x * x, axis=-1, keepdims=True)
    p_noise = np.maximum(np.mean(noise * noise, axis=-1, keepdims=True), 1e-300)
    return x + noise * np.sqrt(p_sig / p_noise / 10.0 ** (np.asarray(snr_db, dtype=np.float64) / 10.0))


def augment_batch(x: np.ndarray, family: str, snr_db: Tuple[float, float], fraction: float,
                  rng: np.random.Generator) -> np.ndarray:
    """``x`` (B, L) with a random ``fraction`` of its rows replaced by ``zscore(row + noise)``, the
    noise of ``family`` at an SNR uniform in ``snr_db``. Returns a new array; ``x`` is kept."""
    if family not in NOISE_FAMILIES:
        raise ValueError(f"augment_noise {family!r} is not a known noise family; known: {sorted(NOISE_FAMILIES)}")
    x = np.asarray(x)
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"noise augmentation needs float signal windows of shape (B, L), got {x.shape} "
                         f"{x.dtype} (a token model cannot take augment_noise)")
    chosen = rng.random(x.shape[0]) < float(fraction)
    if not chosen.any():
        return x
    snr = rng.uniform(float(snr_db[0]), float(snr_db[1]), size=(int(chosen.sum()), 1))
    out = x.copy()
    out[chosen] = zscore_windows(add_noise_at_snr(x[chosen], family, snr, rng)).astype(x.dtype)
    return out
