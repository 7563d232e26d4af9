"""`edgeuq calibrate` on a tiny trained bundle: the section and density file are written through
the runtime's write_bundle; conformal coverage on held-out windows of the deployed bundle; the
in-distribution false-alarm rate of the abstention thresholds; `edgeuq evaluate` reports density and
combined scores equal to a direct computation."""
import json
from pathlib import Path

import numpy as np
import pytest

from edgeuq.calibrate import CalibrationOptions, calibrate_bundle
from edgeuq.catalog import Recipe
from edgeuq_runtime import UncertaintyRuntime, load_bundle
from edgeuq_runtime.calibration import Calibrated
from edgeuq_runtime.density import pool_features
from edgeuq_runtime.errors import ManifestError
from edgeuq_runtime.uncertainty import decompose, softmax

TINY = dict(
    name="tiny-cal", description="tiny", task="bearing", boards=["x86-host"],
    data={"source": "synthetic", "window": 1024, "hop": 256, "fs_hz": 12000,
          "classes": ["normal", "inner_race", "outer_race", "ball"], "ood_kind": "compound", "shift_snr_db": 0.0,
          "synthetic": {"duration_s": 2.0, "loads": [0, 2], "seed": 3}},
    model={"patch": 64, "d_model": 16, "heads": 2, "depth": 2, "ffn": 32, "dropout": 0.2,
           "stochastic_blocks": [1], "stochastic_head": True},
    train={"epochs": 3, "batch_size": 32, "lr": 3e-3, "weight_decay": 1e-2, "patience": 3, "seed": 0},
    uq={"samples": 8}, bundle={"model_name": "tiny-cal", "model_version": "0.0.1"},
)


def _recipe():
    import dataclasses

    fields = {f.name for f in dataclasses.fields(Recipe)}
    return Recipe(**{k: v for k, v in TINY.items() if k in fields})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import torch

    from edgeuq.models import ModelConfig
    from edgeuq.pipeline import bundle_stage, export_stage, prepare_data, train_stage
    from edgeuq.training import TrainConfig

    torch.set_num_threads(1)
    rec = _recipe()
    out = tmp_path_factory.mktemp("cal")
    data = prepare_data(rec)
    sp = data.splits
    cfg = ModelConfig.from_dict(rec.model, input_length=sp.window, num_classes=len(sp.class_names))
    ck = train_stage(sp, cfg, TrainConfig.from_dict(rec.train), out / "ck", progress=False)
    b = bundle_stage(export_stage(ck, out / "onnx"), out / "bundle", rec, samples=8)
    ood = next(v for k, v in data.shifted.items() if k.startswith("unseen"))
    return b.root, sp, ood, out


@pytest.fixture(scope="module")
def calibrated(trained, tmp_path_factory):
    root, sp, ood, out = trained
    dest = tmp_path_factory.mktemp("calb") / "bundle"
    res = calibrate_bundle(root, sp.val.x, sp.val.y, sp.train.x, sp.train.y,
                           CalibrationOptions(alpha=0.1, false_alarm_rate=0.1, samples=8), out_dir=dest)
    return dest, res


def test_bundle_is_rewritten_with_section_and_hashed_density(trained, calibrated):
    dest, res = calibrated
    b = load_bundle(dest)
    cal = b.manifest.sections["calibration"]
    assert cal == res.calibration and cal.samples == 8 and cal.density.pooling == "mean_tokens"
    assert "density.npz" in b.manifest.files and "trunk.onnx" in b.manifest.files
    raw = json.loads((dest / "manifest.json").read_text())
    assert raw["calibration"]["conformal"]["method"] == "lac"
    # the original bundle is untouched
    assert "calibration" not in load_bundle(trained[0]).manifest.sections


def test_density_model_is_fitted_on_the_deployed_trunk(trained, calibrated):
    root, sp, _, _ = trained
    dest, _ = calibrated
    rt = UncertaintyRuntime(dest)
    cal = Calibrated.from_bundle(rt.bundle)
    z = pool_features(rt.trunk_features(sp.train.x))
    y = sp.train.y
    for c in range(4):
        assert np.allclose(cal.density.means[c], z[y == c].mean(0), rtol=1e-5, atol=1e-6)


