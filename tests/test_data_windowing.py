"""Containers, windowing, resampling, time-disjoint splits and added noise."""
from __future__ import annotations

import numpy as np
import pytest

from edgeuq.data import (
    BEARING_CLASSES,
    WINDOW_META_KEYS,
    DataError,
    SignalRecord,
    Splits,
    WindowDataset,
    add_noise,
    concat_datasets,
    resample,
    sliding_windows,
    split_by_load,
    split_in_domain,
    window_records,
)


def _rec(n, label="normal", rid="r", fs=1000.0, load=0.0, seed=0, **meta):
    sig = np.random.default_rng(seed).standard_normal(n)
    return SignalRecord(sig, fs, label, {"record_id": rid, "load_hp": load, **meta})


def _dominant_freq(x, fs):
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return np.fft.rfftfreq(x.size, 1 / fs)[np.argmax(spec)]


# ---------------------------------------------------------------- containers


def test_signal_record_validates_and_converts():
    r = SignalRecord(np.arange(5, dtype=np.int16), 100, "ball", {"record_id": "x"})
    assert r.signal.dtype == np.float32 and len(r) == 5 and r.duration_s == 0.05
    with pytest.raises(DataError, match="x: signal must be 1-D"):
        SignalRecord(np.zeros((2, 3)), 100, None, {"record_id": "x"})
    with pytest.raises(DataError, match="signal is empty"):
        SignalRecord(np.zeros(0), 100)
    with pytest.raises(DataError, match="non-finite values \\(first at sample 2\\)"):
        SignalRecord(np.array([0, 1, np.nan]), 100)
    with pytest.raises(DataError, match="sampling rate must be a positive"):
        SignalRecord(np.zeros(3), -1)


def test_window_dataset_validates_shapes():
    x = np.zeros((4, 8))
    with pytest.raises(DataError, match=r"y must have shape \(4,\)"):
        WindowDataset(x, np.zeros(3, int), ("a", "b"), 10.0)
    with pytest.raises(DataError, match=r"meta\['start'\] must have shape \(4,\)"):
        WindowDataset(x, np.zeros(4, int), ("a", "b"), 10.0, {"start": np.zeros(5)})
    with pytest.raises(DataError, match=r"y values must lie in \[-1, 1\]"):
        WindowDataset(x, np.array([0, 1, 2, 0]), ("a", "b"), 10.0)
    with pytest.raises(DataError, match="duplicates"):
        WindowDataset(x, np.zeros(4, int), ("a", "a"), 10.0)
    with pytest.raises(DataError, match=r"x must have shape \(N, L\)"):
        WindowDataset(np.zeros(8), np.zeros(8, int), ("a",), 10.0)
    ds = WindowDataset(x, np.array([0, 1, -1, 1]), ("a", "b"), 10.0)
    assert ds.x.dtype == np.float32 and ds.y.dtype == np.int64 and ds.window == 8
    assert ds.class_counts().tolist() == [1, 2] and ds.n_unlabelled == 1


def test_subset_and_concat():
    x = np.arange(20, dtype=np.float32).reshape(5, 4)
    ds = WindowDataset(x, np.array([0, 1, 0, 1, -1]), ("a", "b"), 10.0, {"start": np.arange(5)})
    sub = ds.subset(ds.y == 1)
    assert len(sub) == 2 and sub.meta["start"].tolist() == [1, 3]
    np.testing.assert_array_equal(ds.subset([4, 0]).x, x[[4, 0]])
    assert len(ds.subset(slice(1, 3))) == 2
    with pytest.raises(DataError, match=r"boolean mask must have shape \(5,\)"):
        ds.subset(np.ones(3, bool))
    both = ds.concat(sub)
    assert len(both) == 7 and both.meta["start"].tolist()[-2:] == [1, 3]
    assert len(concat_datasets([ds, ds, ds])) == 15
    other = WindowDataset(x, ds.y, ("a", "c"), 10.0, {"start": np.arange(5)})
    with pytest.raises(DataError, match="class names differ"):
        ds.concat(other)
    with pytest.raises(DataError, match="sampling rates differ"):
        ds.concat(WindowDataset(x, ds.y, ("a", "b"), 20.0, {"start": np.arange(5)}))
    with pytest.raises(DataError, match="meta keys differ"):
        ds.concat(WindowDataset(x, ds.y, ("a", "b"), 10.0))


def test_splits_must_agree():
    a = WindowDataset(np.zeros((2, 4)), np.zeros(2, int), ("a",), 10.0)
    b = WindowDataset(np.zeros((2, 5)), np.zeros(2, int), ("a",), 10.0)
    with pytest.raises(DataError, match="val window 5 != train 4"):
        Splits(a, b, a)


