"""The one protocol of stochastic layers: randomness is a named graph input.

A stochastic layer owns one noise input, declared by a :class:`NoiseSpec`
(name, kind, per-sample shape, params). Where its noise comes from, in order:

* an explicit ``noise[name]`` tensor of shape ``(batch, *shape)`` (export,
  runtime parity, ``mc_sample_probs``);
* a draw from torch's generator when ``sampling`` is on, or in training mode
  when the layer samples during training (``sample_in_training``);
* otherwise nothing: :meth:`StochasticLayer.noise_for` returns ``None`` and the
  layer takes its noise-free path, which equals feeding the kind's mean
  (``edgeuq_runtime.noise.NOISE_MEANS``) — the deterministic pass.

:data:`TORCH_NOISE_DRAWS` is the host's one table of noise kinds (torch draws);
its keys are the runtime's ``NOISE_SAMPLERS`` (a test checks this). A new kind
is added to both tables. Layers themselves live with their scheme
(``edgeuq/schemes/<scheme>.py``).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, final

import torch
from torch import nn

from edgeuq_runtime.noise import NOISE_SAMPLERS, NoiseSpec

__all__ = [
    "NoiseDict", "StochasticLayer", "Dropout", "TORCH_NOISE_DRAWS", "is_stochastic_layer", "apply_layer",
    "gumbel_from_uniform", "GUMBEL_EPS", "LowRankLinear", "factorise_named",
]

NoiseDict = Mapping[str, torch.Tensor]
#: Uniform noise is clamped to [eps, 1 - eps] before the Gumbel transform (finite logs).
GUMBEL_EPS = 1e-6

Draw = Callable[[Tuple[int, ...], torch.Tensor, Mapping[str, Any]], torch.Tensor]


def _draw_dropout_mask(size: Tuple[int, ...], like: torch.Tensor, params: Mapping[str, Any]) -> torch.Tensor:
    p = float(params["p"])
    keep = torch.rand(size, dtype=like.dtype, device=like.device) >= p
    return keep.to(like.dtype) / (1.0 - p)


def _draw_categorical(size: Tuple[int, ...], like: torch.Tensor, params: Mapping[str, Any]) -> torch.Tensor:
    k = size[-1]
    index = torch.randint(0, k, size[:-1], device=like.device)
    return nn.functional.one_hot(index, k).to(like.dtype)


#: kind -> torch draw of shape ``size`` (the host twin of the runtime's NOISE_SAMPLERS).
TORCH_NOISE_DRAWS: Dict[str, Draw] = {
    "dropout_mask": _draw_dropout_mask,
    "standard_normal": lambda size, like, params: torch.randn(size, dtype=like.dtype, device=like.device),
    "uniform": lambda size, like, params: torch.rand(size, dtype=like.dtype, device=like.device),
    "categorical": _draw_categorical,
}


class StochasticLayer(nn.Module, ABC):
    """A layer with one noise input of kind ``kind`` and per-sample ``shape``."""

    kind: str = ""
    sample_in_training: bool = True

    def __init__(self, name: str, shape: Tuple[int, ...]) -> None:
        super().__init__()
        if self.kind not in NOISE_SAMPLERS or self.kind not in TORCH_NOISE_DRAWS:
            raise ValueError(f"{type(self).__name__}: noise kind {self.kind!r} unknown; known: {sorted(NOISE_SAMPLERS)}")
        self.name = name
        self.shape = tuple(int(s) for s in shape)
        self.sampling = False

    def noise_params(self) -> Dict[str, Any]:
        return {}

    def noise_spec(self) -> NoiseSpec:
        return NoiseSpec(name=self.name, kind=self.kind, shape=self.shape, params=self.noise_params())

    def draw(self, batch: int, like: torch.Tensor) -> torch.Tensor:
        """Noise of shape (batch, *shape) from torch's generator (training / sampling)."""
        return TORCH_NOISE_DRAWS[self.kind]((batch, *self.shape), like, self.noise_params())

    def explicit_noise(self, noise: NoiseDict) -> torch.Tensor:
        if self.name not in noise:
            raise KeyError(f"noise for stochastic layer {self.name!r} missing; got {sorted(noise)}")
        return noise[self.name]

    def draws_now(self) -> bool:
        return self.sampling or (self.training and self.sample_in_training)

    def noise_for(self, noise: Optional[NoiseDict], batch: int, like: torch.Tensor) -> Optional[torch.Tensor]:
        """The noise tensor to use, or None for the noise-free (mean) path."""
        if noise is not None:
            return self.explicit_noise(noise)
        if self.draws_now():
            return self.draw(batch, like)
        return None

    @abstractmethod
    def forward(self, x: torch.Tensor, noise: Optional[NoiseDict] = None) -> Any:
        """The layer applied to ``x`` with the noise from :meth:`noise_for`."""


@final
class Dropout(nn.Module):
    """Ordinary (training-time) dropout with the stochastic layers' call signature."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.drop = nn.Dropout(p)

    def forward(self, x: torch.Tensor, noise: Optional[NoiseDict] = None) -> torch.Tensor:
        return self.drop(x)


def is_stochastic_layer(module: nn.Module) -> bool:
    return isinstance(module, StochasticLayer)


def apply_layer(layer: nn.Module, x: torch.Tensor, noise: Optional[NoiseDict]) -> torch.Tensor:
    """``layer(x, noise)`` for stochastic layers, ``layer(x)`` for plain ones (nn.Linear)."""
    return layer(x, noise) if isinstance(layer, StochasticLayer) else layer(x)


def gumbel_from_uniform(u: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel noise ``-log(-log(u))`` from U(0, 1) noise, clamped away from 0 and 1."""
    u = u.clamp(GUMBEL_EPS, 1.0 - GUMBEL_EPS)
    return -torch.log(-torch.log(u))


@final
class LowRankLinear(nn.Module):
    """``x ↦ up(down(x))``: a rank-``rank`` stand-in for an ``nn.Linear(in_features, out_features)``
    (``down``: in → rank, no bias; ``up``: rank → out, with the bias). It is what a
    ``ModelConfig.ranks`` entry builds, so a factorised model saves and loads as a checkpoint."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = int(in_features), int(out_features), int(rank)
        self.down = nn.Linear(self.in_features, self.rank, bias=False)
        self.up = nn.Linear(self.rank, self.out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


def factorise_named(model: nn.Module, ranks: Tuple[Tuple[str, int], ...]) -> nn.Module:
    """Replace each ``nn.Linear`` named in ``ranks`` ((module path, rank), as in
    ``ModelConfig.ranks``) by a freshly initialised :class:`LowRankLinear` of that rank, in place.
    A name that is not a linear layer of ``model``, or a rank above min(in, out), is an error
    naming the entry."""
    for name, rank in ranks:
        try:
            layer = model.get_submodule(name)
        except AttributeError:
            layer = None
        if not isinstance(layer, nn.Linear):
            linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
            raise ValueError(f"ModelConfig.ranks[{name!r}]: not a linear layer of this {type(model).__name__} "
                             f"(its linear layers: {linears})")
        n_out, n_in = layer.weight.shape
        if rank > min(n_in, n_out):
            raise ValueError(f"ModelConfig.ranks[{name!r}] = {rank} exceeds min(in, out) = {min(n_in, n_out)} "
                             f"of that {n_in} -> {n_out} layer")
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr,
                LowRankLinear(n_in, n_out, rank, bias=layer.bias is not None))
    return model
