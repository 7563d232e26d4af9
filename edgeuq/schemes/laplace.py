"""Last-layer Laplace approximation, exported with a ``standard_normal`` noise input.

The last linear layer (``head.fc2``: features f in R^d -> logits in R^C) gets a
Gaussian posterior around its trained (MAP) weights. With the augmented
feature x = [f, 1] and the weights M = [W | b] (C x (d+1)), the logits are
z = M x, and the generalized Gauss-Newton (GGN = Fisher for softmax + NLL)
curvature of the data term is

    H = sum_n Lambda_n (x) x_n x_n^T,   Lambda_n = diag(p_n) - p_n p_n^T

(``(x)`` the Kronecker product, M flattened row-major). Posterior precision =
H + tau * I with the prior precision tau tuned on validation data
(:func:`fit_laplace`). Two structures (``LaplaceOptions.structure``):

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
samples during training. The scheme's :meth:`LaplaceScheme.train` trains the
MAP network as a deterministic network, copies its weights into the Laplace
model and fits the posterior.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple, final

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models.layers import NoiseDict, StochasticLayer
from .base import FitContext, FitResult, Scheme, TextHead, deterministic_config, train_metrics
from .registry import register_scheme

__all__ = [
    "LastLayerLaplace", "laplace_factors_kron", "laplace_factor_full", "ggn_terms", "full_ggn", "LaplaceOptions",
    "LaplaceScheme", "LaplaceFit", "fit_laplace", "head_features", "laplace_logit_samples", "DEFAULT_PRIOR_GRID",
]

STRUCTURES = ("kron", "full")
DEFAULT_PRIOR_GRID = tuple(float(v) for v in np.logspace(-2, 5, 15))


@final
class LastLayerLaplace(StochasticLayer):
    kind = "standard_normal"
    sample_in_training = False

    def __init__(self, name: str, in_features: int, out_features: int, structure: str = "kron") -> None:
        if structure not in STRUCTURES:
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


# -- the posterior's algebra (numpy, float64) ----------------------------------------------

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


# -- fitting ----------------------------------------------------------------------------------

@final
@dataclass(frozen=True)
class LaplaceFit:
    structure: str
    prior_precision: float
    grid: Tuple[float, ...]
    val_nll: Tuple[float, ...]
    n_train: int

    def to_dict(self) -> dict:
        return {"structure": self.structure, "prior_precision": self.prior_precision, "grid": list(self.grid),
                "val_nll": list(self.val_nll), "n_train": self.n_train}


def _laplace_layer(model: nn.Module) -> LastLayerLaplace:
    layer = getattr(getattr(model, "head", None), "fc2", None)
    if not isinstance(layer, LastLayerLaplace):
        raise ValueError(f"model has no last-layer Laplace head (scheme {model.cfg.scheme!r}); use scheme 'laplace'")
    return layer


@torch.no_grad()
def head_features(model: nn.Module, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Inputs of ``head.fc2`` (the last layer) in the deterministic pass, (N, d)."""
    layer = _laplace_layer(model)
    model.eval()
    captured = []
    hook = layer.register_forward_hook(lambda mod, args, out: captured.append(args[0].detach().clone()))
    try:
        for i in range(0, len(x), batch_size):
            model(torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size])))
    finally:
        hook.remove()
    return torch.cat(captured).numpy().astype(np.float64)


def _map_logits(layer: LastLayerLaplace, feats: np.ndarray) -> np.ndarray:
    return feats @ layer.weight.detach().numpy().T.astype(np.float64) + layer.bias.detach().numpy()


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def laplace_logit_samples(layer_weight: np.ndarray, layer_bias: np.ndarray, feats: np.ndarray, structure: str,
                          factors: tuple, eps: np.ndarray) -> np.ndarray:
    """The head's formula in numpy: logits (S, N, C) for eps (S, N, noise size)."""
    z = feats @ layer_weight.T + layer_bias
    xt = np.concatenate([feats, np.ones((len(feats), 1))], axis=1)
    if structure == "kron":
        a_inv, g_chol = factors
        scale = np.sqrt(np.einsum("ni,ij,nj->n", xt, a_inv, xt))[None, :, None]
        return z[None] + scale * (eps @ g_chol.T)
    (cov_chol,) = factors
    c = layer_weight.shape[0]
    delta = (eps @ cov_chol.T).reshape(eps.shape[0], eps.shape[1], c, -1)
    return z[None] + np.einsum("sncj,nj->snc", delta, xt)


