"""`edgeuq evaluate`: generic data formats, resampling, OOD metrics, JSON and plots."""
import json

import numpy as np
import pytest
import scipy.io
import torch

from edgeuq.cli import main
from edgeuq.data import build_word_tokenizer
from edgeuq.evaluate import evaluate_bundle, ood_metrics, set_metrics
from edgeuq.bundle import build_bundle
from edgeuq.export import TOKENIZER_FILE, export_onnx
from edgeuq.models import ModelConfig, SignalTransformer
from edgeuq.training import save_checkpoint
from edgeuq.uq import auroc, nll


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models train faster on one thread (and do not oversubscribe a shared CI box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


CLASSES = ("normal", "inner_race", "outer_race")
FS = 1000.0


@pytest.fixture(scope="module")
def signal_bundle(tmp_path_factory):
    d = tmp_path_factory.mktemp("sig")
    torch.manual_seed(0)
    m = SignalTransformer(ModelConfig(input_length=128, num_classes=3, patch=16, d_model=16, heads=2, depth=2,
                                      ffn=16, dropout=0.3, stochastic_blocks=(1,)))
    art = export_onnx(save_checkpoint(m, d / "ck", CLASSES, FS), d / "onnx")
    return build_bundle(art, d / "bundle", "tiny", "0.1.0", default_samples=8).root


def _signals(folder, n_files, fs, seed, labels=CLASSES):
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n_files):
        sig = np.sin(2 * np.pi * (20 + 40 * i) * np.arange(int(fs)) / fs) + 0.2 * rng.standard_normal(int(fs))
        np.savez(folder / f"rec{i}.npz", signal=sig, fs=fs, label=labels[i % len(labels)])
    return folder


def test_evaluate_cli_with_ood_writes_table_json_and_plots(signal_bundle, tmp_path, capsys):
    data = _signals(tmp_path / "data", 3, 2 * FS, 0)        # 2 kHz files, resampled to the model's 1 kHz
    ood = _signals(tmp_path / "ood", 2, FS, 1, labels=("compound",))
    out = tmp_path / "eval" / "result.json"
    assert main(["evaluate", "--bundle", str(signal_bundle), "--data", str(data), "--ood", str(ood),
                 "--json", str(out), "--samples", "8", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "AUROC" in printed and "mutual information" in printed
    doc = json.loads(out.read_text())
    d = doc["sets"]["data"]
    assert d["n"] == 3 * 7                                   # 1000 samples at 1 kHz -> 7 windows of 128
    assert doc["sets"]["ood"]["n"] == 2 * 7
    for k in ("accuracy", "nll", "brier", "ece", "aurc", "acc_at_90", "mean_total", "mean_epistemic"):
        assert k in d
    for k in ("auroc_mi", "aupr_mi", "fpr95_mi", "auroc_total", "aupr_total", "fpr95_total"):
        assert 0.0 <= doc["ood_metrics"][k] <= 1.0
    for name in ("reliability", "accuracy_coverage", "hist_epistemic", "hist_total"):
        assert open(doc["plots"][name], "rb").read(4) == b"\x89PNG"


def test_evaluate_metrics_match_the_runtime_outputs(signal_bundle, tmp_path):
    data = _signals(tmp_path / "data", 3, FS, 0)
    mat = tmp_path / "ood.mat"
    scipy.io.savemat(mat, {"signal": np.random.default_rng(3).standard_normal(600), "fs": FS})
    ev = evaluate_bundle(signal_bundle, data, ood=mat, samples=8, key="signal", progress=False)
    r, y = ev.data.result, ev.data.labels
    assert r.samples.shape == (8, len(y), 3)
    assert ev.data.metrics["accuracy"] == pytest.approx(np.mean(r.prediction == y))
    assert ev.data.metrics["nll"] == pytest.approx(nll(r.probs, y))
    assert ev.ood.n == 4 and np.all(ev.ood.labels == -1)
    assert ev.ood_metrics["auroc_mi"] == pytest.approx(auroc(r.epistemic, ev.ood.result.epistemic))
    assert set(ood_metrics(r, r)) == set(ev.ood_metrics)
    assert "accuracy" not in set_metrics(ev.ood.result, ev.ood.labels)   # unlabelled: uncertainty only


def test_evaluate_refuses_unknown_labels_and_short_signals(signal_bundle, tmp_path, capsys):
    bad = _signals(tmp_path / "bad", 1, FS, 0, labels=("cracked",))
    assert main(["evaluate", "--bundle", str(signal_bundle), "--data", str(bad), "--no-progress"]) == 2
    assert "cracked" in capsys.readouterr().err
    csv = tmp_path / "short.csv"
    csv.write_text("\n".join(str(v) for v in range(50)))
    assert main(["evaluate", "--bundle", str(signal_bundle), "--data", str(csv), "--fs", "1000",
                 "--no-progress"]) == 2
    assert "error" in capsys.readouterr().err


def test_evaluate_text_bundle_on_tsv(tmp_path, capsys):
    texts = ["good film", "bad film", "a good plot", "dull and bad"]
    tok = build_word_tokenizer(texts, max_length=6, min_freq=1)
    torch.manual_seed(0)
    m = SignalTransformer(ModelConfig(input_length=6, num_classes=2, patch=1, embed="token",
                                      vocab_size=tok.vocab_size, d_model=8, heads=2, depth=1, ffn=8,
                                      stochastic_blocks=(0,)))
    ck = save_checkpoint(m, tmp_path / "ck", ("negative", "positive"), 1.0, "none")
    tok.save(ck.directory / TOKENIZER_FILE)
    bundle = build_bundle(export_onnx(ck, tmp_path / "onnx"), tmp_path / "bundle", "txt", "0.1.0")
    (tmp_path / "in.tsv").write_text("sentence\tlabel\n" + "".join(f"{t}\t{i % 2}\n" for i, t in enumerate(texts)))
    (tmp_path / "ood.tsv").write_text("text\tlabel_coarse\nwhat is a film ?\tDESC\nwho ?\tHUM\n")
    out = tmp_path / "t.json"
    assert main(["evaluate", "--bundle", str(bundle.root), "--data", str(tmp_path / "in.tsv"), "--ood",
                 str(tmp_path / "ood.tsv"), "--json", str(out), "--no-progress"]) == 0
    doc = json.loads(out.read_text())
    assert doc["sets"]["data"]["n"] == 4 and doc["sets"]["ood"]["n"] == 2
    assert "auroc_mi" in doc["ood_metrics"]
