"""DDU / SNGP schemes: spectral normalisation bounds the largest singular value (power iteration vs
numpy's SVD), the SNGP Laplace covariance equals a brute-force Laplace (autograd Hessian of the
penalised softmax NLL, its per-class blocks), the mean-field logits follow the closed form, and
both export to one deterministic pass that the runtime reproduces."""
import math

import numpy as np
import pytest
import torch

from edgeuq.bundle import build_bundle
from edgeuq.export import export_onnx
from edgeuq.models import ModelConfig, build_model
from edgeuq.schemes.ddu import SpectralLinear, finish_power_iterations
from edgeuq.schemes.sngp import RandomFeatureGP, fit_sngp_covariance, gp_inputs
from edgeuq.training import save_checkpoint
from edgeuq_runtime import UncertaintyRuntime


@pytest.mark.parametrize("scale, bound", [(5.0, 0.95), (5.0, 2.0), (0.05, 0.95)])
def test_spectral_linear_bounds_the_largest_singular_value(scale, bound):
    torch.manual_seed(0)
    layer = SpectralLinear(24, 40, bound=bound)
    with torch.no_grad():
        layer.weight.mul_(scale)
    layer.power_iteration(100)
    true = np.linalg.svd(layer.weight.detach().double().numpy(), compute_uv=False)[0]
    assert abs(float(layer.sigma().detach()) - true) <= 1e-4 * true           # power iteration finds sigma_max
    eff = np.linalg.svd(layer.normalized_weight().detach().double().numpy(), compute_uv=False)[0]
    assert eff <= bound * (1 + 1e-4), (eff, bound)
    if true <= bound:                                                  # already inside: untouched
        assert abs(eff - true) <= 1e-6 * max(true, 1e-12)
    else:
        assert abs(eff - bound) <= 1e-4 * bound


def test_training_forwards_run_the_power_iteration():
    torch.manual_seed(1)
    layer = SpectralLinear(16, 16, bound=0.5)
    with torch.no_grad():
        layer.weight.mul_(10.0)
    layer.train()
    for _ in range(60):
        layer(torch.randn(4, 16))
    eff = np.linalg.svd(layer.normalized_weight().detach().double().numpy(), compute_uv=False)[0]
    assert eff <= 0.5 * (1 + 1e-3), eff


def test_sngp_covariance_equals_a_brute_force_laplace():
    torch.manual_seed(2)
    n, d, c, feats, tau = 30, 4, 3, 6, 0.7
    layer = RandomFeatureGP(d, c, features=feats, lengthscale=1.5, seed=3).double()
    with torch.no_grad():
        layer.beta.weight.copy_(torch.randn(c, feats, dtype=torch.float64))
    h = np.random.default_rng(0).standard_normal((n, d))
    cov = fit_sngp_covariance(layer, h, prior_precision=tau)
    phi = layer.random_features(torch.from_numpy(h)).detach()
    y = torch.from_numpy(np.random.default_rng(1).integers(0, c, n))
    bias = layer.beta.bias.detach()

    def neg_log_posterior(beta_flat):
        logits = phi @ beta_flat.reshape(c, feats).T + bias
        return torch.nn.functional.cross_entropy(logits, y, reduction="sum") + 0.5 * tau * (beta_flat ** 2).sum()

    hess = torch.autograd.functional.hessian(neg_log_posterior, layer.beta.weight.detach().reshape(-1)).numpy()
    for k in range(c):
        block = hess[k * feats:(k + 1) * feats, k * feats:(k + 1) * feats]
        ref = np.linalg.inv(block)
        err = np.max(np.abs(cov[k] - ref)) / np.max(np.abs(ref))
        assert err <= 1e-5, (k, err)   # the layer stores float32: its cov is the float64 fit, compared here


def test_mean_field_logits_follow_the_closed_form_and_flatten_far_away():
    torch.manual_seed(4)
    layer = RandomFeatureGP(4, 3, features=64, lengthscale=1.0, seed=5)
    h_train = np.random.default_rng(2).standard_normal((200, 4)) * 0.3
    fit_sngp_covariance(layer, h_train, prior_precision=1.0)
    layer.eval()
    h = torch.from_numpy(np.vstack([h_train[:5], 6.0 + h_train[:5]])).float()
    with torch.no_grad():
        out = layer(h).double().numpy()
        phi = layer.random_features(h).double().numpy()
    z = phi @ layer.beta.weight.detach().double().numpy().T + layer.beta.bias.detach().double().numpy()
    cov = layer.cov.double().numpy()
    var = np.einsum("nd,cde,ne->nc", phi, cov, phi)
    ref = z / np.sqrt(1 + math.pi / 8 * var)
    assert np.max(np.abs(out - ref)) <= 1e-5
    assert var[5:].mean() > 3 * var[:5].mean()   # far from the training features: larger GP variance


def _cfg(scheme):
    return ModelConfig(input_length=128, num_classes=3, patch=16, d_model=16, heads=2, depth=2, ffn=16, dropout=0.1,
                       stochastic_blocks=(), stochastic_head=False, scheme=scheme,
                       scheme_options={"random_features": 32} if scheme == "sngp" else None)


@pytest.mark.parametrize("scheme", ["ddu", "sngp"])
def test_exports_to_one_deterministic_pass_that_the_runtime_reproduces(scheme, tmp_path):
    torch.manual_seed(0)
    model = build_model(_cfg(scheme))
    x = np.random.default_rng(0).standard_normal((40, 128)).astype(np.float32)
    x = (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)
    model.train()
    model(torch.from_numpy(x))                       # one training forward (power iteration step)
    finish_power_iterations(model, 30)
    if scheme == "sngp":
        fit_sngp_covariance(model.head.fc2, gp_inputs(model, x), 1.0)
        assert float(model.head.fc2.cov.abs().sum()) > 0
    model.eval()
    ck = save_checkpoint(model, tmp_path / "ck", ("a", "b", "c"), 12000.0)
    art = export_onnx(ck, tmp_path / "onnx", verify=True)
    assert art.noise == ()                            # no noise inputs: one deterministic pass
    build_bundle(art, tmp_path / "b", "t", "0.1.0", default_samples=4)
    rt = UncertaintyRuntime(tmp_path / "b", seed=0)
    res = rt.predict(x, samples=4)
    with torch.no_grad():
        ref = torch.softmax(model(torch.from_numpy(x)), -1).numpy()
    assert np.max(np.abs(res.probs - ref)) <= 1e-4
    assert np.max(np.abs(res.epistemic)) <= 1e-6        # MI = 0: total = aleatoric = softmax entropy
    assert np.max(np.abs(res.total - res.aleatoric)) <= 1e-6


def test_options_are_validated():
    with pytest.raises(ValueError, match="one deterministic pass"):
        ModelConfig(input_length=128, num_classes=3, patch=16, d_model=16, heads=2, depth=1, ffn=16,
                    stochastic_blocks=(), stochastic_head=True, scheme="sngp")
    with pytest.raises(ValueError, match="lengthscale"):
        ModelConfig(input_length=128, num_classes=3, patch=16, d_model=16, heads=2, depth=1, ffn=16,
                    stochastic_blocks=(), stochastic_head=False, scheme="sngp", scheme_options={"lengthscale": 0.0})
    with pytest.raises(ValueError, match="spectral_bound"):
        ModelConfig(input_length=128, num_classes=3, patch=16, d_model=16, heads=2, depth=1, ffn=16,
                    stochastic_blocks=(), stochastic_head=False, scheme="ddu", scheme_options={"spectral_bound": -1.0})
