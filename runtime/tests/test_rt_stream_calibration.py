"""The manifest's calibration section: strict parsing (errors name the field), a round trip through
write_bundle/load_bundle, the density file hashed with the bundle, stale calibrations refused, and
the stream's decision using it (density score equal to a direct computation, abstention reasons)."""
import dataclasses
import json

import numpy as np
import pytest

from edgeuq_runtime import UncertaintyRuntime, load_bundle, write_bundle
from edgeuq_runtime.adaptive import AdaptiveConfig
from edgeuq_runtime.calibration import (
    AbstainSection, Calibrated, Calibration, CombinedSection, DensitySection, calibration_to_json, graphs_digest,
    parse_calibration,
)
from edgeuq_runtime.conformal import ConformalPredictor
from edgeuq_runtime.density import fit_density
from edgeuq_runtime.errors import BundleError, InputError, ManifestError
from edgeuq_runtime.stream import ArraySource, Diagnoser, run_stream


def _cal(**kw):
    base = dict(samples=8, seed=0, n=100, adaptive=AdaptiveConfig(4, 8, 2),
                abstain=AbstainSection(0.05, 0.2, 30.0, 2.5),
                conformal=ConformalPredictor("lac", 0.1, (0.55,), False, False, 100),
                density=DensitySection("density.npz", "none", 8),
                combined=CombinedSection(-3.0, 1.0, 10.0, 2.0))
    base.update(kw)
    return Calibration(**base)


def test_json_round_trip():
    cal = _cal(conformal=ConformalPredictor("aps", 0.1, (0.5, float("inf"), 0.7), True, True, 100))
    doc = calibration_to_json(cal)
    assert doc["conformal"]["qhat"] == [0.5, None, 0.7]   # inf (too few examples) is written as null
    back = parse_calibration(json.loads(json.dumps(doc)))
    assert back == cal


@pytest.mark.parametrize("path,value,field", [
    (("samples",), 0, "calibration.samples"),
    (("conformal", "alpha"), 1.5, "calibration.conformal.alpha"),
    (("conformal", "method"), "raps", "calibration.conformal.method"),
    (("conformal", "qhat"), [0.1, 0.2], "calibration.conformal.qhat"),
    (("abstain", "epistemic"), "high", "calibration.abstain.epistemic"),
    (("combined", "mi_log_std"), 0.0, "calibration.combined.mi_log_std"),
    (("density", "file"), "../x.npz", "calibration.density.file"),
    (("density", "pooling"), "max", "calibration.density.pooling"),
    (("adaptive", "s_min"), 64, "calibration.adaptive"),
    (("extra",), 1, "calibration: unknown keys"),
])
def test_strict_parse_names_the_field(path, value, field):
    doc = calibration_to_json(_cal())
    d = doc
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = value
    with pytest.raises(ManifestError, match=field.replace(".", r"\.")):
        parse_calibration(doc)


def test_non_finite_numbers_are_refused():
    doc = calibration_to_json(_cal())
    doc["abstain"]["density"] = float("nan")
    with pytest.raises(ManifestError, match="abstain.density.*finite"):
        parse_calibration(doc)


def _calibrate_tiny(tiny, tmp_path, stale=False, abstain=None):
    """Calibrate the tiny bundle with the runtime's own pieces and rewrite it with write_bundle
    (``abstain``: an ``AbstainSection`` in place of the default thresholds)."""
    rt = UncertaintyRuntime(tiny.dir)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, tiny.W.shape[0])).astype(np.float32)
    feats = rt.trunk_features(x)
    y = rt.predict(x, samples=32, seed=1).prediction            # labels: the model's own decisions
    dens = fit_density(feats, y, num_classes=3)
    dfile = dens.save(tmp_path / "density.npz")
    extra = {} if abstain is None else {"abstain": abstain}
    cal = _cal(density=DensitySection("density.npz", "none", dens.dim), graphs_digest=graphs_digest(rt.manifest), **extra)
    if stale:
        cal = dataclasses.replace(cal, graphs_digest="0" * 64)
    b = load_bundle(tiny.dir)
    sources = {k: b.path(k) for k in b.manifest.files}
    sources["density.npz"] = dfile
    m = dataclasses.replace(b.manifest, files={}, sections={"calibration": cal})
    write_bundle(tiny.dir, m, sources, overwrite=True)
    return dens, cal


