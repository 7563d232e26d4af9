"""ONNX export: noise as graph inputs, trunk/head split, PyTorch/ORT agreement."""
import numpy as np
import onnx
import pytest
import torch

from edgeuq.export import export_onnx, load_onnx_artifact, max_abs_difference, run_onnx
from edgeuq.models import ModelConfig, SignalTransformer, mc_sample_probs
from edgeuq.training import save_checkpoint
from edgeuq_runtime.noise import sample_noise

TINY = dict(input_length=128, num_classes=3, patch=16, d_model=16, heads=2, depth=2, ffn=16, dropout=0.2)


@pytest.fixture(params=[{"stochastic_blocks": (1,)}, {"stochastic_blocks": ()}, {"stochastic_blocks": (0, 1)},
                        {"stochastic_blocks": (1,), "stochastic_tokens": 2}],
                ids=["last-block+head", "head-only", "all-blocks", "pooled-last-block+head"])
def exported(request, tmp_path):
    torch.manual_seed(0)
    m = SignalTransformer(ModelConfig(**{**TINY, **request.param})).eval()
    ck = save_checkpoint(m, tmp_path / "ck", ("a", "b", "c"), 12000.0)
    return m, export_onnx(ck, tmp_path / "onnx")


def test_graphs_pass_checker_and_carry_no_random_ops(exported):
    _, art = exported
    for path in (art.trunk_path, art.head_path):
        g = onnx.load(str(path))
        onnx.checker.check_model(g, full_check=True)
        ops = {n.op_type for n in g.graph.node}
        assert not ops & {"Dropout", "RandomUniform", "RandomUniformLike", "RandomNormal", "RandomNormalLike", "Bernoulli"}
    head_inputs = [i.name for i in onnx.load(str(art.head_path)).graph.input]
    assert head_inputs == [art.feature_name, *[s.name for s in art.noise]]


def test_torch_and_onnx_agree_given_same_noise(exported):
    m, art = exported
    assert max_abs_difference(m, art, batch=4, samples=6, seed=3) < 1e-4


def test_relative_difference_is_the_absolute_one_over_the_logit_scale(exported):
    m, art = exported
    with torch.no_grad():  # large logits: where float32 error grows and the export check must scale
        for p in m.head.parameters():
            p.mul_(300.0)
    err = max_abs_difference(m, art, batch=4, samples=6, seed=3)  # the graphs still hold the old weights
    rel = max_abs_difference(m, art, batch=4, samples=6, seed=3, relative=True)
    rng = np.random.default_rng(3)
    from edgeuq.export.onnx_export import example_input

    x = example_input(art.input_length, art.vocab_size, 4, rng)
    noise = sample_noise(art.noise, 4 * 6, rng)
    with torch.no_grad():
        feats = m.trunk(torch.from_numpy(x)).repeat((6,) + (1,) * len(art.feature_shape))
        z = m.head_forward(feats, {k: torch.from_numpy(v) for k, v in noise.items()}).numpy()
    scale = max(1.0, float(np.abs(z).max()))
    assert scale > 1.0 and err > 1.0
    assert abs(rel - err / scale) <= 1e-12 * max(1.0, err)


def test_head_samples_differ(exported):
    _, art = exported
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 128)).astype(np.float32)
    s = 8
    logits = run_onnx(art, x, sample_noise(art.noise, s * 2, rng), s).reshape(s, 2, -1)
    assert np.ptp(logits, axis=0).max() > 1e-3
    ones = {n.name: np.ones((s * 2, *n.shape), np.float32) for n in art.noise}
    same = run_onnx(art, x, ones, s).reshape(s, 2, -1)
    assert np.ptp(same, axis=0).max() < 1e-5


def test_runtime_noise_reproduces_torch_mc_probs(exported):
    m, art = exported
    x = np.random.default_rng(1).standard_normal((3, 128)).astype(np.float32)
    noise = sample_noise(art.noise, 5 * 3, np.random.default_rng(7))
    p_torch = mc_sample_probs(m, torch.from_numpy(x), 5, noise=noise).numpy()
    logits = run_onnx(art, x, noise, 5).reshape(5, 3, -1)
    p_onnx = np.exp(logits - logits.max(-1, keepdims=True))
    p_onnx /= p_onnx.sum(-1, keepdims=True)
    assert np.abs(p_torch - p_onnx).max() < 1e-5


def test_artifact_reload_and_tamper(exported):
    _, art = exported
    again = load_onnx_artifact(art.directory)
    assert again.noise == art.noise and again.feature_shape == art.feature_shape
    with open(art.head_path, "ab") as f:
        f.write(b"x")
    with pytest.raises(ValueError, match="sha256"):
        load_onnx_artifact(art.directory)


def test_deterministic_model_refuses_export(tmp_path):
    m = SignalTransformer(ModelConfig(**TINY, stochastic_blocks=(), stochastic_head=False))
    ck = save_checkpoint(m, tmp_path / "ck", ("a", "b", "c"), 12000.0)
    with pytest.raises(ValueError, match="no stochastic layer"):
        export_onnx(ck, tmp_path / "onnx")


@pytest.mark.parametrize("err", [float("nan"), 1.0])
def test_failed_verification_writes_nothing_that_loads(tmp_path, monkeypatch, err):
    """A NaN error must fail like a large one, and a failed export must leave no artifact behind."""
    import edgeuq.export.onnx_export as ox
    from edgeuq.artifact import ArtifactNotFound

    m = SignalTransformer(ModelConfig(**TINY, stochastic_blocks=(1,))).eval()
    ck = save_checkpoint(m, tmp_path / "ck", ("a", "b", "c"), 12000.0)
    monkeypatch.setattr(ox, "max_abs_difference", lambda *a, **k: err)
    with pytest.raises(RuntimeError, match="disagree with PyTorch"):
        export_onnx(ck, tmp_path / "onnx", model=m)
    assert not (tmp_path / "onnx").exists()
    with pytest.raises(ArtifactNotFound):
        load_onnx_artifact(tmp_path / "onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no staging folder left
    monkeypatch.setattr(ox, "max_abs_difference", lambda *a, **k: 0.0)
    art = export_onnx(ck, tmp_path / "onnx", model=m)
    assert art.inputs == ck.digest and load_onnx_artifact(tmp_path / "onnx").digest == art.digest
