"""Model structure, MC dropout semantics, trunk/head split, training, checkpoints."""
import numpy as np
import pytest
import torch

from edgeuq.models import MCDropout, ModelConfig, SignalTransformer, mc_sample_probs, tile_samples
from edgeuq.training import TrainConfig, load_checkpoint, predict_logits, save_checkpoint, train_model

TINY = dict(input_length=128, num_classes=3, patch=16, d_model=16, heads=2, depth=2, ffn=16, dropout=0.2, stochastic_blocks=(1,))


def tiny(**kw) -> SignalTransformer:
    torch.manual_seed(0)
    return SignalTransformer(ModelConfig(**{**TINY, **kw}))


def test_config_rejects_bad_settings():
    with pytest.raises(ValueError, match="multiple of patch"):
        ModelConfig(input_length=100, num_classes=2, patch=16)
    with pytest.raises(ValueError, match="stochastic_blocks"):
        ModelConfig(**{**TINY, "stochastic_blocks": (5,)})
    with pytest.raises(ValueError, match="unknown model settings"):
        ModelConfig.from_dict({**TINY, "depht": 3})


@pytest.mark.parametrize("blocks,head,split,feat", [((1,), True, 1, (8, 16)), ((), True, 2, (16,)), ((0, 1), False, 0, (8, 16))])
def test_split_point_is_first_stochastic_layer(blocks, head, split, feat):
    m = tiny(stochastic_blocks=blocks, stochastic_head=head)
    assert m.cfg.split_index == split
    assert m.feature_shape() == feat
    assert m.trunk(torch.randn(2, 128)).shape == (2, *feat)
    expected = {f"block{b}_{p}" for b in blocks for p in ("attn_out", "ffn_hidden", "ffn_out")}
    if head:
        expected |= {"head_in", "head_hidden"}
    assert {s.name for s in m.noise_specs()} == expected


def test_trunk_then_head_equals_forward():
    m = tiny().eval()
    x = torch.randn(4, 128)
    assert torch.allclose(m(x), m.head_forward(m.trunk(x)), atol=1e-6)


def test_eval_is_deterministic_and_sampling_is_not():
    m = tiny().eval()
    x = torch.randn(3, 128)
    assert torch.equal(m(x), m(x))
    m.set_sampling(True)
    assert not torch.allclose(m(x), m(x))


def test_explicit_noise_controls_the_masks():
    m = tiny().eval()
    x = torch.randn(2, 128)
    ones = {s.name: torch.ones((2, *s.shape)) for s in m.noise_specs()}
    assert torch.allclose(m(x, ones), m(x), atol=1e-6)  # mean mask == deterministic pass
    zeros = {k: torch.zeros_like(v) for k, v in ones.items()}
    assert not torch.allclose(m(x, zeros), m(x))
    with pytest.raises(KeyError, match="head_hidden"):
        m(x, {k: v for k, v in ones.items() if k != "head_hidden"})


def test_mc_dropout_mask_is_unbiased():
    layer = MCDropout("d", 0.3, (1000,))
    layer.sampling = True
    torch.manual_seed(0)
    y = layer(torch.ones(200, 1000))
    assert np.allclose(np.unique(y.numpy()), [0.0, 1 / 0.7])
    assert abs(float(y.mean()) - 1.0) < 0.01


def test_mc_sample_probs_shape_tiling_and_spread():
    m = tiny().eval()
    x = torch.randn(5, 128)
    p = mc_sample_probs(m, x, samples=7, rng=np.random.default_rng(0))
    assert p.shape == (7, 5, 3)
    assert torch.allclose(p.sum(-1), torch.ones(7, 5), atol=1e-5)
    assert p.std(0).max() > 1e-4  # samples differ
    f = torch.arange(6.0).reshape(3, 2)
    assert torch.equal(tile_samples(f, 2)[3], f[0])  # s-major: row s*B + b


def _toy_data(n, rng):
    """Two sinusoid frequencies + noise: separable in a few epochs."""
    t = np.arange(128) / 128
    y = rng.integers(0, 3, n)
    x = np.sin(2 * np.pi * (4 + 8 * y)[:, None] * t + rng.uniform(0, 6, (n, 1))) + 0.3 * rng.standard_normal((n, 128))
    return x.astype(np.float32), y


def test_training_learns_and_early_stopping_keeps_best(tmp_path):
    rng = np.random.default_rng(0)
    xt, yt = _toy_data(384, rng)
    xv, yv = _toy_data(96, rng)
    m = tiny()
    res = train_model(m, xt, yt, xv, yv, TrainConfig(epochs=8, batch_size=32, lr=3e-3, patience=3), progress=False)
    acc = float((predict_logits(m, xv).argmax(-1).numpy() == yv).mean())
    assert acc > 0.9
    best = min(h.val_nll for h in res.history)
    assert res.best_val_nll == pytest.approx(best)
    # the restored weights are the best epoch's
    nll = float(torch.nn.functional.cross_entropy(predict_logits(m, xv), torch.from_numpy(yv)))
    assert nll == pytest.approx(best, rel=1e-4)


def test_training_rejects_bad_data():
    m = tiny()
    x = np.zeros((4, 128), np.float32)
    with pytest.raises(ValueError, match="labels must be in"):
        train_model(m, x, np.array([0, 1, 2, 3]), x, np.zeros(4, int), TrainConfig(epochs=1), progress=False)
    with pytest.raises(ValueError, match="expects"):
        train_model(m, x[:, :64], np.zeros(4, int), x, np.zeros(4, int), progress=False)


def test_checkpoint_roundtrip_and_tamper_detection(tmp_path):
    m = tiny().eval()
    ck = save_checkpoint(m, tmp_path / "ck", ("a", "b", "c"), 12000.0, metrics={"val_acc": 0.5})
    loaded = load_checkpoint(tmp_path / "ck")
    assert loaded.config == m.cfg and loaded.class_names == ("a", "b", "c")
    x = torch.randn(2, 128)
    assert torch.equal(loaded.load_model()(x), m(x))
    with open(ck.weights_path, "ab") as f:
        f.write(b"junk")
    with pytest.raises(ValueError, match="changed since saving"):
        loaded.load_model()
    with pytest.raises(FileNotFoundError, match="checkpoint.json"):
        load_checkpoint(tmp_path / "nowhere")
