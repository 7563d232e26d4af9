"""``lowrank``: truncated-SVD factorisation of the encoder blocks' linear layers.

Each ``nn.Linear`` (out × in) under one of ``prefixes`` becomes two: ``in → r`` then ``r → out``
with ``W ≈ U_r S_r V_r^T`` (the best rank-``r`` approximation, Eckart–Young), where
``r = ceil(rank_fraction · min(in, out))``. A layer is factorised only where it saves parameters.
The output model's config records the ranks (``ModelConfig.ranks``), so ``build_model`` rebuilds the
factorised architecture: it saves, loads, exports and bundles like any checkpoint.
This file is the whole step: it is found by the package scan of :mod:`edgeuq.compress.steps`.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from typing import Tuple

import torch
from torch import nn

from ...models.layers import LowRankLinear
from . import COMPRESSION_STEPS, CompressionStep, StepData, StepResult

__all__ = ["LowRank", "LowRankLinear", "factorise"]


def factorise(layer: nn.Linear, rank: int) -> LowRankLinear:
    """The rank-``rank`` truncated SVD of ``layer`` as two linear layers (bias kept on the second)."""
    w = layer.weight.detach().double()
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    root = s[:rank].sqrt()
    out = LowRankLinear(w.shape[1], w.shape[0], rank, bias=layer.bias is not None).to(layer.weight.dtype)
    with torch.no_grad():
        out.down.weight.copy_((root[:, None] * vh[:rank]).to(layer.weight.dtype))
        out.up.weight.copy_((u[:, :rank] * root[None, :]).to(layer.weight.dtype))
        if layer.bias is not None:
            out.up.bias.copy_(layer.bias.detach())
    return out


@COMPRESSION_STEPS.register("lowrank")
class LowRank(CompressionStep):
    @dataclass(frozen=True)
    class Options:
        rank_fraction: float = 0.5
        prefixes: Tuple[str, ...] = ("blocks.",)

        def __post_init__(self) -> None:
            if not (isinstance(self.rank_fraction, (int, float)) and 0.0 < self.rank_fraction <= 1.0):
                raise ValueError(f"lowrank option rank_fraction must be in (0, 1], got {self.rank_fraction!r}")
            object.__setattr__(self, "prefixes", tuple(self.prefixes))

    def apply(self, model: nn.Module, data: StepData, options: "LowRank.Options") -> StepResult:
        new = copy.deepcopy(model)
        done = {}
        factored = tuple(n + "." for n, m in new.named_modules() if isinstance(m, LowRankLinear))
        for name, layer in list(new.named_modules()):
            if not isinstance(layer, nn.Linear) or not name.startswith(options.prefixes) or name.startswith(factored):
                continue                              # (the halves of an already factorised layer stay as they are)
            n_out, n_in = layer.weight.shape
            rank = max(1, math.ceil(options.rank_fraction * min(n_in, n_out)))
            if rank * (n_in + n_out) >= n_in * n_out:
                continue                              # no saving: keep the layer as it is
            parent_name, _, attr = name.rpartition(".")
            setattr(new.get_submodule(parent_name) if parent_name else new, attr, factorise(layer, rank))
            done[name] = rank
        new.cfg = replace(model.cfg, ranks={**dict(model.cfg.ranks), **done})  # validated: build_model rebuilds it
        before = sum(p.numel() for p in model.parameters())
        after = sum(p.numel() for p in new.parameters())
        return StepResult(new, {"factorised": done, "params_before": before, "params_after": after})