def test_bundle_round_trip_and_decisions(tiny, tmp_path):
    dens, cal = _calibrate_tiny(tiny, tmp_path)
    b = load_bundle(tiny.dir)
    assert b.manifest.sections["calibration"] == cal and "density.npz" in b.manifest.files
    raw = json.loads((tiny.dir / "manifest.json").read_text())
    assert raw["calibration"]["density"]["file"] == "density.npz"
    rt = UncertaintyRuntime(tiny.dir)
    diag = Diagnoser(rt, samples=8, seed=3)
    x = np.random.default_rng(4).standard_normal((40, tiny.W.shape[0])).astype(np.float32)
    x[::5] *= 25.0
    for w in x:
        d = diag.decide(w)
        f = tiny.features(w[None])
        diff = f.astype(np.float64) - dens.means                       # direct -log sum_c pi_c N(f; mu_c, Sigma)
        maha = np.einsum("cd,de,ce->c", diff, dens.precision, diff)
        logdet = np.linalg.slogdet(dens.precision)[1]
        ll = dens.log_priors - 0.5 * maha + 0.5 * logdet - 0.5 * dens.dim * np.log(2 * np.pi)
        ref = -(ll.max() + np.log(np.exp(ll - ll.max()).sum()))
        assert abs(d.density - ref) <= 1e-6 * max(1.0, abs(ref))
        expect = []
        if len(d.prediction_set) != 1:
            expect.append("set_size")
        if d.epistemic > cal.abstain.epistemic:
            expect.append("epistemic")
        if d.density > cal.abstain.density:
            expect.append("density")
        assert d.reasons == expect and d.abstain == bool(expect)
        # LAC set from the stored quantile: {c : p_c >= 1 - qhat}
        assert d.prediction_set == [rt.class_names[i] for i in range(3) if 1 - d.probs[i] <= cal.conformal.qhat[0]]
        z = max((np.log(d.epistemic + 1e-12) + 3.0) / 1.0, (d.density - 10.0) / 2.0)
        assert abs(d.combined - z) < 1e-6
    recs = []
    run_stream(diag, ArraySource(x.reshape(-1), 50.0), recs.append, hop=16)
    assert sum(r["type"] == "decision" for r in recs) == 40


def test_tampered_density_file_and_stale_calibration_are_refused(tiny, tmp_path):
    _calibrate_tiny(tiny, tmp_path, stale=True)
    rt = UncertaintyRuntime(tiny.dir)
    with pytest.raises(BundleError, match="recalibrate"):
        Calibrated.from_bundle(rt.bundle)
    _calibrate_tiny(tiny, tmp_path)
    with open(tiny.dir / "density.npz", "ab") as fh:
        fh.write(b"x")
    with pytest.raises(Exception, match="density.npz"):
        UncertaintyRuntime(tiny.dir)


#: the weights of the tiny bundle's ``weighted`` rule (epistemic, total, density): most of the level on density
TINY_WEIGHTS = (0.15, 0.05, 0.8)


def _calibrate_tiny_pvalues(tiny, tmp_path, rule="min"):
    """The tiny bundle with a p-value rule: per-predicted-class calibration scores of MI, total
    entropy and density from 400 in-distribution windows (density fitted on 300 other windows);
    the ``weighted`` rule with :data:`TINY_WEIGHTS`."""
    from edgeuq_runtime.calibration import DensityFitSection, PValueSection, save_pvalue_scores

    rt = UncertaintyRuntime(tiny.dir)
    rng = np.random.default_rng(10)
    L = tiny.W.shape[0]
    x_fit = rng.standard_normal((300, L)).astype(np.float32)
    dens = fit_density(rt.trunk_features(x_fit), rt.predict(x_fit, samples=32, seed=1).prediction, num_classes=3)
    x_cal = rng.standard_normal((400, L)).astype(np.float32)
    r = rt.predict(x_cal, samples=8, seed=2)
    d_cal = dens.score(rt.trunk_features(x_cal), "none")
    scores = {"epistemic": r.epistemic, "total": r.total, "density": d_cal}
    pfile, pooled = save_pvalue_scores(tmp_path / "pvalues.npz", scores, r.prediction, 3, 20)
    pv = PValueSection("pvalues.npz", ("epistemic", "total", "density"), rule, True, 0.1, 400, pooled,
                       TINY_WEIGHTS if rule == "weighted" else None)
    cal = _cal(density=DensitySection("density.npz", "none", dens.dim), graphs_digest=graphs_digest(rt.manifest),
               pvalues=pv, density_fit=DensityFitSection(300, "300 random windows", "ab" * 32, 400, 0))
    b = load_bundle(tiny.dir)
    sources = {k: b.path(k) for k in b.manifest.files}
    sources["density.npz"] = dens.save(tmp_path / "density.npz")
    sources["pvalues.npz"] = pfile
    write_bundle(tiny.dir, dataclasses.replace(b.manifest, files={}, sections={"calibration": cal}), sources,
                 overwrite=True)
    return cal, scores, r.prediction


