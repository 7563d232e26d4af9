"""Synthetic bearing data: kinematics, envelope spectra, seeding, speed, splits."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy.signal import butter, hilbert, sosfiltfilt

from edgeuq.data import (
    BEARING_CLASSES,
    FAULT_KINDS,
    BearingGeometry,
    DataError,
    SyntheticBearingConfig,
    make_synthetic_splits,
    shaft_rpm,
    simulate_bearing_signal,
    synthetic_ood_dataset,
    synthetic_records,
)

FS = 12000.0


def envelope_spectrum(x: np.ndarray, fs: float, band=(2000.0, 5500.0)):
    """Amplitude spectrum of the Hilbert envelope of the band-passed signal."""
    sos = butter(4, band, btype="band", fs=fs, output="sos")
    env = np.abs(hilbert(sosfiltfilt(sos, np.asarray(x, dtype=np.float64))))
    env -= env.mean()
    spec = np.abs(np.fft.rfft(env)) / env.size
    return np.fft.rfftfreq(env.size, 1.0 / fs), spec


def peak_in(f, s, lo, hi):
    m = (f >= lo) & (f <= hi)
    i = np.argmax(s[m])
    return f[m][i], s[m][i]


def line_ratio(f, s, f0, rel=0.02):
    """Height of the largest line within +-rel of f0 over the median level nearby."""
    _, h = peak_in(f, s, f0 * (1 - rel), f0 * (1 + rel))
    ref = (f > f0 * 0.6) & (f < f0 * 1.4)
    return h / np.median(s[ref])


@pytest.fixture(scope="module")
def cfg():
    return SyntheticBearingConfig(duration_s=4.0, seed=3)


def _signal(kind, cfg, load=0.0, severity=0.014, seed=0):
    rng = np.random.default_rng(seed)
    return simulate_bearing_signal(kind, severity, load, cfg.duration_s, rng, cfg)


def test_cwru_bearing_fault_frequencies():
    freqs = BearingGeometry().fault_frequencies(1.0)
    # CWRU's published multiples of shaft speed for the 6205-2RS JEM drive-end bearing
    assert freqs["bpfo"] == pytest.approx(3.5848, abs=1e-3)
    assert freqs["bpfi"] == pytest.approx(5.4152, abs=1e-3)
    assert 2 * freqs["bsf"] == pytest.approx(4.7135, abs=1e-3)
    assert freqs["ftf"] == pytest.approx(0.39828, abs=1e-4)
    # linear in shaft speed; BPFO + BPFI = n * fr
    f30 = BearingGeometry().fault_frequencies(30.0)
    assert f30["bpfo"] + f30["bpfi"] == pytest.approx(9 * 30.0)


def test_contact_angle_lowers_the_geometry_ratio():
    f0 = BearingGeometry().fault_frequencies(30.0)
    f15 = BearingGeometry(contact_angle_deg=15.0).fault_frequencies(30.0)
    assert f15["bpfo"] > f0["bpfo"] and f15["bpfi"] < f0["bpfi"]


def test_shaft_rpm_table_and_bounds():
    assert [shaft_rpm(h) for h in (0, 1, 2, 3)] == [1797.0, 1772.0, 1750.0, 1730.0]
    assert shaft_rpm(1.5) == pytest.approx(1761.0)
    with pytest.raises(DataError, match=r"load_hp must be within \[0, 3\]"):
        shaft_rpm(4)


def test_outer_race_envelope_peaks_at_bpfo(cfg):
    x = _signal("outer_race", cfg, load=1.0)
    f, s = envelope_spectrum(x, FS)
    bpfo = cfg.geometry.fault_frequencies(shaft_rpm(1.0) / 60)["bpfo"]
    fpk, _ = peak_in(f, s, 20, 400)
    assert abs(fpk - bpfo) / bpfo < 0.02
    assert line_ratio(f, s, bpfo) > 10
    # unmodulated: no shaft-rate sidebands around BPFO
    fr = shaft_rpm(1.0) / 60
    assert line_ratio(f, s, bpfo + fr, rel=0.01) < 4


def test_inner_race_envelope_peaks_at_bpfi_with_shaft_sidebands(cfg):
    x = _signal("inner_race", cfg, load=2.0)
    f, s = envelope_spectrum(x, FS)
    fr = shaft_rpm(2.0) / 60
    bpfi = cfg.geometry.fault_frequencies(fr)["bpfi"]
    fpk, _ = peak_in(f, s, 60, 400)  # above the shaft-rate modulation line itself
    assert abs(fpk - bpfi) / bpfi < 0.02
    assert line_ratio(f, s, bpfi) > 10
    assert line_ratio(f, s, bpfi - fr, rel=0.01) > 4
    assert line_ratio(f, s, bpfi + fr, rel=0.01) > 4


def test_ball_envelope_peaks_at_twice_bsf(cfg):
    x = _signal("ball", cfg, load=0.0, severity=0.021)
    f, s = envelope_spectrum(x, FS)
    bsf = cfg.geometry.fault_frequencies(shaft_rpm(0.0) / 60)["bsf"]
    fpk, _ = peak_in(f, s, 40, 400)
    assert abs(fpk - 2 * bsf) / (2 * bsf) < 0.02


def test_normal_has_no_fault_lines(cfg):
    x = _signal("normal", cfg, load=0.0, severity=0.0)
    f, s = envelope_spectrum(x, FS)
    freqs = cfg.geometry.fault_frequencies(shaft_rpm(0.0) / 60)
    for name in ("bpfo", "bpfi"):
        assert line_ratio(f, s, freqs[name]) < 6, name


def test_compound_shows_both_races(cfg):
    x = _signal("compound", cfg, load=0.0)
    f, s = envelope_spectrum(x, FS)
    freqs = cfg.geometry.fault_frequencies(shaft_rpm(0.0) / 60)
    assert line_ratio(f, s, freqs["bpfo"]) > 8
    assert line_ratio(f, s, freqs["bpfi"]) > 8


def test_severity_raises_energy(cfg):
    rms = [np.std(_signal("outer_race", cfg, severity=s, seed=1)) for s in (0.007, 0.014, 0.021)]
    assert rms[0] < rms[1] < rms[2]
    assert np.std(_signal("normal", cfg, severity=0.0, seed=1)) < rms[0]


def test_simulate_rejects_bad_arguments(cfg):
    rng = np.random.default_rng(0)
    with pytest.raises(DataError, match="unknown bearing signal kind 'cage'"):
        simulate_bearing_signal("cage", 0.007, 0, 1.0, rng, cfg)
    with pytest.raises(DataError, match="needs a positive severity"):
        simulate_bearing_signal("inner_race", 0.0, 0, 1.0, rng, cfg)
    with pytest.raises(DataError, match="resonance_hz"):
        SyntheticBearingConfig(resonance_hz=(7000.0, 3000.0))
    with pytest.raises(DataError, match="unknown synthetic kinds"):
        SyntheticBearingConfig(kinds=("normal", "rust"))


def test_kind_registry_is_a_mapping_of_sources():
    assert set(BEARING_CLASSES) | {"compound"} <= set(FAULT_KINDS)
    assert FAULT_KINDS["normal"] == ()
    assert {s.rate for s in FAULT_KINDS["compound"]} == {"bpfi", "bpfo"}


def test_records_cover_the_grid_and_are_balanced():
    cfg = SyntheticBearingConfig(duration_s=0.5)
    recs = synthetic_records(cfg)
    assert len(recs) == 4 * 3 * 4
    labels = [r.label for r in recs]
    assert {lab: labels.count(lab) for lab in BEARING_CLASSES} == {c: 12 for c in BEARING_CLASSES}
    assert len({r.record_id for r in recs}) == len(recs)
    for r in recs:
        assert r.fs == cfg.fs and r.signal.dtype == np.float32 and len(r) == 6000
        assert r.meta["load_hp"] in cfg.loads
        assert (r.meta["severity"] == 0.0) == (r.label == "normal")
        assert abs(r.meta["rpm"] - shaft_rpm(r.meta["load_hp"])) < 0.02 * shaft_rpm(r.meta["load_hp"])


def test_seeding_is_reproducible_and_independent_of_kinds():
    cfg = SyntheticBearingConfig(duration_s=0.5, seed=11)
    a = {r.record_id: r.signal for r in synthetic_records(cfg)}
    b = {r.record_id: r.signal for r in synthetic_records(cfg, kinds=("outer_race", "compound"))}
    for rid, sig in b.items():
        if rid in a:
            np.testing.assert_array_equal(sig, a[rid])
    again = synthetic_records(cfg)
    assert all(np.array_equal(r.signal, a[r.record_id]) for r in again)
    other = synthetic_records(replace(cfg, seed=12))
    assert not any(np.allclose(r.signal, a[r.record_id]) for r in other)
    # records of one configuration are not copies of each other
    sigs = list(a.values())
    assert not np.allclose(sigs[0], sigs[1])


def test_default_dataset_has_every_configuration_at_full_length():
    """The default dataset's size (its generation speed is a benchmark: bench/synthetic_speed.py)."""
    cfg = SyntheticBearingConfig()  # 4 classes x 3 severities x 4 loads, 4 s at 12 kHz
    recs = synthetic_records(cfg)
    assert len(recs) == 48 and all(len(r) == 48000 for r in recs)
    assert len({r.record_id for r in recs}) == len(recs)  # no duplicate record
    for label in ("normal", "inner_race", "outer_race", "ball"):  # every class at every load
        assert {r.meta["load_hp"] for r in recs if r.label == label} == {0.0, 1.0, 2.0, 3.0}
    assert all(np.all(np.isfinite(r.signal)) and r.signal.std() > 0 for r in recs)


