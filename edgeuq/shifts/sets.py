"""The shifted sets of the suite, built from :class:`~edgeuq.shifts.protocol.ProtocolData`.

Every set is raw windows (the runtime z-scores them, as on the device) with labels (-1 unknown)
and a ``kind``: ``generalise`` (a diagnosis should stay right and answer: accuracy and false
abstention), ``flag`` (it should abstain: AUROC against the in-distribution test windows, FPR at
95 % TPR, abstention), ``control`` (reported, neither), ``validation`` (used only to pick the
device rule, never reported as a result). A set that cannot be built says why (``Skipped``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Sequence, Tuple, Union

import numpy as np

from ..data import SignalRecord, resample
from ..data.synthetic import FAULT_KINDS, BearingGeometry, SyntheticBearingConfig, shaft_rpm, simulate_bearing_signal
from .protocol import ProtocolData, windows_of

__all__ = ["ShiftSet", "Skipped", "SetOptions", "build_sets", "KINDS"]

KINDS = ("generalise", "flag", "control", "validation")


@dataclass(frozen=True, eq=False)
class ShiftSet:
    name: str
    kind: str
    x: np.ndarray            # raw windows (N, L)
    y: np.ndarray            # labels, -1 unknown
    description: str
    records: Tuple[str, ...] = ()

    def __len__(self) -> int:
        return int(len(self.y))


@dataclass(frozen=True)
class Skipped:
    name: str
    kind: str
    reason: str


@dataclass(frozen=True)
class SetOptions:
    snr_db: Tuple[float, ...] = (20.0, 10.0)       # additive white noise (the in-spec range)
    gains: Tuple[float, ...] = (0.5, 2.0)
    dc_offset_std: float = 1.0                     # DC offset in units of the window's std
    rate_roundtrip: float = 0.8                    # recorded at 0.8 fs, resampled to fs
    rate_mismatch: float = 0.02                    # signal time axis stretched by 2 % (speed-like)
    clip_fraction: float = 0.3                     # clipped at 30 % of the record segment's peak
    geometries: Tuple[Tuple[int, float, float], ...] = ((7, 0.45, 1.8), (13, 0.22, 1.6))  # (n balls, d, D)
    other_rpm: Tuple[float, ...] = (1200.0, 2400.0)
    validation_geometry: Tuple[int, float, float] = (11, 0.26, 1.5)
    synthetic_seconds: float = 3.0
    seed: int = 0


def _seg(data: ProtocolData) -> List[Tuple[SignalRecord, int, int]]:
    return list(data.test_segments)


def _mod_segments(data: ProtocolData, fn) -> List[Tuple[SignalRecord, int, int]]:
    """The test segments of the training records, each transformed by ``fn(signal) -> signal``."""
    out = []
    for r, lo, hi in _seg(data):
        sig = np.asarray(fn(np.asarray(r.signal[lo:hi], dtype=np.float64)), dtype=np.float32)
        out.append((SignalRecord(sig, r.fs, r.label, r.meta), 0, len(sig)))
    return out


def _win(data: ProtocolData, segments, hop=None):
    p = data.protocol
    hop = int(hop or p.eval_hop or max(1, data.window // 2))
    return windows_of(segments, data.window, hop, data.class_names, data.fs,
                      max_windows=p.max_eval_windows)


def _set(name, kind, ds, desc) -> Union[ShiftSet, Skipped]:
    if len(ds) == 0:
        return Skipped(name, kind, "no window fits")
    return ShiftSet(name, kind, ds.x, ds.y, desc, tuple(sorted({str(v) for v in ds.meta["record"]})))


def _synthetic(data: ProtocolData, geometry: BearingGeometry, rpms: Sequence[float], seconds: float, seed: int,
               kinds: Sequence[str]) -> List[Tuple[SignalRecord, int, int]]:
    cfg = SyntheticBearingConfig(fs=data.fs, duration_s=seconds, geometry=geometry, seed=seed)
    segs = []
    rng = np.random.default_rng(seed)
    for kind in kinds:
        for rpm in rpms:
            sig = simulate_bearing_signal(kind, 0.014, 0.0, seconds, rng, cfg, rpm=rpm)
            r = SignalRecord(sig, data.fs, kind, {"record_id": f"sim_{kind}_{geometry.n_balls}_{rpm:g}"})
            segs.append((r, 0, len(r)))
    return segs


def build_sets(data: ProtocolData, opts: SetOptions = SetOptions(), alt_channel: Sequence[SignalRecord] = ()
               ) -> List[Union[ShiftSet, Skipped]]:
    """Every shift set (or the reason it is skipped), in report order."""
    out: List[Union[ShiftSet, Skipped]] = []
    rng = np.random.default_rng(opts.seed)
    # --- generalise
    if "load" in data.held:
        ds = _win(data, [(r, 0, len(r)) for r in data.held["load"]])
        out.append(_set(f"load {data.held_values['load']:g} (whole records)", "generalise", ds,
                        f"{len(data.held['load'])} recordings at the held-out load, never seen in training"))
    else:
        out.append(Skipped("held-out load", "generalise", data.skipped.get("load", "not held out")))
    for snr in opts.snr_db:
        def noisy(s, snr=snr):
            return s + math.sqrt(float(np.var(s)) / 10 ** (snr / 10)) * rng.standard_normal(s.shape)
        out.append(_set(f"noise SNR {snr:g} dB", "generalise", _win(data, _mod_segments(data, noisy)),
                        "white noise added to the in-distribution test segments"))
    for g in opts.gains:
        out.append(_set(f"sensor gain x{g:g}", "generalise", _win(data, _mod_segments(data, lambda s, g=g: s * g)),
                        "test segments scaled"))
    out.append(_set(f"DC offset +{opts.dc_offset_std:g} std", "generalise",
                    _win(data, _mod_segments(data, lambda s: s + opts.dc_offset_std * float(np.std(s)))),
                    "test segments offset"))
    r = opts.rate_roundtrip
    out.append(_set(f"recorded at {r:g} fs, resampled", "generalise",
                    _win(data, _mod_segments(data, lambda s: resample(resample(s, data.fs, data.fs * r),
                                                                       data.fs * r, data.fs))),
                    f"test segments resampled to {data.fs * r:g} Hz and back (anti-aliased)"))
    m = opts.rate_mismatch
    out.append(_set(f"rate mismatch {m * 100:+g} %", "generalise",
                    _win(data, _mod_segments(data, lambda s: resample(s, data.fs, data.fs * (1 + m)))),
                    f"test segments read at a rate {m * 100:g} % off: every frequency moves, the structural "
                    "resonances too (unlike a speed change, which moves only the shaft-locked lines)"))
    # --- flag
    if "size" in data.held:
        out.append(_set(f"fault size {data.held_values['size']:g} (whole records)", "flag",
                        _win(data, [(r, 0, len(r)) for r in data.held["size"]]),
                        f"{len(data.held['size'])} recordings of an unseen fault size (their fault type is known)"))
    else:
        out.append(Skipped("held-out fault size", "flag", data.skipped.get("size", "not held out")))
    if "type" in data.held:
        for lab in data.held_values["type"]:
            recs = [r for r in data.held["type"] if str(r.label) == lab]
            out.append(_set(f"fault type {lab} (whole records)", "flag", _win(data, [(r, 0, len(r)) for r in recs]),
                            f"{len(recs)} recordings of a class the model does not have"))
    else:
        out.append(Skipped("unseen fault type", "flag", data.skipped.get("type", "")))
    kinds = [k for k in ("inner_race", "outer_race", "ball") if k in FAULT_KINDS]
    for i, (n, d, D) in enumerate(opts.geometries):
        g = BearingGeometry(n_balls=n, ball_diameter=d, pitch_diameter=D)
        out.append(_set(f"other bearing: {n} balls, d/D {d / D:.3f}", "flag",
                        _win(data, _synthetic(data, g, opts.other_rpm, opts.synthetic_seconds, opts.seed + 10 + i,
                                              kinds)),
                        f"physics-based generator, other geometry and speeds {list(opts.other_rpm)} rpm"))
    out.append(_set("simulated, same geometry (control)", "control",
                    _win(data, _synthetic(data, BearingGeometry(), [shaft_rpm(0.0), shaft_rpm(2.0)],
                                          opts.synthetic_seconds, opts.seed + 20, kinds)),
                    "the generator at the training bearing and speeds: how much flagging is simulator, not geometry"))
    if alt_channel:
        out.append(_set("other sensor channel", "flag", _win(data, [(r, 0, len(r)) for r in alt_channel]),
                        "the same machines' other accelerometer (e.g. CWRU fan end), never trained on"))
    else:
        out.append(Skipped("other sensor channel", "flag", "the data has no second channel the loader exposes"))
    cf = opts.clip_fraction
    out.append(_set(f"clipped at {cf:g} of peak", "flag",
                    _win(data, _mod_segments(data, lambda s: np.clip(s, -cf * np.abs(s).max(), cf * np.abs(s).max()))),
                    "saturated sensor"))
    out.append(_set("dead sensor (flat)", "flag",
                    _win(data, _mod_segments(data, lambda s: np.zeros_like(s))), "disconnected: constant zero"))
    out.append(_set("dead sensor (noise floor)", "flag",
                    _win(data, _mod_segments(data, lambda s: 1e-3 * float(np.std(s)) * rng.standard_normal(s.shape))),
                    "only the electronics' white noise left"))
    # --- validation (picks the device rule; never reported as a result)
    out.append(_set("validation: mirrored spectrum", "validation",
                    windows_of([(SignalRecord(r.signal[lo:hi] * np.where(np.arange(hi - lo) % 2, -1, 1), r.fs, r.label,
                                              r.meta), 0, hi - lo) for r, lo, hi in _val_segments(data)],
                               data.window, int(data.protocol.eval_hop or max(1, data.window // 2)), data.class_names,
                               data.fs,
                               max_windows=data.protocol.max_eval_windows),
                    "val segments times (-1)^n (every frequency f moved to fs/2 - f)"))
    n, d, D = opts.validation_geometry
    out.append(_set(f"validation: {n} balls, d/D {d / D:.3f}", "validation",
                    _win(data, _synthetic(data, BearingGeometry(n_balls=n, ball_diameter=d, pitch_diameter=D),
                                          [1500.0], opts.synthetic_seconds, opts.seed + 30, kinds)),
                    "a geometry none of the reported sets uses"))
    return out


def _val_segments(data: ProtocolData):
    """(record, lo, hi) of the val segments, recovered from the val windows' starts."""
    w = data.window
    by_id = {r.record_id: r for r in data.train_records}
    segs = []
    for rid in np.unique(data.val.meta["record"]):
        st = data.val.meta["start"][data.val.meta["record"] == rid]
        segs.append((by_id[str(rid)], int(st.min()), int(st.max()) + w))
    return segs
