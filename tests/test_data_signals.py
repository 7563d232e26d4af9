"""Generic signal loader: round trips and informative errors."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.io

from edgeuq.data import DataError, load_signal_file, load_signals


@pytest.fixture
def sig():
    return np.random.default_rng(0).standard_normal(3000).astype(np.float32)


def test_npz_round_trip(tmp_path, sig):
    p = tmp_path / "a.npz"
    np.savez(p, signal=sig, fs=np.float64(12000.0), label=np.array("ball"))
    r = load_signal_file(p)
    np.testing.assert_array_equal(r.signal, sig)
    assert r.fs == 12000.0 and r.label == "ball" and r.record_id == "a"
    assert load_signal_file(p, label="normal").label == "normal"
    with pytest.raises(DataError, match="fs=8000 Hz was passed but the file says fs=12000 Hz"):
        load_signal_file(p, fs=8000)
    np.savez(tmp_path / "b.npz", signal=sig)
    assert load_signal_file(tmp_path / "b.npz", fs=100.0).fs == 100.0
    with pytest.raises(DataError, match="sampling rate unknown; pass fs"):
        load_signal_file(tmp_path / "b.npz")
    np.savez(tmp_path / "c.npz", x=sig)
    with pytest.raises(DataError, match=r"no array 'signal' in the .npz; arrays: \['x'\]"):
        load_signal_file(tmp_path / "c.npz", fs=1.0)


def test_npy_round_trip_and_column_vector(tmp_path, sig):
    np.save(tmp_path / "a.npy", sig[:, None].astype(np.float64))
    r = load_signal_file(tmp_path / "a.npy", fs=1000)
    np.testing.assert_allclose(r.signal, sig)
    assert r.signal.dtype == np.float32 and r.label is None
    with pytest.raises(DataError, match="sampling rate unknown"):
        load_signal_file(tmp_path / "a.npy")


def test_csv_single_column_and_header(tmp_path, sig):
    p = tmp_path / "one.csv"
    np.savetxt(p, sig, fmt="%.9g")
    np.testing.assert_allclose(load_signal_file(p, fs=10).signal, sig, rtol=1e-6)
    p2 = tmp_path / "multi.csv"
    rows = ["time,sensor,acc_x,acc_y"] + [f"{i / 10:.1f},S1,{v:.9g},{-v:.9g}" for i, v in enumerate(sig)]
    p2.write_text("\n".join(rows) + "\n")
    # first all-numeric column is 'time'; pick a column by header name
    r = load_signal_file(p2, fs=10, key="acc_y")
    np.testing.assert_allclose(r.signal, -sig, rtol=1e-6)
    assert r.meta["key"] == "acc_y"
    assert load_signal_file(p2, fs=10).meta["key"] == "time"
    with pytest.raises(DataError, match=r"no column 'acc_z'; columns: \['time', 'sensor', 'acc_x', 'acc_y'\]"):
        load_signal_file(p2, fs=10, key="acc_z")
    with pytest.raises(DataError, match="column 'sensor' has non-numeric"):
        load_signal_file(p2, fs=10, key="sensor")
    p3 = tmp_path / "semi.csv"
    p3.write_text("v;w\n1;2\n3;4\n5;6\n")
    np.testing.assert_array_equal(load_signal_file(p3, fs=1).signal, [1, 3, 5])


def test_mat_round_trip_and_key_selection(tmp_path, sig):
    p = tmp_path / "one.mat"
    scipy.io.savemat(p, {"vib": sig[:, None], "fs": 25600.0})
    r = load_signal_file(p)
    np.testing.assert_array_equal(r.signal, sig)
    assert r.fs == 25600.0 and r.meta["key"] == "vib"
    p2 = tmp_path / "two.mat"
    scipy.io.savemat(p2, {"de": sig, "fe": sig * 2, "rpm": 1797})
    with pytest.raises(DataError, match=r"2 candidate signals \['de', 'fe'\]; pass key=<name>"):
        load_signal_file(p2, fs=12000)
    np.testing.assert_allclose(load_signal_file(p2, fs=12000, key="fe").signal, sig * 2)
    with pytest.raises(DataError, match=r"no variable 'ba'; variables: \['de', 'fe', 'rpm'\]"):
        load_signal_file(p2, fs=12000, key="ba")


def test_resampling_to_target_fs(tmp_path):
    fs = 48000
    t = np.arange(fs) / fs
    np.savez(tmp_path / "tone.npz", signal=np.sin(2 * np.pi * 1000 * t), fs=fs)
    r = load_signal_file(tmp_path / "tone.npz", target_fs=12000)
    assert r.fs == 12000 and len(r) == 12000 and r.meta["fs_original"] == 48000
    spec = np.abs(np.fft.rfft(r.signal))
    assert np.fft.rfftfreq(len(r), 1 / 12000)[np.argmax(spec)] == pytest.approx(1000, abs=1)


def test_errors_are_informative(tmp_path, sig):
    with pytest.raises(FileNotFoundError, match="signal file not found"):
        load_signal_file(tmp_path / "missing.npy", fs=1)
    (tmp_path / "x.wav").write_bytes(b"RIFF")
    with pytest.raises(DataError, match=r"unsupported file extension '\.wav'"):
        load_signal_file(tmp_path / "x.wav", fs=1)
    np.save(tmp_path / "two.npy", np.stack([sig, sig], axis=1))
    with pytest.raises(DataError, match=r"shape \(3000, 2\), i.e. 2 channels"):
        load_signal_file(tmp_path / "two.npy", fs=1)
    np.save(tmp_path / "empty.npy", np.zeros(0))
    with pytest.raises(DataError, match="signal is empty"):
        load_signal_file(tmp_path / "empty.npy", fs=1)
    bad = sig.copy()
    bad[[5, 9]] = [np.nan, np.inf]
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(DataError, match=r"2 non-finite value\(s\) \(NaN/inf\), first at sample 5"):
        load_signal_file(tmp_path / "nan.npy", fs=1)
    (tmp_path / "hdr.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="header only"):
        load_signal_file(tmp_path / "hdr.csv", fs=1)


def test_load_signals_directory(tmp_path, sig):
    np.save(tmp_path / "b.npy", sig)
    np.savetxt(tmp_path / "a.csv", sig[:100])
    (tmp_path / "notes.md").write_text("ignored")
    recs = load_signals(tmp_path, fs=500.0, label="normal")
    assert [r.record_id for r in recs] == ["a", "b"]
    assert [len(r) for r in recs] == [100, 3000] and all(r.label == "normal" for r in recs)
    assert len(load_signals(tmp_path / "b.npy", fs=1.0)) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no signal files with a supported extension"):
        load_signals(empty)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_signals(tmp_path / "nowhere")