def test_conformal_coverage_on_held_out_windows(trained, calibrated):
    """Coverage of the stored quantile on the test split >= 1 - alpha within 3 standard errors
    (beta spread of the calibration quantile + binomial spread of the test set)."""
    root, sp, _, _ = trained
    dest, res = calibrated
    rt = UncertaintyRuntime(dest)
    cp = res.calibration.conformal
    feats = rt.trunk_features(sp.test.x)
    probs = decompose(softmax(rt.sample_logits(feats, 8, np.random.default_rng(9)), -1)).probs
    cover = cp.sets(probs)[np.arange(len(sp.test.y)), sp.test.y].mean()
    n, m, a = cp.n, len(sp.test.y), cp.alpha
    se = np.sqrt(a * (1 - a) / (n + 2) + a * (1 - a) / m)
    assert cover >= 1 - a - 3 * se, (cover, n, m)


def test_in_distribution_false_alarm_rate(trained, calibrated):
    root, sp, ood, _ = trained
    dest, res = calibrated
    from edgeuq.calibrate import score_windows

    rt = UncertaintyRuntime(dest)
    cal = Calibrated.from_bundle(rt.bundle)
    sc = score_windows(rt, sp.test.x, 8, seed=11, calibrated=cal)
    ab = res.calibration.abstain
    alarms = (sc.epistemic > ab.epistemic) | (sc.density > ab.density)
    far, m = ab.false_alarm_rate, len(alarms)
    assert alarms.mean() <= far + 3 * np.sqrt(far * (1 - far) / m) + 2 / res.calibration.n, alarms.mean()
    # and the thresholds are the stated quantiles of the calibration scores (Bonferroni: far / 2 each)
    k = int(np.ceil((res.calibration.n + 1) * (1 - far / 2)))
    assert np.isclose(np.sort(res.scores.epistemic)[k - 1], ab.epistemic)
    assert np.isclose(np.sort(res.scores.density)[k - 1], ab.density)


def test_evaluate_reports_density_and_combined(trained, calibrated, tmp_path):
    from edgeuq.evaluate import ood_metrics
    from edgeuq.uq import auroc
    from edgeuq.calibrate.scores import calibrated_extra_scores

    root, sp, ood, _ = trained
    dest, _ = calibrated
    rt = UncertaintyRuntime(dest)
    r_in = rt.predict(sp.test.x, samples=8, seed=1)
    r_out = rt.predict(ood.x, samples=8, seed=2)
    e_in = calibrated_extra_scores(rt, sp.test.x, r_in.epistemic, r_in.total, r_in.prediction)
    e_out = calibrated_extra_scores(rt, ood.x, r_out.epistemic, r_out.total, r_out.prediction)
    m = ood_metrics(r_in, r_out, e_in, e_out)
    cal = Calibrated.from_bundle(rt.bundle)
    d_in = cal.density.score(rt.trunk_features(sp.test.x), "mean_tokens")
    d_out = cal.density.score(rt.trunk_features(ood.x), "mean_tokens")
    assert np.isclose(m["auroc_density"], auroc(d_in, d_out))
    # brute-force AUROC: P(score_out > score_in) + 0.5 P(tie)
    gt = (d_out[:, None] > d_in[None, :]).mean() + 0.5 * (d_out[:, None] == d_in[None, :]).mean()
    assert abs(m["auroc_density"] - gt) < 1e-9
    for k in ("auroc_combined", "aupr_combined", "fpr95_combined", "auroc_mi", "auroc_total"):
        assert k in m and np.isfinite(m[k])


