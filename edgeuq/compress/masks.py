"""Head, FFN-neuron and layer masks on a trunk's encoder blocks, applied by forward hooks.

The blocks are the trunk's :class:`~edgeuq.models.trunks.MaskableBlock` s (the signal trunk's
pre-norm blocks, the BERT trunk's post-norm layers). A head mask multiplies head h's slice of
the input of the block's ``head_proj`` (``attn.proj`` / ``attention.output.dense``: the
concatenated head outputs, head-major: head h = columns h·dh … (h+1)·dh); a neuron mask
multiplies the input of ``ffn_proj`` (``fc2`` / ``output.dense``: the FFN hidden units, after
activation and dropout); a layer mask m turns the block into ``x + m (block(x) - x)``. The
model's own code is untouched. Masks may be per layer ``(groups,)`` or per sample ``(B, groups)``
(per-sample gradients).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Dict, Iterator, List, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..models.trunks import MaskableBlock, get_trunk

__all__ = ["LayerMasks", "prunable_layers", "maskable_blocks", "apply_masks", "full_masks", "check_prunable"]


@dataclass(frozen=True)
class LayerMasks:
    """Per block: head mask (heads,) and neuron mask (ffn,) — 0 = pruned, else the scale kept."""

    heads: Sequence[np.ndarray]
    neurons: Sequence[np.ndarray]

    def kept_heads(self, i: int) -> np.ndarray:
        return np.flatnonzero(self.heads[i] != 0)

    def kept_neurons(self, i: int) -> np.ndarray:
        return np.flatnonzero(self.neurons[i] != 0)

    def to_dict(self) -> dict:
        return {"heads": [np.asarray(h).tolist() for h in self.heads],
                "neurons": [np.asarray(n).tolist() for n in self.neurons]}

    @classmethod
    def from_dict(cls, d: Mapping) -> "LayerMasks":
        return cls(tuple(np.asarray(h, dtype=np.float64) for h in d["heads"]),
                   tuple(np.asarray(n, dtype=np.float64) for n in d["neurons"]))


def maskable_blocks(model: nn.Module) -> List[MaskableBlock]:
    """The model's maskable encoder blocks (its trunk's :meth:`~edgeuq.models.trunks.Trunk.maskable_blocks`)."""
    return get_trunk(model.cfg.trunk).maskable_blocks(model)


def check_prunable(model: nn.Module) -> None:
    """Refuse models whose attention/FFN linears are not plain ``nn.Linear`` (HSA, variational blocks,
    factorised layers) or whose trunk has no maskable blocks."""
    maskable_blocks(model)


def prunable_layers(model: nn.Module) -> List[Dict[str, int]]:
    """Per block: {"heads", "head_dim", "ffn"} read from the modules."""
    return [b.widths() for b in maskable_blocks(model)]


def full_masks(model: nn.Module) -> LayerMasks:
    layers = prunable_layers(model)
    return LayerMasks(tuple(np.ones(l["heads"]) for l in layers), tuple(np.ones(l["ffn"]) for l in layers))


def _hook(mask: torch.Tensor, repeat: int):
    def pre(module: nn.Module, args):
        x = args[0]
        m = mask.repeat_interleave(repeat, dim=-1) if repeat > 1 else mask
        if m.dim() == 2:  # per sample (B, width) -> broadcast over tokens
            m = m.reshape(m.shape[0], *([1] * (x.dim() - 2)), m.shape[1])
        return (x * m.to(x.dtype),) + tuple(args[1:])

    return pre


def _layer_hook(mask: torch.Tensor):
    def post(module: nn.Module, args, out):
        x = args[0]
        m = mask if mask.dim() == 0 else mask.reshape(mask.shape[0], *([1] * (out.dim() - 1)))
        return x + m.to(out.dtype) * (out - x)

    return post


@contextmanager
def apply_masks(model: nn.Module, heads: Sequence[torch.Tensor], neurons: Sequence[torch.Tensor],
                layers: Optional[Sequence[torch.Tensor]] = None,
                blocks: Optional[Sequence[MaskableBlock]] = None) -> Iterator[None]:
    """Within the block, ``model`` runs with these head / neuron masks (tensors, may require grad);
    ``layers``: one mask per block, per sample (B,) or scalar, whose block output becomes
    ``x + m (block(x) - x)`` (the layer mask whose gradient ranks whole layers). ``blocks``: the
    model's :func:`maskable_blocks` when the caller already holds them (read from the model otherwise)."""
    bl = maskable_blocks(model) if blocks is None else list(blocks)
    if len(heads) != len(bl) or len(neurons) != len(bl) or (layers is not None and len(layers) != len(bl)):
        raise ValueError(f"need masks for {len(bl)} blocks, got {len(heads)} head and {len(neurons)} neuron masks"
                         + ("" if layers is None else f" and {len(layers)} layer masks"))
    handles = []
    try:
        for i, b in enumerate(bl):
            if heads[i].shape[-1] != b.heads or neurons[i].shape[-1] != b.ffn:
                raise ValueError(f"block {i}: masks of width {heads[i].shape[-1]}/{neurons[i].shape[-1]}, "
                                 f"layer has {b.heads} heads / {b.ffn} neurons")
            handles.append(b.sub(b.head_proj).register_forward_pre_hook(_hook(heads[i], b.head_dim)))
            handles.append(b.sub(b.ffn_proj).register_forward_pre_hook(_hook(neurons[i], 1)))
            if layers is not None:
                handles.append(b.module.register_forward_hook(_layer_hook(layers[i])))
        yield
    finally:
        for h in handles:
            h.remove()


def as_tensors(masks: LayerMasks):
    return ([torch.as_tensor(h, dtype=torch.float32) for h in masks.heads],
            [torch.as_tensor(n, dtype=torch.float32) for n in masks.neurons])
