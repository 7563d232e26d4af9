"""Leak-free data of the shift suite: which recordings train a model, which are held out whole.

From any registered data source's records (labels placed with the label machinery), the
protocol holds out **whole recordings** by their metadata:

* ``held_load``: every record whose ``meta["load_hp"]`` is that load (default: the largest load
  in the metadata) -- a shift to *generalise* over;
* ``held_size``: every record whose ``meta["severity"]`` (fault size) is that size (default: the
  largest size > 0) -- a shift to *flag*;
* records whose label is not one of the model's classes -- an unseen fault type (to flag).

The remaining (training) records are cut in time into contiguous train | val | cal | test
segments (``fractions``), each windowed on its own: train fits the model and the density, val
selects the device rule, cal calibrates the conformal p-values, test is the in-distribution
reference. :func:`assert_leak_free` checks that no held-out record contributes a window to any of
them, that segments of one record never share a sample, and that no evaluated window equals a
training window (sha256 of its float32 bytes). A shift whose metadata is missing is skipped with
the reason recorded, never guessed.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..data import SignalRecord, WindowDataset, sliding_windows
from ..data.labels import LabelMapper

__all__ = ["ShiftProtocol", "ProtocolData", "build_protocol_data", "assert_leak_free", "windows_of", "LeakError"]


class LeakError(AssertionError):
    """A held-out recording or window reached the training side."""


@dataclass(frozen=True)
class ShiftProtocol:
    held_load: Optional[float] = None        # None: the largest load in the records' metadata
    held_size: Optional[float] = None        # None: the largest fault size > 0 in the metadata
    fractions: Tuple[float, float, float, float] = (0.6, 0.1, 0.15, 0.15)   # train | val | cal | test in time
    hop: Optional[int] = None                # training hop (default: window // 2)
    eval_hop: Optional[int] = None           # evaluation hop (default: window // 2)
    max_eval_windows: Optional[int] = None   # per evaluated set, evenly over its records (quick runs)

    def __post_init__(self) -> None:
        f = tuple(float(v) for v in self.fractions)
        if len(f) != 4 or any(not (v > 0) for v in f) or not abs(sum(f) - 1) <= 1e-6:
            raise ValueError(f"ShiftProtocol.fractions must be 4 positive numbers summing to 1, got {self.fractions!r}")


@dataclass(frozen=True, eq=False)
class ProtocolData:
    class_names: Tuple[str, ...]
    fs: float
    window: int
    protocol: ShiftProtocol
    train: WindowDataset     # raw (not z-scored) windows; the runtime and training z-score them
    val: WindowDataset
    cal: WindowDataset
    test: WindowDataset
    train_records: Tuple[SignalRecord, ...]
    test_segments: Tuple[Tuple[SignalRecord, int, int], ...]
    held: Mapping[str, Tuple[SignalRecord, ...]] = field(default_factory=dict)   # "load" / "size" / "type"
    held_values: Mapping[str, object] = field(default_factory=dict)
    skipped: Mapping[str, str] = field(default_factory=dict)
    record_labels: Mapping[str, str] = field(default_factory=dict)             # raw label per record id

    def describe(self) -> str:
        held = ", ".join(f"{k} = {self.held_values.get(k)} ({len(v)} records)" for k, v in self.held.items())
        return (f"{len(self.train_records)} training records cut in time {self.protocol.fractions} into train "
                f"{len(self.train)} / val {len(self.val)} / cal {len(self.cal)} / test {len(self.test)} windows; "
                f"held out whole: {held or 'none'}")


def _meta_num(r: SignalRecord, key: str) -> Optional[float]:
    v = r.meta.get(key)
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def windows_of(segments: Sequence[Tuple[SignalRecord, int, int]], window: int, hop: int, class_names: Sequence[str],
               fs: float, mapper: Optional[LabelMapper] = None, max_windows: Optional[int] = None) -> WindowDataset:
    """Raw windows of ``signal[lo:hi]`` of each (record, lo, hi); meta ``start`` is the offset in the
    whole record, labels -1 where the record's label is not a class. ``max_windows``: keep at most
    that many, evenly spaced within each record (every record keeps some)."""
    names = tuple(class_names)
    xs, ys, rec, lab, start, load, sev = [], [], [], [], [], [], []
    per = None
    if max_windows:
        per = max(1, int(max_windows) // max(1, len(segments)))
    for r, lo, hi in segments:
        if hi - lo < window:
            continue
        w = sliding_windows(r.signal[lo:hi], window, hop)
        idx = np.arange(len(w))
        if per is not None and len(w) > per:
            idx = np.unique(np.linspace(0, len(w) - 1, per).round().astype(int))
        w = w[idx]
        label = mapper.resolve(r.label) if mapper is not None else r.label
        y = names.index(label) if label in names else -1
        n = len(w)
        xs.append(w)
        ys.append(np.full(n, y, np.int64))
        rec.append(np.full(n, r.record_id))
        lab.append(np.full(n, r.label or ""))
        start.append(lo + hop * idx.astype(np.int64))
        load.append(np.full(n, _meta_num(r, "load_hp") if _meta_num(r, "load_hp") is not None else np.nan))
        sev.append(np.full(n, _meta_num(r, "severity") if _meta_num(r, "severity") is not None else np.nan))
    if not xs:
        return WindowDataset(np.zeros((0, window), np.float32), np.zeros(0, np.int64), names, fs,
                             {"record": np.zeros(0, str), "label": np.zeros(0, str), "start": np.zeros(0, np.int64),
                              "load_hp": np.zeros(0), "severity": np.zeros(0)})
    return WindowDataset(np.concatenate(xs), np.concatenate(ys), names, fs,
                         {"record": np.concatenate(rec), "label": np.concatenate(lab),
                          "start": np.concatenate(start), "load_hp": np.concatenate(load),
                          "severity": np.concatenate(sev)})


def build_protocol_data(records: Sequence[SignalRecord], class_names: Sequence[str], window: int,
                        protocol: ShiftProtocol = ShiftProtocol(), label_map: Mapping[str, str] = {}
                        ) -> ProtocolData:
    """Split ``records`` (one sampling rate, the model's) by the protocol; see the module docstring."""
    recs = list(records)
    if not recs:
        raise ValueError("no records")
    rates = {r.fs for r in recs}
    if len(rates) != 1:
        raise ValueError(f"records must share one sampling rate (resample them to the model's), got {sorted(rates)}")
    fs = rates.pop()
    names = tuple(class_names)
    mapper = LabelMapper(names, dict(label_map))
    ids = [r.record_id for r in recs]
    if len(set(ids)) != len(ids):
        raise ValueError("record ids (meta['record_id']) must be unique: the suite holds out whole recordings by id")
    known = [r for r in recs if mapper.resolve(r.label) in names]
    unknown = [r for r in recs if r.label is not None and mapper.resolve(r.label) not in names]
    skipped: Dict[str, str] = {}
    held: Dict[str, Tuple[SignalRecord, ...]] = {}
    values: Dict[str, object] = {}

    loads = sorted({v for v in (_meta_num(r, "load_hp") for r in known) if v is not None})
    held_load = protocol.held_load
    if held_load is None and len(loads) >= 2:
        held_load = loads[-1]
    if held_load is None or len(loads) < 2 or any(_meta_num(r, "load_hp") is None for r in known):
        skipped["load"] = ("records lack a numeric meta['load_hp'] (or fewer than two loads)" if len(loads) < 2 or
                           any(_meta_num(r, "load_hp") is None for r in known) else "no load to hold out")
        held_load = None
    sizes = sorted({v for v in (_meta_num(r, "severity") for r in known) if v is not None and v > 0})
    held_size = protocol.held_size
    if held_size is None and len(sizes) >= 2:
        held_size = sizes[-1]
    if held_size is None:
        skipped["size"] = "records lack meta['severity'] with at least two fault sizes > 0"

    def is_load(r):
        v = _meta_num(r, "load_hp")
        return held_load is not None and v is not None and abs(v - held_load) < 1e-9

    def is_size(r):
        v = _meta_num(r, "severity")
        return held_size is not None and v is not None and abs(v - held_size) < 1e-9

    train_recs = [r for r in known if not is_load(r) and not is_size(r)]
    if held_load is not None:
        held["load"] = tuple(r for r in known if is_load(r) and not is_size(r))
        values["load"] = held_load
        missing = [c for c in names if c not in {mapper.resolve(r.label) for r in train_recs}]
        if missing:
            raise ValueError(f"holding out load {held_load:g} (and size {held_size}) leaves no training record of "
                             f"class(es) {missing}; choose another held_load/held_size")
    if held_size is not None:
        held["size"] = tuple(r for r in known if is_size(r) and not is_load(r))
        values["size"] = held_size
    if unknown:
        held["type"] = tuple(unknown)
        values["type"] = sorted({str(r.label) for r in unknown})
    else:
        skipped["type"] = "every record's label is one of the model's classes (train a model without one to test this)"
    if not train_recs:
        raise ValueError("nothing left to train on after holding out the shifted recordings")
    absent = [c for c in names if c not in {mapper.resolve(r.label) for r in train_recs}]
    if absent:
        raise ValueError(f"no training recording of class(es) {absent} (the density model and the per-class "
                         "calibration need every class): give recordings of every class")

    hop = int(protocol.hop or max(1, window // 2))
    ehop = int(protocol.eval_hop or max(1, window // 2))
    f = np.cumsum((0.0,) + tuple(protocol.fractions))
    parts: Dict[str, list] = {k: [] for k in ("train", "val", "cal", "test")}
    for r in train_recs:
        n = len(r)
        b = [int(round(v * n)) for v in f]
        for k, (lo, hi) in zip(parts, zip(b[:-1], b[1:])):
            parts[k].append((r, lo, hi))
    mw = protocol.max_eval_windows
    data = ProtocolData(
        names, fs, int(window), protocol,
        windows_of(parts["train"], window, hop, names, fs, mapper),
        windows_of(parts["val"], window, ehop, names, fs, mapper, mw),
        windows_of(parts["cal"], window, ehop, names, fs, mapper),
        windows_of(parts["test"], window, ehop, names, fs, mapper, mw),
        tuple(train_recs), tuple(parts["test"]), held, values, skipped,
        {r.record_id: str(r.label) for r in recs})
    for k in ("train", "val", "cal", "test"):
        if len(getattr(data, k)) == 0:
            raise ValueError(f"the {k} segment of the training records holds no window of {window} samples: "
                             "longer records or other fractions")
    return data


def _hashes(x: np.ndarray) -> set:
    a = np.ascontiguousarray(x, dtype=np.float32)
    return {hashlib.sha256(row.tobytes()).hexdigest() for row in a}


def assert_leak_free(data: ProtocolData, evaluated: Mapping[str, WindowDataset] = {}) -> None:
    """Raise :class:`LeakError` when a held-out recording contributes to train/val/cal/test, two
    segments of one record share a sample, or an evaluated window equals a training window."""
    side = {k: getattr(data, k) for k in ("train", "val", "cal", "test")}
    train_ids = {str(v) for ds in side.values() for v in ds.meta["record"]}
    for k, recs in data.held.items():
        bad = train_ids & {r.record_id for r in recs}
        if bad:
            raise LeakError(f"held-out ({k}) recordings also feed the training side: {sorted(bad)[:5]}")
    w = data.window
    spans: Dict[str, List[Tuple[int, int, str]]] = {}
    for k, ds in side.items():
        for rid in np.unique(ds.meta["record"]):
            st = ds.meta["start"][ds.meta["record"] == rid]
            spans.setdefault(str(rid), []).append((int(st.min()), int(st.max()) + w, k))
    for rid, sp in spans.items():
        sp.sort()
        for (lo1, hi1, k1), (lo2, hi2, k2) in zip(sp, sp[1:]):
            if lo2 < hi1:
                raise LeakError(f"record {rid}: windows of {k1} [{lo1}, {hi1}) and {k2} [{lo2}, {hi2}) share samples")
    train_h = _hashes(data.train.x)
    for name, ds in {**{k: v for k, v in side.items() if k != "train"}, **dict(evaluated)}.items():
        if len(ds) and train_h & _hashes(ds.x):
            raise LeakError(f"{name}: windows identical to training windows")
