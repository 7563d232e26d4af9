"""Model structure, MC dropout semantics, trunk/head split, training, checkpoints."""
import numpy as np
import pytest
import torch

from edgeuq.models import ModelConfig, SignalTransformer, mc_sample_probs, tile_samples
from edgeuq.schemes.mc_dropout import MCDropout
from edgeuq.bayes import fit_model
from edgeuq.training import TrainConfig, load_checkpoint, predict_logits, save_checkpoint

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
    # the old flat per-scheme fields are gone: refused by name, not silently mapped or dropped
    with pytest.raises(ValueError, match=r"unknown model settings \['vi_prior_sigma'\]"):
        ModelConfig.from_dict({**TINY, "scheme": "variational", "vi_prior_sigma": 0.2})


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


def test_stochastic_tokens_pools_the_trunk_features_the_stochastic_blocks_see():
    with pytest.raises(ValueError, match="must divide the token count"):
        ModelConfig(**{**TINY, "stochastic_tokens": 3})
    with pytest.raises(ValueError, match="needs a stochastic block"):
        ModelConfig(**{**TINY, "stochastic_blocks": (), "stochastic_tokens": 2})
    plain, pooled = tiny().eval(), tiny(stochastic_tokens=2).eval()
    pooled.load_state_dict(plain.state_dict())          # same weights: pooling adds no parameters
    assert pooled.feature_shape() == (2, 16) and pooled.cfg.block_tokens(0) == 8 and pooled.cfg.block_tokens(1) == 2
    x = torch.randn(3, 128)
    with torch.no_grad():
        ref = plain.trunk(x).reshape(3, 2, 4, 16).mean(dim=2)   # 8 tokens -> 2 groups of 4 neighbours
        got = pooled.trunk(x)
    assert got.shape == (3, 2, 16) and float((got - ref).abs().max()) <= 1e-6
    assert {s.name: s.shape for s in pooled.noise_specs()}["block1_ffn_hidden"] == (2, 16)
    with torch.no_grad():                               # trunk + head is the whole model, pooled or not
        logits = pooled.eval()(x)
    assert logits.shape == (3, 3) and bool(torch.isfinite(logits).all())


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
    res = fit_model(m, xt, yt, xv, yv, TrainConfig(epochs=8, batch_size=32, lr=3e-3, patience=3), val_samples=0,
                    progress=False)
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
        fit_model(m, x, np.array([0, 1, 2, 3]), x, np.zeros(4, int), TrainConfig(epochs=1), progress=False)
    with pytest.raises(ValueError, match="expects"):
        fit_model(m, x[:, :64], np.zeros(4, int), x, np.zeros(4, int), progress=False)


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


# ------------------------------------------------------------------ per-block architecture

from edgeuq.models import BlockShape, build_model  # noqa: E402
from edgeuq.models.attention import SelfAttention  # noqa: E402

UNEVEN = dict(input_length=128, num_classes=3, patch=16, d_model=16, heads=2, depth=2, ffn=16, dropout=0.2,
              stochastic_blocks=(1,),
              blocks=({"heads": 3, "head_dim": 6, "ffn": 7}, {"heads": 1, "head_dim": 12, "ffn": 24}))


def test_block_shapes_default_to_the_uniform_model_and_round_trip():
    cfg = ModelConfig(**TINY)
    assert cfg.blocks == () and cfg.block_shape(0) == cfg.block_shape(1) == BlockShape(2, 8, 16)
    uneven = ModelConfig(**UNEVEN)
    assert uneven.block_shape(0) == BlockShape(3, 6, 7) and uneven.block_shape(1) == BlockShape(1, 12, 24)
    assert ModelConfig.from_dict(uneven.to_dict()) == uneven
    assert uneven.to_dict()["blocks"] == [{"heads": 3, "head_dim": 6, "ffn": 7}, {"heads": 1, "head_dim": 12, "ffn": 24}]
    import tomllib

    recipe = tomllib.loads("""
[model]
d_model = 16
depth = 2
[[model.blocks]]
heads = 3
head_dim = 6
ffn = 7
[[model.blocks]]
heads = 1
head_dim = 12
ffn = 24
""")["model"]
    assert ModelConfig.from_dict(recipe, input_length=128, num_classes=3, patch=16, heads=2, ffn=16,
                                 dropout=0.2, stochastic_blocks=(1,)) == uneven
    with pytest.raises(IndexError):
        uneven.block_shape(2)


@pytest.mark.parametrize("blocks, match", [
    (({"heads": 2, "head_dim": 8, "ffn": 16},), "block shapes for depth 2"),
    (({"heads": 0, "head_dim": 8, "ffn": 16},) * 2, "heads must be an integer >= 1"),
    (({"heads": 2, "head_dim": 8, "ffn": 0},) * 2, "ffn must be an integer >= 1"),
    (({"heads": 2, "head_dim": 8},) * 2, "missing"),
    (({"heads": 2, "head_dim": 8, "ffn": 4, "width": 3},) * 2, "unknown"),
])
def test_block_shapes_are_validated(blocks, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**{**TINY, "blocks": blocks})


