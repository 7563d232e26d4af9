"""SNGP (Liu et al., NeurIPS 2020): spectral-normalised trunk + a Gaussian-process output layer,
one deterministic pass.

The last layer (``head.fc2``, hidden h in R^d -> C logits) is a random-Fourier-feature GP
(:class:`RandomFeatureGP`): phi(h) = sqrt(2/D) cos(W h + b) with W ~ N(0, 1/l^2) and
b ~ U(0, 2 pi) fixed, logits z = beta phi + bias (trained with the network by cross-entropy).
After training the scheme fits a Laplace posterior of beta (:func:`fit_sngp_covariance`), one
block per class (the diagonal blocks of the softmax GGN, exact since z is linear in beta):

    Sigma_c = (tau I + sum_n p_nc (1 - p_nc) phi_n phi_n^T)^-1

and the layer outputs the mean-field logits (Liu et al. eq. 9, lambda = pi / 8 by default)

    z_c / sqrt(1 + lambda * phi^T Sigma_c phi)

so inputs far from the training features (large GP variance) get flatter probabilities. The
encoder blocks are spectrally normalised as in DDU (:class:`~edgeuq.schemes.ddu.SpectralLinear`).

The model has no noise inputs: it exports to **one deterministic pass**. In the runtime's
decomposition total = aleatoric = the entropy of the mean-field softmax (distance-aware: it grows
with the GP variance) and epistemic (MI) = 0; the feature density (``edgeuq calibrate``) is the
second, independent score.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, List, final

import numpy as np
import torch
from torch import nn

from ..models.eval_mode import evaluating
from .base import FitContext, FitResult, Scheme
from .ddu import SpectralLinear, finish_power_iterations, spectral_problems
from .registry import register_scheme

__all__ = ["RandomFeatureGP", "SNGPOptions", "SNGPScheme", "fit_sngp_covariance", "gp_inputs"]


@final
class RandomFeatureGP(nn.Module):
    """Random-Fourier-feature GP output layer with a per-class Laplace covariance (zero until fitted)."""

    def __init__(self, n_in: int, n_out: int, features: int = 128, lengthscale: float = 4.0,
                 mean_field_factor: float = math.pi / 8, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.n_features = int(features)
        self.mean_field_factor = float(mean_field_factor)
        self.register_buffer("rff_weight", torch.randn(self.n_features, n_in, generator=g) / float(lengthscale))
        self.register_buffer("rff_bias", torch.rand(self.n_features, generator=g) * (2 * math.pi))
        self.beta = nn.Linear(self.n_features, n_out)
        self.register_buffer("cov", torch.zeros(n_out, self.n_features, self.n_features))

    def random_features(self, h: torch.Tensor) -> torch.Tensor:
        return math.sqrt(2.0 / self.n_features) * torch.cos(h @ self.rff_weight.T + self.rff_bias)

    def variance(self, phi: torch.Tensor) -> torch.Tensor:
        """phi^T Sigma_c phi per row and class, (B, C)."""
        return (torch.matmul(phi.unsqueeze(0), self.cov) * phi.unsqueeze(0)).sum(-1).T

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        phi = self.random_features(h)
        z = self.beta(phi)
        if self.training:
            return z
        return z / torch.sqrt(1.0 + self.mean_field_factor * self.variance(phi))


def gp_inputs(model: nn.Module, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Inputs of the GP layer (``head.fc2``) in the deterministic pass, (N, d)."""
    layer = model.head.fc2
    captured = []
    hook = layer.register_forward_hook(lambda mod, args, out: captured.append(args[0].detach().clone()))
    try:
        with evaluating(model):
            for i in range(0, len(x), batch_size):
                model(torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size])))
    finally:
        hook.remove()
    return torch.cat(captured).numpy().astype(np.float64)


@torch.no_grad()
def fit_sngp_covariance(layer: RandomFeatureGP, h: np.ndarray, prior_precision: float = 1.0) -> np.ndarray:
    """Fit ``layer.cov`` from GP inputs ``h`` (N, d): Sigma_c = (tau I + sum_n p_nc (1 - p_nc) phi phi^T)^-1
    with p the softmax of the (unadjusted) logits. Returns the covariances (C, D, D), float64."""
    phi = layer.random_features(torch.from_numpy(np.asarray(h)).to(layer.rff_weight.dtype)).double()
    z = phi @ layer.beta.weight.double().T + layer.beta.bias.double()
    p = torch.softmax(z, dim=-1)
    w = p * (1 - p)                                                    # (N, C)
    eye = torch.eye(layer.n_features, dtype=torch.float64)
    prec = prior_precision * eye + torch.einsum("nc,nd,ne->cde", w, phi, phi)
    cov = torch.linalg.inv(prec)
    cov = 0.5 * (cov + cov.transpose(1, 2))
    layer.cov.copy_(cov.to(layer.cov.dtype))
    return cov.numpy()


@final
@dataclass(frozen=True)
class SNGPOptions:
    random_features: int = 128
    lengthscale: float = 4.0
    prior_precision: float = 1.0              # tau, the Gaussian prior's precision on beta
    mean_field_factor: float = math.pi / 8    # lambda
    spectral_norm: bool = True                # spectral-normalise the encoder blocks' linear layers
    spectral_bound: float = 0.95
    power_iterations: int = 50


@final
@register_scheme("sngp")
class SNGPScheme(Scheme):
    """Spectral-normalised encoder blocks and a random-feature GP output layer (Laplace, mean-field)."""
    trunk_layers = True

    options_type = SNGPOptions
    deterministic_pass = True

    def problems(self, cfg: Any) -> List[str]:
        o = cfg.scheme_options
        problems = spectral_problems(cfg, o.spectral_bound, o.power_iterations)
        if isinstance(o.random_features, bool) or not isinstance(o.random_features, int) or o.random_features < 1:
            problems.append(f"scheme_options.random_features must be an integer >= 1, got {o.random_features!r}")
        for name in ("lengthscale", "prior_precision"):
            v = getattr(o, name)
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0):
                problems.append(f"scheme_options.{name} must be a positive number, got {v!r}")
        if not (isinstance(o.mean_field_factor, (int, float)) and math.isfinite(o.mean_field_factor)
                and o.mean_field_factor >= 0):
            problems.append(f"scheme_options.mean_field_factor must be >= 0, got {o.mean_field_factor!r}")
        return problems

    def block_linear(self, cfg: Any, index: int, site: str, n_in: int, n_out: int, stochastic: bool) -> nn.Module:
        o = cfg.scheme_options
        if not o.spectral_norm:
            return nn.Linear(n_in, n_out)
        return SpectralLinear(n_in, n_out, o.spectral_bound, seed=index * 16 + len(site))

    def head_output(self, cfg: Any, n_in: int, n_out: int) -> nn.Module:
        o = cfg.scheme_options
        return RandomFeatureGP(n_in, n_out, o.random_features, o.lengthscale, o.mean_field_factor, seed=7)

    def train(self, cfg: Any, ctx: FitContext) -> FitResult:
        out = super().train(cfg, ctx)
        o = cfg.scheme_options
        finish_power_iterations(out.model, o.power_iterations)
        fit_sngp_covariance(out.model.head.fc2, gp_inputs(out.model, ctx.x_train), o.prior_precision)
        metrics = {**dict(out.metrics), "sngp": {"random_features": o.random_features, "lengthscale": o.lengthscale,
                                                 "prior_precision": o.prior_precision,
                                                 "mean_field_factor": o.mean_field_factor}}
        return FitResult(out.model, metrics, out.runs)
