"""The BERT encoder is a trunk option of the one ModelConfig (``trunk = "bert"``): build_model gives
the encoder + masked mean pooling + the scheme registry's head, with the same StochasticLayer noise
inputs as the signal heads, and it computes what the text package's own classifier
(``edgeuq.text.classifier.TextClassifier``, a second implementation kept as the reference) computes,
on a tiny random encoder and once on the packaged MiniLM weights."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeuq_runtime.noise import sample_noise

from edgeuq.models import ModelConfig, build_model
from edgeuq.models.bert import BertConfig, BertEncoder
from edgeuq.models.config import bert_model_config
from edgeuq.models.trunks import BertTransformer, get_trunk, load_head_state
from edgeuq.schemes.laplace import laplace_factors_kron
from edgeuq.text.classifier import TextClassifier

TINY = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  max_position_embeddings=16)
LENGTH = 12


def _ids(rng: np.random.Generator, batch: int = 5) -> np.ndarray:
    ids = rng.integers(1, TINY.vocab_size, size=(batch, LENGTH))
    for i in range(batch):
        ids[i, max(2, LENGTH - 2 * i):] = 0
    return ids.astype(np.int64)


def _reference(scheme: str, seed: int = 3) -> TextClassifier:
    torch.manual_seed(seed)
    ref = TextClassifier(TINY, num_classes=3, hidden=8, head_dropout=0.2, scheme=scheme).eval()
    with torch.no_grad():  # non-trivial LayerNorms, so a swapped gamma/beta would show
        for name, p in ref.named_parameters():
            if "LayerNorm" in name:
                p.add_(0.3 * torch.randn_like(p))
    if scheme == "laplace":  # a fitted posterior, so the noise input matters
        rng = np.random.default_rng(0)
        a_inv, g_chol = laplace_factors_kron(rng.standard_normal((64, 8)), np.full((64, 3), 1 / 3), 1.0)
        ref.fc2.set_posterior(1.0, a_inv=a_inv, g_chol=g_chol)
    return ref


def _logits(model, ids: np.ndarray, noise) -> np.ndarray:
    with torch.no_grad():
        feats = model.trunk(torch.from_numpy(ids))
        s = len(next(iter(noise.values()))) // len(ids)
        feats = feats.repeat(s, 1)
        return model.head_forward(feats, {k: torch.from_numpy(v) for k, v in noise.items()}).numpy()


@pytest.mark.parametrize("scheme", ["mc_dropout", "laplace"])
def test_bert_trunk_equals_the_text_classifier(scheme):
    ref = _reference(scheme)
    cfg = bert_model_config(TINY, 3, LENGTH, scheme=scheme, head_hidden=8, head_dropout=0.2)
    model = build_model(cfg).eval()
    assert isinstance(model, BertTransformer)
    load_head_state(model, ref.trunk_state())
    # the same noise inputs (name, kind, shape, parameters) as the reference head
    assert [s.to_json() for s in model.noise_specs()] == [s.to_json() for s in ref.noise_specs()]
    rng = np.random.default_rng(1)
    ids = _ids(rng)
    noise = sample_noise(model.noise_specs(), 4 * len(ids), rng)
    ours, theirs = _logits(model, ids, noise), _logits(ref, ids, noise)
    err = float(np.max(np.abs(ours - theirs)))
    assert err <= 1e-5, err
    # not vacuous: the noise moves the logits, and another initialisation differs
    assert float(np.std(ours.reshape(4, len(ids), 3), axis=0).max()) > 1e-3
    other = build_model(cfg).eval()
    assert not float(np.max(np.abs(_logits(other, ids, noise) - theirs))) <= 1e-3


@pytest.mark.parametrize("kind", ["frozen_avg", "avgavg", "pretrained"])
def test_density_features_option_emits_the_pretrained_layers_pooled(kind):
    """trunk_options.density_features: [the classifier's features | token means of the pretrained
    encoder's layers], against the classifier's own trunk and the pretrained encoder run layer by layer."""
    from edgeuq.models.bert import masked_mean_pool
    from edgeuq.text.ood import WithOODFeatures

    ref = _reference("mc_dropout")
    torch.manual_seed(5)
    pretrained = BertEncoder(TINY).eval()
    pretrained.embeddings.load_state_dict(ref.encoder.embeddings.state_dict())
    pretrained.layers[0].load_state_dict(ref.encoder.layers[0].state_dict())
    model = WithOODFeatures(ref, pretrained, kind, start=1).as_model(LENGTH)
    assert model.density_columns == (32, 64) and model.feature_shape() == (64,)
    assert model.cfg.trunk_options.density_features == kind
    x = torch.from_numpy(_ids(np.random.default_rng(2)))
    with torch.no_grad():
        got = model.trunk(x)
        per_layer = [masked_mean_pool(*pretrained(x, stop=k)) for k in (1, 2)]   # layers 1..L of the pretrained
        want = {"frozen_avg": per_layer[0], "avgavg": (per_layer[0] + per_layer[1]) / 2,
                "pretrained": per_layer[1]}[kind]
        err = max(float((got[:, :32] - ref.trunk(x)).abs().max()), float((got[:, 32:] - want).abs().max()))
    assert err <= 1e-5, err
    # the density columns alone (distillation's target) without the fine-tuned layers: the same values
    with torch.no_grad():
        alone = float((model.density_feature(x) - want).abs().max())
    assert alone <= 1e-5, alone
    # the density columns are not the classifier's (else the check above could not tell them apart)
    assert float((got[:, :32] - got[:, 32:]).abs().max()) > 1e-3
    ids = x.numpy()
    noise = sample_noise(model.noise_specs(), 2 * len(ids), np.random.default_rng(3))
    assert float(np.max(np.abs(_logits(model, ids, noise) - _logits(ref, ids, noise)))) <= 1e-5


def test_pretrained_weights_load_strictly_into_the_trunk():
    torch.manual_seed(0)
    src = BertEncoder(TINY)
    model = build_model(bert_model_config(TINY, 2, LENGTH))
    model.encoder.load_bert_state({"bert." + k: v for k, v in src.state_dict().items()})
    for k, v in src.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[k], v), k
    state = dict(src.state_dict())
    state["encoder.layer.1.output.dense.weight"] = torch.zeros(32, 63)
    with pytest.raises(ValueError, match="shapes"):
        model.encoder.load_bert_state(state)
    # the whole model: a missing parameter or a foreign key is refused
    full = dict(model.state_dict())
    del full["head.fc1.weight"]
    with pytest.raises(ValueError, match="missing.*head.fc1.weight"):
        load_head_state(build_model(bert_model_config(TINY, 2, LENGTH)), full)
    full = {**model.state_dict(), "head.extra.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match="unexpected.*head.extra.weight"):
        load_head_state(build_model(bert_model_config(TINY, 2, LENGTH)), full)


def test_config_is_read_strictly_and_errors_name_the_field():
    cfg = bert_model_config(TINY, 2, LENGTH, scheme="laplace", head_hidden=8)
    again = ModelConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.trunk_options.max_positions == 16
    d = cfg.to_dict()
    with pytest.raises(ValueError, match=r"unknown trunk_options \['max_position'\]"):
        ModelConfig.from_dict({**d, "trunk_options": {**d["trunk_options"], "max_position": 3}})
    with pytest.raises(ValueError, match="unknown trunk .roberta.; known: .*bert.*signal"):
        ModelConfig.from_dict({**d, "trunk": "roberta"})
    with pytest.raises(ValueError, match="stochastic_blocks"):
        ModelConfig.from_dict({**d, "stochastic_blocks": [0]})
    with pytest.raises(ValueError, match="trunk_options.density_features"):
        ModelConfig.from_dict({**d, "trunk_options": {**d["trunk_options"], "density_features": "energy"}})
    with pytest.raises(ValueError, match="frozen_layers >= 1"):
        ModelConfig.from_dict({**d, "trunk_options": {**d["trunk_options"], "density_features": "frozen_avg"}})
    with pytest.raises(ValueError, match="max_positions"):
        ModelConfig.from_dict({**d, "input_length": 17})
    with pytest.raises(ValueError, match="embed = 'token'"):
        ModelConfig.from_dict({**d, "embed": "linear", "vocab_size": 0})
    with pytest.raises(ValueError, match="head_dropout"):
        ModelConfig.from_dict({**d, "head_dropout": 1.5})
    for scheme, options in (("ensemble", {"members": 2}), ("ddu", None), ("sngp", None)):
        with pytest.raises(ValueError, match=f"scheme '{scheme}' builds layers inside the trunk"):
            ModelConfig.from_dict({**d, "scheme": scheme, "scheme_options": options})
    with pytest.raises(ValueError, match="trunk_options of trunk 'bert' must be a table"):
        ModelConfig.from_dict({**d, "trunk_options": 3})


def test_signal_configs_read_and_digest_as_before_trunks():
    cfg = ModelConfig(input_length=256, num_classes=3, patch=32)
    d = cfg.to_dict()
    assert not {"trunk", "trunk_options", "head_hidden", "head_dropout"} & set(d)
    assert ModelConfig.from_dict(d) == cfg and get_trunk(cfg.trunk).implicit
    with pytest.raises(ValueError, match="unknown trunk_options"):
        ModelConfig(input_length=256, num_classes=3, patch=32, trunk_options={"max_positions": 3})
    # head_hidden / head_dropout shape the signal head too
    m = build_model(ModelConfig(input_length=256, num_classes=3, patch=32, head_hidden=24, head_dropout=0.3))
    assert m.head.fc1.out_features == 24 and [s.to_json()["shape"] for s in m.noise_specs()][-1] == [24]
    assert [s.to_json()["params"]["p"] for s in m.noise_specs() if s.name.startswith("head_")] == [0.3, 0.3]


def test_checkpoint_round_trip_rebuilds_the_bert_trunk(tmp_path):
    from edgeuq.training import load_checkpoint, save_checkpoint

    ref = _reference("laplace")
    model = ref.as_model(LENGTH)
    ck = save_checkpoint(model, tmp_path / "ck", ("a", "b", "c"), 1.0, normalization="none")
    back = load_checkpoint(tmp_path / "ck").load_model()
    ids = _ids(np.random.default_rng(4))
    noise = sample_noise(model.noise_specs(), 3 * len(ids), np.random.default_rng(5))
    assert float(np.max(np.abs(_logits(back, ids, noise) - _logits(ref, ids, noise)))) <= 1e-5
    assert ck.config.trunk == "bert"


def test_packaged_minilm_trunk_equals_the_text_classifier():
    from require_extras import require_extra

    require_extra("safetensors", "text")
    from edgeuq.text.pretrained import TextExtraMissing, load_pretrained
    from edgeuq.text.wordpiece import wordpiece_from_tokenizer_json

    try:
        pre = load_pretrained()
    except TextExtraMissing as exc:
        from require_extras import in_ci

        if in_ci():
            pytest.fail(f"CI=true: {exc}")
        pytest.skip(str(exc))
    torch.manual_seed(0)
    ref = TextClassifier(pre.config, num_classes=2, scheme="mc_dropout").eval()
    ref.encoder.load_bert_state(pre.state)
    torch.manual_seed(0)  # the same seed builds the same head: build order encoder, fc1, fc2 in both
    model = build_model(bert_model_config(pre.config, 2, 32, scheme="mc_dropout", head_hidden=256,
                                          head_dropout=0.2)).eval()
    model.encoder.load_bert_state(pre.state)
    theirs = ref.trunk_state()
    for k, v in model.state_dict().items():  # every parameter the same: the head init too
        assert torch.equal(theirs[k], v), k
    tok = wordpiece_from_tokenizer_json(pre.tokenizer_json, 32)
    ids = tok.encode_batch(["A gripping, funny and moving film.", "What is the capital of France?", "meh"])
    noise = sample_noise(model.noise_specs(), 4 * len(ids), np.random.default_rng(6))
    err = float(np.max(np.abs(_logits(model, ids, noise) - _logits(ref, ids, noise))))
    assert err <= 1e-5, err
