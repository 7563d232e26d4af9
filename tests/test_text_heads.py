"""The text heads are a capability each scheme declares (issue 20): ``Scheme.text_head`` gives the
head's stochastic sites and capabilities, the classifier reads them, and a scheme with a text head
is one scheme class (no table keyed by scheme names in edgeuq/text, no scheme-name switch in
bench/text_teacher.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeuq.models.bert import BertConfig
from edgeuq.text.classifier import POSTERIOR_SCHEMES, TEXT_SCHEMES, TextClassifier
from edgeuq.schemes import SCHEMES, get_scheme, register_scheme
from edgeuq.schemes.base import Scheme
from edgeuq.text.heads import TextHead, text_head, text_scheme_names

TINY = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24,
                  max_position_embeddings=16)
#: the noise inputs each built-in head must expose (the layer names of TextClassifier, written out here)
EXPECTED_NOISE = {"mc_dropout": ["head_in", "head_hidden"], "laplace": ["head_laplace"]}


def _model(scheme: str) -> TextClassifier:
    torch.manual_seed(0)
    return TextClassifier(TINY, num_classes=3, hidden=8, scheme=scheme).eval()


def test_builtin_heads_are_the_registered_text_schemes_with_their_capabilities():
    assert set(TEXT_SCHEMES) == set(EXPECTED_NOISE) and len(TEXT_SCHEMES) == 2
    assert TEXT_SCHEMES == tuple(n for n in SCHEMES if n in EXPECTED_NOISE)   # registry order
    assert POSTERIOR_SCHEMES == ("laplace",)
    for scheme, noise in EXPECTED_NOISE.items():
        model = _model(scheme)
        assert model.head is text_head(scheme) is get_scheme(scheme).text_head
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
    with pytest.raises(ValueError, match="text scheme must be one of"):
        text_head("nope")                  # not a registered scheme at all
    with pytest.raises(ValueError, match="subset"):
        TextHead(sites=("fc1",))
    with pytest.raises(ValueError, match="fc2"):
        TextHead(sites=("drop_in",), post_hoc_posterior=True)


def test_a_new_head_is_declared_by_its_scheme_alone_and_samples_only_its_sites():
    """A toy scheme (defined here, nothing else edited) declaring a head with input dropout only:
    it becomes a text scheme, the classifier samples exactly that site, and its logits equal the
    mc_dropout head's with a unit hidden-dropout mask."""

    @register_scheme("test_text_in_drop")
    class InDrop(Scheme):
        text_head = TextHead(sites=("drop_in",))

        def problems(self, cfg):
            return []

    try:
        assert "test_text_in_drop" in text_scheme_names()
        toy = _model("test_text_in_drop")
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
        SCHEMES.remove("test_text_in_drop")
    assert "test_text_in_drop" not in text_scheme_names()
