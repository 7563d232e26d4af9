"""The student's trimmed position table (StudentSpec.trim_positions): the same outputs as the full
table for every input the tokenizer can emit, the rows it saves, a clear refusal of longer input
in PyTorch, and a bundle whose tokenizer and table agree (the device runtime truncates long text)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeuq.models.bert import BertConfig
from edgeuq.text.classifier import TextClassifier
from edgeuq.text.student import StudentSpec, build_student, param_count

TINY = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=24,
                  max_position_embeddings=32)
MAXLEN = 8


def _teacher(seed=0):
    torch.manual_seed(seed)
    return TextClassifier(TINY, num_classes=2, hidden=8, scheme="mc_dropout").eval()


def _ids(rng, n, t, vocab=TINY.vocab_size):
    ids = np.zeros((n, t), np.int64)
    for i in range(n):
        k = int(rng.integers(2, t + 1))
        ids[i, :k] = rng.integers(1, vocab, size=k)
    return ids


def _pair(rank=0):
    t = _teacher()
    old_ids = np.arange(TINY.vocab_size)
    full, _ = build_student(t, StudentSpec(layers=(0, 2), ffn=TINY.intermediate_size, rank=rank, max_length=MAXLEN,
                                           trim_positions=False), old_ids)
    trim, _ = build_student(t, StudentSpec(layers=(0, 2), ffn=TINY.intermediate_size, rank=rank, max_length=MAXLEN),
                            old_ids)
    return t, full, trim


@pytest.mark.parametrize("rank", [0, 4])
def test_trimmed_table_gives_the_full_tables_outputs_up_to_max_length(rank):
    _, full, trim = _pair(rank)
    rng = np.random.default_rng(1)
    for t in range(1, MAXLEN + 1):  # every length the tokenizer can emit
        x = torch.from_numpy(_ids(rng, 5, t) if t > 1 else np.ones((5, 1), np.int64))
        with torch.no_grad():
            err = float(torch.max(torch.abs(trim(x) - full(x))))
        assert err <= 1e-6, (t, err)


def test_trimmed_table_keeps_the_teachers_first_rows_and_saves_the_rest():
    t, full, trim = _pair()
    w = trim.encoder.embeddings.position_embeddings.weight.detach()
    assert tuple(w.shape) == (MAXLEN, TINY.hidden_size)
    assert torch.equal(w, t.encoder.embeddings.position_embeddings.weight.detach()[:MAXLEN])
    assert trim.cfg.max_position_embeddings == MAXLEN and full.cfg.max_position_embeddings == 32
    # the parameters saved are exactly the dropped rows (closed form)
    assert param_count(full) - param_count(trim) == (32 - MAXLEN) * TINY.hidden_size


def test_input_longer_than_the_table_is_refused_clearly():
    _, full, trim = _pair()
    x = torch.from_numpy(_ids(np.random.default_rng(2), 3, MAXLEN + 1))
    with torch.no_grad():
        full(x)  # the full table takes it
        with pytest.raises(ValueError, match=rf"{MAXLEN + 1} tokens is longer than the position table \({MAXLEN} "):
            trim(x)


def test_spec_longer_than_the_teacher_is_refused():
    with pytest.raises(ValueError, match="exceeds the teacher's 32 positions"):
        build_student(_teacher(), StudentSpec(layers=(0,), ffn=TINY.intermediate_size, rank=0, max_length=33),
                      np.arange(TINY.vocab_size))
    with pytest.raises(ValueError, match="max_length must be an integer >= 3"):
        StudentSpec(layers=(0,), ffn=4, rank=0, max_length=2)


def test_bundle_tokenizer_and_trimmed_table_agree_and_long_text_is_truncated(tmp_path):
    """The export refuses a tokenizer that could emit more ids than the table holds; with the
    tokenizer's max_length equal to the table, the device runtime truncates a long text to it and
    matches the student run by hand on the truncated ids."""
    pytest.importorskip("onnxruntime")
    sys.path.insert(0, str(Path(__file__).parent))
    from text_teacher_support import tiny_config, tokenizer_json

    from edgeuq.text.export import export_text_bundle
    from edgeuq.text.wordpiece import wordpiece_from_tokenizer_json
    from edgeuq_runtime import UncertaintyRuntime

    cfg = tiny_config()
    torch.manual_seed(0)
    teacher = TextClassifier(cfg, num_classes=2, hidden=8, scheme="mc_dropout").eval()
    student, _ = build_student(teacher, StudentSpec(layers=(1,), ffn=cfg.intermediate_size, rank=0, max_length=MAXLEN),
                               np.arange(cfg.vocab_size))
    assert student.cfg.max_position_embeddings == MAXLEN < cfg.max_position_embeddings
    long_tok = wordpiece_from_tokenizer_json(tokenizer_json(), MAXLEN + 4)
    with pytest.raises(ValueError, match=f"max_length {MAXLEN + 4} exceeds the model's {MAXLEN} positions"):
        export_text_bundle(student, long_tok, tmp_path / "refused", ("neg", "pos"), "s", default_samples=2)
    tok = wordpiece_from_tokenizer_json(tokenizer_json(), MAXLEN)
    b = export_text_bundle(student, tok, tmp_path / "ok", ("neg", "pos"), "s", default_samples=2)
    text = "the film is a very good movie story was quite fun and the plot is great"
    ids = tok.encode_batch([text])
    assert ids.shape == (1, MAXLEN) and int((ids != 0).sum()) == MAXLEN  # truncated to the table
    rt = UncertaintyRuntime(b.root, threads=1, seed=0)
    got = rt.trunk_features(rt.tokenize([text]))
    with torch.no_grad():
        want = student.trunk(torch.from_numpy(ids)).numpy()
    assert float(np.max(np.abs(got - want))) <= 1e-4
