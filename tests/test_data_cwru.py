"""CWRU 12 kHz drive-end loader (skips cleanly when the data folder is absent)."""
from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
import scipy.io
from scipy.signal import butter, hilbert, sosfiltfilt

from edgeuq.data import (
    BEARING_CLASSES,
    BearingGeometry,
    DataError,
    DataIntegrityError,
    load_cwru,
    parse_cwru_filename,
    split_by_load,
)


@pytest.fixture(scope="module")
def cwru(cwru_dir):
    return load_cwru(cwru_dir)


def by_number(records):
    return {r.meta["file_number"]: r for r in records}


def test_parse_cwru_filename():
    assert parse_cwru_filename("OR014at6_2hp_199.mat") == {
        "fault_type": "OR", "label": "outer_race", "severity": 0.014,
        "or_position": "@6", "load_hp": 2.0, "file_number": 199,
    }
    info = parse_cwru_filename("Normal_0hp_097.mat")
    assert info["label"] == "normal" and info["severity"] == 0.0 and info["file_number"] == 97
    assert parse_cwru_filename("B021_3hp_225.mat")["label"] == "ball"
    assert parse_cwru_filename("IR007_1hp_106.mat")["label"] == "inner_race"
    with pytest.raises(DataError, match="cannot parse CWRU file name 'XYZ007_0hp_1.mat'"):
        parse_cwru_filename("XYZ007_0hp_1.mat")
    with pytest.raises(DataError, match="needs a 3-digit size"):
        parse_cwru_filename("IR_0hp_105.mat")


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="CWRU data folder not found"):
        load_cwru(tmp_path / "nope")


def test_labels_and_meta(cwru):
    assert len(cwru) == 37
    labels = [r.label for r in cwru]
    assert {c: labels.count(c) for c in BEARING_CLASSES} == {
        "normal": 1, "inner_race": 12, "outer_race": 12, "ball": 12
    }
    recs = by_number(cwru)
    assert recs[105].label == "inner_race" and recs[105].meta["severity"] == 0.007
    assert recs[118].label == "ball" and recs[118].meta["load_hp"] == 0.0
    assert recs[199].label == "outer_race" and recs[199].meta["load_hp"] == 2.0
    assert recs[199].meta["or_position"] == "@6" and recs[199].meta["severity"] == 0.014
    assert recs[237].meta["de_key"] == "X237_DE_time"
    for r in cwru:
        assert r.fs == 12000.0 and r.signal.dtype == np.float32
        assert abs(r.meta["rpm"] - r.meta["rpm_nominal"]) < 15


def test_normal_baseline_resampled_from_48k(cwru, cwru_dir):
    rec = by_number(cwru)[97]
    assert rec.meta["fs_original"] == 48000.0 and rec.fs == 12000.0
    assert abs(len(rec) - 243938 / 4) <= 1
    raw = scipy.io.loadmat(str(cwru_dir / "12k_DE" / "Normal_0hp_097.mat"))["X097_DE_time"].ravel()
    # anti-aliased decimation keeps the low band: RMS within a few % and the waveform matches
    assert np.std(rec.signal) == pytest.approx(np.std(raw), rel=0.1)
    lowpassed = raw[::4][: len(rec)]
    assert np.corrcoef(lowpassed[100:-100], rec.signal[100:-100])[0, 1] > 0.8


def test_reads_the_files_own_key(cwru, cwru_dir):
    rec = by_number(cwru)[130]
    mat = scipy.io.loadmat(str(cwru_dir / "12k_DE" / "OR007at6_0hp_130.mat"))
    np.testing.assert_array_equal(rec.signal, mat["X130_DE_time"].ravel().astype(np.float32))
    assert not np.array_equal(rec.signal[:1000], mat["X130_FE_time"].ravel()[:1000].astype(np.float32))


def test_envelope_lines_of_real_faults(cwru):
    """Real OR/IR 0.007 in records show BPFO / BPFI as the dominant envelope line."""
    geom = BearingGeometry()
    recs = by_number(cwru)
    for num, key in ((130, "bpfo"), (133, "bpfo"), (105, "bpfi"), (108, "bpfi")):
        r = recs[num]
        x = r.signal.astype(np.float64)[:60000]
        sos = butter(4, (2000, 5000), btype="band", fs=r.fs, output="sos")
        env = np.abs(hilbert(sosfiltfilt(sos, x)))
        spec = np.abs(np.fft.rfft(env - env.mean()))
        f = np.fft.rfftfreq(env.size, 1 / r.fs)
        m = (f > 50) & (f < 400)
        expected = geom.fault_frequencies(r.meta["rpm"] / 60)[key]
        assert abs(f[m][np.argmax(spec[m])] - expected) / expected < 0.02, num


def test_load_split_on_real_data(cwru):
    s = split_by_load(cwru, test_loads=[3], window=2048, hop=2048)
    assert set(s.test.meta["load_hp"]) == {3.0}
    assert 3.0 not in set(s.train.meta["load_hp"]) | set(s.val.meta["load_hp"])
    assert s.test.class_counts()[0] == 0  # the normal baseline exists at 0 hp only
    assert (s.train.class_counts() > 0).all()


def _copy_subset(cwru_dir, tmp_path, names, manifest=True):
    (tmp_path / "12k_DE").mkdir()
    for n in names:
        shutil.copy(cwru_dir / "12k_DE" / n, tmp_path / "12k_DE" / n)
    if manifest:
        with open(cwru_dir / "MANIFEST.csv", newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if r["file"].split("/")[-1] in names]
        with open(tmp_path / "MANIFEST.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        return rows


def test_without_manifest_names_are_parsed(cwru_dir, tmp_path):
    _copy_subset(cwru_dir, tmp_path, ["Normal_0hp_097.mat", "B007_2hp_120.mat"], manifest=False)
    recs = load_cwru(tmp_path)
    assert [r.label for r in recs] == ["normal", "ball"]
    assert abs(len(recs[0]) - 243938 / 4) <= 1  # normal assumed 48 kHz
    assert recs[1].meta["load_hp"] == 2.0 and recs[1].meta["rpm"] > 1700
    with pytest.raises(DataError, match="verify_hash=True needs"):
        load_cwru(tmp_path, verify_hash=True)


def test_hash_check_and_key_errors(cwru_dir, tmp_path):
    rows = _copy_subset(cwru_dir, tmp_path, ["IR007_0hp_105.mat"])
    assert len(load_cwru(tmp_path, verify_hash=True)) == 1
    # a file whose bytes differ from the manifest
    mat = scipy.io.loadmat(str(tmp_path / "12k_DE" / "IR007_0hp_105.mat"))
    scipy.io.savemat(str(tmp_path / "12k_DE" / "IR007_0hp_105.mat"),
                     {"X106_DE_time": mat["X105_DE_time"]})
    with pytest.raises(DataIntegrityError, match="sha256 mismatch"):
        load_cwru(tmp_path, verify_hash=True)
    # ... and which holds another record's key only: never read X106 for file 105
    with pytest.raises(DataError, match=r"drive-end key 'X105_DE_time' not found; keys in the file: \['X106_DE_time'\]"):
        load_cwru(tmp_path)
    assert rows[0]["de_key"] == "X105_DE_time"
