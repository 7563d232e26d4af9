"""Input validation, per-window preprocessing and input-quality flags (numpy only).

Normalisation is exact for every finite input: each window is scaled by its own
largest magnitude and centred in float64, so huge values (1e38 in float32, 1e300
in float64) never overflow and a large DC offset (a raw reading around 1e7) never
swamps the signal. Only the result is rounded to float32.

A window that carries no usable signal is *flagged*, never diagnosed silently:

* ``"flat"``: every sample has the same value (a dead or disconnected sensor);
* ``"clipped"``: at least ``CLIP_FRACTION`` of the samples (and at least
  ``CLIP_MIN_SAMPLES``) sit exactly at the window's maximum or exactly at its
  minimum, in runs of at least ``CLIP_MIN_SAMPLES`` consecutive samples (a
  saturated sensor or ADC).

See :func:`input_quality`; :class:`~edgeuq_runtime.uncertainty.UncertaintyResult`
carries the flags per row (``input_flags``).
"""
from __future__ import annotations

from typing import Any, Tuple

import numpy as np

from .errors import InputError

__all__ = ["validate_windows", "validate_signal", "validate_tokens", "zscore_windows", "NORMALIZATIONS",
           "normalize", "input_quality", "FLAT", "CLIPPED", "CLIP_FRACTION", "CLIP_MIN_SAMPLES"]

FLAT = "flat"
CLIPPED = "clipped"
CLIP_FRACTION = 0.05
CLIP_MIN_SAMPLES = 3
_BLOCK = 1024  # rows normalised at a time (bounds the float64 working copies)
_F32_MAX = float(np.finfo(np.float32).max)


