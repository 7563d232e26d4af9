"""End to end: the demo pipeline on a tiny recipe, and the CLI over the same stages."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeuq.catalog import get_recipe
from edgeuq.cli import main
from edgeuq_runtime import UncertaintyRuntime, load_bundle
from tiny_recipes import tiny_recipe

TINY_RECIPE = tiny_recipe("tiny-bearing", epochs=2)



@pytest.fixture(scope="module")
def recipe_path(tmp_path_factory):
    p = tmp_path_factory.mktemp("recipe") / "tiny-bearing.toml"
    p.write_text(TINY_RECIPE)
    return p


@pytest.fixture(scope="module")
def demo_run(recipe_path, tmp_path_factory):
    from edgeuq.demo_report import write_demo_report
    from edgeuq.pipeline import StudentOptions, run_demo

    out = tmp_path_factory.mktemp("demo")
    res = run_demo(out, recipe=recipe_path, progress=False, log=lambda s: None,
                   student=StudentOptions(epochs=1, teacher_samples=4, calib_windows=32), latency_repeats=10,
                   cache=False)
    return res, write_demo_report(res)


def test_demo_writes_every_artifact(demo_run):
    res, report = demo_run
    out = res.out_dir
    for f in ("checkpoint/model.pt", "checkpoint/checkpoint.json", "onnx/trunk.onnx", "onnx/head.onnx",
              "bundle/manifest.json", "results.json", "report.md", "reliability.png", "epistemic_hist.png"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    text = report.read_text()
    assert "reliability.png" in text and "simulated" in text and "| in-distribution test |" in text


def _entropy(p):
    return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)


def _ece_loop(probs, labels, bins=10):
    """ECE with a plain loop over right-closed equal-width bins (a second implementation)."""
    conf, pred = probs.max(1), probs.argmax(1)
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        sel = [i for i in range(len(conf)) if (lo < conf[i] <= hi) or (b == 0 and conf[i] == 0.0)]
        if sel:
            acc = np.mean([pred[i] == labels[i] for i in sel])
            total += len(sel) / len(conf) * abs(acc - np.mean(conf[sel]))
    return total


def _auroc_pairs(s_in, s_out):
    """P(out > in) + P(out == in) / 2 over every pair (brute force)."""
    diff = s_out[:, None] - s_in[None, :]
    return float(np.mean((diff > 0) + 0.5 * (diff == 0)))


def test_demo_results_match_a_recomputation_from_the_sampled_probabilities(demo_run):
    """Every number of results.json, recomputed from the runtime's per-sample probabilities
    (S, B, C) with independent formulas: the mean predictive, accuracy, NLL, Brier, a looped
    ECE, the entropy decomposition and a pairwise AUROC."""
    res, _ = demo_run
    summary = json.loads((res.out_dir / "results.json").read_text())
    sets = summary["sets"]
    assert set(sets) == {"in-distribution test", "noise shift (SNR 0 dB)", "unseen fault (compound)"}
    assert summary["samples"] == 4
    decomposed = {}
    for name, got in sets.items():
        ev = res.evaluations[name]
        sp = ev.result.samples.astype(np.float64)
        assert sp.shape[0] == 4 and sp.shape[1] == got["n"] == len(ev.labels)
        assert np.allclose(sp.sum(-1), 1.0, atol=1e-5)
        mean = sp.mean(0)
        total, aleatoric = _entropy(mean), _entropy(sp).mean(0)
        decomposed[name] = (total, total - aleatoric)
        for key, value in (("mean_total", total.mean()), ("mean_aleatoric", aleatoric.mean()),
                           ("mean_epistemic", np.maximum(total - aleatoric, 0).mean())):
            assert got[key] == pytest.approx(value, abs=1e-9), (name, key)
        y = ev.labels
        if y.min() < 0:
            assert "accuracy" not in got          # unlabelled OOD set
            continue
        onehot = np.eye(mean.shape[1])[y]
        expected = {"accuracy": np.mean(mean.argmax(1) == y), "nll": -np.mean(np.log(mean[np.arange(len(y)), y])),
                    "brier": np.mean(np.sum((mean - onehot) ** 2, 1)), "ece": _ece_loop(mean, y)}
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, abs=1e-9), (name, key)
    ref_total, ref_mi = decomposed["in-distribution test"]
    for name in ("noise shift (SNR 0 dB)", "unseen fault (compound)"):
        total, mi = decomposed[name]
        assert sets[name]["auroc_epistemic"] == pytest.approx(_auroc_pairs(np.maximum(ref_mi, 0), np.maximum(mi, 0)),
                                                            abs=1e-12)
        assert sets[name]["auroc_total"] == pytest.approx(_auroc_pairs(ref_total, total), abs=1e-12)
    lat = summary["latency_ms"]
    assert lat["deterministic"]["median_ms"] > 0 and lat["mc"]["median_ms"] > 0


def test_demo_bundle_runs_on_its_own(demo_run):
    res, _ = demo_run
    b = load_bundle(res.out_dir / "bundle")
    assert b.manifest.model_name == "tiny-bearing" and b.manifest.default_samples == 4
    rt = UncertaintyRuntime(b.root, seed=0)
    r = rt.predict(np.random.default_rng(0).standard_normal((3, 1024)))
    assert r.samples.shape == (4, 3, 4)


def test_demo_deploys_the_int8_student(demo_run):
    """The bundle the demo deploys is the distilled, quantized student: its manifest says so (role,
    teacher it was distilled from, int8 plan), the teacher's says it is not deployed."""
    res, _ = demo_run
    student, teacher = load_bundle(res.out_dir / "student" / "bundle"), load_bundle(res.out_dir / "bundle")
    assert res.deployed.root == student.root
    sm, tm = student.manifest.metadata, teacher.manifest.metadata
    assert sm["demo_role"] == "student" and sm["deployed"] is True
    assert tm["demo_role"] == "teacher" and tm["deployed"] is False
    assert sm["distilled_from"]["checkpoint_sha256"] == res.checkpoint.sha256
    assert student.manifest.model_name == "bearing-student" and student.manifest.default_samples == 32
    assert set(sm["quantization"]["precisions"].values()) == {"int8"}
    from edgeuq_runtime.calibration import Calibrated

    for b in (student, teacher):   # both deployed calibrated: density fitted, thresholds set
        cal = Calibrated.from_bundle(b)
        assert cal is not None and cal.density is not None and cal.cal.samples == b.manifest.default_samples
    tables = json.loads((res.out_dir / "tables.json").read_text())["tables"]
    deployed = {r[0]: r[1] for r in tables["models"]["rows"]}
    assert deployed == {"teacher": "no", "student": "yes"}


