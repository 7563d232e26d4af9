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
           "angular_resample", "estimate_shaft_hz", "order_track", "envelope_spectrum", "LANCZOS_A",
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


def _check_shape(x: np.ndarray, what: str, length: int, batch: str = "", rows: str = "",
                 items: str = "samples") -> np.ndarray:
    """``x`` as (batch, length): one row is promoted to a batch; an empty batch or a wrong row length
    is refused. The messages name the batch ``batch`` and its rows ``rows`` (of ``items``); by
    default ``what`` and ``what`` windows."""
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise InputError(f"{what} must have shape ({length},) or (batch, {length}), got {x.shape}")
    if x.shape[0] == 0:
        raise InputError(f"{batch or what} batch is empty: shape {x.shape}")
    if x.shape[1] != length:
        raise InputError(f"{rows or what + ' windows'} must have {length} {items}, got shape {x.shape}")
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
    x = _check_shape(x, "token ids", length, batch="token id", rows="token sequences", items="ids (pad or truncate)")
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
    if not flat.any():   # the usual case: no masked writes over the whole block
        return d / np.sqrt(var)
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


# -- order tracking (angular resampling by shaft speed) -------------------------------------------------
#
# Bearing fault frequencies are fixed multiples ("orders") of the shaft speed set by the geometry
# (BPFO = n/2 (1 - d/D cos phi) f_r, ...). Resampling a window from time to shaft angle, so that every
# revolution has ``samples_per_rev`` samples, maps an order-k component to exactly k cycles per
# revolution whatever the speed: a new load (1797 -> 1730 rpm) keeps its orders, a bearing of other
# geometry keeps its other orders. Constant speed within a window is assumed.

#: Half-width (taps each side) of the Lanczos windowed-sinc interpolator.
LANCZOS_A = 8
_SPEED_BLOCK = 256          # rows per block in the speed estimator (bounds the FFT working set)
_SPEED_GRID = 2e-4          # relative step of the candidate speed grid
_SPEED_ZERO_PAD = 8         # spectrum zero-padding factor of the speed estimator


def _lanczos(t: np.ndarray, a: int = LANCZOS_A) -> np.ndarray:
    out = np.sinc(t) * np.sinc(t / a)
    out[np.abs(t) >= a] = 0.0
    return out