@pytest.mark.parametrize("rule", ["min", "fisher", "weighted"])
def test_pvalue_rule_decisions_name_the_score_that_fired(tiny, tmp_path, rule):
    cal, scores, pred_cal = _calibrate_tiny_pvalues(tiny, tmp_path, rule)
    b = load_bundle(tiny.dir)
    assert b.manifest.sections["calibration"] == cal and "pvalues.npz" in b.manifest.files
    doc = json.loads((tiny.dir / "manifest.json").read_text())["calibration"]
    assert doc["pvalues"]["rule"] == rule and doc["density_fit"]["overlap"] == 0
    rt = UncertaintyRuntime(tiny.dir)
    diag = Diagnoser(rt, samples=8, seed=3)
    x = np.random.default_rng(4).standard_normal((30, tiny.W.shape[0])).astype(np.float32)
    x[::3] = tiny.W[:, 0] * 10.0 + 0.1 * x[::3]  # aligned with a feature direction: far from the calibration data
    fired_any = 0
    for w in x:
        d = diag.decide(w)
        k = d.class_index
        own = pred_cal == k
        if own.sum() < 20:
            own = np.ones_like(own)
        p = {n: (1 + np.sum(scores[n][own] >= v)) / (own.sum() + 1)
             for n, v in (("epistemic", d.epistemic), ("total", d.total), ("density", d.density))}
        js = d.to_json()
        for n in p:
            assert abs(js["pvalues"][n] - p[n]) < 1e-6
        P = np.array([p["epistemic"], p["total"], p["density"]])
        if rule == "min":
            pc = min(1.0, 3 * P.min())
            fired = [f"pvalue:{n}" for n, v in p.items() if 3 * v <= 0.1]
        elif rule == "weighted":    # weighted Bonferroni, in closed form with the weights written
            w = dict(zip(("epistemic", "total", "density"), TINY_WEIGHTS))
            pc = min(1.0, min(v / w[n] for n, v in p.items()))
            fired = [f"pvalue:{n}" for n, v in p.items() if v / w[n] <= 0.1]
            assert doc["pvalues"]["weights"] == w
        else:
            stat = -2 * np.log(P).sum()
            pc = float(np.exp(-stat / 2) * (1 + stat / 2 + (stat / 2) ** 2 / 2))
            fired = [f"pvalue:{min(p, key=p.get)}"] if pc <= 0.1 else []
        assert abs(js["p_combined"] - pc) < 1e-6 and abs(d.combined + np.log10(pc)) < 1e-6
        expect = (["set_size"] if len(d.prediction_set) != 1 else []) + fired
        assert d.reasons == expect and d.abstain == bool(expect)
        fired_any += bool(fired)
    assert fired_any >= 5  # the scaled windows fire


def test_given_pvalues_are_used_not_recomputed(tiny, tmp_path):
    """``combined_score`` / ``abstain_reasons`` with ``parts`` use the p-values given (the stream's
    decision computes them once per window): the same inputs' own p-values give the recomputed
    answers; p-values of 1 give no p-value reason and a combined score of 0, whatever the scores."""
    from edgeuq_runtime.calibration import Calibrated

    _calibrate_tiny_pvalues(tiny, tmp_path, "min")
    rt = UncertaintyRuntime(tiny.dir)
    cal = Calibrated.from_bundle(rt.bundle)
    x = np.random.default_rng(4).standard_normal((30, tiny.W.shape[0])).astype(np.float32)
    x[::3] = tiny.W[:, 0] * 10.0 + 0.1 * x[::3]
    r = rt.predict(x, samples=8, seed=5)
    dens = cal.density_score(rt.trunk_features(x))
    own = cal.pvalues(r.epistemic, r.total, dens, r.prediction)
    recomputed = cal.abstain_reasons(None, r.epistemic, dens, r.total, r.prediction)
    assert any(recomputed)   # the scaled windows fire, so the comparison below can fail
    assert cal.abstain_reasons(None, r.epistemic, dens, r.total, r.prediction, parts=own) == recomputed
    np.testing.assert_allclose(cal.combined_score(r.epistemic, dens, r.total, r.prediction, parts=own),
                               cal.combined_score(r.epistemic, dens, r.total, r.prediction), rtol=0, atol=1e-12)
    ones = {k: np.ones_like(v) for k, v in own.items()}
    assert cal.abstain_reasons(None, r.epistemic, dens, r.total, r.prediction, parts=ones) == [[]] * len(x)
    assert np.all(cal.combined_score(r.epistemic, dens, r.total, r.prediction, parts=ones) == 0.0)
    # the combined p-value given with them is used as given too: its own gives the recomputed answer,
    # a combined p-value of 1 silences the rule, and a wrong shape is refused
    pc = cal.combined_pvalue(own)
    assert cal.abstain_reasons(None, r.epistemic, dens, r.total, r.prediction, parts=own, combined=pc) == recomputed
    assert cal.abstain_reasons(None, r.epistemic, dens, r.total, r.prediction, parts=own,
                               combined=np.ones_like(pc)) == [[]] * len(x)
    with pytest.raises(InputError, match="combined p-values"):
        cal.abstain_reasons(None, r.epistemic, dens, r.total, r.prediction, parts=own, combined=pc[:3])