def test_demo_side_by_side_rows_are_finite_and_recomputable(demo_run, recipe_path):
    """One row per model with finite numbers; the paired S / one-pass ratio is the median of the
    per-round ratios (recomputed here from the raw rounds); the graph bytes are the bundled ONNX
    files' sizes; every shifted set has every OOD score per model, and the student's density and
    combined AUROC equal a pairwise recomputation from its calibrated bundle's own scores."""
    from edgeuq.calibrate.scores import calibrated_extra_scores
    from edgeuq.pipeline import prepare_data

    res, _ = demo_run
    doc = json.loads((res.out_dir / "tables.json").read_text())["tables"]
    models, ood = doc["models"], doc["ood"]
    assert [r[0] for r in models["rows"]] == ["teacher", "student"]
    for row in models["rows"]:
        m, cells = res.models[row[0]], dict(zip(models["headers"], row))
        for key in ("test accuracy", "test ECE", "noise-shift accuracy", "S-sample ms", "graph bytes",
                    "bundle bytes"):
            assert isinstance(cells[key], (int, float)) and math.isfinite(cells[key]), (row[0], key)
        assert 0.0 <= cells["test accuracy"] <= 1.0 and cells["S"] == m.samples
        det = np.asarray(m.latency["deterministic"].samples_ms)
        mc = np.asarray(m.latency["mc"].samples_ms)
        ratio = float(cells["S-sample / one pass (paired median [95 % CI])"].split()[0])
        assert ratio == pytest.approx(float(np.median(mc / det)), abs=0.006)
        onnx_bytes = sum(p.stat().st_size for p in m.bundle.root.iterdir() if p.suffix == ".onnx")
        assert cells["graph bytes"] == onnx_bytes > 0
    shifted = ("noise shift (SNR 0 dB)", "unseen fault (compound)")
    assert [(r[0], r[1]) for r in ood["rows"]] == [(m, s) for m in ("teacher", "student") for s in shifted]
    for row in ood["rows"]:
        assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in row[2:]), row
    col = {k: ood["headers"].index(f"OOD AUROC ({k})") for k in ("density", "combined")}
    data = prepare_data(get_recipe(recipe_path))   # deterministic: the windows the demo evaluated
    student = res.models["student"]
    rt = UncertaintyRuntime(student.bundle.root, seed=0)
    sets = {"in-distribution test": data.splits.test, **data.shifted}
    scores = {}
    for name, ds in sets.items():
        r = student.evaluations[name].result
        assert r.samples.shape[1] == len(ds.x)
        scores[name] = calibrated_extra_scores(rt, ds.x, r.epistemic, r.total, r.prediction)
    ref = scores["in-distribution test"]
    for row in ood["rows"][2:]:
        for key, c in col.items():
            assert row[c] == pytest.approx(_auroc_pairs(ref[key], scores[row[1]][key]), abs=1e-12), (row[1], key)


