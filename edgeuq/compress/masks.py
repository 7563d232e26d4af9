"""Head and FFN-neuron masks on a signal transformer, applied by forward pre-hooks.

A head mask multiplies head h's slice of the input of ``blocks[i].attn.proj``
(the concatenated head outputs, head-major: head h = columns h·dh … (h+1)·dh);
a neuron mask multiplies the input of ``blocks[i].fc2`` (the FFN hidden units,
after activation and dropout). The model's own code is untouched. Masks may be
per layer ``(groups,)`` or per sample ``(B, groups)`` (per-sample gradients).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Dict, Iterator, List, Mapping, Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["LayerMasks", "prunable_layers", "apply_masks", "full_masks", "check_prunable"]


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


def check_prunable(model: nn.Module) -> None:
    """Refuse models whose attention/FFN linears are not plain ``nn.Linear`` (HSA, variational blocks)."""
    problems = []
    for i, block in enumerate(model.blocks):
        attn = getattr(block, "attn", None)
        for name, m in (("attn.qkv", getattr(attn, "qkv", None)), ("attn.proj", getattr(attn, "proj", None)),
                        ("fc1", getattr(block, "fc1", None)), ("fc2", getattr(block, "fc2", None))):
            if type(m) is not nn.Linear:
                problems.append(f"blocks.{i}.{name} is {type(m).__name__}")
    if problems:
        raise ValueError("structured pruning needs plain nn.Linear attention and FFN layers (mc_dropout, ensemble "
                         "members, laplace); " + "; ".join(problems))


def prunable_layers(model: nn.Module) -> List[Dict[str, int]]:
    """Per block: {"heads", "head_dim", "ffn"} read from the modules."""
    check_prunable(model)
    return [{"heads": int(b.attn.heads), "head_dim": int(b.attn.head_dim), "ffn": int(b.fc2.in_features)}
            for b in model.blocks]


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


@contextmanager
def apply_masks(model: nn.Module, heads: Sequence[torch.Tensor], neurons: Sequence[torch.Tensor]) -> Iterator[None]:
    """Within the block, ``model`` runs with these head / neuron masks (tensors, may require grad)."""
    layers = prunable_layers(model)
    if len(heads) != len(layers) or len(neurons) != len(layers):
        raise ValueError(f"need masks for {len(layers)} blocks, got {len(heads)} head and {len(neurons)} neuron masks")
    handles = []
    try:
        for i, (block, l) in enumerate(zip(model.blocks, layers)):
            if heads[i].shape[-1] != l["heads"] or neurons[i].shape[-1] != l["ffn"]:
                raise ValueError(f"block {i}: masks of width {heads[i].shape[-1]}/{neurons[i].shape[-1]}, "
                                 f"layer has {l['heads']} heads / {l['ffn']} neurons")
            handles.append(block.attn.proj.register_forward_pre_hook(_hook(heads[i], l["head_dim"])))
            handles.append(block.fc2.register_forward_pre_hook(_hook(neurons[i], 1)))
        yield
    finally:
        for h in handles:
            h.remove()


def as_tensors(masks: LayerMasks):
    return ([torch.as_tensor(h, dtype=torch.float32) for h in masks.heads],
            [torch.as_tensor(n, dtype=torch.float32) for n in masks.neurons])
