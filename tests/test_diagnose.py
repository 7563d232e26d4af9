"""`edgeuq diagnose`: a host signal file streamed through the device runtime's loop (JSON lines,
one decision per window, alarms, summary), the simulated sensor, and bad input kept running."""
import json

import numpy as np

from edgeuq.cli import main
from test_calibrate import calibrated, trained  # noqa: F401  (module-scoped fixtures: a tiny trained bundle)


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_diagnose_signal_file(calibrated, tmp_path, capsys):
    dest, res = calibrated
    from edgeuq.data import synthetic_records
    from edgeuq.data.synthetic import SyntheticBearingConfig

    cfg = SyntheticBearingConfig(fs=12000.0, duration_s=2.0, loads=(0.0,), seed=5)
    rec = synthetic_records(cfg, kinds=("outer_race",))[0]
    sig = np.asarray(rec.signal, dtype=np.float32).copy()
    sig[3000:3100] = np.nan                        # a NaN burst: flagged, never a crash
    np.savez(tmp_path / "x.npz", signal=sig, fs=rec.fs)
    out = tmp_path / "d.jsonl"
    # the host loaders refuse a file with NaN (a clear error) ...
    assert main(["diagnose", "--bundle", str(dest), "--input", str(tmp_path / "x.npz")]) == 2
    assert "non-finite" in capsys.readouterr().err
    # ... the stream's own file source plays it and flags the windows
    assert main(["diagnose", "--bundle", str(dest), "--source", f"file:{tmp_path / 'x.npz'}", "--hop", "512",
                 "--alarm", "2/3", "--out", str(out)]) == 0
    recs = _lines(out)
    dec = [r for r in recs if r["type"] == "decision"]
    assert len(dec) == (len(sig) - 1024) // 512 + 1
    assert [d["window"] for d in dec] == list(range(len(dec)))
    bad = [d for d in dec if "nonfinite_input" in d["flags"]]
    holding = [i for i in range(len(dec)) if 512 * i < 3100 and 512 * i + 1024 > 3000]   # windows 4, 5, 6
    assert [d["window"] for d in bad] == holding and all(d["abstain"] and d["class"] is None for d in bad)
    good = [d for d in dec if not d["flags"]]
    assert all(d["density"] is not None and d["set"] is not None and d["samples"] == 8 for d in good)
    summ = recs[-1]
    assert summ["type"] == "summary" and summ["windows"] == len(dec) and summ["flagged"] == 3
    assert "windows" in capsys.readouterr().err
    clean = tmp_path / "c.npz"
    np.savez(clean, signal=np.nan_to_num(sig), fs=rec.fs)
    assert main(["diagnose", "--bundle", str(dest), "--input", str(clean), "--quiet", "--out", str(out)]) == 0
    recs = _lines(out)
    assert recs[-1]["type"] == "summary" and recs[-1]["windows"] == len(sig) // 1024
    assert all(r["type"] in ("alarm", "summary") for r in recs)


def test_diagnose_simulated_sensor_adaptive(calibrated, tmp_path):
    dest, res = calibrated
    out = tmp_path / "s.jsonl"
    assert main(["diagnose", "--bundle", str(dest), "--source", "sim:ball", "--max-seconds", "1.0", "--adaptive",
                 "--out", str(out)]) == 0
    recs = _lines(out)
    dec = [r for r in recs if r["type"] == "decision"]
    assert len(dec) == 11 and all(r.get("simulated") for r in dec)
    s_max = res.calibration.adaptive.s_max
    assert all(res.calibration.adaptive.s_min <= d["samples"] <= s_max for d in dec)
    assert recs[-1]["adaptive"] is True


def test_diagnose_checks_its_options_as_the_device_stream_does(calibrated, tmp_path, capsys):
    """`edgeuq diagnose` sets up through the runtime's own `diagnosis_setup` (one copy with `stream`
    and `serve`): a --normal-class the bundle lacks and a malformed --alarm are refused by name
    before anything streams."""
    dest, _ = calibrated
    assert main(["diagnose", "--bundle", str(dest), "--source", "sim:normal", "--max-seconds", "0.5",
                 "--normal-class", "no_such_class"]) == 2
    assert "--normal-class 'no_such_class' is not a class of the bundle" in capsys.readouterr().err
    assert main(["diagnose", "--bundle", str(dest), "--source", "sim:normal", "--max-seconds", "0.5",
                 "--alarm", "3-5"]) == 2
    assert "--alarm must be K/N" in capsys.readouterr().err


def test_hop_path_on_token_features_decides_as_the_general_path(calibrated):
    """The one-window stream path (HopPath) on a bundle whose trunk emits token features (1, T, d):
    its density goes through the calibration's pooling, and every decision equals the general
    path's (Diagnoser.decide_general, the reference) on the same windows and noise seed."""
    from edgeuq_runtime import UncertaintyRuntime
    from edgeuq_runtime.stream import Diagnoser

    dest, _ = calibrated
    fast = Diagnoser(UncertaintyRuntime(dest), samples=8, seed=5)
    ref = Diagnoser(UncertaintyRuntime(dest), samples=8, seed=5, fast=False)
    assert fast.hop_path is not None, fast.hop_path_reason
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((24, fast.rt.input_length)) * rng.uniform(0.2, 3.0, (24, 1))).astype(np.float32)
    assert fast.hop_path.features(x[0]).ndim == 3          # the case this test is about
    for w in x:
        a, b = fast.decide(w).to_json(), ref.decide_general(w).to_json()
        assert b["density"] is not None
        for k in ("class", "abstain", "reasons", "flags", "set", "samples"):
            assert a[k] == b[k], (k, a[k], b[k])
        for k in ("density", "combined", "total", "epistemic", "confidence"):
            assert abs(a[k] - b[k]) <= 1e-5 * max(1.0, abs(b[k])), (k, a[k], b[k])
