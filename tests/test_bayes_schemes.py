"""Every stochastic scheme at every position: randomness as graph inputs, PyTorch == ONNX
Runtime given the same noise, documented (S, batch, classes) output shapes."""
import dataclasses

import numpy as np
import onnx
import pytest
import torch

from edgeuq.bayes import sample_logits, with_temperature
from edgeuq.export import export_onnx, max_abs_difference, run_onnx
from edgeuq.models import DeployableModel, ModelConfig, SignalTransformer, build_model, mc_sample_probs
from edgeuq.models.config import BLOCK_DROPOUT_POSITIONS
from edgeuq.schemes.ensemble import EnsembleTransformer
from edgeuq.schemes.laplace import LastLayerLaplace
from edgeuq.schemes.variational import BayesLinear
from edgeuq.training import save_checkpoint
from edgeuq_runtime.noise import mean_noise, sample_noise


pytestmark = pytest.mark.usefixtures("one_torch_thread")


TINY = dict(input_length=128, num_classes=3, patch=16, d_model=16, heads=2, depth=2, ffn=16, dropout=0.2)
TOKENS = dict(input_length=10, patch=1, embed="token", vocab_size=40)
RANDOM_OPS = {"Dropout", "RandomUniform", "RandomUniformLike", "RandomNormal", "RandomNormalLike", "Bernoulli",
              "Multinomial"}

SCHEMES = {
    "mc-all-positions-block0": dict(stochastic_blocks=(0,), block_dropout_positions=BLOCK_DROPOUT_POSITIONS),
    "mc-attn-probs-only-head-hidden": dict(stochastic_blocks=(1,), block_dropout_positions=("attn_probs",),
                                           head_dropout_positions=("head_hidden",)),
    "variational-attn-block0": dict(scheme="variational", stochastic_blocks=(0,), scheme_options={"positions": ("attn",)},
                                    stochastic_head=False),
    "variational-all": dict(scheme="variational", stochastic_blocks=(0, 1)),
    "variational-head-only": dict(scheme="variational", stochastic_blocks=()),
    "hsa-block1": dict(scheme="hsa", stochastic_blocks=(1,), stochastic_head=False, scheme_options={"tau1": 0.7, "tau2": 0.5}),
    "hsa-block0+mc-head": dict(scheme="hsa", stochastic_blocks=(0,)),
    "ensemble-3": dict(scheme="ensemble", stochastic_blocks=(), scheme_options={"members": 3}),
    "laplace-kron": dict(scheme="laplace", stochastic_blocks=()),
    "laplace-full": dict(scheme="laplace", stochastic_blocks=(), scheme_options={"structure": "full"}),
    "mc-temperature": dict(stochastic_blocks=(1,), temperature=2.5),
    "tokens-mc": dict(stochastic_blocks=(1,), **TOKENS),
    "tokens-mc-maxpool": dict(stochastic_blocks=(1,), pool="max", **TOKENS),
    "signal-head-only-maxpool": dict(stochastic_blocks=(), pool="max"),
    "tokens-variational": dict(scheme="variational", stochastic_blocks=(0,), **TOKENS),
    "tokens-hsa": dict(scheme="hsa", stochastic_blocks=(1,), stochastic_head=False, **TOKENS),
    "tokens-ensemble": dict(scheme="ensemble", stochastic_blocks=(), scheme_options={"members": 2}, **TOKENS),
    "tokens-laplace-head-only": dict(scheme="laplace", stochastic_blocks=(), **TOKENS),
}


def build(kw) -> SignalTransformer:
    torch.manual_seed(0)
    m = build_model(ModelConfig(**{**TINY, **kw})).eval()
    for layer in m.modules():
        if isinstance(layer, LastLayerLaplace):  # a non-trivial posterior so the noise matters
            p, c = layer.in_features + 1, layer.out_features
            if layer.structure == "kron":
                layer.set_posterior(1.0, a_inv=0.05 * np.eye(p), g_chol=0.7 * np.eye(c))
            else:
                layer.set_posterior(1.0, cov_chol=0.1 * np.eye(c * p))
        if isinstance(layer, BayesLinear):  # posterior scales well above their tiny init
            layer.weight_rho.data.fill_(-2.0)
    return m