def _reference_attention(x, qkv_w, qkv_b, proj_w, proj_b, heads, head_dim):
    """softmax(q k^T / sqrt(head_dim)) v per head, in numpy float64 (a second implementation)."""
    x = x.astype(np.float64)
    qkv = x @ qkv_w.T.astype(np.float64) + qkv_b
    b, t, _ = x.shape
    inner = heads * head_dim
    q, k, v = qkv[..., :inner], qkv[..., inner:2 * inner], qkv[..., 2 * inner:]
    out = np.zeros((b, t, inner))
    for h in range(heads):
        sl = slice(h * head_dim, (h + 1) * head_dim)
        s = q[..., sl] @ np.swapaxes(k[..., sl], 1, 2) / np.sqrt(head_dim)
        a = np.exp(s - s.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        out[..., sl] = a @ v[..., sl]
    return out @ proj_w.T.astype(np.float64) + proj_b


def test_attention_with_its_own_head_dim_matches_a_reference():
    torch.manual_seed(0)
    att = SelfAttention(16, 2, 5).eval()          # head_dim 5 != d_model // heads = 8
    assert att.qkv.weight.shape == (30, 16) and att.proj.weight.shape == (16, 10)
    x = torch.randn(2, 6, 16)
    with torch.no_grad():
        got = att(x).numpy()
    ref = _reference_attention(x.numpy(), att.qkv.weight.detach().numpy(), att.qkv.bias.detach().numpy(),
                               att.proj.weight.detach().numpy(), att.proj.bias.detach().numpy(), 2, 5)
    err = float(np.abs(got - ref).max())
    assert err <= 1e-5, err


@pytest.mark.parametrize("scheme_kw", [
    dict(stochastic_blocks=(0, 1), block_dropout_positions=("attn_probs", "attn_out", "ffn_hidden", "ffn_out")),
    dict(scheme="variational", stochastic_blocks=(0, 1)),
    dict(scheme="hsa", stochastic_blocks=(0, 1), scheme_options={"centroids": 4}),
], ids=["mc_dropout", "variational", "hsa"])
def test_uneven_blocks_build_widths_and_noise_per_block(scheme_kw):
    torch.manual_seed(0)
    m = build_model(ModelConfig(**{**UNEVEN, **scheme_kw})).eval()
    sd = m.state_dict()
    t = m.cfg.tokens
    for i, (heads, head_dim, ffn) in enumerate([(3, 6, 7), (1, 12, 24)]):
        assert sd[f"blocks.{i}.attn.qkv.weight"].shape == (3 * heads * head_dim, 16)
        assert sd[f"blocks.{i}.attn.proj.weight"].shape == (16, heads * head_dim)
        assert sd[f"blocks.{i}.fc1.weight"].shape == (ffn, 16) and sd[f"blocks.{i}.fc2.weight"].shape == (16, ffn)
    shapes = {s.name: s.shape for s in m.noise_specs()}
    if m.cfg.scheme == "mc_dropout":
        assert shapes["block0_attn_probs"] == (3, t, t) and shapes["block1_attn_probs"] == (1, t, t)
        assert shapes["block0_ffn_hidden"] == (t, 7) and shapes["block1_ffn_hidden"] == (t, 24)
    elif m.cfg.scheme == "variational":
        assert shapes["block0_attn_qkv"] == (t, 54) and shapes["block1_attn_qkv"] == (t, 36)
        assert shapes["block0_ffn_fc1"] == (t, 7) and shapes["block1_ffn_fc2"] == (t, 16)
    else:
        assert shapes["block0_attn_gumbel"] == (3, t, t) and shapes["block1_centroid_gumbel"] == (1, t, 4)
        assert sd["blocks.0.attn.centroids"].shape == (3, 4, 6)
    x = torch.randn(2, 128)
    with torch.no_grad():
        assert m(x).shape == (2, 3) and torch.isfinite(m(x)).all()


@pytest.mark.parametrize("scheme_kw", [
    dict(stochastic_blocks=(1,), block_dropout_positions=("attn_probs", "attn_out", "ffn_hidden", "ffn_out")),
    dict(scheme="variational", stochastic_blocks=(0,)),
    dict(scheme="hsa", stochastic_blocks=(1,), scheme_options={"centroids": 4}),
], ids=["mc_dropout", "variational", "hsa"])
def test_uneven_blocks_export_and_onnx_runtime_matches_pytorch(scheme_kw, tmp_path):
    from edgeuq.export import export_onnx, run_onnx
    from edgeuq_runtime.noise import sample_noise

    torch.manual_seed(0)
    m = build_model(ModelConfig(**{**UNEVEN, **scheme_kw})).eval()
    ck = save_checkpoint(m, tmp_path / "ck", ("a", "b", "c"), 1000.0)
    art = export_onnx(ck, tmp_path / "onnx", verify=False)   # compared here, independently
    assert load_checkpoint(tmp_path / "ck").config == m.cfg
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 128)).astype(np.float32)
    s = 4
    noise = sample_noise(art.noise, s * 2, rng)
    onnx_logits = run_onnx(art, x, noise, s)
    with torch.no_grad():
        feats = tile_samples(m.trunk(torch.from_numpy(x)), s)
        torch_logits = m.head_forward(feats, {k: torch.from_numpy(v) for k, v in noise.items()}).numpy()
    err = float(np.abs(onnx_logits - torch_logits).max())
    assert err <= 1e-4, err
    # the noise matters (a broken noise input would give the same logits for every sample)
    assert float(np.abs(torch_logits.reshape(s, 2, -1) - torch_logits.reshape(s, 2, -1)[:1]).max()) > 1e-3
