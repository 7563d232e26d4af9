"""The text-teacher stage end to end on a tiny random encoder of MiniLM's architecture and a
tiny sentiment corpus in TSV/CSV files with non-SST label spellings: artifact, bundles,
metrics checked against an independent PyTorch evaluation, caching, atomicity, bad inputs."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from require_extras import require_extra

require_extra("safetensors", "text")

from text_teacher_support import questions, sentiment_rows, write_tiny_model, write_tsv  # noqa: E402

from edgeuq.artifact import ArtifactError, ArtifactNotFound  # noqa: E402
from edgeuq.data import DataError  # noqa: E402
from edgeuq.data.labels import UnknownLabelsError  # noqa: E402
from edgeuq.data.sources import DataOptions  # noqa: E402
from edgeuq.text.datasets import text_splits  # noqa: E402
from edgeuq.text.pipeline import TeacherOptions, TextTeacher, train_text_teacher  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

OPTS = TeacherOptions(train_layers=1, epochs=25, lr=3e-3, lr_head=3e-2, batch=8, max_length=12, samples=8)
COLUMNS = DataOptions(text_column="review", label_column="verdict")
CLASSES = ("thumbs_down", "thumbs_up")


def _csv(path: Path, rows) -> Path:
    """Comma-separated, texts quoted (one holds a comma), other label spellings."""
    lines = ["review,verdict"] + [f'"{t}, really",{"THUMBS UP" if lab == "Thumbs-Up" else "Thumbs_Down"}'
                                  for t, lab in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("teacher-data")
    return {"dir": d, "model": write_tiny_model(d / "model"),
            "train": write_tsv(d / "train.tsv", ["review", "verdict"], sentiment_rows(80, 0)),
            "val": _csv(d / "val.csv", sentiment_rows(16, 1)),
            "test": write_tsv(d / "test.tsv", ["review", "verdict"],
                              sentiment_rows(24, 2, pos_label="thumbsUp", neg_label="THUMBS-DOWN")),
            "ood": write_tsv(d / "questions.tsv", ["text"], [(q,) for q in questions(24, 3)])}


def _run(files, out, log=None, **kw):
    args = dict(val=files["val"], test=files["test"], ood=[files["ood"]], model=files["model"],
                data_options=COLUMNS, log=(log.append if log is not None else (lambda m: None)))
    args.update(kw)
    return train_text_teacher(files["train"], out, args.pop("options", OPTS), **args)


@pytest.fixture(scope="module")
def teacher(files):
    log = []
    art = _run(files, files["dir"] / "out", log)
    return art, log


def test_timings_are_the_stages_and_the_total_covers_them(teacher):
    """Timed by the one StageTimer (cache, train, export_eval), plus the whole run."""
    art, _ = teacher
    t = dict(art.timings)
    assert set(t) == {"cache_s", "train_s", "export_eval_s", "total_s"}
    stages = [t["cache_s"], t["train_s"], t["export_eval_s"]]
    assert all(v >= 0 for v in stages) and t["export_eval_s"] > 0      # bundles were exported and evaluated
    assert t["total_s"] >= sum(stages) - 0.003, t                       # rounding to ms on each of three


def _texts_labels(path: Path):
    from edgeuq.text.datasets import read_labelled_text

    ds = read_labelled_text(path, CLASSES, COLUMNS)
    return list(ds.texts), ds.y


def test_artifact_is_versioned_hashed_and_holds_a_verified_bundle_per_scheme(teacher, tmp_path):
    from edgeuq_runtime import load_bundle

    art, log = teacher
    again = TextTeacher.load(art.directory)
    assert again.digest == art.digest and again.class_names == CLASSES   # classes read off the labels
    assert set(art.bundles) == {"laplace", "mc_dropout"} and art.options["samples"] == 8
    for scheme in art.bundles:
        b = load_bundle(art.bundle_path(scheme), verify=True)
        assert b.manifest.class_names == CLASSES and b.manifest.metadata["scheme"] == scheme
        assert b.manifest.input.dtype == "int64" and b.manifest.default_samples == 8
        assert all(f"{art.bundles[scheme]}/{f}" in art.files for f in b.manifest.files)  # hashed by the artifact
    assert any("prior precision" in m for m in log) and art.laplace["prior_precision"] > 0
    copy = tmp_path / "copy"
    shutil.copytree(art.directory, copy)
    victim = copy / art.bundles["laplace"] / "head.onnx"
    victim.write_bytes(victim.read_bytes() + b"\0")
    with pytest.raises(ArtifactError, match="head.onnx"):
        TextTeacher.load(copy)


def _ece_brute_force(probs, y, bins=10):
    conf, pred = probs.max(1), probs.argmax(1)
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        sel = (conf > lo) & (conf <= hi) if b else (conf >= lo) & (conf <= hi)
        if sel.any():
            total += sel.sum() / len(y) * abs(float(np.mean(pred[sel] == y[sel])) - float(np.mean(conf[sel])))
    return total


def _auroc_pairs(s_in, s_out):
    """P(OOD score > in-distribution score), ties half: the AUROC by counting pairs."""
    diff = s_out[:, None] - s_in[None, :]
    return float(np.mean((diff > 0) + 0.5 * (diff == 0)))


@pytest.mark.parametrize("scheme", ["laplace", "mc_dropout"])
def test_metrics_match_an_independent_pytorch_evaluation(teacher, files, scheme):
    """The stored runtime metrics == the fine-tuned PyTorch model given the noise the runtime draws."""
    from edgeuq_runtime import UncertaintyRuntime
    from edgeuq_runtime.noise import sample_noise_tiled

    art, _ = teacher
    m = art.metrics[scheme]
    model = art.load_model(scheme)
    rt = UncertaintyRuntime(art.bundle_path(scheme))
    seed, s = art.options["seed"], art.options["samples"]

    def torch_probs(texts, seed_):
        ids = torch.from_numpy(rt.tokenize(texts))
        noise = sample_noise_tiled(rt.manifest.noise, s, len(texts), np.random.default_rng(seed_))
        with torch.no_grad():
            feats = model.trunk(ids).repeat(s, 1)
            logits = model.head_forward(feats, {k: torch.from_numpy(v) for k, v in noise.items()})
        return torch.softmax(logits.double(), -1).numpy().reshape(s, len(texts), -1)

    texts, y = _texts_labels(files["test"])
    ps = torch_probs(texts, seed)
    p = ps.mean(0)
    assert m["rows"] == len(y) == 24
    assert m["accuracy"] == pytest.approx(float(np.mean(p.argmax(1) == y)), abs=1e-12)
    # the sentiment word decides the label (chance is 0.5): the posterior-mean pass gets it right; one seeded
    # draw of S = 8 samples from a broad Laplace posterior moves a sentence or two (measured over 10 seeds:
    # 0.875-0.958 with the runtime's noise stream, deterministic pass 0.958)
    assert float(np.mean(rt.deterministic(rt.tokenize(texts)).prediction == y)) >= 0.9
    assert m["accuracy"] >= 0.8
    assert abs(m["nll"] - float(-np.mean(np.log(p[np.arange(len(y)), y])))) <= 1e-4
    assert abs(m["ece"] - _ece_brute_force(p, y)) <= 1e-4
    ood_texts = questions(24, 3)
    po = torch_probs(ood_texts, seed + 1)

    def mi(ps_):
        pbar = ps_.mean(0)
        h = -(pbar * np.log(pbar + 1e-300)).sum(-1)
        return h - (-(ps_ * np.log(ps_ + 1e-300)).sum(-1)).mean(0), h

    (mi_in, h_in), (mi_out, h_out) = mi(ps), mi(po)
    got = m["ood"]["ood:questions"]
    assert abs(got["auroc_total"] - _auroc_pairs(h_in, h_out)) <= 1e-9
    assert abs(got["auroc_mi"] - _auroc_pairs(mi_in, mi_out)) <= 1e-9


def test_rerun_is_cached_and_force_reuses_the_frozen_layers_and_weights(teacher, files):
    art, _ = teacher
    caches = sorted((art.directory / "cache").glob("*.npz"))
    assert len(caches) == 2 and len(list((art.directory / "cache").glob("finetuned-*.pt"))) == 1
    stamps = [p.stat().st_mtime_ns for p in caches]
    log = []
    assert _run(files, art.directory, log).digest == art.digest
    assert any("up to date" in m for m in log)
    log = []
    forced = _run(files, art.directory, log, force=True)
    assert any("reused" in m for m in log) and not any(m.startswith("fine-tuning") for m in log)
    assert [p.stat().st_mtime_ns for p in caches] == stamps
    assert forced.metrics == art.metrics  # same weights, same seeds
    copy = art.directory.parent / "out-one-scheme"
    shutil.copytree(art.directory, copy)
    log = []
    _run(files, copy, log, options=TeacherOptions(**{**OPTS.to_dict(), "schemes": ("mc_dropout",)}))
    assert any("reused" in m for m in log), "a change of schemes alone must not re-train"


def test_val_limit_uses_a_seeded_subset_of_the_validation_rows(files, tmp_path):
    log = []
    art = _run(files, tmp_path / "o", log, options=TeacherOptions(**{**OPTS.to_dict(), "val_limit": 5, "epochs": 1,
                                                                     "schemes": ("laplace",)}))
    assert art.data["rows"]["val"] == 5 and any("train 80 / val 5 / test 24" in m for m in log)


def test_a_failed_export_leaves_no_artifact_and_the_rerun_resumes(files, tmp_path, monkeypatch):
    import edgeuq.text.export as export

    out = tmp_path / "out"
    real = export.export_text_bundle
    calls = []

    def failing(model, *a, **k):
        calls.append(model.cfg.scheme)
        if len(calls) == 2:
            raise RuntimeError("simulated crash in the second export")
        return real(model, *a, **k)

    monkeypatch.setattr(export, "export_text_bundle", failing)
    with pytest.raises(RuntimeError, match="simulated"):
        _run(files, out)
    with pytest.raises(ArtifactNotFound):
        TextTeacher.load(out)
    assert not list(out.parent.glob(f".{out.name}.staging-*")) and not list(out.glob("bundle-*"))  # nothing half written
    assert len(list((out / "cache").glob("finetuned-*.pt"))) == 1
    monkeypatch.setattr(export, "export_text_bundle", real)
    log = []
    art = _run(files, out, log)
    assert any("reused" in m for m in log)
    assert set(art.bundles) == {"laplace", "mc_dropout"}


def test_held_out_splits_are_disjoint_seeded_and_numeric_labels_become_classes(tmp_path):
    rows = [(t, "1" if lab == "Thumbs-Up" else "0") for t, lab in sentiment_rows(40, 5)]
    path = write_tsv(tmp_path / "n.tsv", ["sentence", "label"], rows)
    s = text_splits(path, held_out=0.1, seed=3)
    assert s.class_names == ("0", "1")
    assert (len(s.train), len(s.val), len(s.test)) == (32, 4, 4)
    got = sorted(s.train.texts + s.val.texts + s.test.texts)
    assert got == sorted(t for t, _ in rows)
    assert s.sources["val"]["held_out_from"] == "train"
    assert text_splits(path, held_out=0.1, seed=3).val.texts == s.val.texts
    assert text_splits(path, held_out=0.1, seed=4).val.texts != s.val.texts
    named = text_splits(path, class_names=("negative", "positive"))  # indices name given classes
    assert named.class_names == ("negative", "positive") and set(named.train.y.tolist()) == {0, 1}


def test_bad_inputs_raise_errors_that_name_the_problem(files, tmp_path):
    d = tmp_path
    bad_label = write_tsv(d / "v.tsv", ["review", "verdict"], [("good film", "thumbs up"), ("bad film", "meh")])
    with pytest.raises(UnknownLabelsError, match=r"\['meh'\]"):
        text_splits(files["train"], val=bad_label, options=COLUMNS)
    one = write_tsv(d / "one.tsv", ["sentence", "label"], [(t, "pos") for t, _ in sentiment_rows(20, 0)])
    with pytest.raises(DataError, match="at least two"):
        text_splits(one)
    mixed = write_tsv(d / "mixed.tsv", ["sentence", "label"], [("good", "1"), ("bad", "neg")] * 5)
    with pytest.raises(DataError, match="mix class indices"):
        text_splits(mixed)
    with pytest.raises(DataError, match="not a data source edgeuq knows"):
        text_splits(d)  # a folder of text files claims no source: the resolver says so, naming the known ones
    np.savez(d / "x.npz", signal=np.zeros(8))
    with pytest.raises(DataError, match="not a text file"):
        text_splits(d / "x.npz")
    with pytest.raises(FileNotFoundError, match="nope.tsv"):
        text_splits(d / "nope.tsv")
    with pytest.raises(DataError, match="column 'review'"):
        text_splits(one, options=COLUMNS)
    for bad in ({"schemes": ("bogus",)}, {"epochs": 0}, {"lr": float("nan")}, {"held_out": 0.6}, {"val_limit": -1}):
        with pytest.raises(ValueError, match="invalid TeacherOptions"):
            TeacherOptions(**bad)
    with pytest.raises(ValueError, match="exceeds the encoder's 2 layers"):
        _run(files, d / "o", options=TeacherOptions(train_layers=3))
    with pytest.raises(ValueError, match="exceeds the encoder's 24 positions"):
        _run(files, d / "o", options=TeacherOptions(max_length=25))
    assert not (d / "o" / TextTeacher.META_FILE).exists()