# ----------------------------------------------------------------- windowing


def test_sliding_windows_shape_and_content():
    sig = np.arange(10.0)
    w = sliding_windows(sig, 4, 3)
    assert w.shape == (3, 4) and w.dtype == np.float32
    np.testing.assert_array_equal(w[:, 0], [0, 3, 6])
    assert sliding_windows(sig, 10, 1).shape == (1, 10)
    with pytest.raises(DataError, match="shorter than the window of 11"):
        sliding_windows(sig, 11, 1)
    with pytest.raises(DataError, match="window must be a positive integer"):
        sliding_windows(sig, 0, 1)
    with pytest.raises(DataError, match="hop must be a positive integer"):
        sliding_windows(sig, 4, -2)


@pytest.mark.parametrize("fs_from,fs_to,tone", [(48000, 12000, 1234.5), (12000, 48000, 987.0), (25600, 12000, 440.0)])
def test_resample_preserves_tone_frequency(fs_from, fs_to, tone):
    t = np.arange(int(fs_from * 1.0)) / fs_from
    y = resample(np.sin(2 * np.pi * tone * t), fs_from, fs_to)
    assert y.dtype == np.float32
    assert y.size == pytest.approx(t.size * fs_to / fs_from, abs=1)
    assert _dominant_freq(y, fs_to) == pytest.approx(tone, abs=1.5)
    mid = y[fs_to // 10 : -fs_to // 10]
    assert np.std(mid) == pytest.approx(1 / np.sqrt(2), rel=0.02)  # pass-band gain ~1


def test_resample_suppresses_alias_and_noop():
    fs = 48000
    t = np.arange(fs) / fs
    y = resample(np.sin(2 * np.pi * 9000.0 * t), fs, 12000)  # above the new Nyquist (6 kHz)
    assert np.std(y[1000:-1000]) < 0.01  # would alias to 3 kHz at full power without the filter
    x = np.random.default_rng(0).standard_normal(100)
    np.testing.assert_allclose(resample(x, 1000, 1000), x.astype(np.float32))
    with pytest.raises(DataError, match="fs_to must be a positive finite rate"):
        resample(x, 1000, 0)


def test_window_records_labels_meta_and_normalisation():
    recs = [
        _rec(1000, "ball", "a", severity=0.021),
        _rec(600, "normal", "b", seed=1),
        _rec(500, None, "c", seed=2),
    ]
    ds = window_records(recs, 200, 100)
    assert set(WINDOW_META_KEYS) == set(ds.meta)
    assert ds.class_names == BEARING_CLASSES
    assert ds.class_counts().tolist() == [5, 0, 0, 9] and ds.n_unlabelled == 4
    assert ds.meta["start"][:9].tolist() == list(range(0, 900, 100))
    assert ds.meta["record"].tolist().count("b") == 5
    assert np.isnan(ds.meta["severity"][ds.meta["record"] == "b"]).all()
    assert (ds.meta["severity"][ds.meta["record"] == "a"] == 0.021).all()
    np.testing.assert_allclose(ds.x.std(axis=1), 1.0, atol=1e-4)
    raw = window_records(recs[:1], 200, 100, normalize=False)
    np.testing.assert_allclose(raw.x[1], recs[0].signal[100:300])


def test_window_records_unknown_labels_and_rates():
    recs = [_rec(400, "compound", "u")]
    with pytest.raises(DataError, match="label 'compound' is not one of the class names"):
        window_records(recs, 100, 100)
    ds = window_records(recs, 100, 100, allow_unknown=True)
    assert (ds.y == -1).all() and set(ds.meta["label"]) == {"compound"}
    mixed = [_rec(4000, "normal", "a", fs=4000.0), _rec(1000, "normal", "b", fs=1000.0)]
    with pytest.raises(DataError, match="different sampling rates .* pass target_fs"):
        window_records(mixed, 100, 100)
    ds = window_records(mixed, 100, 100, target_fs=1000.0)
    assert ds.fs == 1000.0 and len(ds) == 20
    with pytest.raises(DataError, match="no records given"):
        window_records([], 100, 100)


# -------------------------------------------------------------------- splits


def _starts_by_record(ds):
    out = {}
    for rid, st in zip(ds.meta["record"], ds.meta["start"]):
        out.setdefault(str(rid), []).append(int(st))
    return out


def test_split_in_domain_is_time_disjoint():
    recs = [_rec(10_000, c, f"{c}{i}", seed=i * 7 + k) for k, c in enumerate(BEARING_CLASSES) for i in range(2)]
    window, hop = 256, 64
    s = split_in_domain(recs, window, hop, fractions=(0.6, 0.2, 0.2))
    spans = {name: _starts_by_record(getattr(s, name)) for name in ("train", "val", "test")}
    for r in recs:
        rid = r.record_id
        tr, va, te = (np.array(spans[k][rid]) for k in ("train", "val", "test"))
        # every window of a split lies inside that split's segment, in time order
        assert tr.min() >= 0 and tr.max() + window <= 6000
        assert va.min() >= 6000 and va.max() + window <= 8000
        assert te.min() >= 8000 and te.max() + window <= 10_000
        # no sample is shared between splits
        assert tr.max() + window <= va.min() and va.max() + window <= te.min()
    # the windows really are the record's samples at those offsets
    raw = split_in_domain(recs[:1], window, hop, normalize=False)
    i = len(raw.val) // 2
    st = int(raw.val.meta["start"][i])
    np.testing.assert_array_equal(raw.val.x[i], recs[0].signal[st : st + window])
    for ds in (s.train, s.val, s.test):
        assert (ds.class_counts() > 0).all()


def test_split_in_domain_errors():
    recs = [_rec(1000, "normal")]
    with pytest.raises(DataError, match="fractions must sum to 1"):
        split_in_domain(recs, 100, 50, fractions=(0.5, 0.2, 0.2))
    with pytest.raises(DataError, match="fractions must all be positive"):
        split_in_domain(recs, 100, 50, fractions=(1.0, 0.0, 0.0))
    with pytest.raises(DataError, match=r"segment \[700, 850\) has 150 samples, shorter than the window of 200"):
        split_in_domain(recs, 200, 50)


def test_split_by_load_holds_out_loads():
    recs = [
        _rec(4000, c, f"{c}_{load}", load=float(load), seed=10 * load + k)
        for k, c in enumerate(BEARING_CLASSES)
        for load in (0, 1, 2, 3)
    ]
    s = split_by_load(recs, test_loads=[2, 3], window=200, hop=100, val_fraction=0.25)
    assert set(s.test.meta["load_hp"]) == {2.0, 3.0}
    assert set(s.train.meta["load_hp"]) == set(s.val.meta["load_hp"]) == {0.0, 1.0}
    tr, va = _starts_by_record(s.train), _starts_by_record(s.val)
    for rid in tr:
        assert max(tr[rid]) + 200 <= 3000 <= min(va[rid])
    assert min(min(v) for v in _starts_by_record(s.test).values()) == 0  # whole records
    with pytest.raises(DataError, match=r"no record has a load in test_loads \[5.0\]"):
        split_by_load(recs, [5], 200, 100)
    with pytest.raises(DataError, match="nothing left to train on"):
        split_by_load(recs, [0, 1, 2, 3], 200, 100)
    with pytest.raises(DataError, match="needs meta\\['load_hp'\\]"):
        split_by_load([SignalRecord(np.ones(1000), 1000.0, "normal", {"record_id": "z"})], [0], 100, 100)


# --------------------------------------------------------------------- noise


def test_add_noise_hits_the_requested_snr():
    t = np.arange(4096) / 1000.0
    x = np.stack([np.sin(2 * np.pi * 50 * t), 3 * np.sin(2 * np.pi * 80 * t)])
    ds = WindowDataset(x, np.array([0, 1]), ("a", "b"), 1000.0, {"start": np.array([0, 1])})
    for snr in (0.0, 10.0):
        noisy = add_noise(ds, snr, seed=1, normalize=False)
        noise = noisy.x.astype(np.float64) - ds.x
        measured = 10 * np.log10((ds.x.astype(np.float64) ** 2).mean(1) / (noise**2).mean(1))
        np.testing.assert_allclose(measured, snr, atol=0.3)
        assert noisy.meta["start"].tolist() == [0, 1] and noisy.y.tolist() == [0, 1]
    a, b, c = add_noise(ds, 5, seed=2), add_noise(ds, 5, seed=2), add_noise(ds, 5, seed=3)
    np.testing.assert_array_equal(a.x, b.x)
    assert not np.allclose(a.x, c.x)
    np.testing.assert_allclose(a.x.std(axis=1), 1.0, atol=1e-4)
    np.testing.assert_allclose(add_noise(ds, np.inf, normalize=False).x, ds.x)
    with pytest.raises(DataError, match="snr_db must be a number"):
        add_noise(ds, "loud")
