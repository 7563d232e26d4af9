"""The text heads come from a registry keyed by scheme (issue 20): each head's stochastic sites
and capabilities are declared there, the classifier reads them, and a new head is one registry
entry (no scheme-name switch in edgeuq/text or bench/text_teacher.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeuq.models.bert import BertConfig
from edgeuq.text.classifier import POSTERIOR_SCHEMES, TEXT_SCHEMES, TextClassifier
from edgeuq.text.heads import TEXT_HEADS, TextHead, text_head

TINY = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24,
                  max_position_embeddings=16)
#: the noise inputs each built-in head must expose (the layer names of TextClassifier, written out here)
EXPECTED_NOISE = {"mc_dropout": ["head_in", "head_hidden"], "laplace": ["head_laplace"]}


def _model(scheme: str) -> TextClassifier:
    torch.manual_seed(0)
    return TextClassifier(TINY, num_classes=3, hidden=8, scheme=scheme).eval()


def test_builtin_heads_are_the_registered_text_schemes_with_their_capabilities():
    assert TEXT_SCHEMES == ("mc_dropout", "laplace") == tuple(TEXT_HEADS)
    assert POSTERIOR_SCHEMES == ("laplace",)
    for scheme, noise in EXPECTED_NOISE.items():
        model = _model(scheme)
        assert model.head is text_head(scheme)
        assert [s.name for s in model.noise_specs()] == noise


def test_using_switches_the_head_and_restores_it_even_on_error():
    model = _model("mc_dropout")
    with model.using("laplace") as m:
        assert m is model and [s.name for s in model.noise_specs()] == EXPECTED_NOISE["laplace"]
    assert model.scheme == "mc_dropout"
    with pytest.raises(RuntimeError):
        with model.using("laplace"):
            raise RuntimeError("boom")
    assert model.scheme == "mc_dropout" and [s.name for s in model.noise_specs()] == EXPECTED_NOISE["mc_dropout"]


def test_unknown_or_headless_schemes_are_refused_by_name():
    with pytest.raises(ValueError, match="text scheme must be one of"):
        _model("variational")          # a registered scheme without a text head
    model = _model("mc_dropout")
    with pytest.raises(ValueError, match="text scheme must be one of"):
        model.scheme = "nope"
    assert model.scheme == "mc_dropout"
    with pytest.raises(ValueError, match="unknown stochastic scheme"):
        TEXT_HEADS.add("nope", TextHead(sites=("fc2",)))
    with pytest.raises(ValueError, match="subset"):
        TextHead(sites=("fc1",))
    with pytest.raises(ValueError, match="fc2"):
        TextHead(sites=("drop_in",), post_hoc_posterior=True)


def test_a_new_head_is_one_registry_entry_and_samples_only_its_sites():
    """A toy head (input dropout only) under another registered scheme: the classifier samples
    exactly that site; its logits equal the mc_dropout head's with a unit hidden-dropout mask."""
    TEXT_HEADS.add("hsa", TextHead(sites=("drop_in",)))
    try:
        toy = _model("hsa")
        assert [s.name for s in toy.noise_specs()] == ["head_in"]
        ref = _model("mc_dropout")
        ref.load_state_dict(toy.state_dict())
        rng = np.random.default_rng(0)
        feats = torch.from_numpy(rng.standard_normal((5, TINY.hidden_size)).astype(np.float32))
        keep = torch.from_numpy((rng.random((5, TINY.hidden_size)) < 0.8).astype(np.float32))
        with torch.no_grad():
            got = toy.head_forward(feats, {"head_in": keep})
            want = ref.head_forward(feats, {"head_in": keep, "head_hidden": torch.ones(5, 8)})
        err = float((got - want).abs().max())
        assert err <= 1e-6, err
    finally:
        TEXT_HEADS.remove("hsa")