def fit_laplace(
    model: nn.Module,
    x_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    prior_grid: Sequence[float] = DEFAULT_PRIOR_GRID,
    samples: int = 64,
    seed: int = 0,
) -> LaplaceFit:
    """GGN of the last layer on the training features, then the prior precision
    from ``prior_grid`` with the lowest validation NLL of the sampled predictive
    (``samples`` fixed draws); installs the posterior in ``model.head.fc2``."""
    from ..uq import nll

    layer = _laplace_layer(model)
    w = layer.weight.detach().numpy().astype(np.float64)
    b = layer.bias.detach().numpy().astype(np.float64)
    f_train = head_features(model, x_train)
    p_train = _softmax(_map_logits(layer, f_train))
    f_val = head_features(model, x_val)
    eps = np.random.default_rng(seed).standard_normal((samples, len(f_val), layer.shape[0]))
    ggn = full_ggn(f_train, p_train) if layer.structure == "full" else None
    scores, all_factors = [], []
    for tau in prior_grid:
        if layer.structure == "kron":
            factors = laplace_factors_kron(f_train, p_train, tau)
        else:
            factors = (laplace_factor_full(ggn, tau),)
        logits = laplace_logit_samples(w, b, f_val, layer.structure, factors, eps)
        scores.append(nll(_softmax(logits).mean(axis=0), y_val))
        all_factors.append(factors)
    best = int(np.argmin(scores))
    tau = float(prior_grid[best])
    if layer.structure == "kron":
        layer.set_posterior(tau, a_inv=all_factors[best][0], g_chol=all_factors[best][1])
    else:
        layer.set_posterior(tau, cov_chol=all_factors[best][0])
    return LaplaceFit(layer.structure, tau, tuple(float(t) for t in prior_grid), tuple(float(v) for v in scores),
                      int(len(f_train)))


# -- the scheme ------------------------------------------------------------------------------

@final
@dataclass(frozen=True)
class LaplaceOptions:
    """``structure`` of the posterior covariance: ``kron`` (K-FAC) or ``full``."""

    structure: str = "kron"


@final
@register_scheme("laplace")
class LaplaceScheme(Scheme):
    options_type = LaplaceOptions
    text_head = TextHead(sites=("fc2",), post_hoc_posterior=True)

    def problems(self, cfg: Any) -> List[str]:
        problems = []
        if cfg.stochastic_blocks or not cfg.stochastic_head:
            problems.append("scheme 'laplace' is last-layer: set stochastic_blocks = [] and stochastic_head = true")
        if cfg.scheme_options.structure not in STRUCTURES:
            problems.append(f"scheme_options structure must be 'kron' or 'full', got {cfg.scheme_options.structure!r}")
        return problems

    def head_output(self, cfg: Any, n_in: int, n_out: int) -> nn.Module:
        return LastLayerLaplace("head_laplace", n_in, n_out, cfg.scheme_options.structure)

    def uses_sampling(self, model: nn.Module) -> bool:
        """Sampled only once the posterior is fitted (before, the layer is the MAP linear)."""
        return super().uses_sampling(model) and _laplace_layer(model).fitted

    def train(self, cfg: Any, ctx: FitContext) -> FitResult:
        """The MAP network trained as a deterministic network (member 0 of ``ctx``), its
        weights copied into the Laplace model, then the posterior fitted (``uq.laplace_samples``)."""
        base, res = ctx.deterministic_member(deterministic_config(cfg), 0)
        model = self.build_model(cfg)
        missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
        if unexpected or any(not k.startswith("head.fc2.") for k in missing):
            raise RuntimeError(f"MAP weights do not fit the Laplace model: missing {missing}, unexpected {unexpected}")
        model.eval()
        fit = fit_laplace(model, ctx.x_train, ctx.x_val, ctx.y_val, samples=int(ctx.uq["laplace_samples"]))
        metrics = {**(train_metrics(res) if res is not None else {}), "laplace": fit.to_dict()}
        return FitResult(model, metrics, () if res is None else (res,))
