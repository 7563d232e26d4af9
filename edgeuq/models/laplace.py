"""Last-layer Laplace approximation, exported with a ``standard_normal`` noise input.

The last linear layer (``head.fc2``: features f in R^d -> logits in R^C) gets a
Gaussian posterior around its trained (MAP) weights. With the augmented
feature x = [f, 1] and the weights M = [W | b] (C x (d+1)), the logits are
z = M x, and the generalized Gauss-Newton (GGN = Fisher for softmax + NLL)
curvature of the data term is

    H = sum_n Lambda_n (x) x_n x_n^T,   Lambda_n = diag(p_n) - p_n p_n^T

(``(x)`` the Kronecker product, M flattened row-major). Posterior precision =
H + tau * I with the prior precision tau tuned on validation data
(:func:`edgeuq.bayes.fit_laplace`). Two structures:

``full``
    Sigma = (H + tau I)^-1 exactly, L = chol(Sigma). A sample of the weights is
    M + reshape(L eps), eps ~ N(0, I_{C(d+1)}), so the head computes
    ``z = M x + reshape(eps L^T) x``: the noise input has C(d+1) entries.
``kron`` (K-FAC, laplace-torch's default)
    H ~ (N G) (x) A with A = mean x x^T and G = mean Lambda_n; the prior is
    split over the two factors: precision ~ (sqrt(N) G + sqrt(tau) I) (x)
    (sqrt(N) A + sqrt(tau) I) = G' (x) A'. Then the logit covariance for an
    input is exactly (x^T A'^-1 x) G'^-1, and the head computes
    ``z = M x + sqrt(x^T A'^-1 x) * (eps L_G^T)`` with L_G = chol(G'^-1) and
    eps ~ N(0, I_C): the noise input has C entries.

Either way eps = 0 (the mean) gives the MAP logits. Before fitting, the
posterior factors are zero and the layer is the plain linear layer; it never
samples during training (the MAP is trained as an ordinary network).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .stochastic import NoiseDict, StochasticLayer

__all__ = ["LastLayerLaplace", "laplace_factors_kron", "laplace_factor_full", "ggn_terms"]


class LastLayerLaplace(StochasticLayer):
    kind = "standard_normal"
    sample_in_training = False

    def __init__(self, name: str, in_features: int, out_features: int, structure: str = "kron") -> None:
        if structure not in ("kron", "full"):
            raise ValueError(f"laplace structure must be 'kron' or 'full', got {structure!r}")
        p = in_features + 1
        super().__init__(name, (out_features,) if structure == "kron" else (out_features * p,))
        self.in_features = in_features
        self.out_features = out_features
        self.structure = structure
        ref = nn.Linear(in_features, out_features)
        self.weight = nn.Parameter(ref.weight.detach().clone())
        self.bias = nn.Parameter(ref.bias.detach().clone())
        if structure == "kron":
            self.register_buffer("a_inv", torch.zeros(p, p))
            self.register_buffer("g_chol", torch.zeros(out_features, out_features))
        else:
            self.register_buffer("cov_chol", torch.zeros(out_features * p, out_features * p))
        self.register_buffer("prior_precision", torch.zeros(()))

    @property
    def fitted(self) -> bool:
        return bool(self.prior_precision > 0)

    def forward(self, x: torch.Tensor, noise: Optional[NoiseDict] = None) -> torch.Tensor:
        z = F.linear(x, self.weight, self.bias)
        eps = self.noise_for(noise, x.shape[0], x)
        if eps is None:
            return z
        xt = torch.cat([x, torch.ones_like(x[..., :1])], dim=-1)      # (N, d+1)
        if self.structure == "kron":
            scale = torch.sqrt(torch.sum((xt @ self.a_inv) * xt, dim=-1, keepdim=True))
            return z + scale * (eps @ self.g_chol.transpose(0, 1))
        delta = (eps @ self.cov_chol.transpose(0, 1)).reshape(x.shape[0], self.out_features, -1)
        return z + torch.sum(delta * xt.unsqueeze(1), dim=-1)

    def set_posterior(self, prior_precision: float, a_inv: Optional[np.ndarray] = None,
                      g_chol: Optional[np.ndarray] = None, cov_chol: Optional[np.ndarray] = None) -> None:
        """Install fitted posterior factors (see :func:`laplace_factors_kron` / :func:`laplace_factor_full`)."""
        with torch.no_grad():
            if self.structure == "kron":
                self.a_inv.copy_(torch.as_tensor(a_inv, dtype=torch.float32))
                self.g_chol.copy_(torch.as_tensor(g_chol, dtype=torch.float32))
            else:
                self.cov_chol.copy_(torch.as_tensor(cov_chol, dtype=torch.float32))
            self.prior_precision.fill_(float(prior_precision))

    def extra_repr(self) -> str:
        return f"{self.name!r}, in={self.in_features}, out={self.out_features}, structure={self.structure!r}"


def ggn_terms(features: np.ndarray, probs: np.ndarray):
    """Augmented features x = [f, 1] (N, d+1) and Lambda_n = diag(p) - p p^T (N, C, C)."""
    x = np.concatenate([features, np.ones((len(features), 1))], axis=1).astype(np.float64)
    p = probs.astype(np.float64)
    lam = np.einsum("nc,cd->ncd", p, np.eye(p.shape[1])) - np.einsum("nc,nd->ncd", p, p)
    return x, lam


def _inv_spd(m: np.ndarray) -> np.ndarray:
    m = 0.5 * (m + m.T)
    return np.linalg.inv(m)


def laplace_factors_kron(features: np.ndarray, probs: np.ndarray, prior_precision: float):
    """K-FAC posterior: (A'^-1, chol(G'^-1)) for prior precision tau (see module doc)."""
    x, lam = ggn_terms(features, probs)
    n = len(x)
    a = x.T @ x / n
    g = lam.mean(axis=0)
    root_tau = np.sqrt(prior_precision)
    a_prime = np.sqrt(n) * a + root_tau * np.eye(a.shape[0])
    g_prime = np.sqrt(n) * g + root_tau * np.eye(g.shape[0])
    return _inv_spd(a_prime), np.linalg.cholesky(_inv_spd(g_prime))


def full_ggn(features: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """H = sum_n Lambda_n (x) x_n x_n^T, shape (C(d+1), C(d+1)), row-major [W | b]."""
    x, lam = ggn_terms(features, probs)
    c, p = lam.shape[1], x.shape[1]
    h = np.einsum("ncd,ni,nj->cidj", lam, x, x).reshape(c * p, c * p)
    return 0.5 * (h + h.T)


def laplace_factor_full(ggn: np.ndarray, prior_precision: float) -> np.ndarray:
    """chol((H + tau I)^-1)."""
    prec = ggn + prior_precision * np.eye(ggn.shape[0])
    return np.linalg.cholesky(_inv_spd(prec))
