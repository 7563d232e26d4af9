"""Closed-form Fisher of mean-field Gaussian weights, checked against Monte Carlo
scores and autograd (no variational layer class is needed)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from edgeuq.fisher import expected_fisher_trace, gaussian_score, gaussian_weight_fisher, variational_fisher
from edgeuq.fisher.variational import PARAMETRIZATIONS, sigma_of


def _params(parametrization: str, rng: np.random.Generator, shape=(4, 3)):
    mu = rng.standard_normal(shape)
    if parametrization == "sigma":
        return mu, rng.uniform(0.2, 1.5, shape)
    if parametrization == "softplus":
        return mu, rng.uniform(-2.0, 1.0, shape)
    return mu, rng.uniform(-1.5, 0.5, shape)


@pytest.mark.parametrize("parametrization", PARAMETRIZATIONS)
def test_closed_form_matches_monte_carlo_squared_score(parametrization):
    rng = np.random.default_rng(0)
    mu, rho = _params(parametrization, rng)
    f = gaussian_weight_fisher(mu, rho, parametrization)
    sigma = sigma_of(rho, parametrization)
    w = mu + sigma * rng.standard_normal((200_000, *mu.shape))
    d_mu, d_rho = gaussian_score(w, mu, rho, parametrization)
    np.testing.assert_allclose((d_mu**2).mean(0), f.mean, rtol=0.03)
    np.testing.assert_allclose((d_rho**2).mean(0), f.scale, rtol=0.05)
    assert abs((d_mu * d_rho).mean(0)).max() < 0.05 * f.mean.max()  # F_μρ = 0
    mc_trace = float((d_mu**2).mean(0).sum() + (d_rho**2).mean(0).sum())
    assert expected_fisher_trace(mu, rho, parametrization) == pytest.approx(mc_trace, rel=0.03)
    assert f.trace() == pytest.approx(f.trace_mean + f.trace_scale)


@pytest.mark.parametrize("parametrization", PARAMETRIZATIONS)
def test_score_matches_autograd(parametrization):
    rng = np.random.default_rng(1)
    mu, rho = _params(parametrization, rng, (5,))
    w = rng.standard_normal(5)
    tm = torch.tensor(mu, requires_grad=True)
    tr = torch.tensor(rho, requires_grad=True)
    fns = {"sigma": lambda r: r, "softplus": torch.nn.functional.softplus, "log_sigma": torch.exp}
    sigma = fns[parametrization](tr)
    logq = (-0.5 * ((torch.tensor(w) - tm) / sigma) ** 2 - torch.log(sigma) - 0.5 * math.log(2 * math.pi)).sum()
    logq.backward()
    d_mu, d_rho = gaussian_score(w, mu, rho, parametrization)
    np.testing.assert_allclose(d_mu, tm.grad.numpy(), rtol=1e-10)
    np.testing.assert_allclose(d_rho, tr.grad.numpy(), rtol=1e-10)


def test_known_values_and_torch_inputs():
    f = gaussian_weight_fisher(torch.zeros(3), torch.full((3,), 0.5), "sigma")
    np.testing.assert_allclose(f.mean, 4.0)
    np.testing.assert_allclose(f.scale, 8.0)
    g = gaussian_weight_fisher(np.zeros(2), np.zeros(2), "log_sigma")
    np.testing.assert_allclose(g.scale, 2.0)  # F_ρρ = 2 for σ = e^ρ, whatever ρ


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="shape"):
        gaussian_weight_fisher(np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError, match="> 0"):
        gaussian_weight_fisher(np.zeros(2), np.array([0.1, -0.1]), "sigma")
    with pytest.raises(ValueError, match="parametrization"):
        gaussian_weight_fisher(np.zeros(2), np.zeros(2), "tanh")
    with pytest.raises(ValueError, match="NaN"):
        gaussian_weight_fisher(np.array([np.nan]), np.zeros(1))


def test_variational_fisher_finds_mean_scale_pairs():
    class Gaussian(nn.Module):  # the parameter convention of a Bayes-by-backprop linear layer
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(3, 2))
            self.weight_rho = nn.Parameter(torch.full((3, 2), -3.0))
            self.bias = nn.Parameter(torch.zeros(3))

    model = nn.Sequential(nn.Linear(2, 2), Gaussian())
    out = variational_fisher(model)
    assert list(out) == ["1.weight"]
    sigma = np.log1p(np.exp(-3.0))
    np.testing.assert_allclose(out["1.weight"].mean, 1 / sigma**2)
