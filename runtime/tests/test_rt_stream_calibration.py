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
from edgeuq_runtime.errors import BundleError, ManifestError
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


def _calibrate_tiny(tiny, tmp_path, stale=False):
    """Calibrate the tiny bundle with the runtime's own pieces and rewrite it with write_bundle."""
    rt = UncertaintyRuntime(tiny.dir)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, tiny.W.shape[0])).astype(np.float32)
    feats = rt.trunk_features(x)
    y = rt.predict(x, samples=32, seed=1).prediction            # labels: the model's own decisions
    dens = fit_density(feats, y, num_classes=3)
    dfile = dens.save(tmp_path / "density.npz")
    cal = _cal(density=DensitySection("density.npz", "none", dens.dim), graphs_digest=graphs_digest(rt.manifest))
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
