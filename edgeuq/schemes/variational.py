"""Variational Bayes: mean-field Gaussian weights with local reparameterization, ELBO training.

Weights and biases have the posterior q(w) = N(mu, sigma^2) element-wise, with
``sigma = softplus(rho)``, and the prior p(w) = N(0, prior_sigma^2)
(Bayes by backprop, Blundell et al. 2015). Instead of sampling a weight matrix,
the layer samples its *output* (local reparameterization trick, Kingma et al.
2015): for an input x,

    mean = x W_mu^T + b_mu,    var = (x * x) (sigma_W^2)^T + sigma_b^2,
    y    = mean + sqrt(var) * eps,    eps ~ N(0, 1) of the output's shape.

``eps`` is the layer's ``standard_normal`` noise input (shape = the layer's
output per sample), so the exported graph has no random op; eps = 0 (its mean)
gives the mean network. For token inputs (T, in) the noise is drawn per token:
each token's output has the exact marginal distribution, but the correlation
between tokens that share one weight sample is dropped (the usual LRT
approximation for shared weights). Used for attention (``qkv``, ``proj``) and
feed-forward linears of the stochastic blocks (``VariationalOptions.positions``)
and the head's two linears when ``stochastic_head``.

The mean parameters are named ``weight`` and ``bias`` like ``nn.Linear``.
``kl()`` is the closed-form KL(q || p) summed over the layer; training adds
``kl_weight * KL / N_train`` to the mean cross-entropy (the per-example ELBO,
:func:`elbo_loss`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Tuple, final

import torch
import torch.nn.functional as F
from torch import nn

from ..models.layers import NoiseDict, StochasticLayer
from .base import Scheme
from .registry import register_scheme

__all__ = ["BayesLinear", "gaussian_kl", "kl_divergence", "VariationalOptions", "VariationalScheme", "elbo_loss",
           "BAYES_POSITIONS"]

#: Linear layers of a stochastic block that the variational scheme can make Bayesian.
BAYES_POSITIONS = ("attn", "ffn")


def gaussian_kl(mu: torch.Tensor, sigma: torch.Tensor, prior_sigma: float) -> torch.Tensor:
    """Sum over elements of KL(N(mu, sigma^2) || N(0, prior_sigma^2))."""
    ps = float(prior_sigma)
    return torch.sum(math.log(ps) - torch.log(sigma) + (sigma * sigma + mu * mu) / (2.0 * ps * ps) - 0.5)


@final
class BayesLinear(StochasticLayer):
    kind = "standard_normal"

    def __init__(self, name: str, in_features: int, out_features: int, shape: Tuple[int, ...],
                 prior_sigma: float = 0.1, init_sigma: float = 1e-3) -> None:
        super().__init__(name, shape)
        if shape[-1] != out_features:
            raise ValueError(f"{name}: noise shape {shape} must end with out_features {out_features}")
        if prior_sigma <= 0 or init_sigma <= 0:
            raise ValueError(f"{name}: prior_sigma and init_sigma must be > 0")
        self.in_features = in_features
        self.out_features = out_features
        self.prior_sigma = float(prior_sigma)
        ref = nn.Linear(in_features, out_features)  # nn.Linear's initialisation of the means
        self.weight = nn.Parameter(ref.weight.detach().clone())
        self.bias = nn.Parameter(ref.bias.detach().clone())
        rho = math.log(math.expm1(init_sigma))
        self.weight_rho = nn.Parameter(torch.full((out_features, in_features), rho))
        self.bias_rho = nn.Parameter(torch.full((out_features,), rho))

    def sigmas(self) -> Tuple[torch.Tensor, torch.Tensor]:
        return F.softplus(self.weight_rho), F.softplus(self.bias_rho)

    def forward(self, x: torch.Tensor, noise: Optional[NoiseDict] = None) -> torch.Tensor:
        mean = F.linear(x, self.weight, self.bias)
        eps = self.noise_for(noise, x.shape[0], x)
        if eps is None:
            return mean
        sw, sb = self.sigmas()
        var = F.linear(x * x, sw * sw, sb * sb)
        return mean + torch.sqrt(var) * eps

    def kl(self) -> torch.Tensor:
        sw, sb = self.sigmas()
        return gaussian_kl(self.weight, sw, self.prior_sigma) + gaussian_kl(self.bias, sb, self.prior_sigma)

    def extra_repr(self) -> str:
        return f"{self.name!r}, in={self.in_features}, out={self.out_features}, prior_sigma={self.prior_sigma}"


def kl_divergence(model: nn.Module) -> torch.Tensor:
    """Sum of ``kl()`` over every BayesLinear in ``model`` (0 when there is none)."""
    terms = [m.kl() for m in model.modules() if isinstance(m, BayesLinear)]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def elbo_loss(kl_weight: float, n_train: int) -> Callable:
    """The per-example negative ELBO as a loss function of the batch:
    cross-entropy of a sampled forward pass + ``kl_weight * KL(q || p) / n_train``."""
    from ..training.loop import LossOut, cross_entropy_loss

    n = float(n_train)

    def loss(model: nn.Module, batch: Any) -> LossOut:
        out = cross_entropy_loss(model, batch)
        return LossOut(out.loss + kl_weight * kl_divergence(model) / n, out.logits)

    return loss


@final
@dataclass(frozen=True)
class VariationalOptions:
    """``prior_sigma`` of the Gaussian prior, ``init_sigma`` of the posterior scales at
    initialisation, ``positions``: which linears of a stochastic block are Bayesian
    (``attn`` = qkv and proj, ``ffn`` = fc1 and fc2)."""

    prior_sigma: float = 0.1
    init_sigma: float = 1e-3
    positions: Tuple[str, ...] = BAYES_POSITIONS

    def __post_init__(self) -> None:
        object.__setattr__(self, "positions", tuple(str(p) for p in self.positions))


@final
@register_scheme("variational")
class VariationalScheme(Scheme):
    options_type = VariationalOptions
    def decay_exempt(self, param_name: str) -> bool:
        """The posterior scales (``BayesLinear.weight_rho`` / ``bias_rho``) train without weight
        decay: decay would inflate sigma."""
        return param_name.endswith("_rho")

    def problems(self, cfg: Any) -> List[str]:
        o: VariationalOptions = cfg.scheme_options
        problems = []
        if not (o.prior_sigma > 0 and o.init_sigma > 0):
            problems.append("scheme_options prior_sigma and init_sigma must be > 0")
        bad = sorted(set(o.positions) - set(BAYES_POSITIONS))
        if bad:
            problems.append(f"scheme_options positions has unknown entries {bad}; allowed: {list(BAYES_POSITIONS)}")
        if cfg.stochastic_blocks and not o.positions:
            problems.append("scheme 'variational' with stochastic blocks needs scheme_options positions")
        return problems

    def _bayes(self, cfg: Any, name: str, n_in: int, n_out: int, shape: Tuple[int, ...]) -> BayesLinear:
        o: VariationalOptions = cfg.scheme_options
        return BayesLinear(name, n_in, n_out, shape, o.prior_sigma, o.init_sigma)

    def block_linear(self, cfg: Any, index: int, site: str, n_in: int, n_out: int, stochastic: bool) -> nn.Module:
        if stochastic and site.split("_")[0] in cfg.scheme_options.positions:
            return self._bayes(cfg, f"block{index}_{site}", n_in, n_out, (cfg.block_tokens(index), n_out))
        return nn.Linear(n_in, n_out)

    def head_linear(self, cfg: Any, site: str, n_in: int, n_out: int) -> nn.Module:
        if cfg.stochastic_head:
            return self._bayes(cfg, f"head_{site}", n_in, n_out, (n_out,))
        return nn.Linear(n_in, n_out)

    def loss_fn(self, model: nn.Module, kl_weight: float, n_train: int) -> Callable:
        if kl_weight < 0:
            raise ValueError(f"kl_weight must be >= 0, got {kl_weight}")
        if not kl_weight:
            return super().loss_fn(model, kl_weight, n_train)
        return elbo_loss(kl_weight, n_train)
