"""Correctness of the stochastic layers against their definitions (Monte Carlo checks)."""
import math

import numpy as np
import pytest
import torch

from edgeuq.models.layers import gumbel_from_uniform
from edgeuq.schemes.hsa import GumbelNoise, HierarchicalStochasticAttention, gumbel_softmax
from edgeuq.schemes.laplace import (
    LastLayerLaplace, full_ggn, ggn_terms, laplace_factor_full, laplace_factors_kron, laplace_logit_samples,
)
from edgeuq.schemes.variational import BayesLinear, gaussian_kl


def bayes_layer(seed=0, n_in=4, n_out=3) -> BayesLinear:
    torch.manual_seed(seed)
    layer = BayesLinear("lin", n_in, n_out, (n_out,), prior_sigma=0.5, init_sigma=0.1)
    with torch.no_grad():
        layer.weight_rho.uniform_(-2.5, -0.5)
        layer.bias_rho.uniform_(-2.5, -0.5)
    return layer.eval()


# ------------------------------------------------------------------------------ variational

def test_kl_matches_monte_carlo_estimate():
    layer = bayes_layer()
    sw, sb = (s.detach().double() for s in layer.sigmas())
    mu = torch.cat([layer.weight.detach().double().ravel(), layer.bias.detach().double().ravel()])
    sigma = torch.cat([sw.ravel(), sb.ravel()])
    gen = torch.Generator().manual_seed(1)
    w = mu + sigma * torch.randn(200_000, mu.numel(), generator=gen, dtype=torch.float64)
    q = torch.distributions.Normal(mu, sigma)
    p = torch.distributions.Normal(0.0, layer.prior_sigma)
    log_ratio = (q.log_prob(w) - p.log_prob(w)).sum(dim=1)
    mc, se = float(log_ratio.mean()), float(log_ratio.std() / math.sqrt(len(log_ratio)))
    closed = float(layer.kl().detach())
    assert abs(mc - closed) < 4 * se + 1e-3, (mc, closed, se)


def test_kl_is_zero_at_the_prior_and_positive_elsewhere():
    ps = 0.3
    assert float(gaussian_kl(torch.zeros(5), torch.full((5,), ps), ps)) == pytest.approx(0.0, abs=1e-6)
    assert float(gaussian_kl(torch.full((5,), 0.1), torch.full((5,), ps), ps)) > 0
    assert float(gaussian_kl(torch.zeros(5), torch.full((5,), 0.1), ps)) > 0


def test_local_reparameterization_matches_direct_weight_sampling():
    layer = bayes_layer()
    x = torch.tensor([[0.5, -1.0, 2.0, 0.3]])
    n = 100_000
    sw, sb = (s.detach() for s in layer.sigmas())
    with torch.no_grad():
        lrt = layer(x.expand(n, -1), {"lin": torch.randn(n, 3, generator=torch.Generator().manual_seed(0))})
        g = torch.Generator().manual_seed(1)
        w = layer.weight + sw * torch.randn(n, 3, 4, generator=g)
        b = layer.bias + sb * torch.randn(n, 3, generator=g)
        direct = torch.einsum("noi,i->no", w, x[0]) + b
        mean = layer(x)[0]
        var = (x[0] ** 2) @ (sw ** 2).T + sb ** 2
    for sample in (lrt, direct):
        assert torch.allclose(sample.mean(0), mean, atol=4 * float(var.max().sqrt()) / math.sqrt(n) + 1e-4)
        assert torch.allclose(sample.var(0), var, rtol=0.03)


def test_noise_free_pass_is_the_mean_network():
    layer = bayes_layer()
    x = torch.randn(5, 4)
    with torch.no_grad():
        assert torch.allclose(layer(x), layer(x, {"lin": torch.zeros(5, 3)}))
        assert torch.allclose(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))


# ------------------------------------------------------------------------------ Gumbel-softmax

