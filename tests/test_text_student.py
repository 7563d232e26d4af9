"""The student cut from the teacher: mask Fisher (finite differences), layer/FFN/vocabulary
surgery (against the teacher run by hand), SVD embedding factorisation (numpy SVD)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeuq.models.bert import BertConfig, key_bias_from_mask, masked_mean_pool
from edgeuq.text.classifier import TextClassifier
from edgeuq.text.student import (FactorisedEmbeddings, StudentSpec, build_student, choose_layers, distil_student,
                                 DistilConfig, mask_fisher, masked_forward, prune_vocab)
from edgeuq.training import TrainConfig
from edgeuq_runtime.wordpiece import WordPieceTokenizer

TINY = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=24,
                  max_position_embeddings=20)


def _model(seed=0):
    torch.manual_seed(seed)
    m = TextClassifier(TINY, num_classes=2, hidden=8, scheme="mc_dropout").eval()
    return m


def _ids(rng, n=6, t=8, vocab=TINY.vocab_size):
    ids = np.zeros((n, t), np.int64)
    for i in range(n):
        k = int(rng.integers(2, t + 1))
        ids[i, :k] = rng.integers(1, vocab, size=k)
    return ids


def test_masked_forward_with_unit_masks_is_the_model():
    m = _model()
    ids = torch.from_numpy(_ids(np.random.default_rng(0)))
    L, H, F = TINY.num_hidden_layers, TINY.num_attention_heads, TINY.intermediate_size
    with torch.no_grad():
        a = masked_forward(m, ids, torch.ones(L), torch.ones(L, H), torch.ones(L, F))
        b = m(ids)
    assert float(torch.max(torch.abs(a - b))) <= 1e-5


def test_mask_fisher_matches_finite_differences():
    m = _model(1)
    ids = _ids(np.random.default_rng(1))
    fisher = mask_fisher(m, ids, batch_size=len(ids))  # one batch: Fisher = (dL/dm)^2
    L, H, F = TINY.num_hidden_layers, TINY.num_attention_heads, TINY.intermediate_size
    x = torch.from_numpy(ids[np.argsort((ids != 0).sum(1), kind="stable")])
    with torch.no_grad():
        target = m(x).argmax(-1)

    def loss(lm, hm, fm):
        with torch.no_grad():
            z = masked_forward(m, x, lm, hm, fm).double()
            return float(torch.nn.functional.cross_entropy(z, target, reduction="sum"))

    eps = 1e-3
    ones = (torch.ones(L), torch.ones(L, H), torch.ones(L, F))
    for which, (i, j) in ((0, (2, None)), (1, (1, 1)), (2, (3, 5))):
        up = [t.clone() for t in ones]
        dn = [t.clone() for t in ones]
        key = i if j is None else (i, j)
        up[which][key] += eps
        dn[which][key] -= eps
        g = (loss(*up) - loss(*dn)) / (2 * eps)
        got = [fisher.layers, fisher.heads, fisher.ffn][which][key]
        assert abs(got - g * g) <= 0.02 * max(g * g, 1e-3), (which, got, g * g)


def test_choose_layers_by_fisher_in_network_order():
    from edgeuq.text.student import MaskFisher

    f = MaskFisher(np.array([5.0, 0.1, 3.0, 9.0]), np.zeros((4, 2)), np.zeros((4, 3)), 10)
    assert choose_layers(f, 2) == (0, 3)
    assert choose_layers(f, 3) == (0, 2, 3)
    with pytest.raises(ValueError):
        choose_layers(f, 0)


def test_build_student_equals_the_teacher_run_on_the_kept_layers_and_rows():
    t = _model(2)
    rng = np.random.default_rng(2)
    fisher = mask_fisher(t, _ids(rng), batch_size=3)
    spec = StudentSpec(layers=(0, 2, 3), ffn=TINY.intermediate_size, rank=0, max_length=16)
    old_ids = np.arange(TINY.vocab_size)[::2]  # every other row; pad (0) kept
    s, _ = build_student(t, spec, old_ids, fisher)
    new = _ids(rng, vocab=len(old_ids))
    old = np.where(new != 0, old_ids[new], 0)
    with torch.no_grad():
        x = torch.from_numpy(old)
        mask = t.encoder.mask(x)
        bias = key_bias_from_mask(mask)
        h = t.encoder.embeddings(x)
        for i in spec.layers:
            h = t.encoder.layers[i](h, bias)
        want = t.head_forward(masked_mean_pool(h, mask))
        got = s(torch.from_numpy(new))
    assert float(torch.max(torch.abs(got - want))) <= 1e-5
    # FFN pruning keeps the neurons of largest Fisher: with all but the weakest kept the output
    # differs from the teacher only by those neurons
    spec2 = StudentSpec(layers=(1,), ffn=TINY.intermediate_size - 4, rank=0, max_length=16)
    s2, _ = build_student(t, spec2, np.arange(TINY.vocab_size), fisher)
    keep = np.sort(np.argsort(-fisher.ffn[1], kind="stable")[:TINY.intermediate_size - 4])
    w = s2.encoder.layers[0].intermediate.dense.weight.detach().numpy()
    assert np.array_equal(w, t.encoder.layers[1].intermediate.dense.weight.detach().numpy()[keep])


def test_factorised_embedding_svd_is_the_best_rank_r_approximation():
    torch.manual_seed(3)
    table = torch.randn(TINY.vocab_size, 16)
    emb = FactorisedEmbeddings(TINY, rank=5)
    err = emb.init_svd(table)
    approx = (emb.word_low.weight @ emb.word_proj.weight.T).detach().numpy()
    u, s, vt = np.linalg.svd(table.numpy().astype(np.float64), full_matrices=False)
    best = (u[:, :5] * s[:5]) @ vt[:5]
    assert np.max(np.abs(approx - best)) <= 1e-4
    assert abs(err - np.sqrt((s[5:] ** 2).sum() / (s ** 2).sum())) <= 1e-6
    full = FactorisedEmbeddings(TINY, rank=16)
    full.init_svd(table)
    with pytest.raises(ValueError, match="table"):
        emb.init_svd(table[:30])
    assert float(torch.max(torch.abs(full.word_low.weight @ full.word_proj.weight.T - table)).detach()) <= 1e-4


def _toy_tokenizer():
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "b", "c", "d", "e", "##a", "##b", "##c", "##d", "##e",
             "bad", "good", "##ness", "cab", "dead", "##bed"]
    return WordPieceTokenizer(vocab=tuple(vocab), max_length=10, special_tokens=("[PAD]", "[UNK]", "[CLS]", "[SEP]"))


def test_prune_vocab_keeps_corpus_pieces_specials_and_characters():
    tok = _toy_tokenizer()
    corpus = ["bad good", "cab"]
    pruned, old_ids = prune_vocab(tok, tok.encode_batch(corpus))
    assert pruned.vocab[0] == "[PAD]" and "dead" not in pruned.vocab and "##ness" not in pruned.vocab
    assert [tok.vocab[i] for i in old_ids] == list(pruned.vocab)
    for text in corpus:  # same pieces on the corpus
        assert pruned.tokens(text) == tok.tokens(text)
    assert tok.tokens("dead") == ["dead"] and pruned.tokens("dead") == ["d", "##e", "##a", "##d"]  # splits into kept pieces
    assert tok.tokens("goodness") == ["good", "##ness"] and pruned.tokens("goodness") == ["[UNK]"]  # no complete segmentation: [UNK]


def test_distil_student_lowers_its_loss_on_a_tiny_run():
    t = _model(4)
    rng = np.random.default_rng(4)
    ids = _ids(rng, n=64)
    fisher = mask_fisher(t, ids[:16], batch_size=8)
    spec = StudentSpec(layers=choose_layers(fisher, 2), ffn=16, rank=4, max_length=16)
    s, _ = build_student(t, spec, np.arange(TINY.vocab_size), fisher)
    cfg = DistilConfig(lr_head=3e-3, train=TrainConfig(epochs=4, batch_size=16, lr=3e-3))
    h = distil_student(s, t, spec, ids, ids, cfg,
                       log=lambda m: None)
    assert h["loss"][-1] < h["loss"][0]