def _as_array(x: Any, what: str, length: int) -> np.ndarray:
    if isinstance(x, (list, tuple)):
        try:
            x = np.asarray(x)
        except (ValueError, TypeError, OverflowError) as exc:
            raise InputError(f"{what} is a ragged or mixed sequence, not a (batch, {length}) array: "
                             f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if isinstance(x, np.ma.MaskedArray):
        mask = np.ma.getmaskarray(x)
        if mask.any():
            r = np.argwhere(mask)[0].tolist()
            raise InputError(f"{what} is a masked array with {int(mask.sum())} masked values (first at index "
                             f"{r}); fill or drop them before predicting")
        x = np.asarray(x.data)
    elif isinstance(x, np.ndarray) and type(x) is not np.ndarray:
        x = np.asarray(x)  # ndarray subclasses (np.matrix, memmap, ...) as plain arrays
    if not isinstance(x, np.ndarray):
        raise InputError(f"{what} must be a numpy array of shape (batch, {length}), got {type(x).__name__}")
    return x


def _check_shape(x: np.ndarray, what: str, length: int) -> np.ndarray:
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise InputError(f"{what} must have shape ({length},) or (batch, {length}), got {x.shape}")
    if x.shape[0] == 0:
        raise InputError(f"{what} batch is empty: shape {x.shape}")
    if x.shape[1] != length:
        raise InputError(f"{what} windows must have {length} samples, got shape {x.shape}")
    return x


def validate_signal(x: Any, length: int) -> np.ndarray:
    """Return ``x`` as a (batch, length) float32 or float64 array (its own precision
    kept, no rounding yet), or raise InputError.

    Accepts one window of shape (length,) or a batch (batch, length) of any real
    floating dtype. Integer, boolean, complex and object arrays are refused (a raw
    ADC integer stream must be scaled by the caller, on purpose); so are NaN/inf,
    masked values, and extended-precision values beyond the float64 range.
    """
    x = _as_array(x, "input", length)
    if not np.issubdtype(x.dtype, np.floating):
        raise InputError(
            f"input dtype must be a real floating type (float16/32/64), got {x.dtype}; "
            "convert or scale it explicitly"
        )
    x = _check_shape(x, "input", length)
    with np.errstate(all="ignore"):
        finite = np.isfinite(x)
    if not finite.all():
        bad = np.argwhere(~finite)
        n_nan = int(np.isnan(x).sum())
        n_inf = int(np.isinf(x).sum())
        r, c = (int(v) for v in bad[0])
        raise InputError(
            f"input contains non-finite values ({n_nan} NaN, {n_inf} inf); first at window {r}, sample {c}"
        )
    if x.dtype == np.float32 or x.dtype == np.float64:
        return x
    if x.dtype.itemsize < 4:  # float16: exactly representable in float32
        return x.astype(np.float32)
    # extended precision (np.longdouble): must fit float64 to be processed at all
    with np.errstate(all="ignore"):
        x64 = x.astype(np.float64)
        bad = ~np.isfinite(x64) | ((x != 0) & (x64 == 0))
    if bad.any():
        r, c = (int(v) for v in np.argwhere(bad)[0])
        raise InputError(f"input value at window {r}, sample {c} is not representable as float64 "
                         f"({x.dtype} beyond the float64 range); scale the input")
    return x64


def validate_windows(x: Any, length: int) -> np.ndarray:
    """Return ``x`` as a float32 array of shape (batch, length), or raise InputError.

    As :func:`validate_signal`, and every value must also be representable in
    float32 (magnitude <= 3.4e38) since it is passed to the graph unchanged.
    """
    x = validate_signal(x, length)
    if x.dtype != np.float32:
        big = np.abs(x) > _F32_MAX
        if big.any():
            r, c = (int(v) for v in np.argwhere(big)[0])
            raise InputError(f"input value {float(x[r, c])!r} at window {r}, sample {c} is not representable "
                             "as float32 (|x| > 3.4e38); scale the input")
    return np.ascontiguousarray(x, dtype=np.float32)


def validate_tokens(x: Any, length: int, vocab_size: int) -> np.ndarray:
    """Return token ids ``x`` as an int64 array of shape (batch, length), or raise InputError.

    Accepts one sequence of shape (length,) or a batch (batch, length) of any
    integer dtype (signed or unsigned); every id must lie in ``[0, vocab_size)``.
    Floating, boolean and object arrays are refused: token ids are never rounded.
    """
    x = _as_array(x, "token ids", length)
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


def _pow2_scale(a: np.ndarray) -> np.ndarray:
    """The exponent ``e`` with ``2**(e-1) <= a < 2**e`` per entry (0 for a == 0): dividing
    by ``2**e`` is exact (no rounding) and leaves magnitudes in (0.5, 1]."""
    _, e = np.frexp(a)
    return e


def _zscore_block_narrow(x: np.ndarray) -> np.ndarray:
    """float16/float32 rows in plain float64: cannot overflow (|x| < 3.5e38, squares < 1.2e77) or
    underflow to zero (deviations >= 1.4e-45, squares >= 2e-90), and the float64 mean errs by at most
    2**-52 of the row's magnitude while a non-constant float32 row spreads over at least 2**-24 of
    it: the result is exact to well below float32 rounding."""
    y = np.asarray(x, dtype=np.float64)
    d = y - y.mean(axis=-1, keepdims=True)
    var = np.mean(d * d, axis=-1, keepdims=True)
    flat = (y.max(axis=-1, keepdims=True) == y.min(axis=-1, keepdims=True))
    var[flat] = 1.0
    out = d / np.sqrt(var)
    out[np.broadcast_to(flat, out.shape)] = 0.0
    return out


def _zscore_block(x: np.ndarray) -> np.ndarray:
    """Per-row z-score of a finite 2-D block in float64; flat rows become 0.

    Each row is scaled by a power of two (exact) so nothing can overflow, centred
    twice (the second pass removes what rounding the first mean left: for rows
    whose spread is tiny next to their offset, ``y - mean`` is exact by
    Sterbenz' lemma), rescaled by a power of two and divided by its standard
    deviation. Error: a few float64 ulps relative to the row's spread.
    """
    if x.dtype.itemsize <= 4:
        return _zscore_block_narrow(x)
    y = np.asarray(x, dtype=np.float64)
    y = np.ldexp(y, -_pow2_scale(np.max(np.abs(y), axis=-1, keepdims=True)))
    d = y - y.mean(axis=-1, keepdims=True)
    spread = np.max(np.abs(d), axis=-1, keepdims=True)
    flat = spread == 0
    d = np.ldexp(d, -_pow2_scale(spread))
    d = d - d.mean(axis=-1, keepdims=True)
    std = np.sqrt(np.mean(d * d, axis=-1, keepdims=True))
    std[flat | (std == 0)] = 1.0
    out = d / std
    out[np.broadcast_to(flat, out.shape)] = 0.0
    return out


def zscore_windows(x: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """Per-window zero mean, unit variance along the last axis, as float32.

    Exact for every finite input (computed in float64 after scaling each window
    by its largest magnitude; see the module docstring). A constant window maps
    to all zeros (and is flagged ``"flat"`` by :func:`input_quality`). ``eps`` is
    kept for backward compatibility and unused: no window is divided by a floor.
    """
    x = np.asarray(x)
    if x.ndim == 0:
        raise InputError("zscore_windows needs at least one axis")
    with np.errstate(all="ignore"):
        if not np.isfinite(x).all():
            raise InputError("zscore_windows: input contains NaN or inf")
    shape = x.shape
    rows = x.reshape(-1, shape[-1]) if x.size else x.reshape(0, shape[-1])
    if rows.dtype.itemsize <= 4 and rows.shape[0] <= _BLOCK:  # the common case: no scaling needed
        return _zscore_block_narrow(rows).astype(np.float32).reshape(shape)
    out = np.empty(rows.shape, dtype=np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        try:
            for r0 in range(0, rows.shape[0], _BLOCK):
                out[r0:r0 + _BLOCK] = _zscore_block(rows[r0:r0 + _BLOCK])
        except FloatingPointError as exc:  # cannot happen for finite float64 input; never silent
            raise InputError(f"input cannot be normalised exactly: {exc}") from None
    return out.reshape(shape)


def _identity(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype != np.float32:
        with np.errstate(all="ignore"):
            big = np.abs(x) > _F32_MAX
        if big.any():
            raise InputError("input values beyond the float32 range (|x| > 3.4e38) with normalization 'none'; "
                             "scale the input")
    return np.asarray(x, dtype=np.float32)


NORMALIZATIONS = {"zscore": zscore_windows, "none": _identity}


def normalize(x: np.ndarray, method: str) -> np.ndarray:
    try:
        fn = NORMALIZATIONS[method]
    except KeyError:
        raise InputError(f"unknown normalization {method!r}; known: {sorted(NORMALIZATIONS)}") from None
    return fn(x)


def _longest_run(mask: np.ndarray) -> np.ndarray:
    """Per row, the length of the longest run of True in a 2-D boolean array."""
    b, n = mask.shape
    padded = np.zeros((b, n + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    edges = np.diff(padded, axis=1)
    out = np.zeros(b, dtype=np.int64)
    for r in np.flatnonzero(mask.any(axis=1)):
        starts = np.flatnonzero(edges[r] == 1)
        ends = np.flatnonzero(edges[r] == -1)
        out[r] = int((ends - starts).max())
    return out


def input_quality(x: np.ndarray) -> Tuple[str, ...]:
    """One flag per window of a validated (batch, length) array: ``""`` (usable),
    ``"flat"`` or ``"clipped"`` (see the module docstring)."""
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[None, :]
    lo = x.min(axis=-1, keepdims=True)
    hi = x.max(axis=-1, keepdims=True)
    flat = (lo == hi)[:, 0]
    n = x.shape[-1]
    need = max(CLIP_MIN_SAMPLES, int(np.ceil(CLIP_FRACTION * n)))
    flags = []
    at_hi, at_lo = x == hi, x == lo
    count_hi, count_lo = at_hi.sum(-1), at_lo.sum(-1)
    candidates = (count_hi >= need) | (count_lo >= need)
    run_hi = np.zeros(x.shape[0], np.int64)
    run_lo = np.zeros(x.shape[0], np.int64)
    if candidates.any():
        idx = np.flatnonzero(candidates)
        run_hi[idx] = _longest_run(at_hi[idx])
        run_lo[idx] = _longest_run(at_lo[idx])
    clipped = ((count_hi >= need) & (run_hi >= CLIP_MIN_SAMPLES)) | ((count_lo >= need) & (run_lo >= CLIP_MIN_SAMPLES))
    for i in range(x.shape[0]):
        flags.append(FLAT if flat[i] else CLIPPED if clipped[i] else "")
    return tuple(flags)