def angular_resample(x: np.ndarray, fs: float, shaft_hz: Any, samples_per_rev: int) -> np.ndarray:
    """Resample (B, L) time windows at ``fs`` Hz to (B, L) windows sampled at ``samples_per_rev``
    samples per shaft revolution (float64), each from its own shaft speed ``shaft_hz`` (scalar or (B,)).

    Output sample ``j`` of a row is the signal at time ``j / (samples_per_rev * shaft_hz)`` after the
    window's start, interpolated with a Lanczos windowed sinc (``LANCZOS_A`` taps each side; taps beyond
    the window are dropped and the weights renormalised). The output covers ``L / samples_per_rev``
    revolutions, so every row needs ``shaft_hz >= fs / samples_per_rev`` (else InputError: the window
    is too short for that many revolutions); then the angular rate is at least ``fs``, i.e. this only
    interpolates and never aliases.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[None, :]
    b, n = x.shape
    p = int(samples_per_rev)
    if p < 1:
        raise InputError(f"samples_per_rev must be >= 1, got {samples_per_rev!r}")
    f = np.broadcast_to(np.asarray(shaft_hz, dtype=np.float64), (b,))
    if not np.all(np.isfinite(f)) or not np.all(f > 0):
        raise InputError(f"shaft speed must be positive and finite, got {f[~(np.isfinite(f) & (f > 0))][:3]} Hz")
    step = float(fs) / (p * f)  # input samples per output sample
    slow = step > 1.0 + 1e-9
    if slow.any():
        i = int(np.flatnonzero(slow)[0])
        raise InputError(f"window {i}: shaft speed {f[i] * 60:.6g} rpm is below the front end's minimum "
                         f"{60.0 * fs / p:.6g} rpm (fs / samples_per_rev): the window holds fewer than "
                         f"{n / p:.4g} revolutions")
    a = LANCZOS_A
    out = np.empty((b, n), dtype=np.float64)
    taps = np.arange(-a + 1, a + 1)
    j = np.arange(n, dtype=np.float64)
    for r in range(b):
        u = j * step[r]                                   # (n,) fractional input positions
        k0 = np.floor(u).astype(np.int64)
        idx = k0[:, None] + taps[None, :]                 # (n, 2a)
        w = _lanczos(u[:, None] - idx)
        inside = (idx >= 0) & (idx < n)
        w = np.where(inside, w, 0.0)
        vals = x[r][np.clip(idx, 0, n - 1)]
        out[r] = (w * vals).sum(axis=1) / w.sum(axis=1)
    return out


def estimate_shaft_hz(x: np.ndarray, fs: float, rpm_min: float, rpm_max: float,
                      harmonics: int = 8) -> np.ndarray:
    """Shaft speed (Hz) of each (B, L) window, searched in ``[rpm_min, rpm_max]``.

    A harmonic comb on the log-magnitude spectrum (Hann window, zero-padded ``_SPEED_ZERO_PAD`` times):
    the score of a candidate ``f`` is the mean over ``h = 1..H`` of the log magnitude at ``h f`` minus
    the mean of the two half-way points ``(h - 0.5) f`` and ``(h + 0.5) f``, so a sub-multiple ``f / 2``
    (which also hits every harmonic) and a multiple ``2 f`` (whose half-way points are harmonics) both
    score lower than the true speed, and a sloping spectrum (a sensor's rising response) cancels to
    first order instead of biasing the estimate upwards. Log magnitudes make the score scale-free (a strong bearing resonance does not
    outvote the shaft lines), and the best grid point is refined by a parabola through its neighbours.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[None, :]
    lo, hi = float(rpm_min) / 60.0, float(rpm_max) / 60.0
    if not (0 < lo < hi):
        raise InputError(f"speed range must satisfy 0 < rpm_min < rpm_max, got {rpm_min!r}, {rpm_max!r}")
    h = int(harmonics)
    if h < 1 or (h + 1) * hi >= fs / 2:
        raise InputError(f"harmonics ({harmonics!r}) times rpm_max must stay below the Nyquist rate {fs / 2:g} Hz")
    b, n = x.shape
    nfft = 1 << int(np.ceil(np.log2(n * _SPEED_ZERO_PAD)))
    df = fs / nfft
    grid = lo * np.exp(np.arange(0.0, np.log(hi / lo) + _SPEED_GRID, _SPEED_GRID))
    order = np.arange(1, h + 1, dtype=np.float64)
    on = (grid[:, None] * order[None, :]) / df                 # spectrum positions (bins) of the teeth
    off_lo = (grid[:, None] * (order[None, :] - 0.5)) / df
    off_hi = (grid[:, None] * (order[None, :] + 0.5)) / df
    win = np.hanning(n)

    def sample(spec: np.ndarray, pos: np.ndarray) -> np.ndarray:  # linear interpolation, spec (B, nbins)
        i0 = np.floor(pos).astype(np.int64)
        fr = pos - i0
        return spec[:, i0] * (1 - fr) + spec[:, i0 + 1] * fr

    out = np.empty(b, dtype=np.float64)
    for r0 in range(0, b, _SPEED_BLOCK):
        rows = x[r0:r0 + _SPEED_BLOCK]
        rows = (rows - rows.mean(axis=1, keepdims=True)) * win
        mag = np.abs(np.fft.rfft(rows, nfft, axis=1))
        floor = np.maximum(mag.max(axis=1, keepdims=True) * 1e-12, 1e-300)  # flat rows: a finite score
        spec = np.log(mag + floor)
        score = (sample(spec, on) - 0.5 * (sample(spec, off_lo) + sample(spec, off_hi))).mean(-1)  # (B, grid)
        best = np.argmax(score, axis=1)
        est = grid[best].copy()
        inner = (best > 0) & (best < len(grid) - 1)
        if inner.any():
            i = np.flatnonzero(inner)
            s0, s1, s2 = score[i, best[i] - 1], score[i, best[i]], score[i, best[i] + 1]
            den = s0 - 2 * s1 + s2
            delta = np.where(den < 0, 0.5 * (s0 - s2) / np.where(den < 0, den, -1.0), 0.0)
            est[i] = grid[best[i]] * np.exp(np.clip(delta, -0.5, 0.5) * _SPEED_GRID)
        out[r0:r0 + len(rows)] = est
    return out


def envelope_spectrum(x: np.ndarray) -> np.ndarray:
    """(B, L) windows -> (B, L) log envelope spectra: the magnitude of the analytic signal (FFT
    Hilbert transform), mean removed, Hann-windowed, its magnitude spectrum on ``L`` bins (FFT of
    length 2L - 2) divided by its mean, ``log1p``. For order-domain windows bin ``k`` is order
    ``k * samples_per_rev / (2L - 2)``: bearing fault orders and their shaft sidebands appear
    as lines there whatever the resonance they ring (which the envelope removes)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[None, :]
    b, n = x.shape
    spec = np.fft.fft(x - x.mean(axis=1, keepdims=True), axis=1)
    h = np.zeros(n)
    h[0] = 1.0
    if n % 2 == 0:
        h[n // 2] = 1.0
        h[1:n // 2] = 2.0
    else:
        h[1:(n + 1) // 2] = 2.0
    env = np.abs(np.fft.ifft(spec * h, axis=1))
    env = (env - env.mean(axis=1, keepdims=True)) * np.hanning(n)
    mag = np.abs(np.fft.rfft(env, 2 * n - 2, axis=1))                      # (B, n)
    mag = mag / np.maximum(mag.mean(axis=1, keepdims=True), 1e-300)
    return np.log1p(mag).astype(np.float32)


def order_track(x: np.ndarray, fs: float, samples_per_rev: int, rpm_min: float, rpm_max: float,
                harmonics: int = 8, rpm: Any = None) -> np.ndarray:
    """The order-tracking front end: (B, L) time windows -> (B, L) float32 windows at
    ``samples_per_rev`` samples per revolution (not yet normalised; :func:`normalize` follows).

    ``rpm`` (scalar or (B,)): the measured shaft speed; None estimates it per window with
    :func:`estimate_shaft_hz` in ``[rpm_min, rpm_max]``. The host loaders and the device runtime
    call this same function.
    """
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[None, :]
    if rpm is None:
        shaft = estimate_shaft_hz(x, fs, rpm_min, rpm_max, harmonics)
    else:
        shaft = np.asarray(rpm, dtype=np.float64) / 60.0
    return angular_resample(x, fs, shaft, samples_per_rev).astype(np.float32)
