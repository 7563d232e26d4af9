"""End to end: the demo pipeline on a tiny recipe, and the CLI over the same stages."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeuq.catalog import get_recipe
from edgeuq.cli import main
from edgeuq_runtime import UncertaintyRuntime, load_bundle

TINY_RECIPE = """
name = "tiny-bearing"
description = "tiny test recipe"
task = "bearing"
boards = ["x86-host"]
[data]
source = "synthetic"
window = 1024
hop = 512
fs_hz = 12000
classes = ["normal", "inner_race", "outer_race", "ball"]
ood_kind = "compound"
shift_snr_db = 0.0
[data.synthetic]
duration_s = 1.0
loads = [0, 2]
seed = 3
[model]
patch = 64
d_model = 16
heads = 2
depth = 2
ffn = 32
dropout = 0.1
stochastic_blocks = [1]
stochastic_head = true
[train]
epochs = 2
batch_size = 32
lr = 3e-3
weight_decay = 1e-2
patience = 2
seed = 0
[uq]
samples = 4
[bundle]
model_name = "tiny-bearing"
model_version = "0.0.1"
"""


@pytest.fixture(scope="module")
def recipe_path(tmp_path_factory):
    p = tmp_path_factory.mktemp("recipe") / "tiny-bearing.toml"
    p.write_text(TINY_RECIPE)
    return p


@pytest.fixture(scope="module")
def demo_run(recipe_path, tmp_path_factory):
    from edgeuq.demo_report import write_demo_report
    from edgeuq.pipeline import run_demo

    out = tmp_path_factory.mktemp("demo")
    res = run_demo(out, recipe=recipe_path, progress=False, log=lambda s: None)
    return res, write_demo_report(res)


def test_demo_writes_every_artifact(demo_run):
    res, report = demo_run
    out = res.out_dir
    for f in ("checkpoint/model.pt", "checkpoint/checkpoint.json", "onnx/trunk.onnx", "onnx/head.onnx",
              "bundle/manifest.json", "results.json", "report.md", "reliability.png", "epistemic_hist.png"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    text = report.read_text()
    assert "reliability.png" in text and "simulated" in text and "| in-distribution test |" in text


def test_demo_results_are_consistent(demo_run):
    res, _ = demo_run
    summary = json.loads((res.out_dir / "results.json").read_text())
    sets = summary["sets"]
    assert set(sets) == {"in-distribution test", "noise shift (SNR 0 dB)", "unseen fault (compound)"}
    ind = sets["in-distribution test"]
    assert 0 <= ind["accuracy"] <= 1 and 0 <= ind["ece"] <= 1
    assert "accuracy" not in sets["unseen fault (compound)"]  # unlabelled OOD set
    for s in sets.values():
        assert s["mean_total"] == pytest.approx(s["mean_aleatoric"] + s["mean_epistemic"], abs=1e-9)
    assert 0 <= sets["unseen fault (compound)"]["auroc_epistemic"] <= 1
    lat = summary["latency_ms"]
    assert lat["deterministic"]["median_ms"] > 0 and lat["mc"]["median_ms"] > 0


def test_demo_bundle_runs_on_its_own(demo_run):
    res, _ = demo_run
    b = load_bundle(res.out_dir / "bundle")
    assert b.manifest.model_name == "tiny-bearing" and b.manifest.default_samples == 4
    rt = UncertaintyRuntime(b.root, seed=0)
    r = rt.predict(np.random.default_rng(0).standard_normal((3, 1024)))
    assert r.samples.shape == (4, 3, 4)


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
    for row in ("deterministic pass", "runtime S-sample", "batched forward", "naive MC-dropout loop"):
        assert row in out.stdout
    assert "S=4" in out.stdout


@pytest.mark.slow
def test_transformer_learns_synthetic_bearing_faults():
    """The flagship task is learnable by a small model in seconds (chance = 0.25)."""
    import torch

    from edgeuq.data import SyntheticBearingConfig, make_synthetic_splits
    from edgeuq.models import ModelConfig, SignalTransformer
    from edgeuq.training import TrainConfig, predict_logits, train_model

    sp = make_synthetic_splits(SyntheticBearingConfig(duration_s=3.0, seed=1), window=1024, hop=512)
    torch.manual_seed(0)
    m = SignalTransformer(ModelConfig(input_length=1024, num_classes=4, patch=32, d_model=48, heads=4, depth=2,
                                      ffn=96, stochastic_blocks=(1,)))
    train_model(m, sp.train.x, sp.train.y, sp.val.x, sp.val.y, TrainConfig(epochs=20, lr=3e-3, patience=20),
                progress=False)
    acc = float((predict_logits(m, sp.test.x).argmax(-1).numpy() == sp.test.y).mean())
    assert acc >= 0.8, acc