@pytest.fixture(scope="module", params=sorted(SCHEMES), ids=sorted(SCHEMES))
def exported(request, tmp_path_factory):
    m = build(SCHEMES[request.param])
    d = tmp_path_factory.mktemp(request.param)
    ck = save_checkpoint(m, d / "ck", ("a", "b", "c"), 12000.0)
    return request.param, m, export_onnx(ck, d / "onnx")


def _x(m: SignalTransformer, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if m.cfg.embed == "token":
        ids = rng.integers(1, m.cfg.vocab_size, (n, m.cfg.input_length))
        ids[:, m.cfg.input_length // 2:] = 0  # padding
        return ids.astype(np.int64)
    return rng.standard_normal((n, m.cfg.input_length)).astype(np.float32)


def test_graphs_have_no_random_ops_and_noise_is_input(exported):
    _, m, art = exported
    for path in (art.trunk_path, art.head_path):
        ops = {n.op_type for n in onnx.load(str(path)).graph.node}
        assert not ops & RANDOM_OPS
    head_inputs = [i.name for i in onnx.load(str(art.head_path)).graph.input]
    assert head_inputs == [art.feature_name, *[s.name for s in art.noise]]
    assert {s.kind for s in art.noise} <= {"dropout_mask", "standard_normal", "uniform", "categorical"}


def test_torch_and_onnx_agree_given_same_noise(exported):
    _, m, art = exported
    assert max_abs_difference(m, art, batch=3, samples=5, seed=11) < 1e-4


def test_noise_changes_samples_and_mean_noise_is_deterministic_pass(exported):
    name, m, art = exported
    x = _x(m, 2)
    s = 6
    logits = run_onnx(art, x, sample_noise(art.noise, s * 2, np.random.default_rng(0)), s).reshape(s, 2, -1)
    assert np.ptp(logits, axis=0).max() > 1e-3, f"{name}: samples do not differ"
    mean = run_onnx(art, x, mean_noise(art.noise, 2), 1)
    with torch.no_grad():
        det = m(torch.from_numpy(x)).numpy()
    assert np.abs(mean - det).max() < 1e-4  # runtime.deterministic == PyTorch eval pass


def test_sampled_outputs_have_shape_s_batch_classes(exported):
    _, m, _ = exported
    x = _x(m, 4)
    p = mc_sample_probs(m, torch.from_numpy(x), samples=7, rng=np.random.default_rng(0))
    assert p.shape == (7, 4, 3)
    assert torch.allclose(p.sum(-1), torch.ones(7, 4), atol=1e-5)
    assert sample_logits(m, x, 5, seed=0).shape == (5, 4, 3)
    assert sample_logits(m, x, None).shape == (1, 4, 3)


def test_set_sampling_draws_from_torch(exported):
    _, m, _ = exported
    x = torch.from_numpy(_x(m, 8))
    torch.manual_seed(0)
    m.set_sampling(True)
    try:
        assert not torch.allclose(m(x), m(x))
    finally:
        m.set_sampling(False)
    assert torch.equal(m(x), m(x))


def test_default_mc_dropout_contract_is_unchanged():
    """Module names and noise inputs other engineers rely on (hls4ml converts head_in -> fc1 -> GELU ->
    head_hidden -> fc2)."""
    m = SignalTransformer(ModelConfig(input_length=2048, num_classes=4))
    names = {n for n, _ in m.named_modules()}
    assert {"blocks.2.attn.qkv", "blocks.2.attn.proj", "blocks.2.fc1", "blocks.2.fc2", "blocks.2.norm1",
            "blocks.2.norm2", "head.fc1", "head.fc2", "head.drop_in", "head.drop_hidden"} <= names
    assert not any("drop_probs" in n for n in names)
    assert [s.name for s in m.noise_specs()] == ["block2_attn_out", "block2_ffn_hidden", "block2_ffn_out",
                                                 "head_in", "head_hidden"]
    assert all(s.kind == "dropout_mask" and s.params == {"p": 0.1} for s in m.noise_specs())
    assert len(m.state_dict()) == 48 and all(type(m.head.fc2) is torch.nn.Linear for _ in [0])
    assert ModelConfig.from_dict(m.cfg.to_dict()) == m.cfg


def test_new_dropout_positions_are_opt_in():
    base = SignalTransformer(ModelConfig(**TINY, stochastic_blocks=(1,)))
    assert "block1_attn_probs" not in {s.name for s in base.noise_specs()}
    ext = SignalTransformer(ModelConfig(**TINY, stochastic_blocks=(1,), block_dropout_positions=BLOCK_DROPOUT_POSITIONS))
    spec = {s.name: s for s in ext.noise_specs()}["block1_attn_probs"]
    assert spec.shape == (2, 8, 8)
    assert list(ext.state_dict()) == list(base.state_dict())  # dropout adds no weights


def test_temperature_is_a_constant_in_the_head(tmp_path):
    m = build(dict(stochastic_blocks=(1,)))
    x = _x(m, 3)
    noise = sample_noise(m.noise_specs(), 3, np.random.default_rng(0))
    tn = {k: torch.from_numpy(v) for k, v in noise.items()}
    with torch.no_grad():
        base = m.head_forward(m.trunk(torch.from_numpy(x)), tn).numpy()
    with_temperature(m, 2.0)
    art = export_onnx(save_checkpoint(m, tmp_path / "ck", ("a", "b", "c"), 1.0), tmp_path / "onnx")
    assert np.allclose(run_onnx(art, x, noise, 1), base / 2.0, atol=1e-5)
    assert len(art.noise) == len(m.noise_specs())  # no extra input


def test_ensemble_samples_are_members_and_mean_averages_logits():
    m = build(SCHEMES["ensemble-3"])
    assert isinstance(m, EnsembleTransformer) and isinstance(m, DeployableModel)
    x = torch.from_numpy(_x(m, 2))
    with torch.no_grad():
        members = torch.stack([mem(x) for mem in m.members])        # (M, B, C)
        onehot = torch.eye(3)[[2, 0]]                                # row 0 -> member 2, row 1 -> member 0
        picked = m.head_forward(m.trunk(x), {"ensemble_member": onehot})
        assert torch.allclose(picked[0], members[2, 0]) and torch.allclose(picked[1], members[0, 1])
        assert torch.allclose(m(x), members.mean(0), atol=1e-6)
    members_copy = [SignalTransformer(dataclasses.replace(m.members[0].cfg)) for _ in range(3)]
    for dst, src in zip(members_copy, m.members):
        dst.load_state_dict(src.state_dict())
    again = EnsembleTransformer.from_members(m.cfg, members_copy)
    with torch.no_grad():
        assert torch.equal(again(x), m(x))


@pytest.mark.parametrize("kw, match", [
    (dict(scheme="bayes"), "unknown stochastic scheme"),
    (dict(block_dropout_positions=("attn_logits",)), "block_dropout_positions has unknown"),
    (dict(scheme="ensemble", scheme_options={"members": 1}), "members >= 2"),
    (dict(scheme="ensemble", scheme_options={"members": 3}, stochastic_blocks=(1,)), "deterministic members"),
    (dict(scheme_options={"members": 3}), "unknown scheme_options"),
    (dict(scheme="laplace"), "last-layer"),
    (dict(scheme="hsa", stochastic_blocks=()), "at least one stochastic block"),
    (dict(temperature=0.0), "temperature must be > 0"),
    (dict(pool="attention"), "pool must be"),
    (dict(embed="token", vocab_size=2, patch=1), "vocab_size >= 3"),
    (dict(vocab_size=20), "only applies to embed='token'"),
])
def test_config_rejects_inconsistent_scheme_settings(kw, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**{**TINY, **kw})


@pytest.mark.parametrize("pool", ["mean", "max"])
@pytest.mark.parametrize("blocks", [(1,), ()])
def test_padding_tokens_are_masked_out(pool, blocks):
    m = build(dict(stochastic_blocks=blocks, pool=pool, **TOKENS))
    x = torch.from_numpy(_x(m, 3))
    assert (x == 0).any()
    with torch.no_grad():
        before = m(x)
        m.embed.weight[0] = 50.0 * torch.randn(m.cfg.d_model)  # whatever a pad embeds to must not matter
        after = m(x)
    assert torch.allclose(before, after, atol=1e-5)