def test_pvalue_section_is_strict(tiny, tmp_path):
    cal, _, _ = _calibrate_tiny_pvalues(tiny, tmp_path)
    doc = calibration_to_json(cal)
    for path, value, field in ((("pvalues", "rule"), "max", "calibration.pvalues.rule"),
                               (("pvalues", "parts"), ["epistemic", "bogus"], "calibration.pvalues.parts"),
                               (("pvalues", "level"), 1.0, "calibration.pvalues.level"),
                               (("density_fit", "overlap"), 3, "calibration.density_fit.overlap")):
        bad = json.loads(json.dumps(doc))
        bad[path[0]][path[1]] = value
        with pytest.raises(ManifestError, match=field.replace(".", r"\.")):
            parse_calibration(bad)
    # a tampered p-value file is refused by the bundle's hashes
    (tiny.dir / "pvalues.npz").write_bytes(b"x")
    with pytest.raises(BundleError):
        UncertaintyRuntime(tiny.dir)


def test_pvalue_weights_round_trip_and_are_strict(tiny, tmp_path):
    """The weighted rule's weights survive the manifest JSON round trip (and the bundle's), and every
    malformed weights object is refused naming calibration.pvalues.weights: missing, unknown part,
    negative or zero, not summing to 1 within 1e-9, weights without the weighted rule."""
    cal, _, _ = _calibrate_tiny_pvalues(tiny, tmp_path, "weighted")
    doc = calibration_to_json(cal)
    assert doc["pvalues"]["weights"] == dict(zip(cal.pvalues.parts, TINY_WEIGHTS))
    back = parse_calibration(json.loads(json.dumps(doc)))
    assert back == cal and back.pvalues.weights == TINY_WEIGHTS
    assert load_bundle(tiny.dir).manifest.sections["calibration"].pvalues.weights == TINY_WEIGHTS
    # the other rules write no weights (their JSON is unchanged)
    assert "weights" not in calibration_to_json(dataclasses.replace(
        cal, pvalues=dataclasses.replace(cal.pvalues, rule="min", weights=None)))["pvalues"]
    ok = {"epistemic": 0.15, "total": 0.05, "density": 0.8 + 5e-10}       # within 1e-9 of 1: accepted
    for weights, rule, msg in (
            (None, "weighted", "needs an object"),
            ({"epistemic": 0.15, "density": 0.85}, "weighted", r"lacks the weight of \['total'\]"),
            ({**ok, "bogus": 0.0}, "weighted", r"not in pvalues\.parts.*'bogus'"),
            ({"epistemic": -0.15, "total": 0.35, "density": 0.8}, "weighted", r"\.epistemic: must lie in"),
            ({"epistemic": 0.0, "total": 0.2, "density": 0.8}, "weighted", r"\.epistemic: must lie in"),
            ({"epistemic": 0.15, "total": 0.05, "density": 0.7}, "weighted", "sum to 1"),
            ({"epistemic": 0.15, "total": 0.05, "density": 0.8 + 2e-9}, "weighted", "sum to 1"),
            ({"epistemic": 0.15, "total": 0.05, "density": "0.8"}, "weighted", r"\.density: must be a number"),
            (ok, "min", "only for the 'weighted' rule")):
        bad = json.loads(json.dumps(doc))
        bad["pvalues"]["rule"] = rule
        if weights is None:
            del bad["pvalues"]["weights"]
        else:
            bad["pvalues"]["weights"] = weights
        with pytest.raises(ManifestError, match=r"calibration\.pvalues\.weights.*" + msg):
            parse_calibration(bad)
    good = json.loads(json.dumps(doc))
    good["pvalues"]["weights"] = ok
    assert parse_calibration(good).pvalues.weights[2] == pytest.approx(0.8, abs=1e-9)
    # a section built in code with weights that do not match its parts is refused when written
    with pytest.raises(ManifestError, match=r"pvalues\.weights"):
        calibration_to_json(dataclasses.replace(cal, pvalues=dataclasses.replace(cal.pvalues, weights=(0.5, 0.5))))
