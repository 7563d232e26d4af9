"""Load a user's own single-channel vibration signals from common file formats.

Supported formats
-----------------
``.npz``
    Arrays ``signal`` (1-D) and ``fs`` (scalar, Hz); optional ``label``
    (string). ``fs`` may instead be passed to the loader.
``.npy``
    One 1-D array (or one column/row); ``fs`` must be passed.
``.csv`` / ``.txt``
    One column, or several with the signal in the first all-numeric column (or
    the column named ``key``); an optional header row; ``,``, ``;``, tab or
    whitespace separated. ``fs`` must be passed.
``.mat`` (MATLAB v5)
    The array named ``key``; without a key, the file's single non-scalar
    numeric variable (an error lists the variables when there are several).
    A scalar variable ``fs`` in the file is used when ``fs`` is not passed.

A signal stored as ``(N, 1)`` or ``(1, N)`` is flattened; more than one
channel is refused (select one first). Records are returned as ``float32``
:class:`~edgeuq.data.SignalRecord`, resampled to ``target_fs`` when given.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io

from ._dataset import SignalRecord
from ._errors import DataError
from .windowing import resample_record

__all__ = ["SUPPORTED_EXTENSIONS", "load_signal_file", "load_signals"]

#: File extensions understood by :func:`load_signal_file` (lower case).
SUPPORTED_EXTENSIONS: tuple[str, ...] = (".npz", ".npy", ".csv", ".txt", ".mat")


def _as_signal(arr: Any, where: str) -> np.ndarray:
    a = np.asarray(arr)
    if a.dtype.kind not in "fiu":
        raise DataError(f"{where}: signal must be real numeric, got dtype {a.dtype}")
    if a.ndim == 2 and 1 in a.shape:
        a = a.reshape(-1)
    elif a.ndim == 2:
        raise DataError(
            f"{where}: signal has shape {a.shape}, i.e. {min(a.shape)} channels; "
            "store or select a single channel"
        )
    elif a.ndim != 1:
        raise DataError(f"{where}: signal must be 1-D (or one column), got shape {a.shape}")
    if a.size == 0:
        raise DataError(f"{where}: signal is empty")
    a = a.astype(np.float64, copy=False)
    finite = np.isfinite(a)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise DataError(
            f"{where}: signal has {bad.size} non-finite value(s) (NaN/inf), first at sample {int(bad[0])}"
        )
    return a


def _scalar_fs(value: Any, where: str) -> float:
    a = np.asarray(value)
    if a.size != 1 or a.dtype.kind not in "fiu":
        raise DataError(f"{where}: fs must be a numeric scalar, got {a!r}")
    fs = float(a.reshape(-1)[0])
    if not (math.isfinite(fs) and fs > 0):
        raise DataError(f"{where}: fs must be positive and finite, got {fs!r}")
    return fs


def _resolve_fs(file_fs: float | None, fs: float | None, where: str) -> float:
    if fs is not None:
        given = _scalar_fs(fs, where)
        if file_fs is not None and not math.isclose(given, file_fs, rel_tol=1e-9):
            raise DataError(f"{where}: fs={given:g} Hz was passed but the file says fs={file_fs:g} Hz")
        return given
    if file_fs is None:
        raise DataError(f"{where}: sampling rate unknown; pass fs=<Hz> (this format does not store it)")
    return file_fs


def _load_npz(path: Path, key: str | None) -> tuple[np.ndarray, float | None, str | None, str]:
    where = str(path)
    with np.load(path, allow_pickle=False) as z:
        names = list(z.files)
        k = key or "signal"
        if k not in names:
            raise DataError(f"{where}: no array {k!r} in the .npz; arrays: {names}")
        sig = z[k]
        file_fs = _scalar_fs(z["fs"], where) if "fs" in names else None
        label = None
        if "label" in names:
            lab = z["label"]
            if lab.size != 1 or lab.dtype.kind not in "US":
                raise DataError(f"{where}: 'label' must be a single string, got {lab!r}")
            label = str(lab.reshape(-1)[0])
    return sig, file_fs, label, k


def _load_npy(path: Path, key: str | None) -> tuple[np.ndarray, float | None, str | None, str]:
    if key is not None:
        raise DataError(f"{path}: a .npy file holds one array; key={key!r} does not apply")
    try:
        sig = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise DataError(f"{path}: cannot read the .npy array: {exc}") from exc
    return sig, None, None, ""


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _load_csv(path: Path, key: str | None) -> tuple[np.ndarray, float | None, str | None, str]:
    where = str(path)
    text = path.read_text()
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise DataError(f"{where}: signal is empty (no data rows)")
    first = lines[0]
    delim = next((d for d in (",", ";", "\t") if d in first), None)
    if delim is None:
        rows = [ln.split() for ln in lines]
    else:
        rows = [[c.strip() for c in r] for r in csv.reader(io.StringIO("\n".join(lines)), delimiter=delim)]
    header: list[str] | None = None
    if not all(_is_number(c) for c in rows[0] if c != ""):
        header = [c.strip().strip('"') for c in rows[0]]
        rows = rows[1:]
    if not rows:
        raise DataError(f"{where}: signal is empty (header only)")
    width = max(len(r) for r in rows)
    if key is not None:
        if header is None:
            raise DataError(f"{where}: key={key!r} selects a column by header name, but the file has no header")
        if key not in header:
            raise DataError(f"{where}: no column {key!r}; columns: {header}")
        candidates = [header.index(key)]
    else:
        candidates = list(range(width))
    for col in candidates:
        cells = [r[col] if col < len(r) else "" for r in rows]
        if all(_is_number(c) for c in cells):
            name = header[col] if header is not None and col < len(header) else f"column {col}"
            return np.array([float(c) for c in cells]), None, None, name
    if key is not None:
        raise DataError(f"{where}: column {key!r} has non-numeric or missing values")
    raise DataError(f"{where}: no all-numeric column found" + (f"; columns: {header}" if header else ""))


def _load_mat(path: Path, key: str | None) -> tuple[np.ndarray, float | None, str | None, str]:
    where = str(path)
    try:
        data = scipy.io.loadmat(str(path))
    except NotImplementedError as exc:
        raise DataError(f"{where}: MATLAB v7.3 (HDF5) files are not supported; save with -v7: {exc}") from exc
    except Exception as exc:  # scipy raises several types for corrupt files
        raise DataError(f"{where}: cannot read as a .mat file: {exc}") from exc
    names = [k for k in data if not k.startswith("__")]
    file_fs = None
    for fs_key in ("fs", "Fs", "FS"):
        if fs_key in data and np.asarray(data[fs_key]).size == 1:
            file_fs = _scalar_fs(data[fs_key], where)
            break
    if key is not None:
        if key not in data:
            raise DataError(f"{where}: no variable {key!r}; variables: {names}")
        return data[key], file_fs, None, key
    numeric = [
        k for k in names
        if isinstance(data[k], np.ndarray) and data[k].dtype.kind in "fiu" and data[k].size > 1
    ]
    if len(numeric) != 1:
        what = "no non-scalar numeric variable" if not numeric else f"{len(numeric)} candidate signals {numeric}"
        raise DataError(f"{where}: {what}; pass key=<name>; variables: {names}")
    return data[numeric[0]], file_fs, None, numeric[0]


_LOADERS = {
    ".npz": _load_npz,
    ".npy": _load_npy,
    ".csv": _load_csv,
    ".txt": _load_csv,
    ".mat": _load_mat,
}


def load_signal_file(
    path: str | Path,
    fs: float | None = None,
    key: str | None = None,
    label: str | None = None,
    target_fs: float | None = None,
) -> SignalRecord:
    """Load one single-channel signal file.

    Parameters
    ----------
    path : str or Path
        A ``.npz``, ``.npy``, ``.csv``/``.txt`` or ``.mat`` file.
    fs : float, optional
        Sampling rate in Hz; required unless the file stores it (``.npz``
        ``fs``, ``.mat`` ``fs``). Must agree with the file when both exist.
    key : str, optional
        Array (``.npz``), variable (``.mat``) or header column (``.csv``) name.
    label : str, optional
        Class name; overrides a label stored in a ``.npz``.
    target_fs : float, optional
        Resample to this rate (anti-aliased).

    Returns
    -------
    SignalRecord
        Meta: ``record_id`` (file stem), ``source`` (path), ``key``, and
        ``fs_original`` when resampled.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    DataError
        Unsupported extension, missing fs, several channels, empty signal,
        non-finite values, missing key.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"signal file not found: {p}")
    ext = p.suffix.lower()
    try:
        loader = _LOADERS[ext]
    except KeyError:
        raise DataError(
            f"{p}: unsupported file extension {ext or '(none)'!r}; supported: {', '.join(SUPPORTED_EXTENSIONS)}"
        ) from None
    raw, file_fs, file_label, used_key = loader(p, key)
    signal = _as_signal(raw, str(p))
    rate = _resolve_fs(file_fs, fs, str(p))
    meta = {"record_id": p.stem, "source": str(p), "key": used_key}
    record = SignalRecord(signal=signal, fs=rate, label=label if label is not None else file_label, meta=meta)
    return resample_record(record, target_fs)


def load_signals(
    path: str | Path,
    fs: float | None = None,
    key: str | None = None,
    label: str | None = None,
    target_fs: float | None = None,
) -> list[SignalRecord]:
    """Load a signal file, or every supported file of a directory (sorted by name, not recursive).

    Parameters are passed to :func:`load_signal_file` for each file.

    Returns
    -------
    list of SignalRecord
    """
    p = Path(path)
    if p.is_file():
        return [load_signal_file(p, fs=fs, key=key, label=label, target_fs=target_fs)]
    if not p.is_dir():
        raise FileNotFoundError(f"signal file or directory not found: {p}")
    files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in SUPPORTED_EXTENSIONS)
    if not files:
        raise DataError(f"{p}: no signal files with a supported extension ({', '.join(SUPPORTED_EXTENSIONS)})")
    return [load_signal_file(f, fs=fs, key=key, label=label, target_fs=target_fs) for f in files]