def test_cli_calibrate_and_evaluate(trained, tmp_path, capsys):
    from edgeuq.cli import main
    from edgeuq.data import synthetic_records
    from edgeuq.data.synthetic import SyntheticBearingConfig

    root, sp, _, _ = trained
    data = tmp_path / "data"
    data.mkdir()
    cfg = SyntheticBearingConfig(fs=12000.0, duration_s=1.0, loads=(1.0,), seed=21)
    for i, r in enumerate(synthetic_records(cfg, kinds=("normal", "inner_race", "outer_race", "ball"))):
        np.savez(data / f"r{i:02d}.npz", signal=r.signal, fs=r.fs, label=r.label)
    ood = tmp_path / "ood"
    ood.mkdir()
    for i, r in enumerate(synthetic_records(cfg, kinds=("compound",))):
        np.savez(ood / f"o{i:02d}.npz", signal=r.signal, fs=r.fs)
    fit = tmp_path / "fit"
    fit.mkdir()
    for i, r in enumerate(synthetic_records(SyntheticBearingConfig(fs=12000.0, duration_s=1.0, loads=(1.0,), seed=22),
                                            kinds=("normal", "inner_race", "outer_race", "ball"))):
        np.savez(fit / f"f{i:02d}.npz", signal=r.signal, fs=r.fs, label=r.label)
    dest = tmp_path / "b"
    # --data scored whole (split all) is also the default fit data: refused, naming the overlap
    assert main(["calibrate", "--bundle", str(root), "--data", str(data), "--out", str(dest), "--no-progress"]) != 0
    assert "overlaps the calibration windows" in capsys.readouterr().err and not (dest / "manifest.json").exists()
    assert main(["calibrate", "--bundle", str(root), "--data", str(data), "--fit-data", str(fit), "--out", str(dest),
                 "--alpha", "0.2", "--method", "aps", "--no-progress", "--json", str(tmp_path / "cal.json")]) == 0
    doc = json.loads((tmp_path / "cal.json").read_text())
    assert doc["calibration"]["conformal"]["method"] == "aps" and doc["calibration"]["conformal"]["alpha"] == 0.2
    fit_rec = doc["calibration"]["density_fit"]
    assert fit_rec["overlap"] == 0 and fit_rec["n"] > 0 and str(fit) in fit_rec["source"]
    assert main(["evaluate", "--bundle", str(dest), "--data", str(data), "--ood", str(ood), "--no-progress",
                 "--json", str(tmp_path / "ev.json")]) == 0
    ev = json.loads((tmp_path / "ev.json").read_text())
    assert {"auroc_density", "auroc_combined", "auroc_mi", "auroc_total"} <= set(ev["ood_metrics"])


def test_density_fit_overlapping_calibration_is_refused_or_recorded(trained, tmp_path):
    from edgeuq.calibrate.fit import FitOverlapError, window_hashes, windows_digest

    root, sp, _, _ = trained
    x_fit = np.concatenate([sp.train.x, sp.val.x[:7]])
    y_fit = np.concatenate([sp.train.y, sp.val.y[:7]])
    opts = CalibrationOptions(samples=4)
    with pytest.raises(FitOverlapError, match="7 of"):
        calibrate_bundle(root, sp.val.x, sp.val.y, x_fit, y_fit, opts, out_dir=tmp_path / "a")
    assert not (tmp_path / "a" / "manifest.json").exists()
    with pytest.raises(ValueError, match="needs fit data"):
        calibrate_bundle(root, sp.val.x, sp.val.y, None, None, opts, out_dir=tmp_path / "b")
    msgs = []
    res = calibrate_bundle(root, sp.val.x, sp.val.y, x_fit, y_fit,
                           CalibrationOptions(samples=4, allow_fit_overlap=True, fit_source="train + 7 val"),
                           out_dir=tmp_path / "c", log=msgs.append)
    df = load_bundle(tmp_path / "c").manifest.sections["calibration"].density_fit
    assert (df.overlap, df.checked_against, df.n, df.overlap_allowed) == (7, len(sp.val.y), len(x_fit), True)
    assert df.source == "train + 7 val" and any(m.startswith("WARNING") for m in msgs)
    # the recorded digest identifies the fit windows (independent of order)
    assert df.windows_sha256 == windows_digest(window_hashes(x_fit[::-1]))


def test_density_fit_is_recorded_and_disjoint(calibrated, trained):
    root, sp, _, _ = trained
    dest, res = calibrated
    df = res.calibration.density_fit
    assert df.overlap == 0 and df.n == len(sp.train.y) and df.checked_against == len(sp.val.y)


