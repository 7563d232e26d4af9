"""``edgeuq text-teacher``: argument errors, a missing ``text`` extra, and a run on a tiny
random encoder whose artifact and bundles load and whose bundles answer ``predict_text``."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from require_extras import require_extra

require_extra("safetensors", "text")

from text_teacher_support import POSITIVE, questions, sentiment_rows, write_tiny_model, write_tsv  # noqa: E402

from edgeuq.cli import main  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli-data")
    rows = [(t, "pos" if lab == "Thumbs-Up" else "neg") for t, lab in sentiment_rows(100, 0)]
    return {"dir": d, "model": write_tiny_model(d / "model"),
            "train": write_tsv(d / "train.tsv", ["sentence", "label"], rows),
            "ood": write_tsv(d / "q.tsv", ["text"], [(q,) for q in questions(20, 1)])}


def _args(data, out, *extra):
    return ["text-teacher", "--train", str(data["train"]), "--out", str(out), "--model", str(data["model"]),
            "--train-layers", "1", "--epochs", "25", "--lr", "3e-3", "--lr-head", "3e-2", "--batch", "8",
            "--max-length", "12", "--samples", "6", *extra]


def test_argument_errors(data, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["text-teacher", "--out", str(tmp_path / "o")])  # --train missing
    assert exc.value.code == 2 and "--train" in capsys.readouterr().err
    assert main(_args(data, tmp_path / "o", "--scheme", "bogus")) == 2
    assert "schemes must be distinct names among ['mc_dropout', 'laplace']" in capsys.readouterr().err
    assert main(_args(data, tmp_path / "o", "--epochs", "0")) == 2
    assert "epochs must be a positive integer" in capsys.readouterr().err
    bad = [a if a != str(data["train"]) else str(tmp_path / "missing.tsv") for a in _args(data, tmp_path / "o")]
    assert main(bad) == 2 and "missing.tsv" in capsys.readouterr().err
    assert main(_args(data, tmp_path / "o", "--classes", "good,bad")) == 2
    assert "not among the classes ['good', 'bad']" in capsys.readouterr().err
    assert not (tmp_path / "o" / "text_teacher.json").exists()


@pytest.mark.parametrize("missing", ["safetensors", "all_minilm_l6_v2"])
def test_a_missing_text_extra_is_a_clear_error(data, tmp_path, capsys, monkeypatch, missing):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == missing else real(name, *a))
    args = _args(data, tmp_path / "o")
    if missing == "all_minilm_l6_v2":  # only the default (packaged) model needs the package
        i = args.index("--model")
        del args[i:i + 2]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "edgeuq text-teacher: error:" in err and "edgeuq[text]" in err and missing in err


def test_a_run_writes_an_artifact_whose_bundles_run_on_the_device_runtime(data, tmp_path, capsys):
    from edgeuq_runtime import UncertaintyRuntime, load_bundle

    from edgeuq.text.pipeline import load_text_teacher

    out = tmp_path / "teacher"
    assert main(_args(data, out, "--ood", str(data["ood"]), "--scheme", "mc_dropout", "laplace",
                      "--label-map", "pos=positive,neg=negative")) == 0
    printed = capsys.readouterr().out
    assert "mc_dropout" in printed and "laplace" in printed and "q:" in printed
    art = load_text_teacher(out)
    assert art.class_names == ("negative", "positive")                  # the label map named the classes
    assert set(art.bundles) == {"mc_dropout", "laplace"}
    assert art.data["rows"] == {"train": 80, "val": 10, "test": 10}    # 10 % held out twice
    texts = [f"the film is {w}" for w in POSITIVE] + ["the plot was bad", "a dull story", "what year ?"]
    for scheme in art.bundles:
        b = load_bundle(art.bundle_path(scheme), verify=True)
        rt = UncertaintyRuntime(b.root, seed=0)
        r = rt.predict_text(texts)
        assert r.samples.shape == (6, len(texts), 2)                   # --samples is the bundle default
        assert np.all(np.isfinite(r.probs)) and np.allclose(r.probs.sum(-1), 1.0)
        labels = r.labels()
        assert labels[:4] == ["positive"] * 4 and labels[4:6] == ["negative"] * 2, (scheme, labels)
    assert main(_args(data, out, "--ood", str(data["ood"]), "--scheme", "mc_dropout", "laplace",
                      "--label-map", "pos=positive,neg=negative")) == 0
    assert "up to date" in capsys.readouterr().out
