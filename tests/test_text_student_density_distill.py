"""The text student distilled towards the teacher's density feature (``distill``'s ``density_weight``):
the teacher's density model against its pretrained encoder run layer by layer, the wrong encoder
refused, and the chain end to end on a tiny teacher whose bundles carry Avg-Avg features."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeuq.models.bert import masked_mean_pool

from text_teacher_support import TINY_CHAIN_OVERRIDES, student_bundle_error, tiny_text_teacher, write_tiny_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    from require_extras import require_extra

    require_extra("safetensors", "text")
    d = tmp_path_factory.mktemp("dens")
    return d, tiny_text_teacher(d, layers=2, ood_features="avgavg")


def test_teacher_density_model_emits_the_pretrained_encoders_avgavg(teacher):
    from edgeuq.text.pretrained import load_pretrained
    from edgeuq_runtime.wordpiece import WordPieceTokenizer

    d, t = teacher
    model = t.load_density_model(pretrained=d / "model")
    tok = WordPieceTokenizer.load(t.file_path("tokenizer.json"))
    ids = torch.from_numpy(tok.encode_batch(["the film is good", "a very dull plot", "superb !"]))
    pre = load_pretrained(d / "model").encoder().eval()
    with torch.no_grad():
        want = torch.stack([masked_mean_pool(*pre(ids, stop=k)) for k in (1, 2)]).mean(0)
        got = model.density_feature(ids)
        full = model.trunk(ids)
        err = float((got - want).abs().max())
        # the classifier columns are the fine-tuned teacher's (load_model), unchanged by the density trunk
        cls_err = float((full[:, :model.cfg.d_model] - t.load_model().trunk(ids)).abs().max())
        # the fine-tuned top layer is not the pretrained one (else the check could not tell them apart)
        moved = float((full[:, :model.cfg.d_model] - masked_mean_pool(*pre(ids))).abs().max())
    assert err <= 1e-5 and cls_err <= 1e-5, (err, cls_err)
    assert moved > 1e-4, moved


def test_teacher_density_model_refuses_another_encoder(teacher, tmp_path):
    d, t = teacher
    with pytest.raises(ValueError, match="pass the one it came from"):
        t.load_density_model(pretrained=write_tiny_model(tmp_path / "other", seed=7))


def _distance(student, teacher_model, texts):
    """density_matching between the student's layers and the teacher's density feature on ``texts``."""
    from edgeuq.compress.chain import tokenizer_of
    from edgeuq.compress.losses import density_matching
    from edgeuq_runtime.wordpiece import WordPieceTokenizer

    s_ids = torch.from_numpy(tokenizer_of(student.checkpoint).encode_batch(texts))
    t_ids = torch.from_numpy(WordPieceTokenizer.load(teacher_model[1]).encode_batch(texts))
    m = student.checkpoint.load_model().eval()
    with torch.no_grad():
        states, mask = m.hidden_states(s_ids)
        return float(density_matching(states[1:], mask, teacher_model[0].density_feature(t_ids)))


def test_chain_with_density_weight_distils_towards_the_teacher_feature_and_bundles(teacher, tmp_path):
    from edgeuq.text.student_chain import StudentOptions, build_text_student

    from text_teacher_support import sentiment_rows

    d, t = teacher
    texts = [r[0] for r in sentiment_rows(40, 9)]
    target = (t.load_density_model(pretrained=d / "model"), t.file_path("tokenizer.json"))
    dist = {}
    for w in (0.0, 1.0):
        overrides = (*TINY_CHAIN_OVERRIDES, ("distill", "density_weight", w), ("distill", "lr", 3e-3))
        st = build_text_student(t.directory, tmp_path / f"student-{w}", "text-student",
                                steps=["vocab", "distill", "posterior"], overrides=overrides,
                                options=StudentOptions(ood_features="frozen_avg"), log=lambda m: None,
                                pretrained=d / "model")
        dist[w] = _distance(st, target, texts)
    # the term pulls the student's Avg-Avg towards the teacher's pretrained one (phrases it was not trained on)
    assert dist[1.0] < 0.8 * dist[0.0], dist
    same, other = student_bundle_error(st)        # the bundle (density columns beside) predicts as PyTorch does
    assert same <= 1e-5 and not other <= 1e-5, (same, other)
    # without the encoder the teacher came from (the packaged one differs) the step cannot build its target
    with pytest.raises(ValueError, match="pass the one it came from"):
        build_text_student(t.directory, tmp_path / "student2", "text-student", steps=["vocab", "distill", "posterior"],
                           overrides=overrides, log=lambda m: None)