def test_make_synthetic_splits_in_domain_and_by_load():
    cfg = SyntheticBearingConfig(duration_s=1.0)
    s = make_synthetic_splits(cfg, window=1024, hop=512)
    assert s.class_names == BEARING_CLASSES and s.window == 1024
    for ds in (s.train, s.val, s.test):
        counts = ds.class_counts()
        assert (counts > 0).all() and counts.min() == counts.max()
        np.testing.assert_allclose(ds.x.mean(axis=1), 0, atol=1e-4)
        np.testing.assert_allclose(ds.x.std(axis=1), 1, atol=1e-3)
    s2 = make_synthetic_splits(cfg, window=1024, hop=512, split="by_load", test_loads=(3,))
    assert set(np.unique(s2.test.meta["load_hp"])) == {3.0}
    assert 3.0 not in set(np.unique(s2.train.meta["load_hp"]))
    with pytest.raises(DataError, match="unknown split 'random'"):
        make_synthetic_splits(cfg, split="random")


def test_ood_set_is_unlabelled_compound():
    ood = synthetic_ood_dataset(SyntheticBearingConfig(duration_s=0.5), window=1024, hop=1024)
    assert len(ood) > 0 and (ood.y == -1).all()
    assert set(ood.meta["label"]) == {"compound"}
