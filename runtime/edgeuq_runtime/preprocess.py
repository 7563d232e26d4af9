"""Input validation and per-window preprocessing (numpy only)."""
from __future__ import annotations

from typing import Any

import numpy as np

from .errors import InputError

__all__ = ["validate_windows", "validate_tokens", "zscore_windows", "NORMALIZATIONS", "normalize"]


def validate_windows(x: Any, length: int) -> np.ndarray:
    """Return ``x`` as a float32 array of shape (batch, length), or raise InputError.

    Accepts one window of shape (length,) or a batch (batch, length) of any real
    floating dtype. Integer, boolean, complex and object arrays are refused (a
    raw ADC integer stream must be scaled by the caller, on purpose).
    """
    if isinstance(x, (list, tuple)):
        try:
            x = np.asarray(x)
        except ValueError as exc:
            raise InputError(f"input is a ragged sequence, not a (batch, {length}) array: {exc}") from exc
    if not isinstance(x, np.ndarray):
        raise InputError(f"input must be a numpy array of shape (batch, {length}), got {type(x).__name__}")
    if not np.issubdtype(x.dtype, np.floating):
        raise InputError(
            f"input dtype must be a real floating type (float16/32/64), got {x.dtype}; "
            "convert or scale it explicitly"
        )
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise InputError(f"input must have shape ({length},) or (batch, {length}), got {x.shape}")
    if x.shape[0] == 0:
        raise InputError(f"input batch is empty: shape {x.shape}")
    if x.shape[1] != length:
        raise InputError(f"input windows must have {length} samples, got shape {x.shape}")
    finite = np.isfinite(x)
    if not finite.all():
        bad = np.argwhere(~finite)
        n_nan = int(np.isnan(x).sum())
        n_inf = int(np.isinf(x).sum())
        r, c = (int(v) for v in bad[0])
        raise InputError(
            f"input contains non-finite values ({n_nan} NaN, {n_inf} inf); first at window {r}, sample {c}"
        )
    return np.ascontiguousarray(x, dtype=np.float32)


def validate_tokens(x: Any, length: int, vocab_size: int) -> np.ndarray:
    """Return token ids ``x`` as an int64 array of shape (batch, length), or raise InputError.

    Accepts one sequence of shape (length,) or a batch (batch, length) of any
    integer dtype (signed or unsigned); every id must lie in ``[0, vocab_size)``.
    Floating, boolean and object arrays are refused: token ids are never rounded.
    """
    if isinstance(x, (list, tuple)):
        try:
            x = np.asarray(x)
        except ValueError as exc:
            raise InputError(f"token ids are a ragged sequence, not a (batch, {length}) array: {exc}") from exc
    if not isinstance(x, np.ndarray):
        raise InputError(f"token ids must be a numpy array of shape (batch, {length}), got {type(x).__name__}")
    if x.dtype == np.bool_ or not np.issubdtype(x.dtype, np.integer):
        raise InputError(f"token ids must have an integer dtype, got {x.dtype}; tokenize text with the bundle's "
                         "tokenizer (UncertaintyRuntime.tokenize)")
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise InputError(f"token ids must have shape ({length},) or (batch, {length}), got {x.shape}")
    if x.shape[0] == 0:
        raise InputError(f"token id batch is empty: shape {x.shape}")
    if x.shape[1] != length:
        raise InputError(f"token sequences must have {length} ids (pad or truncate), got shape {x.shape}")
    bad = (x < 0) | (x >= vocab_size)
    if bad.any():
        r, c = (int(v) for v in np.argwhere(bad)[0])
        raise InputError(f"token ids must lie in [0, {vocab_size}) (the vocabulary size); "
                         f"{int(bad.sum())} do not, first at sequence {r}, position {c}: {int(x[r, c])}")
    return np.ascontiguousarray(x, dtype=np.int64)


def zscore_windows(x: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """Per-window zero mean, unit variance along the last axis (idempotent)."""
    x = np.asarray(x, dtype=np.float32)
    mean = x.mean(axis=-1, keepdims=True)
    std = x.std(axis=-1, keepdims=True)
    return ((x - mean) / np.maximum(std, np.float32(eps))).astype(np.float32)


def _identity(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


NORMALIZATIONS = {"zscore": zscore_windows, "none": _identity}


def normalize(x: np.ndarray, method: str) -> np.ndarray:
    try:
        fn = NORMALIZATIONS[method]
    except KeyError:
        raise InputError(f"unknown normalization {method!r}; known: {sorted(NORMALIZATIONS)}") from None
    return fn(x)