def test_cli_train_export_bundle_predict(recipe_path, tmp_path, capsys):
    ck, ox, bd = tmp_path / "ck", tmp_path / "onnx", tmp_path / "bundle"
    assert main(["train", "--recipe", str(recipe_path), "--out", str(ck), "--epochs", "1", "--no-progress"]) == 0
    assert main(["export", "--checkpoint", str(ck), "--out", str(ox)]) == 0
    assert main(["bundle", "--onnx", str(ox), "--out", str(bd), "--name", "cli", "--samples", "3"]) == 0
    # a user's own signal at another rate: 24 kHz .npz, resampled to the model's 12 kHz
    sig = np.random.default_rng(0).standard_normal(24000).astype(np.float32)
    np.savez(tmp_path / "mine.npz", signal=sig, fs=24000.0)
    capsys.readouterr()
    js = tmp_path / "pred.json"
    assert main(["predict", "--bundle", str(bd), "--input", str(tmp_path / "mine.npz"), "--json", str(js)]) == 0
    rows = json.loads(js.read_text())
    assert len(rows) == 12000 // 1024  # non-overlapping windows after resampling
    assert {"prediction", "confidence", "total", "aleatoric", "epistemic"} <= set(rows[0])
    assert "S=3" in capsys.readouterr().out


def test_cli_errors_are_one_line_exit_2(tmp_path, capsys):
    assert main(["predict", "--bundle", str(tmp_path / "nope"), "--input", str(tmp_path / "x.npz")]) == 2
    err = capsys.readouterr().err
    assert "error" in err and "nope" in err and "Traceback" not in err
    assert main(["demo", "--recipe", "no-such-recipe", "--out", str(tmp_path / "d")]) == 2
    assert "no-such-recipe" in capsys.readouterr().err


def test_cli_lists_descriptors(capsys):
    assert main(["boards"]) == 0 and "x86-host" in capsys.readouterr().out
    assert main(["targets"]) == 0 and "x86-64" in capsys.readouterr().out
    assert main(["recipes"]) == 0 and "bearing-demo" in capsys.readouterr().out


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "edgeuq.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for cmd in ("demo", "train", "export", "bundle", "predict"):
        assert cmd in out.stdout


