"""Core containers: one raw recording, a set of fixed-length windows, and splits.

Conventions
-----------
* Signals and windows are ``float32``; labels are ``int64`` indices into
  ``class_names`` and ``-1`` marks an unlabelled window (e.g. an out-of-
  distribution set whose fault kind the classifier does not know).
* ``WindowDataset.meta`` holds one array of length ``N`` per key. The windowing
  functions of :mod:`edgeuq.data.windowing` always write the keys in
  :data:`WINDOW_META_KEYS` (``record``, ``label``, ``start``, ``load_hp``,
  ``severity``); ``load_hp`` and ``severity`` are ``NaN`` where a record does
  not say.
* The containers are frozen dataclasses compared by identity (``eq=False``):
  they hold numpy arrays, for which ``==`` is element-wise.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

import numpy as np

from ._errors import DataError

__all__ = [
    "BEARING_CLASSES",
    "WINDOW_META_KEYS",
    "SignalRecord",
    "WindowDataset",
    "Splits",
    "concat_datasets",
]

#: Canonical class names of the bearing fault diagnosis task, in label order.
BEARING_CLASSES: tuple[str, ...] = ("normal", "inner_race", "outer_race", "ball")

#: Per-window metadata keys written by :func:`edgeuq.data.window_records`.
WINDOW_META_KEYS: tuple[str, ...] = ("record", "label", "start", "load_hp", "severity")


def _check_fs(fs: Any, what: str) -> float:
    try:
        value = float(fs)
    except (TypeError, ValueError):
        raise DataError(f"{what}: sampling rate must be a number, got {fs!r}") from None
    if not np.isfinite(value) or value <= 0:
        raise DataError(f"{what}: sampling rate must be a positive finite number, got {fs!r}")
    return value


@dataclass(frozen=True, eq=False)
class SignalRecord:
    """One continuous single-channel recording.

    Parameters
    ----------
    signal : numpy.ndarray
        1-D signal; stored as a contiguous ``float32`` array. Must be non-empty
        and finite.
    fs : float
        Sampling rate in Hz.
    label : str or None
        Class name (e.g. one of :data:`BEARING_CLASSES`), or ``None`` when
        unknown.
    meta : Mapping[str, Any]
        Free-form metadata, e.g. ``record_id``, ``load_hp``, ``severity``
        (fault size in inches, 0 for normal), ``rpm``, ``source``.
    """

    signal: np.ndarray
    fs: float
    label: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        name = self.meta.get("record_id", "record") if isinstance(self.meta, Mapping) else "record"
        if not isinstance(self.meta, Mapping):
            raise DataError(f"{name}: meta must be a mapping, got {type(self.meta).__name__}")
        sig = np.asarray(self.signal)
        if sig.dtype.kind not in "fiu":
            raise DataError(f"{name}: signal must be real numeric, got dtype {sig.dtype}")
        if sig.ndim != 1:
            raise DataError(f"{name}: signal must be 1-D, got shape {sig.shape}")
        if sig.size == 0:
            raise DataError(f"{name}: signal is empty")
        sig = np.ascontiguousarray(sig, dtype=np.float32)
        if not np.isfinite(sig).all():
            bad = int(np.flatnonzero(~np.isfinite(sig))[0])
            raise DataError(f"{name}: signal has non-finite values (first at sample {bad})")
        if self.label is not None and not isinstance(self.label, str):
            raise DataError(f"{name}: label must be a string or None, got {self.label!r}")
        object.__setattr__(self, "signal", sig)
        object.__setattr__(self, "fs", _check_fs(self.fs, str(name)))
        object.__setattr__(self, "meta", dict(self.meta))

    def __len__(self) -> int:
        return int(self.signal.shape[0])

    @property
    def record_id(self) -> str:
        """``meta["record_id"]`` or ``"record"`` when absent."""
        return str(self.meta.get("record_id", "record"))

    @property
    def duration_s(self) -> float:
        """Length of the recording in seconds."""
        return len(self) / self.fs


@dataclass(frozen=True, eq=False)
class WindowDataset:
    """A batch of fixed-length windows with labels and per-window metadata.

    Parameters
    ----------
    x : numpy.ndarray
        Windows, shape ``(N, L)``, stored as ``float32``. ``N`` may be 0.
    y : numpy.ndarray
        Labels, shape ``(N,)``, stored as ``int64``; ``-1`` = unlabelled,
        otherwise an index into ``class_names``.
    class_names : tuple of str
        Unique class names, in label order.
    fs : float
        Sampling rate of the windows in Hz.
    meta : Mapping[str, numpy.ndarray]
        Per-window arrays, each of length ``N``.
    """

    x: np.ndarray
    y: np.ndarray
    class_names: tuple[str, ...]
    fs: float
    meta: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        x = np.asarray(self.x)
        if x.ndim != 2:
            raise DataError(f"WindowDataset.x must have shape (N, L), got {x.shape}")
        if x.shape[1] == 0:
            raise DataError(f"WindowDataset.x has zero-length windows: shape {x.shape}")
        if x.dtype.kind not in "fiu":
            raise DataError(f"WindowDataset.x must be real numeric, got dtype {x.dtype}")
        n = x.shape[0]
        y = np.asarray(self.y)
        if y.shape != (n,):
            raise DataError(f"WindowDataset.y must have shape ({n},) to match x {x.shape}, got {y.shape}")
        if n and y.dtype.kind not in "iu":
            raise DataError(f"WindowDataset.y must be integer labels, got dtype {y.dtype}")
        names = tuple(str(c) for c in self.class_names)
        if not names:
            raise DataError("WindowDataset.class_names is empty")
        if len(set(names)) != len(names):
            raise DataError(f"WindowDataset.class_names has duplicates: {names}")
        y = np.ascontiguousarray(y, dtype=np.int64)
        if n and (y.min() < -1 or y.max() >= len(names)):
            raise DataError(
                f"WindowDataset.y values must lie in [-1, {len(names) - 1}] for {len(names)} classes, "
                f"got range [{y.min()}, {y.max()}]"
            )
        if not isinstance(self.meta, Mapping):
            raise DataError(f"WindowDataset.meta must be a mapping, got {type(self.meta).__name__}")
        meta: dict[str, np.ndarray] = {}
        for key, value in self.meta.items():
            arr = np.asarray(value)
            if arr.ndim != 1 or arr.shape[0] != n:
                raise DataError(f"WindowDataset.meta[{key!r}] must have shape ({n},), got {arr.shape}")
            meta[str(key)] = arr
        object.__setattr__(self, "x", np.ascontiguousarray(x, dtype=np.float32))
        object.__setattr__(self, "y", y)
        object.__setattr__(self, "class_names", names)
        object.__setattr__(self, "fs", _check_fs(self.fs, "WindowDataset"))
        object.__setattr__(self, "meta", meta)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __repr__(self) -> str:
        return (
            f"WindowDataset(n={len(self)}, window={self.window}, fs={self.fs:g}, "
            f"classes={self.class_names}, counts={self.class_counts().tolist()}, "
            f"unlabelled={self.n_unlabelled}, meta={sorted(self.meta)})"
        )

    @property
    def window(self) -> int:
        """Window length ``L`` in samples."""
        return int(self.x.shape[1])

    @property
    def n_classes(self) -> int:
        """Number of classes (``len(class_names)``)."""
        return len(self.class_names)

    @property
    def n_unlabelled(self) -> int:
        """Number of windows with label ``-1``."""
        return int((self.y < 0).sum())

    def class_counts(self) -> np.ndarray:
        """Number of windows per class.

        Returns
        -------
        numpy.ndarray
            ``int64`` array of shape ``(n_classes,)``; unlabelled windows
            (``y == -1``) are not counted (see :attr:`n_unlabelled`).
        """
        labelled = self.y[self.y >= 0]
        return np.bincount(labelled, minlength=self.n_classes).astype(np.int64)

    def subset(self, index_or_mask: Any) -> "WindowDataset":
        """Select windows by integer indices or a boolean mask.

        Parameters
        ----------
        index_or_mask : array-like of int or bool, or slice
            A boolean mask must have length ``N``; integer indices may repeat
            and be negative (numpy semantics).

        Returns
        -------
        WindowDataset
            A new dataset with copied arrays.
        """
        if isinstance(index_or_mask, slice):
            idx = np.arange(len(self))[index_or_mask]
        else:
            idx = np.asarray(index_or_mask)
            if idx.dtype == bool:
                if idx.shape != (len(self),):
                    raise DataError(f"boolean mask must have shape ({len(self)},), got {idx.shape}")
                idx = np.flatnonzero(idx)
            elif idx.size == 0:
                idx = np.zeros(0, dtype=np.int64)
            elif idx.dtype.kind not in "iu":
                raise DataError(f"subset needs integer indices or a boolean mask, got dtype {idx.dtype}")
            idx = idx.reshape(-1)
            if idx.size and (idx.max() >= len(self) or idx.min() < -len(self)):
                raise DataError(f"subset index out of range for {len(self)} windows")
        return replace(
            self,
            x=self.x[idx],
            y=self.y[idx],
            meta={k: v[idx] for k, v in self.meta.items()},
        )

    def concat(self, *others: "WindowDataset") -> "WindowDataset":
        """Concatenate this dataset with ``others`` (see :func:`concat_datasets`)."""
        return concat_datasets([self, *others])


def concat_datasets(datasets: Sequence[WindowDataset]) -> WindowDataset:
    """Concatenate window datasets along the window axis.

    Parameters
    ----------
    datasets : sequence of WindowDataset
        At least one; all must share ``class_names``, ``fs``, the window length
        and the set of meta keys.

    Returns
    -------
    WindowDataset
    """
    datasets = list(datasets)
    if not datasets:
        raise DataError("concat needs at least one WindowDataset")
    first = datasets[0]
    for i, ds in enumerate(datasets[1:], start=1):
        if not isinstance(ds, WindowDataset):
            raise DataError(f"concat: item {i} is a {type(ds).__name__}, not a WindowDataset")
        if ds.class_names != first.class_names:
            raise DataError(f"concat: class names differ: {first.class_names} vs {ds.class_names} (item {i})")
        if ds.fs != first.fs:
            raise DataError(f"concat: sampling rates differ: {first.fs:g} Hz vs {ds.fs:g} Hz (item {i})")
        if ds.window != first.window:
            raise DataError(f"concat: window lengths differ: {first.window} vs {ds.window} (item {i})")
        if set(ds.meta) != set(first.meta):
            raise DataError(
                f"concat: meta keys differ: {sorted(first.meta)} vs {sorted(ds.meta)} (item {i})"
            )
    return WindowDataset(
        x=np.concatenate([d.x for d in datasets], axis=0),
        y=np.concatenate([d.y for d in datasets], axis=0),
        class_names=first.class_names,
        fs=first.fs,
        meta={k: np.concatenate([d.meta[k] for d in datasets]) for k in first.meta},
    )


@dataclass(frozen=True, eq=False)
class Splits:
    """Train / validation / test window datasets of one task.

    All three must share ``class_names``, ``fs`` and the window length.
    """

    train: WindowDataset
    val: WindowDataset
    test: WindowDataset

    def __post_init__(self) -> None:
        for name in ("val", "test"):
            ds = getattr(self, name)
            if ds.class_names != self.train.class_names:
                raise DataError(f"Splits: {name} class names {ds.class_names} != train {self.train.class_names}")
            if ds.fs != self.train.fs:
                raise DataError(f"Splits: {name} fs {ds.fs:g} Hz != train {self.train.fs:g} Hz")
            if ds.window != self.train.window:
                raise DataError(f"Splits: {name} window {ds.window} != train {self.train.window}")

    @property
    def class_names(self) -> tuple[str, ...]:
        """Shared class names."""
        return self.train.class_names

    @property
    def fs(self) -> float:
        """Shared sampling rate in Hz."""
        return self.train.fs

    @property
    def window(self) -> int:
        """Shared window length in samples."""
        return self.train.window

    def as_dict(self) -> dict[str, WindowDataset]:
        """``{"train": ..., "val": ..., "test": ...}``."""
        return {"train": self.train, "val": self.val, "test": self.test}
