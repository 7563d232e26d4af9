"""Loader for the Case Western Reserve University (CWRU) 12 kHz drive-end bearing data.

Expected layout (the root is passed in; nothing here knows where it lives)::

    root/
      MANIFEST.csv          optional: per-file labels, load, rpm, key, fs, sha256
      12k_DE/*.mat          <Fault><size mils>[at6]_<load>hp_<nnn>.mat

``Fault`` is one of ``Normal``, ``IR``, ``B``, ``OR`` (``at6``: outer-race
defect centred at 6:00); ``nnn`` is the CWRU file number. Without a manifest,
``.mat`` files are taken from ``root/12k_DE`` (or ``root`` itself) and every
field is parsed from the name.

Signal
------
Only the drive-end accelerometer is read: the key ``X<nnn>_DE_time`` of the
file's *own* number (some CWRU files also hold another record's variables;
those are never used). CWRU's normal baselines were recorded at 48 kHz: their
rate comes from the manifest's ``fs_hz_note`` column (or ``normal_fs`` without
a manifest), and they are resampled to ``target_fs`` (12 kHz) with the
polyphase anti-aliasing resampler of :func:`edgeuq.data.resample`.

Labels
------
``Normal -> "normal"``, ``IR``/``InnerRace -> "inner_race"``, ``OR``/``OuterRace
-> "outer_race"``, ``B``/``Ball -> "ball"`` (:data:`edgeuq.data.BEARING_CLASSES`).
Record meta: ``record_id`` (``"cwru_<nnn>"``), ``file_number``, ``load_hp``,
``severity`` (fault width, inches; 0 for normal), ``rpm`` (measured, from the
file or manifest; nominal when absent), ``rpm_nominal`` (manifest, else the
CWRU speed table), ``fault_type`` (the raw CWRU name), ``or_position``,
``de_key``, ``fs_original``, ``source`` (path).

Please cite the CWRU Bearing Data Center when using this data.
"""
from __future__ import annotations

import csv
import hashlib
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import scipy.io

from ._dataset import SignalRecord
from ._errors import DataError, DataIntegrityError
from .synthetic import shaft_rpm
from .windowing import resample

__all__ = ["load_cwru", "parse_cwru_filename", "CWRU_FAULT_LABELS"]

#: CWRU fault names (file-name prefix or manifest ``fault_type``) -> class name.
CWRU_FAULT_LABELS: dict[str, str] = {
    "Normal": "normal",
    "IR": "inner_race",
    "InnerRace": "inner_race",
    "OR": "outer_race",
    "OuterRace": "outer_race",
    "B": "ball",
    "Ball": "ball",
}

_NAME_RE = re.compile(
    r"^(?P<fault>Normal|IR|OR|B)(?P<size>\d{3})?(?P<pos>at\d+)?_(?P<load>\d+)hp_(?P<num>\d+)\.mat$"
)