def test_bench_script_prints_table():
    bench = Path(__file__).resolve().parents[1] / "bench" / "mc_overhead.py"
    out = subprocess.run([sys.executable, str(bench), "--samples", "1", "4", "--repeats", "3"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    for row in ("runtime S-sample / runtime deterministic", "PyTorch naive loop (S forwards)",
                "PyTorch trunk once + S head rows batched / runtime S-sample", "teacher / student"):
        assert row in out.stdout
    assert "S=4" in out.stdout


@pytest.mark.slow
def test_transformer_learns_synthetic_bearing_faults():
    """The flagship task is learnable by a small model in seconds (chance = 0.25)."""
    import torch

    from edgeuq.data import SyntheticBearingConfig, make_synthetic_splits
    from edgeuq.models import ModelConfig, SignalTransformer
    from edgeuq.bayes import fit_model
    from edgeuq.training import TrainConfig, predict_logits

    sp = make_synthetic_splits(SyntheticBearingConfig(duration_s=3.0, seed=1), window=1024, hop=512)
    torch.manual_seed(0)
    m = SignalTransformer(ModelConfig(input_length=1024, num_classes=4, patch=32, d_model=48, heads=4, depth=2,
                                      ffn=96, stochastic_blocks=(1,)))
    fit_model(m, sp.train.x, sp.train.y, sp.val.x, sp.val.y, TrainConfig(epochs=20, lr=3e-3, patience=20),
              val_samples=0, progress=False)
    acc = float((predict_logits(m, sp.test.x).argmax(-1).numpy() == sp.test.y).mean())
    assert acc >= 0.8, acc


def test_cli_train_covers_every_scheme(tmp_path, capsys):
    """`edgeuq train` runs the scheme's fitting hook: a variational recipe gets the ELBO
    (posterior scales move, KL shrinks from its value at initialisation), its noise inputs and a
    fitted temperature."""
    import torch

    from edgeuq.models import ModelConfig, build_model
    from edgeuq.schemes.variational import BayesLinear, kl_divergence
    from edgeuq.training import load_checkpoint

    recipe = tmp_path / "tiny-variational.toml"
    recipe.write_text(tiny_recipe(
        "tiny-variational", epochs=2,
        model_extra='scheme = "variational"\n[model.scheme_options]\nprior_sigma = 0.2\npositions = ["ffn"]\n',
        uq_extra="val_samples = 2\ntemperature_scaling = true\n"))
    ck_dir = tmp_path / "ck"
    assert main(["train", "--recipe", str(recipe), "--out", str(ck_dir), "--epochs", "1", "--no-progress"]) == 0
    assert "scheme variational" in capsys.readouterr().out
    ck = load_checkpoint(ck_dir)
    assert ck.config.scheme == "variational" and ck.config.scheme_options.prior_sigma == 0.2
    assert ck.metrics["scheme"] == "variational" and "temperature" in ck.metrics
    model = ck.load_model()
    names = [s.name for s in model.noise_specs()]
    assert names == ["block1_ffn_fc1", "block1_ffn_fc2", "head_fc1", "head_fc2"]
    assert model.cfg.temperature == pytest.approx(ck.metrics["temperature"]["temperature"])
    torch.manual_seed(0)
    fresh = build_model(ModelConfig.from_dict({**ck.config.to_dict(), "temperature": 1.0}))
    assert float(kl_divergence(model).detach()) < float(kl_divergence(fresh).detach())       # the KL term was minimised
    rho0 = math.log(math.expm1(ck.config.scheme_options.init_sigma))
    rho = [m.weight_rho.detach() for m in model.modules() if isinstance(m, BayesLinear)]
    assert all(float((r - rho0).abs().min()) > 1e-5 for r in rho)           # posterior scales were trained
