"""FisherReport artifact (JSON + npz, hashed), the `edgeuq fisher` command, and the quantize command."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgeuq.cli import main
from edgeuq.fisher import FisherConfig, estimate_fisher, load_fisher_report, plot_sensitivity
from edgeuq.fisher.data import calibration_data
from edgeuq.models import ModelConfig, SignalTransformer
from edgeuq.training import load_checkpoint, save_checkpoint
from edgeuq_runtime import UncertaintyRuntime

RECIPE = """
name = "tiny-fisher"
description = "tiny recipe for the Fisher/quantize CLI tests"
task = "bearing"
boards = ["x86-host"]
[data]
source = "synthetic"
window = 256
hop = 256
fs_hz = 12000
classes = ["normal", "inner_race", "outer_race", "ball"]
[data.synthetic]
duration_s = 1.0
loads = [0, 2]
seed = 1
[model]
patch = 32
d_model = 16
heads = 2
depth = 2
ffn = 16
stochastic_blocks = [1]
[train]
epochs = 1
[uq]
samples = 4
[bundle]
model_name = "tiny-fisher"
model_version = "0.0.1"
"""
CFG = ModelConfig(input_length=256, num_classes=4, patch=32, d_model=16, heads=2, depth=2, ffn=16,
                  stochastic_blocks=(1,))
CLASSES = ("normal", "inner_race", "outer_race", "ball")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("fisher-cli")
    recipe = root / "tiny-fisher.toml"
    recipe.write_text(RECIPE)
    torch.manual_seed(0)
    ck = save_checkpoint(SignalTransformer(CFG).eval(), root / "ck", CLASSES, 12000.0)
    return {"root": root, "recipe": str(recipe), "ck": ck}


def test_report_round_trip_and_tamper_detection(tmp_path):
    torch.manual_seed(1)
    model = SignalTransformer(CFG).eval()
    x = np.random.default_rng(0).standard_normal((12, 256)).astype(np.float32)
    y = np.arange(12) % 4
    rep = estimate_fisher(model, x, y, FisherConfig(labels="empirical", noise_samples=2, progress=False),
                          kfac=True, hessian_probes=2, meta={"checkpoint_sha256": "c0ffee"})
    saved = rep.save(tmp_path / "r")
    assert (tmp_path / "r" / "fisher.json").is_file() and (tmp_path / "r" / "fisher.npz").is_file()
    again = load_fisher_report(tmp_path / "r")
    assert again.sha256 == saved.sha256 and len(again.sha256) == 64
    assert again.labels == "empirical" and again.config == rep.config and again.n_samples == 12
    assert again.layers == rep.layers
    for k in rep.diag:
        np.testing.assert_array_equal(again.diag[k], rep.diag[k])
    for k in rep.structures:
        np.testing.assert_array_equal(again.structures[k].scores, rep.structures[k].scores)
        assert again.structures[k].kind == rep.structures[k].kind
    assert set(again.kfac) == {lf.name for lf in rep.layers if lf.kind == "linear"}
    np.testing.assert_array_equal(again.kfac["head.fc2"].G, rep.kfac["head.fc2"].G)
    assert all(lf.hessian_trace is not None for lf in again.layers)
    assert {s.kind for s in again.structures.values()} == {"head", "neuron", "channel"}
    assert again.meta["checkpoint_sha256"] == "c0ffee" and again.meta["stochastic"] is True
    for lf in again.layers:
        assert lf.weight_trace == pytest.approx(float(rep.diag[f"{lf.name}.weight"].sum()))
    png = plot_sensitivity(again, tmp_path / "s.png")
    assert png.stat().st_size > 1000
    # tampering with the arrays is caught
    data = bytearray((tmp_path / "r" / "fisher.npz").read_bytes())
    data[-10] ^= 0xFF
    (tmp_path / "r" / "fisher.npz").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="fisher.npz changed since saving: it does not match the sha256"):
        load_fisher_report(tmp_path / "r")
    with pytest.raises(FileNotFoundError, match="fisher.json missing"):
        load_fisher_report(tmp_path / "nowhere")


def test_fisher_command_prints_table_and_writes_report(setup, capsys):
    out = setup["root"] / "fisher"
    rc = main(["fisher", "--checkpoint", str(setup["ck"].directory), "--recipe", setup["recipe"], "--out", str(out),
               "--max-windows", "24", "--noise-samples", "2", "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "Tr(F_w)" in text and "true Fisher" in text
    for name in ("embed.c1", "blocks.1.attn.qkv", "head.fc2"):
        assert name in text
    rep = load_fisher_report(out)
    assert rep.labels == "true" and rep.n_samples == 24
    assert rep.meta["checkpoint_sha256"] == setup["ck"].sha256
    assert (out / "sensitivity.png").stat().st_size > 1000
    rc = main(["fisher", "--checkpoint", str(setup["ck"].directory), "--recipe", setup["recipe"],
               "--out", str(setup["root"] / "fisher-emp"), "--max-windows", "8", "--empirical", "--no-progress"])
    assert rc == 0 and load_fisher_report(setup["root"] / "fisher-emp").labels == "empirical"
    assert "empirical Fisher" in capsys.readouterr().out


def test_quantize_command_builds_a_bundle_and_refuses_an_unmeetable_budget(setup, capsys):
    fisher = setup["root"] / "fisher-q"
    assert main(["fisher", "--checkpoint", str(setup["ck"].directory), "--recipe", setup["recipe"],
                 "--out", str(fisher), "--max-windows", "16", "--noise-samples", "1", "--no-progress"]) == 0
    capsys.readouterr()
    common = ["quantize", "--checkpoint", str(setup["ck"].directory), "--fisher", str(fisher), "--recipe",
              setup["recipe"], "--max-windows", "16", "--samples", "4", "--no-progress"]
    rc = main(common + ["--budget-bytes", "1000", "--out", str(setup["root"] / "b-small")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "cannot be met" in err and "smallest achievable is" in err
    assert not (setup["root"] / "b-small" / "manifest.json").exists()
    smallest = int(err.split("smallest achievable is ")[1].split()[0])
    budget = int(smallest * 1.3)
    rc = main(common + ["--budget-bytes", str(budget), "--out", str(setup["root"] / "b")])
    assert rc == 0
    text = capsys.readouterr().out
    assert "precision" in text and "hls4ml_precision.json" in text
    plan = json.loads((setup["root"] / "b" / "quant_plan.json").read_text())["meta"]
    assert plan["total_bytes"] <= budget and plan["budget"] == {"kind": "bytes", "value": budget}
    assert plan["provenance"]["checkpoint_sha256"] == setup["ck"].sha256
    rt = UncertaintyRuntime(setup["root"] / "b", seed=0)
    x = calibration_data(setup["ck"], setup["recipe"], split="test", max_windows=5).x
    r = rt.predict(x)
    assert r.probs.shape == (5, 4) and r.samples.shape == (4, 5, 4) and np.all(np.isfinite(r.epistemic))
    # a latency budget works through per-layer profiling
    rc = main(common + ["--budget-ms", "1000", "--out", str(setup["root"] / "b-ms")])
    assert rc == 0 and "predicted latency" in capsys.readouterr().out


def test_quantize_refuses_a_fisher_report_of_another_checkpoint(setup, tmp_path, capsys):
    torch.manual_seed(5)
    other = save_checkpoint(SignalTransformer(CFG).eval(), tmp_path / "other", CLASSES, 12000.0)
    assert main(["fisher", "--checkpoint", str(other.directory), "--recipe", setup["recipe"], "--out",
                 str(tmp_path / "f"), "--max-windows", "4", "--noise-samples", "1", "--no-progress"]) == 0
    rc = main(["quantize", "--checkpoint", str(setup["ck"].directory), "--fisher", str(tmp_path / "f"),
               "--recipe", setup["recipe"], "--budget-bytes", "100000", "--out", str(tmp_path / "b"), "--no-progress"])
    assert rc == 2 and "estimated on checkpoint" in capsys.readouterr().err


@pytest.mark.slow
def test_fisher_on_cwru_windows(cwru_dir, tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(input_length=1024, num_classes=3, patch=64, d_model=16, heads=2, depth=2, ffn=16,
                      stochastic_blocks=(1,))
    ck = save_checkpoint(SignalTransformer(cfg).eval(), tmp_path / "ck", ("normal", "inner_race", "outer_race"),
                         12000.0)
    data = calibration_data(load_checkpoint(ck.directory), data=cwru_dir, max_windows=24)
    assert data.x.shape == (24, 1024) and set(np.unique(data.y)) <= {0, 1, 2} and "CWRU" in data.description
    rep = estimate_fisher(ck.load_model(), data.x, data.y, FisherConfig(noise_samples=1, progress=False))
    assert all(np.isfinite(lf.weight_trace) and lf.weight_trace > 0 for lf in rep.layers)
