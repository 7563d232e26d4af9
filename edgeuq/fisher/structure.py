"""Per-structure Fisher scores from mask gradients (Kwon et al., NeurIPS 2022).

A multiplicative mask m (all ones) is attached to a group of channels — an
attention head, an FFN neuron, a convolution channel — by a forward hook, so
the model's own code is untouched. The score of group j is

    I_j = E_x E_ε E_y (∂/∂m_j log p(y | x, ε))²

the Fisher information of the mask, which predicts the loss increase of
removing that group (m_j: 1 -> 0) to second order.

For :class:`~edgeuq.models.SignalTransformer` the structures are: heads (mask
on the input of ``attn.proj``, reshaped (B, T, H·dh) -> H groups of dh), FFN
neurons (input of ``fc2``), convolution output channels (``embed.c*``) and the
classifier's hidden neurons (input of ``head.fc2``). Any other model gets one
structure per hidden Linear/Conv1d layer: its output channels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ._hooks import Tap, run_hooked_pass
from ._target import LAYER_TYPES
from .config import FisherConfig

__all__ = ["StructureSpec", "StructureAccumulator", "default_structures", "structure_scores"]

STRUCTURE_KINDS = ("head", "neuron", "channel")


@dataclass(frozen=True)
class StructureSpec:
    """``groups`` maskable groups of ``group_size`` channels on axis ``dim`` of a module's input/output."""

    name: str
    kind: str  # "head" | "neuron" | "channel"
    module: str
    where: str
    groups: int
    group_size: int = 1
    dim: int = -1

    def __post_init__(self) -> None:
        if self.kind not in STRUCTURE_KINDS:
            raise ValueError(f"structure {self.name!r}: kind must be one of {STRUCTURE_KINDS}, got {self.kind!r}")

    def tap(self) -> Tap:
        return Tap(f"struct:{self.name}", self.module, self.where, self.groups, self.group_size, self.dim)


def _transformer_structures(model: nn.Module) -> List[StructureSpec]:
    cfg = model.cfg
    modules = dict(model.named_modules())

    def linear(name: str) -> bool:  # other stochastic schemes may swap these modules out
        return isinstance(modules.get(name), nn.Linear)

    specs: List[StructureSpec] = []
    for name, m in modules.items():
        if isinstance(m, nn.Conv1d) and name.startswith("embed"):
            specs.append(StructureSpec(f"{name}.channels", "channel", name, "output", m.out_channels, 1, 1))
    dh = cfg.d_model // cfg.heads
    for i in range(cfg.depth):
        if linear(f"blocks.{i}.attn.proj"):
            specs.append(StructureSpec(f"blocks.{i}.attn.heads", "head", f"blocks.{i}.attn.proj", "input",
                                       cfg.heads, dh))
        if linear(f"blocks.{i}.fc2"):
            specs.append(StructureSpec(f"blocks.{i}.ffn.neurons", "neuron", f"blocks.{i}.fc2", "input", cfg.ffn))
    if linear("head.fc2"):
        specs.append(StructureSpec("head.fc1.neurons", "neuron", "head.fc2", "input", cfg.head_width))
    return specs


def default_structures(model: nn.Module) -> List[StructureSpec]:
    """The structures of ``model`` (see the module docstring)."""
    from ..models import SignalTransformer

    if isinstance(model, SignalTransformer):
        return _transformer_structures(model)
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, LAYER_TYPES)]
    specs = []
    for name, m in layers[:-1]:  # the last layer's outputs are the logits: nothing to prune
        if isinstance(m, nn.Conv1d):
            specs.append(StructureSpec(f"{name}.channels", "channel", name, "output", m.out_channels, 1, 1))
        else:
            specs.append(StructureSpec(f"{name}.neurons", "neuron", name, "output", m.out_features, 1, -1))
    return specs


class StructureAccumulator:
    def __init__(self, specs: Sequence[StructureSpec]) -> None:
        self.specs = list(specs)
        self._scores = {s.name: torch.zeros(s.groups, dtype=torch.float64) for s in self.specs}

    def taps(self):
        return [s.tap() for s in self.specs]

    def on_forward(self, tensors) -> None:
        pass

    def on_backward(self, grads: Dict[str, torch.Tensor], weights: torch.Tensor) -> None:
        for s in self.specs:
            g = grads[f"struct:{s.name}"].double()
            self._scores[s.name] += torch.einsum("b,bg->g", weights, g.pow(2))

    def result(self, n_terms: int) -> Dict[str, np.ndarray]:
        return {k: (v / n_terms).numpy() for k, v in self._scores.items()}


def structure_scores(
    model: nn.Module, x: np.ndarray, y: Optional[np.ndarray] = None, cfg: FisherConfig = FisherConfig(),
    specs: Optional[Sequence[StructureSpec]] = None,
) -> Mapping[str, np.ndarray]:
    """Mask-gradient Fisher score of every group: {structure name: (groups,) array}."""
    acc = StructureAccumulator(specs if specs is not None else default_structures(model))
    n = run_hooked_pass(model, x, y, cfg, [acc], desc=f"structure Fisher ({cfg.labels})")
    return acc.result(n)
