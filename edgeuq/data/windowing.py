"""Windowing, resampling, leakage-free splits and covariate-shift noise.

Split design
------------
Overlapping windows cut from one recording are strongly correlated, so a random
window-level split leaks test information into training. Both split functions
here therefore cut every record into *contiguous time segments before
windowing*; a window never crosses a segment boundary, so windows of different
splits never share a sample.

* :func:`split_in_domain` -- every record contributes to all three splits: its
  first ``fractions[0]`` of samples go to train, the next ``fractions[1]`` to
  val and the last ``fractions[2]`` to test (chronological order, as in
  deployment: the model is evaluated on data recorded after its training data).
* :func:`split_by_load` -- leave-load(s)-out domain shift: test holds every
  window of every record whose ``meta["load_hp"]`` is in ``test_loads``; the
  other records are split in time into train (first ``1 - val_fraction``) and
  val (last ``val_fraction``), so model selection never sees a test load.

Window metadata
---------------
Every window carries ``record`` (the record id, str), ``label`` (the record's
label string, ``""`` when None), ``start`` (offset of the window's first
sample in the record's signal *at the dataset rate*, int64), ``load_hp`` and
``severity`` (float64, ``NaN`` when the record's meta lacks them).
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np
from scipy.signal import resample_poly

from edgeuq_runtime.front_end import OrderFrontEnd
from edgeuq_runtime.preprocess import zscore_windows

from ._dataset import BEARING_CLASSES, SignalRecord, Splits, WindowDataset
from ._errors import DataError
from edgeuq_runtime.errors import ManifestError

__all__ = [
    "sliding_windows",
    "resample",
    "resample_record",
    "window_records",
    "split_in_domain",
    "split_by_load",
    "add_noise",
    "front_end_from_recipe",
    "apply_record_front_end",
]

#: ``[data]`` keys of a recipe that configure the front end (see :func:`front_end_from_recipe`).
FRONT_END_KEYS = ("front_end", "front_end_rpm", "front_end_harmonics")


def front_end_from_recipe(data: Mapping[str, Any]) -> Optional[OrderFrontEnd]:
    """The recipe's front end: ``[data] front_end = "order"`` or ``"order_envelope"`` (default ``"none"``) with
    ``front_end_rpm = [min, max]`` (required with "order": the speed range) and optionally
    ``front_end_harmonics`` (16); samples per revolution = floor(60 fs / rpm_min). Strict: any
    other ``front_end*`` key, or options without ``front_end = "order"``, is refused."""
    keys = {k for k in data if str(k).startswith("front_end")}
    unknown = sorted(keys - set(FRONT_END_KEYS))
    if unknown:
        raise DataError(f"[data] {unknown[0]}: unknown front-end key (allowed: {', '.join(FRONT_END_KEYS)})")
    kind = data.get("front_end", "none")
    if kind not in ("none", "order", "order_envelope"):
        raise DataError(f"[data] front_end must be \"none\", \"order\" or \"order_envelope\", got {kind!r}")
    if kind == "none":
        if keys - {"front_end"}:
            raise DataError(f"[data] {sorted(keys - {'front_end'})[0]} is set but front_end is \"none\"")
        return None
    rng = data.get("front_end_rpm")
    if not isinstance(rng, (list, tuple)) or len(rng) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in rng):
        raise DataError(f"[data] front_end_rpm must be [rpm_min, rpm_max] (numbers), got {rng!r}")
    harmonics = data.get("front_end_harmonics", 16)
    try:
        spec = OrderFrontEnd.for_rate(float(data["fs_hz"]), float(rng[0]), float(rng[1]), harmonics, kind)
        spec.check_rate(float(data["fs_hz"]))
    except ManifestError as exc:
        raise DataError(f"[data] front end: {exc}") from None
    return spec


def apply_record_front_end(windows: np.ndarray, record: SignalRecord, fs: float,
                           front_end: Optional[OrderFrontEnd]) -> np.ndarray:
    """Raw windows of ``record`` through the front end (the runtime's own function): the record's
    measured ``meta["rpm"]`` when it has one, else the speed estimated per window."""
    if front_end is None:
        return windows
    rpm = record.meta.get("rpm")
    return front_end.apply(windows, fs, rpm=None if rpm is None else float(rpm))


def _check_window_hop(window: int, hop: int) -> tuple[int, int]:
    if isinstance(window, bool) or int(window) != window or window <= 0:
        raise DataError(f"window must be a positive integer, got {window!r}")
    if isinstance(hop, bool) or int(hop) != hop or hop <= 0:
        raise DataError(f"hop must be a positive integer, got {hop!r}")
    return int(window), int(hop)


def sliding_windows(signal: np.ndarray, window: int, hop: int) -> np.ndarray:
    """Cut a 1-D signal into overlapping fixed-length windows.

    Parameters
    ----------
    signal : numpy.ndarray
        1-D signal of length ``T >= window``.
    window : int
        Window length in samples (> 0).
    hop : int
        Step between window starts in samples (> 0). Trailing samples that do
        not fill a whole window are dropped.

    Returns
    -------
    numpy.ndarray
        ``float32`` array of shape ``(1 + (T - window) // hop, window)``; window
        ``i`` starts at sample ``i * hop``.
    """
    window, hop = _check_window_hop(window, hop)
    sig = np.asarray(signal)
    if sig.ndim != 1:
        raise DataError(f"sliding_windows needs a 1-D signal, got shape {sig.shape}")
    if sig.shape[0] < window:
        raise DataError(f"signal of {sig.shape[0]} samples is shorter than the window of {window} samples")
    view = np.lib.stride_tricks.sliding_window_view(sig, window)[::hop]
    return np.ascontiguousarray(view, dtype=np.float32)


def _ratio(fs_from: float, fs_to: float) -> Fraction:
    for name, value in (("fs_from", fs_from), ("fs_to", fs_to)):
        if not (isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(value) and value > 0):
            raise DataError(f"resample: {name} must be a positive finite rate in Hz, got {value!r}")
    ratio = Fraction(float(fs_to) / float(fs_from)).limit_denominator(1000)
    if ratio == 0:
        raise DataError(f"resample: ratio {fs_to}/{fs_from} is too small to represent with denominator <= 1000")
    return ratio


def resample(signal: np.ndarray, fs_from: float, fs_to: float) -> np.ndarray:
    """Resample a 1-D signal with a polyphase anti-aliasing FIR filter.

    The rate ratio ``fs_to / fs_from`` is approximated by ``up / down`` with
    ``fractions.Fraction(...).limit_denominator(1000)`` and applied with
    :func:`scipy.signal.resample_poly` (Kaiser-windowed FIR low-pass at the
    lower Nyquist frequency, so downsampling does not alias).

    Parameters
    ----------
    signal : numpy.ndarray
        1-D signal.
    fs_from, fs_to : float
        Source and target sampling rates in Hz.

    Returns
    -------
    numpy.ndarray
        ``float32`` signal of length ``ceil(T * up / down)``; a ``float32`` copy
        of the input when the rates are equal.
    """
    sig = np.asarray(signal)
    if sig.ndim != 1:
        raise DataError(f"resample needs a 1-D signal, got shape {sig.shape}")
    ratio = _ratio(fs_from, fs_to)
    if ratio == 1:
        return np.array(sig, dtype=np.float32)
    out = resample_poly(sig.astype(np.float64), ratio.numerator, ratio.denominator)
    return np.ascontiguousarray(out, dtype=np.float32)


def resample_record(record: SignalRecord, target_fs: float | None) -> SignalRecord:
    """Return ``record`` at ``target_fs`` (itself when ``None`` or equal).

    The original rate is kept in ``meta["fs_original"]`` (unless already set).
    """
    if target_fs is None or float(target_fs) == record.fs:
        return record
    meta = dict(record.meta)
    meta.setdefault("fs_original", record.fs)
    return SignalRecord(
        signal=resample(record.signal, record.fs, float(target_fs)),
        fs=float(target_fs),
        label=record.label,
        meta=meta,
    )


def _meta_float(record: SignalRecord, key: str) -> float:
    value = record.meta.get(key)
    if value is None:
        return float("nan")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DataError(f"{record.record_id}: meta[{key!r}] must be a number, got {value!r}") from None


def _label_index(record: SignalRecord, class_names: tuple[str, ...], allow_unknown: bool) -> int:
    if record.label is None:
        return -1
    try:
        return class_names.index(record.label)
    except ValueError:
        if allow_unknown:
            return -1
        raise DataError(
            f"{record.record_id}: label {record.label!r} is not one of the class names {class_names}; "
            "translate it with a label map (e.g. InnerRace=inner_race) or keep it unlabelled"
        ) from None


def _prepare(
    records: Iterable[SignalRecord], target_fs: float | None
) -> tuple[list[SignalRecord], float]:
    recs = list(records)
    if not recs:
        raise DataError("no records given")
    for i, r in enumerate(recs):
        if not isinstance(r, SignalRecord):
            raise DataError(f"records[{i}] is a {type(r).__name__}, not a SignalRecord")
    recs = [resample_record(r, target_fs) for r in recs]
    rates = sorted({r.fs for r in recs})
    if len(rates) > 1:
        raise DataError(
            f"records have different sampling rates {rates} Hz; pass target_fs to resample them to one rate"
        )
    return recs, rates[0]


def _window_segments(
    segments: Sequence[tuple[SignalRecord, int, int]],
    window: int,
    hop: int,
    class_names: tuple[str, ...],
    fs: float,
    normalize: bool,
    allow_unknown: bool,
    front_end: Optional[OrderFrontEnd] = None,
) -> WindowDataset:
    """Window ``signal[lo:hi]`` of each (record, lo, hi); starts are record offsets."""
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    meta: dict[str, list[np.ndarray]] = {k: [] for k in ("record", "label", "start", "load_hp", "severity")}
    for rec, lo, hi in segments:
        if hi - lo < window:
            raise DataError(
                f"{rec.record_id}: segment [{lo}, {hi}) has {hi - lo} samples, shorter than the window "
                f"of {window}; use a shorter window, longer records or other split fractions"
            )
        w = apply_record_front_end(sliding_windows(rec.signal[lo:hi], window, hop), rec, fs, front_end)
        n = w.shape[0]
        xs.append(w)
        ys.append(np.full(n, _label_index(rec, class_names, allow_unknown), dtype=np.int64))
        meta["record"].append(np.full(n, rec.record_id))
        meta["label"].append(np.full(n, rec.label if rec.label is not None else ""))
        meta["start"].append(lo + hop * np.arange(n, dtype=np.int64))
        meta["load_hp"].append(np.full(n, _meta_float(rec, "load_hp")))
        meta["severity"].append(np.full(n, _meta_float(rec, "severity")))
    if xs:
        x = np.concatenate(xs, axis=0)
        if normalize:
            x = zscore_windows(x)
        return WindowDataset(
            x=x,
            y=np.concatenate(ys),
            class_names=class_names,
            fs=fs,
            meta={k: np.concatenate(v) for k, v in meta.items()},
        )
    return WindowDataset(
        x=np.zeros((0, window), np.float32),
        y=np.zeros(0, np.int64),
        class_names=class_names,
        fs=fs,
        meta={
            "record": np.zeros(0, dtype=str),
            "label": np.zeros(0, dtype=str),
            "start": np.zeros(0, np.int64),
            "load_hp": np.zeros(0),
            "severity": np.zeros(0),
        },
    )


def _class_tuple(class_names: Sequence[str]) -> tuple[str, ...]:
    if isinstance(class_names, str):
        raise DataError(f"class_names must be a sequence of names, got the string {class_names!r}")
    names = tuple(class_names)
    if not names:
        raise DataError("class_names is empty")
    return names


def window_records(
    records: Iterable[SignalRecord],
    window: int,
    hop: int,
    class_names: Sequence[str] = BEARING_CLASSES,
    normalize: bool = True,
    target_fs: float | None = None,
    allow_unknown: bool = False,
    front_end: Optional[OrderFrontEnd] = None,
) -> WindowDataset:
    """Cut whole records into windows.

    Parameters
    ----------
    records : iterable of SignalRecord
        Recordings; all at one rate unless ``target_fs`` is given.
    window, hop : int
        Window length and step in samples (at the dataset rate).
    class_names : sequence of str
        Label order; ``record.label`` is mapped to its index. ``label=None``
        maps to ``-1``.
    normalize : bool
        Z-score every window (zero mean, unit variance) with
        :func:`edgeuq_runtime.preprocess.zscore_windows`, the same function the
        runtime applies on the device.
    target_fs : float, optional
        Resample every record to this rate first (anti-aliased).
    allow_unknown : bool
        Map labels not in ``class_names`` to ``-1`` instead of raising.
    front_end : OrderFrontEnd, optional
        Order tracking applied to every raw window before the z-score, with the
        runtime's own function (:func:`apply_record_front_end`: the record's
        ``meta["rpm"]``, else the speed estimated per window).

    Returns
    -------
    WindowDataset
        With meta keys ``record``, ``label``, ``start``, ``load_hp``, ``severity``.
    """
    return _windowed(records, window, hop, class_names, normalize, target_fs, allow_unknown, front_end,
                     lambda recs: {"all": [(r, 0, len(r)) for r in recs]})["all"]


def _windowed(records, window, hop, class_names, normalize, target_fs, allow_unknown, front_end,
              cut: Callable[[list], dict]) -> dict:
    """What every windowing entry point does: check the window, hop and class names, bring the records
    to one rate, ``cut(records) -> {part: [(record, start, stop), ...]}``, and window each part."""
    window, hop = _check_window_hop(window, hop)
    names = _class_tuple(class_names)
    recs, fs = _prepare(records, target_fs)
    return {k: _window_segments(v, window, hop, names, fs, normalize, allow_unknown, front_end)
            for k, v in cut(recs).items()}


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    fr = tuple(float(f) for f in fractions)
    if len(fr) != 3:
        raise DataError(f"fractions must be (train, val, test), got {fractions!r}")
    if any(not math.isfinite(f) or f <= 0 for f in fr):
        raise DataError(f"fractions must all be positive, got {fractions!r}")
    if not abs(sum(fr) - 1.0) <= 1e-6:  # NaN-safe
        raise DataError(f"fractions must sum to 1, got {fractions!r} (sum {sum(fr):g})")
    return fr  # type: ignore[return-value]


def split_in_domain(
    records: Iterable[SignalRecord],
    window: int,
    hop: int,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    class_names: Sequence[str] = BEARING_CLASSES,
    normalize: bool = True,
    target_fs: float | None = None,
    allow_unknown: bool = False,
    front_end: Optional[OrderFrontEnd] = None,
) -> Splits:
    """Time-disjoint in-domain train/val/test split.

    Each record's signal is cut into three contiguous segments, in time order
    train | val | test, with sizes ``fractions`` of its length, and each segment
    is windowed on its own, so no window straddles two splits. Every record
    (hence every class, load and severity present) appears in every split.

    Parameters
    ----------
    records : iterable of SignalRecord
    window, hop : int
        Window length and step in samples.
    fractions : (float, float, float)
        Positive train/val/test fractions summing to 1.
    class_names, normalize, target_fs, allow_unknown
        As in :func:`window_records`.

    Returns
    -------
    Splits
        ``meta["start"]`` is the window offset in the whole record, so windows
        of different splits of one record occupy disjoint sample ranges.
    """
    f_train, f_val, _ = _check_fractions(fractions)

    def cut(recs: list) -> dict:
        parts: dict[str, list[tuple[SignalRecord, int, int]]] = {"train": [], "val": [], "test": []}
        for r in recs:
            n = len(r)
            b1 = int(round(f_train * n))
            b2 = int(round((f_train + f_val) * n))
            parts["train"].append((r, 0, b1))
            parts["val"].append((r, b1, b2))
            parts["test"].append((r, b2, n))
        return parts

    return Splits(**_windowed(records, window, hop, class_names, normalize, target_fs, allow_unknown, front_end, cut))


def split_by_load(
    records: Iterable[SignalRecord],
    test_loads: Sequence[float],
    window: int,
    hop: int,
    val_fraction: float = 0.15,
    class_names: Sequence[str] = BEARING_CLASSES,
    normalize: bool = True,
    target_fs: float | None = None,
    allow_unknown: bool = False,
    front_end: Optional[OrderFrontEnd] = None,
) -> Splits:
    """Leave-load(s)-out split for operating-condition shift.

    Test holds all windows of the records whose ``meta["load_hp"]`` is in
    ``test_loads``. Each remaining record is cut in time into a train segment
    (first ``1 - val_fraction`` of its samples) and a val segment (the rest),
    windowed separately, so train and val windows never overlap and val never
    contains a test load.

    Parameters
    ----------
    records : iterable of SignalRecord
        Every record must have a numeric ``meta["load_hp"]``.
    test_loads : sequence of float
        Motor loads (hp) held out for test.
    window, hop : int
        Window length and step in samples.
    val_fraction : float
        Fraction in (0, 1) of each training-load record kept for validation.
    class_names, normalize, target_fs, allow_unknown
        As in :func:`window_records`.

    Returns
    -------
    Splits

    Notes
    -----
    A class recorded only at a held-out load (e.g. CWRU's normal baseline,
    which exists at 0 hp only) is absent from train; check
    ``splits.train.class_counts()``.
    """
    vf = float(val_fraction)
    if not (0.0 < vf < 1.0):
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    held = {float(v) for v in np.atleast_1d(np.asarray(test_loads, dtype=float))}
    if not held:
        raise DataError("test_loads is empty")

    def cut(recs: list) -> dict:
        parts: dict[str, list[tuple[SignalRecord, int, int]]] = {"train": [], "val": [], "test": []}
        loads_seen = set()
        for r in recs:
            load = _meta_float(r, "load_hp")
            if math.isnan(load):
                raise DataError(f"{r.record_id}: split_by_load needs meta['load_hp'], which is missing")
            loads_seen.add(load)
            n = len(r)
            if load in held:
                parts["test"].append((r, 0, n))
            else:
                b = int(round((1.0 - vf) * n))
                parts["train"].append((r, 0, b))
                parts["val"].append((r, b, n))
        if not parts["test"]:
            raise DataError(f"no record has a load in test_loads {sorted(held)}; loads present: {sorted(loads_seen)}")
        if not parts["train"]:
            raise DataError(f"every record's load is in test_loads {sorted(held)}; nothing left to train on")
        return parts

    return Splits(**_windowed(records, window, hop, class_names, normalize, target_fs, allow_unknown, front_end, cut))


def add_noise(
    ds: WindowDataset,
    snr_db: float,
    seed: int | np.random.Generator | None = 0,
    normalize: bool = True,
) -> WindowDataset:
    """Add white Gaussian noise at a given signal-to-noise ratio per window.

    For each window ``w`` the noise standard deviation is
    ``sqrt(mean(w**2) / 10**(snr_db / 10))``, so every window gets the same
    SNR regardless of its own power (a covariate shift of known severity).

    Parameters
    ----------
    ds : WindowDataset
    snr_db : float
        Signal-to-noise ratio in dB; ``inf`` adds nothing.
    seed : int, numpy.random.Generator or None
        Seed of the noise generator (reproducible by default).
    normalize : bool
        Z-score the noisy windows again (keep ``True`` when ``ds`` was
        normalised, so the model sees inputs on its training scale).

    Returns
    -------
    WindowDataset
        Same labels and meta, new ``x``.
    """
    try:
        snr = float(snr_db)
    except (TypeError, ValueError):
        raise DataError(f"snr_db must be a number, got {snr_db!r}") from None
    if math.isnan(snr):
        raise DataError("snr_db is NaN")
    x = ds.x.astype(np.float64)
    if snr != math.inf:
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        power = np.mean(x * x, axis=1, keepdims=True)
        sigma = np.sqrt(power / 10.0 ** (snr / 10.0))
        x = x + sigma * rng.standard_normal(x.shape)
    out = x.astype(np.float32)
    if normalize:
        out = zscore_windows(out)
    return WindowDataset(x=out, y=ds.y.copy(), class_names=ds.class_names, fs=ds.fs,
                         meta={k: v.copy() for k, v in ds.meta.items()})
