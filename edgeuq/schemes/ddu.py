"""DDU (Mukhoti et al., CVPR 2023): a distance-preserving trunk, one deterministic pass.

Every linear layer of the encoder blocks (attention qkv/proj, FFN fc1/fc2) is spectrally
normalised with a soft bound ``c`` (:class:`SpectralLinear`): ``W / max(1, sigma(W) / c)``, with
``sigma(W)`` the largest singular value estimated by power iteration (one step per training
forward, ``power_iterations`` more when the scheme finishes training). With ``c < 1`` each
residual branch ``x + f(x)`` is bi-Lipschitz up to the layer norms, so distances between inputs
survive into the features, which is what a feature-space density needs. The density itself is
the runtime's class-conditional Gaussian (``edgeuq calibrate``, :mod:`edgeuq_runtime.density`):
DDU's uncertainty is that one-pass density score, next to the softmax entropy.

The model has no noise inputs: it exports to one deterministic pass; the runtime's decomposition
then has total = aleatoric = the softmax entropy and epistemic = 0 (any S gives the same).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, final

import torch
import torch.nn.functional as F
from torch import nn

from .base import FitContext, FitResult, Scheme
from .registry import register_scheme

__all__ = ["SpectralLinear", "DDUOptions", "DDUScheme", "spectral_problems", "finish_power_iterations"]


@final
class SpectralLinear(nn.Linear):
    """``nn.Linear`` whose weight is divided by ``max(1, sigma / bound)`` (soft spectral normalisation).

    ``u`` and ``v`` are the power-iteration vectors (buffers, exported with the weights); a training
    forward does one power-iteration step first; eval and export use the stored vectors, so the
    graph computes ``sigma = u^T W v`` from the weights it holds.
    """

    def __init__(self, n_in: int, n_out: int, bound: float = 0.95, seed: int = 0) -> None:
        super().__init__(n_in, n_out)
        if not bound > 0:
            raise ValueError(f"spectral bound must be > 0, got {bound}")
        self.bound = float(bound)
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("u", F.normalize(torch.randn(n_out, generator=g), dim=0))
        self.register_buffer("v", F.normalize(torch.randn(n_in, generator=g), dim=0))

    @torch.no_grad()
    def power_iteration(self, steps: int = 1) -> None:
        w = self.weight
        for _ in range(int(steps)):
            self.v.copy_(F.normalize(w.T @ self.u, dim=0, eps=1e-12))
            self.u.copy_(F.normalize(w @ self.v, dim=0, eps=1e-12))

    def sigma(self) -> torch.Tensor:
        """The power-iteration estimate of the largest singular value (a lower bound)."""
        return torch.dot(self.u, self.weight @ self.v)

    def normalized_weight(self) -> torch.Tensor:
        return self.weight / torch.clamp(self.sigma() / self.bound, min=1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.power_iteration(1)
        return F.linear(x, self.normalized_weight(), self.bias)


def finish_power_iterations(model: nn.Module, steps: int) -> None:
    """Converge every SpectralLinear's power iteration (after training, before export)."""
    for m in model.modules():
        if isinstance(m, SpectralLinear):
            m.power_iteration(steps)


def spectral_problems(cfg: Any, bound: float, power_iterations: int) -> List[str]:
    problems = []
    if cfg.stochastic_blocks or cfg.stochastic_head:
        problems.append(f"scheme {cfg.scheme!r} is one deterministic pass: set stochastic_blocks = [] and "
                        "stochastic_head = false")
    if not (isinstance(bound, (int, float)) and bound > 0):
        problems.append(f"scheme_options.spectral_bound must be > 0, got {bound!r}")
    if isinstance(power_iterations, bool) or not isinstance(power_iterations, int) or power_iterations < 1:
        problems.append(f"scheme_options.power_iterations must be an integer >= 1, got {power_iterations!r}")
    return problems


@final
@dataclass(frozen=True)
class DDUOptions:
    spectral_bound: float = 0.95   # c: largest singular value allowed per block linear layer
    power_iterations: int = 50     # extra power-iteration steps once training is done


@final
@register_scheme("ddu")
class DDUScheme(Scheme):
    """Spectral-normalised encoder blocks, deterministic softmax head; uncertainty = feature density."""
    trunk_layers = True

    options_type = DDUOptions
    deterministic_pass = True

    def problems(self, cfg: Any) -> List[str]:
        o = cfg.scheme_options
        return spectral_problems(cfg, o.spectral_bound, o.power_iterations)

    def block_linear(self, cfg: Any, index: int, site: str, n_in: int, n_out: int, stochastic: bool) -> nn.Module:
        return SpectralLinear(n_in, n_out, cfg.scheme_options.spectral_bound, seed=index * 16 + len(site))

    def train(self, cfg: Any, ctx: FitContext) -> FitResult:
        out = super().train(cfg, ctx)
        finish_power_iterations(out.model, cfg.scheme_options.power_iterations)
        return out