def test_device_pvalue_rule_false_alarm_rate(trained, calibrated):
    """The device rule (min of per-class conformal p-values <= far) abstains on held-out in-distribution
    windows at most at the false-alarm rate (binomial tolerance), and its reasons name the part that fired,
    matching a brute-force recomputation from the stored calibration scores."""
    from edgeuq.calibrate import score_windows

    root, sp, _, _ = trained
    dest, res = calibrated
    rt = UncertaintyRuntime(dest)
    cal = Calibrated.from_bundle(rt.bundle)
    pv = res.calibration.pvalues
    assert pv.parts == ("epistemic", "total", "density") and pv.rule == "min" and pv.mondrian
    sc = score_windows(rt, sp.test.x, 8, seed=11, calibrated=cal)
    reasons = cal.abstain_reasons(None, sc.epistemic, sc.density, sc.total, sc.prediction)
    alarms = np.array([any(r.startswith("pvalue:") for r in rs) for rs in reasons])
    far, m = pv.level, len(alarms)
    assert alarms.mean() <= far + 3 * np.sqrt(far * (1 - far) / m) + 2 / pv.n, alarms.mean()
    # brute force: rank among the calibration windows of the same predicted class
    cs = {"epistemic": res.scores.epistemic, "total": res.scores.total, "density": res.scores.density}
    pred_cal = res.scores.prediction
    for i in range(0, m, max(1, m // 25)):
        k = sc.prediction[i]
        same = pred_cal == k if k not in pv.pooled_classes else np.ones_like(pred_cal, bool)
        ps = {p: (1 + np.sum(cs[p][same] >= v[i])) / (same.sum() + 1)
              for p, v in (("epistemic", sc.epistemic), ("total", sc.total), ("density", sc.density))}
        fired = [f"pvalue:{p}" for p in pv.parts if 3 * ps[p] <= far]
        assert reasons[i] == fired, (i, reasons[i], ps)


def test_weighted_device_rule_from_calibrate_options(trained, tmp_path):
    """combine="weighted" with pvalue_weights writes the weights into the bundle; the device abstains on
    held-out in-distribution windows at most at the false-alarm rate (binomial tolerance), and its reasons
    are the parts with p_k / w_k <= level, recomputed by brute force from the stored calibration scores.
    A weighted rule without weights (or with the wrong number) is refused before anything is written."""
    from edgeuq.calibrate import score_windows

    root, sp, _, _ = trained
    w = (0.1, 0.1, 0.8)
    res = calibrate_bundle(root, sp.val.x, sp.val.y, sp.train.x, sp.train.y,
                           CalibrationOptions(false_alarm_rate=0.1, samples=8, combine="weighted", pvalue_weights=w),
                           out_dir=tmp_path / "w")
    rt = UncertaintyRuntime(tmp_path / "w")
    cal = Calibrated.from_bundle(rt.bundle)
    pv = cal.cal.pvalues
    assert pv.rule == "weighted" and pv.weights == w and pv.parts == ("epistemic", "total", "density")
    sc = score_windows(rt, sp.test.x, 8, seed=11, calibrated=cal)
    reasons = cal.abstain_reasons(None, sc.epistemic, sc.density, sc.total, sc.prediction)
    alarms = np.array([any(r.startswith("pvalue:") for r in rs) for rs in reasons])
    far, m = pv.level, len(alarms)
    assert alarms.mean() <= far + 3 * np.sqrt(far * (1 - far) / m) + 2 / pv.n, alarms.mean()
    assert alarms.any()     # some windows fire, so the brute-force comparison of reasons below can fail
    cs = {"epistemic": res.scores.epistemic, "total": res.scores.total, "density": res.scores.density}
    pred_cal = res.scores.prediction
    for i in range(m):
        k = sc.prediction[i]
        same = pred_cal == k if k not in pv.pooled_classes else np.ones_like(pred_cal, bool)
        ps = {p: (1 + np.sum(cs[p][same] >= v[i])) / (same.sum() + 1)
              for p, v in (("epistemic", sc.epistemic), ("total", sc.total), ("density", sc.density))}
        assert reasons[i] == [f"pvalue:{p}" for p, wk in zip(pv.parts, w) if ps[p] / wk <= far], (i, reasons[i], ps)
    for bad in (None, (0.5, 0.5)):
        with pytest.raises(ManifestError, match=r"pvalues\.weights"):
            calibrate_bundle(root, sp.val.x, sp.val.y, sp.train.x, sp.train.y,
                             CalibrationOptions(samples=4, combine="weighted", pvalue_weights=bad),
                             out_dir=tmp_path / "bad")
        assert not (tmp_path / "bad" / "manifest.json").exists()
