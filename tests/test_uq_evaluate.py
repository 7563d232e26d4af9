"""`edgeuq evaluate`: generic data formats, resampling, OOD metrics, JSON and plots."""
import json

import numpy as np
import pytest
import scipy.io
import torch

from edgeuq.cli import main
from edgeuq.data import build_word_tokenizer
from edgeuq.data.labels import parse_label_map
from edgeuq.data.sources import DataOptions
from edgeuq.evaluate import evaluate_bundle, ood_metrics, set_metrics
from edgeuq.bundle import build_bundle
from edgeuq.export import TOKENIZER_FILE, export_onnx
from edgeuq.models import ModelConfig, SignalTransformer
from edgeuq.training import save_checkpoint
from edgeuq.uq import auroc, nll


pytestmark = pytest.mark.usefixtures("one_torch_thread")


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
    # the same evaluation through the API gives the raw runtime outputs; every printed figure
    # must equal a brute-force recomputation from them
    ev = evaluate_bundle(signal_bundle, data, ood=ood, samples=8, progress=False)
    r, y, o = ev.data.result, ev.data.labels, ev.ood.result
    p = r.probs.astype(np.float64)
    assert d["accuracy"] == pytest.approx(np.mean(np.argmax(p, 1) == y), abs=1e-12)
    assert d["nll"] == pytest.approx(-np.mean([np.log(p[i, y[i]]) for i in range(len(y))]), rel=1e-6)
    assert d["brier"] == pytest.approx(np.mean([sum((p[i, c] - (c == y[i])) ** 2 for c in range(3))
                                                for i in range(len(y))]), rel=1e-6)
    conf, hit = p.max(1), (np.argmax(p, 1) == y)
    ece = sum(abs(hit[m].mean() - conf[m].mean()) * m.sum() / len(y)
              for m in [(conf > b / 10) & (conf <= (b + 1) / 10) for b in range(10)] if m.any())
    assert d["ece"] == pytest.approx(ece, abs=1e-9)
    assert d["mean_total"] == pytest.approx(float(np.mean(r.total)), rel=1e-6)
    assert d["mean_epistemic"] == pytest.approx(float(np.mean(r.epistemic)), rel=1e-6)

    def pairwise_auroc(s_in, s_out):  # P(out scores higher), ties count half: the definition itself
        return np.mean([(so > si) + 0.5 * (so == si) for so in s_out for si in s_in])

    assert doc["ood_metrics"]["auroc_mi"] == pytest.approx(pairwise_auroc(r.epistemic, o.epistemic), abs=1e-9)
    assert doc["ood_metrics"]["auroc_total"] == pytest.approx(pairwise_auroc(r.total, o.total), abs=1e-9)
    for k in ("aurc", "acc_at_90", "aupr_mi", "fpr95_mi", "aupr_total", "fpr95_total"):
        assert k in d or k in doc["ood_metrics"]
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


def test_evaluate_maps_users_label_spellings(signal_bundle, tmp_path, capsys):
    spelled = _signals(tmp_path / "spelled", 3, FS, 0, labels=("Normal", "InnerRace", "OUTER-RACE"))
    ev = evaluate_bundle(signal_bundle, spelled, samples=4, progress=False)  # case / separators / CamelCase
    assert sorted(set(ev.data.labels.tolist())) == [0, 1, 2]
    own = _signals(tmp_path / "own", 3, FS, 0, labels=("healthy", "IR", "OR"))
    assert main(["evaluate", "--bundle", str(signal_bundle), "--data", str(own), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--label-map" in err and "allow_unknown" not in err and "healthy" in err
    assert main(["evaluate", "--bundle", str(signal_bundle), "--data", str(own), "--no-progress", "--samples", "4",
                 "--label-map", "healthy=normal,IR=inner_race,OR=outer_race"]) == 0
    mapped = tmp_path / "map.json"
    mapped.write_text(json.dumps({"healthy": "normal", "IR": "inner_race", "OR": "outer_race"}))
    ev2 = evaluate_bundle(signal_bundle, own, samples=4, progress=False,
                          options=DataOptions(label_map=parse_label_map(str(mapped))))
    np.testing.assert_array_equal(ev2.data.labels, ev.data.labels)  # same files, same label order
    assert main(["evaluate", "--bundle", str(signal_bundle), "--data", str(own), "--no-progress",
                 "--label-map", "healthy=broken"]) == 2
    assert "broken" in capsys.readouterr().err


def test_evaluate_split_scores_the_held_out_segment(signal_bundle, tmp_path):
    from edgeuq.data import load_signals, split_in_domain

    data = _signals(tmp_path / "d", 3, FS, 0)
    ev_all = evaluate_bundle(signal_bundle, data, samples=4, progress=False)              # signal files: all
    ev_test = evaluate_bundle(signal_bundle, data, samples=4, progress=False, split="test")
    ref = split_in_domain(load_signals(data, target_fs=FS), 128, 128, class_names=CLASSES).test
    assert ev_test.data.n == len(ref) < ev_all.data.n
    np.testing.assert_array_equal(ev_test.data.labels, ref.y)
    assert "held-out test split" in ev_test.descriptions["data"]
    assert "all windows" in ev_all.descriptions["data"]


def test_evaluate_on_a_cwru_folder_scores_only_the_held_out_split(cwru_dir, tmp_path, capsys):
    from edgeuq.data import load_cwru, split_in_domain

    classes = ("normal", "inner_race", "outer_race", "ball")
    torch.manual_seed(0)
    m = SignalTransformer(ModelConfig(input_length=128, num_classes=4, patch=16, d_model=8, heads=2, depth=1,
                                      ffn=8, dropout=0.3, stochastic_blocks=(0,)))
    art = export_onnx(save_checkpoint(m, tmp_path / "ck", classes, 12000.0), tmp_path / "onnx")
    bundle = build_bundle(art, tmp_path / "bundle", "cwru-tiny", "0.1.0", default_samples=2).root
    out = tmp_path / "e.json"
    assert main(["evaluate", "--bundle", str(bundle), "--data", str(cwru_dir), "--hop", "8192", "--samples", "2",
                 "--json", str(out), "--no-progress"]) == 0
    assert "held-out test split" in capsys.readouterr().out
    ref = split_in_domain(load_cwru(cwru_dir, target_fs=12000.0), 128, 8192, class_names=classes)
    assert json.loads(out.read_text())["sets"]["data"]["n"] == len(ref.test)
    assert len(ref.test) < len(ref.train)  # scoring everything would have included the training segment