def test_gumbel_noise_from_uniform_has_gumbel_moments_and_is_finite_at_the_edges():
    u = torch.rand(400_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    g = gumbel_from_uniform(u)
    assert float(g.mean()) == pytest.approx(0.5772156649, abs=0.01)      # Euler-Mascheroni
    assert float(g.var()) == pytest.approx(math.pi ** 2 / 6, rel=0.02)
    assert torch.isfinite(gumbel_from_uniform(torch.tensor([0.0, 1.0]))).all()


@pytest.mark.parametrize("tau", [1e-3, 0.1])
def test_gumbel_softmax_samples_have_the_categorical_marginals(tau):
    logits = torch.log(torch.tensor([0.5, 0.2, 0.2, 0.1]))
    n = 100_000
    u = torch.rand(n, 4, generator=torch.Generator().manual_seed(0))
    y = gumbel_softmax(logits.expand(n, -1), gumbel_from_uniform(u), tau)
    assert torch.allclose(y.sum(-1), torch.ones(n), atol=1e-5)
    freq = torch.bincount(y.argmax(-1), minlength=4).double() / n   # Gumbel-max trick: exact marginals
    assert torch.allclose(freq, torch.tensor([0.5, 0.2, 0.2, 0.1], dtype=torch.float64), atol=0.006)
    if tau < 0.01:  # near one-hot: the soft sample's mean is the categorical itself
        assert torch.allclose(y.mean(0).double(), freq, atol=0.003)


def test_gumbel_noise_layer_mean_is_a_constant_shift():
    layer = GumbelNoise("g", (3,)).eval()
    like = torch.zeros(2, 3)
    assert layer(like) is None  # eval, no sampling: noise-free path
    shift = layer(like, {"g": torch.full((2, 3), 0.5)})
    assert torch.allclose(shift, torch.full((2, 3), -math.log(math.log(2.0))))
    logits = torch.randn(2, 3)
    assert torch.allclose(gumbel_softmax(logits, shift, 0.7), gumbel_softmax(logits, None, 0.7), atol=1e-6)


def test_hsa_mixes_centroids_and_low_temperature_picks_one():
    torch.manual_seed(0)
    att = HierarchicalStochasticAttention(8, 2, 4, 5, centroids=6, tau1=1.0, tau2=1e-3, name="b0").eval()
    x = torch.randn(3, 5, 8)
    q, k, v = torch.randn(3, 2, 5, 4), torch.randn(3, 2, 5, 4), torch.randn(3, 2, 5, 4)
    noise = {"b0_attn_gumbel": torch.rand(3, 2, 5, 5), "b0_centroid_gumbel": torch.rand(3, 2, 5, 6)}
    with torch.no_grad():
        h = att.attention(q, k, v, noise, None)                       # (B, H, T, d_h)
        dist = torch.cdist(h, att.centroids.unsqueeze(0).expand(3, -1, -1, -1))
        assert float(dist.min(-1).values.max()) < 1e-3               # each output is one centroid
        mean = {k_: torch.full_like(v_, 0.5) for k_, v_ in noise.items()}
        assert torch.allclose(att(x, mean), att(x), atol=1e-5)       # mean noise == noise-free pass


# ------------------------------------------------------------------------------ Laplace

def _laplace_problem(seed=0, n=200, d=5, c=3):
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((n, d))
    logits = feats @ rng.standard_normal((d, c))
    p = np.exp(logits - logits.max(1, keepdims=True))
    return feats, p / p.sum(1, keepdims=True), rng


def test_full_ggn_equals_autograd_jacobian_form():
    feats, probs, rng = _laplace_problem(n=7, d=3, c=3)
    h = full_ggn(feats, probs)
    x, lam = ggn_terms(feats, probs)
    ref = np.zeros_like(h)
    for xi, li in zip(x, lam):
        jac = torch.autograd.functional.jacobian(lambda m: m.reshape(3, 4) @ torch.as_tensor(xi),
                                                 torch.zeros(12, dtype=torch.float64)).numpy()
        ref += jac.T @ li @ jac
    assert np.allclose(h, ref, atol=1e-10)


@pytest.mark.parametrize("structure", ["kron", "full"])
def test_laplace_logit_samples_match_direct_weight_sampling(structure):
    feats, probs, rng = _laplace_problem()
    c, p = probs.shape[1], feats.shape[1] + 1
    tau = 3.0
    w, b = rng.standard_normal((c, p - 1)), rng.standard_normal(c)
    x_test = rng.standard_normal((1, p - 1))
    xt = np.append(x_test[0], 1.0)
    n = 200_000
    if structure == "kron":
        a_inv, g_chol = laplace_factors_kron(feats, probs, tau)
        factors = (a_inv, g_chol)
        cov = (xt @ a_inv @ xt) * (g_chol @ g_chol.T)                  # (x^T A'^-1 x) G'^-1
        z = rng.standard_normal((n, c, p))                             # matrix normal: L_G Z L_A^T
        dm = np.einsum("ij,njk,lk->nil", g_chol, z, np.linalg.cholesky(a_inv))
    else:
        (l_full,) = factors = (laplace_factor_full(full_ggn(feats, probs), tau),)
        cov_w = l_full @ l_full.T
        jac = np.kron(np.eye(c), xt[None, :])                          # row-major [W | b]
        cov = jac @ cov_w @ jac.T
        dm = (rng.standard_normal((n, c * p)) @ l_full.T).reshape(n, c, p)
    direct = (np.concatenate([w, b[:, None]], 1)[None] + dm) @ xt     # (n, C) from sampled weights
    eps = rng.standard_normal((n, 1, c if structure == "kron" else c * p))
    graph = laplace_logit_samples(w, b, x_test, structure, factors, eps)[:, 0]
    mean = w @ x_test[0] + b
    scale = np.sqrt(np.diag(cov)).max()
    for s in (direct, graph):
        assert np.allclose(s.mean(0), mean, atol=5 * scale / np.sqrt(n))
        assert np.allclose(np.cov(s.T), cov, atol=0.03 * scale ** 2)
    # the exported layer computes the same formula
    layer = LastLayerLaplace("lap", p - 1, c, structure)
    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(w))
        layer.bias.copy_(torch.as_tensor(b))
    layer.set_posterior(tau, *factors) if structure == "kron" else layer.set_posterior(tau, cov_chol=factors[0])
    e = eps[:4, 0].astype(np.float32)
    with torch.no_grad():
        out = layer(torch.as_tensor(x_test, dtype=torch.float32).expand(4, -1), {"lap": torch.as_tensor(e)})
    assert np.allclose(out.numpy(), graph[:4], atol=1e-4)


def test_kron_prior_dominates_with_large_precision():
    feats, probs, _ = _laplace_problem()
    a_small, g_small = laplace_factors_kron(feats, probs, 1e-2)
    a_big, g_big = laplace_factors_kron(feats, probs, 1e6)
    var = lambda a, g: np.trace(a) * np.trace(g @ g.T)  # noqa: E731
    assert var(a_big, g_big) < 1e-3 * var(a_small, g_small)