def parse_cwru_filename(name: str) -> dict[str, Any]:
    """Parse ``<Fault><size mils>[at6]_<load>hp_<nnn>.mat``.

    Returns
    -------
    dict
        ``fault_type`` (raw), ``label``, ``severity`` (inches), ``or_position``
        (e.g. ``"@6"`` or ``""``), ``load_hp`` (float), ``file_number`` (int).

    Raises
    ------
    DataError
        When the name does not follow the pattern, or a fault file lacks its
        size / a normal file has one.
    """
    base = Path(name).name
    m = _NAME_RE.match(base)
    if m is None:
        raise DataError(
            f"cannot parse CWRU file name {base!r}: expected <Fault><size mils>[at6]_<load>hp_<nnn>.mat "
            "with Fault in Normal, IR, B, OR (e.g. IR007_0hp_105.mat, OR014at6_2hp_199.mat, Normal_0hp_097.mat)"
        )
    fault = m["fault"]
    if fault == "Normal" and m["size"]:
        raise DataError(f"cannot parse CWRU file name {base!r}: a Normal record has no fault size")
    if fault != "Normal" and not m["size"]:
        raise DataError(f"cannot parse CWRU file name {base!r}: fault {fault} needs a 3-digit size in mils")
    if m["pos"] and fault != "OR":
        raise DataError(f"cannot parse CWRU file name {base!r}: a position ({m['pos']}) only applies to OR faults")
    return {
        "fault_type": fault,
        "label": CWRU_FAULT_LABELS[fault],
        "severity": int(m["size"]) / 1000.0 if m["size"] else 0.0,
        "or_position": ("@" + m["pos"][2:]) if m["pos"] else "",
        "load_hp": float(m["load"]),
        "file_number": int(m["num"]),
    }


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_manifest(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    required = {"file"}
    if rows and not required <= set(rows[0]):
        raise DataError(f"{path}: manifest lacks the column(s) {sorted(required - set(rows[0]))}")
    return rows


def _opt_float(row: Mapping[str, str], key: str, path: Path) -> float | None:
    value = (row.get(key) or "").strip()
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        raise DataError(f"{path}: manifest column {key!r} is not a number: {value!r}") from None


def _read_mat(path: Path, key: str, rpm_key: str) -> tuple[np.ndarray, float | None]:
    try:
        names = [v[0] for v in scipy.io.whosmat(str(path))]
    except Exception as exc:  # scipy raises several types for corrupt / v7.3 files
        raise DataError(f"{path}: cannot read as a MATLAB v5 .mat file: {exc}") from exc
    if key not in names:
        shown = [n for n in names if not n.startswith("__")]
        raise DataError(f"{path}: drive-end key {key!r} not found; keys in the file: {shown}")
    wanted = [key] + ([rpm_key] if rpm_key in names else [])
    data = scipy.io.loadmat(str(path), variable_names=wanted)
    arr = np.asarray(data[key])
    if arr.ndim > 2 or (arr.ndim == 2 and min(arr.shape) != 1):
        raise DataError(f"{path}: {key} has shape {arr.shape}, expected a single channel")
    rpm = None
    if rpm_key in data and np.asarray(data[rpm_key]).size:
        rpm = float(np.asarray(data[rpm_key]).ravel()[0])
    return arr.reshape(-1).astype(np.float64), rpm


def load_cwru(
    root: str | Path,
    verify_hash: bool = False,
    target_fs: float = 12000.0,
    normal_fs: float = 48000.0,
) -> list[SignalRecord]:
    """Load the CWRU 12 kHz drive-end recordings.

    Parameters
    ----------
    root : str or Path
        Folder holding ``MANIFEST.csv`` (optional) and ``12k_DE/*.mat``.
    verify_hash : bool
        Check each file's sha256 against the manifest (requires one).
    target_fs : float
        Rate of the returned records; files at another rate (the 48 kHz normal
        baseline) are resampled with an anti-aliasing filter.
    normal_fs : float
        Rate assumed for ``Normal`` files when there is no manifest (CWRU
        recorded its normal baselines at 48 kHz); fault files are taken as
        12 kHz.

    Returns
    -------
    list of SignalRecord
        Sorted by CWRU file number.

    Raises
    ------
    FileNotFoundError
        Missing root, or a file listed in the manifest is missing.
    DataError
        Unparseable file name, missing drive-end key, inconsistent manifest.
    DataIntegrityError
        sha256 mismatch when ``verify_hash`` is set.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"CWRU data folder not found: {root} (expected MANIFEST.csv and 12k_DE/*.mat)")
    manifest_path = root / "MANIFEST.csv"
    entries: list[tuple[Path, dict[str, str] | None]] = []
    if manifest_path.is_file():
        for row in _read_manifest(manifest_path):
            entries.append((root / row["file"], row))
    else:
        if verify_hash:
            raise DataError(f"verify_hash=True needs {manifest_path}, which does not exist")
        folder = root / "12k_DE" if (root / "12k_DE").is_dir() else root
        entries = [(p, None) for p in sorted(folder.glob("*.mat"))]
    if not entries:
        raise DataError(f"no CWRU .mat files found under {root}")

    records: list[SignalRecord] = []
    for path, row in entries:
        if not path.is_file():
            raise FileNotFoundError(f"CWRU file listed in {manifest_path} is missing: {path}")
        info = parse_cwru_filename(path.name)
        num = info["file_number"]
        key = f"X{num:03d}_DE_time"
        fs = 12000.0 if info["fault_type"] != "Normal" else float(normal_fs)
        rpm_nominal: float | None = None
        rpm_manifest: float | None = None
        if row is not None:
            where = f"{manifest_path} ({row['file']})"
            fault_type = (row.get("fault_type") or "").strip()
            if fault_type:
                if fault_type not in CWRU_FAULT_LABELS:
                    raise DataError(f"{where}: unknown fault_type {fault_type!r}; known: {sorted(CWRU_FAULT_LABELS)}")
                if CWRU_FAULT_LABELS[fault_type] != info["label"]:
                    raise DataError(f"{where}: fault_type {fault_type!r} contradicts the file name")
                info["fault_type"] = fault_type
            number = _opt_float(row, "cwru_file_number", manifest_path)
            if number is not None and int(number) != num:
                raise DataError(f"{where}: cwru_file_number {int(number)} contradicts the file name ({num})")
            manifest_key = (row.get("de_key") or "").strip()
            if manifest_key and manifest_key != key:
                raise DataError(f"{where}: de_key {manifest_key!r} is not the file's own key {key!r}")
            size = _opt_float(row, "fault_size_in", manifest_path)
            if size is not None:
                info["severity"] = size
            load = _opt_float(row, "load_hp", manifest_path)
            if load is not None:
                info["load_hp"] = load
            pos = (row.get("or_position") or "").strip()
            if pos:
                info["or_position"] = pos
            note_fs = _opt_float(row, "fs_hz_note", manifest_path)
            if note_fs is not None:
                fs = note_fs
            rpm_nominal = _opt_float(row, "rpm_nominal", manifest_path)
            rpm_manifest = _opt_float(row, "rpm_in_file", manifest_path)
            if verify_hash:
                expected = (row.get("sha256") or "").strip().lower()
                if not expected:
                    raise DataError(f"{where}: verify_hash=True but the manifest has no sha256 for this file")
                actual = _sha256(path)
                if actual != expected:
                    raise DataIntegrityError(
                        f"{path}: sha256 mismatch: manifest says {expected}, file is {actual}"
                    )
        signal, rpm_file = _read_mat(path, key, f"X{num:03d}RPM")
        if row is not None:
            expected_len = _opt_float(row, "de_length", manifest_path)
            if expected_len is not None and int(expected_len) != signal.size:
                raise DataError(
                    f"{path}: {key} has {signal.size} samples, manifest de_length says {int(expected_len)}"
                )
        if rpm_nominal is None and 0.0 <= info["load_hp"] <= 3.0:
            rpm_nominal = shaft_rpm(info["load_hp"])
        rpm = rpm_file if rpm_file is not None else rpm_manifest
        if rpm is None:
            rpm = rpm_nominal
        if fs != target_fs:
            signal = resample(signal, fs, target_fs)
        records.append(
            SignalRecord(
                signal=signal,
                fs=float(target_fs),
                label=info["label"],
                meta={
                    "record_id": f"cwru_{num:03d}",
                    "file_number": num,
                    "load_hp": info["load_hp"],
                    "severity": info["severity"],
                    "rpm": rpm,
                    "rpm_nominal": rpm_nominal,
                    "fault_type": info["fault_type"],
                    "or_position": info["or_position"],
                    "de_key": key,
                    "fs_original": fs,
                    "source": str(path),
                },
            )
        )
    records.sort(key=lambda r: r.meta["file_number"])
    return records
