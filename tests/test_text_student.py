"""Mask Fisher over the pretrained encoder (finite differences) and the layer choice by it. (The
student itself is built by the compression chain: tests/test_text_student_chain.py.)"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeuq.models.bert import BertConfig
from edgeuq.text.classifier import TextClassifier
from edgeuq.text.student import choose_layers, mask_fisher, masked_forward

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
