"""Physical removal of pruned heads and FFN neurons: a smaller model, same function.

The pruned model has ``ModelConfig.blocks`` = per-block :class:`BlockShape`
(kept heads, same head_dim, kept neurons); its weights are the kept rows/columns
of the original, with the masks' scales folded into ``attn.proj`` and ``fc2``
columns, so its outputs equal the masked model's. Stochastic layers are rebuilt
from the new widths (their noise shapes follow); :func:`slice_noise` maps noise
drawn for the original model onto the pruned one (the same masks on the kept units).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Dict, Mapping

import numpy as np
import torch
from torch import nn

from ..models import build_model
from ..models.config import BlockShape
from .masks import LayerMasks, prunable_layers

__all__ = ["pruned_config", "prune_physically", "slice_noise", "count_macs", "count_params"]


def pruned_config(cfg, masks: LayerMasks, layers) -> object:
    blocks = tuple(BlockShape(heads=int(np.count_nonzero(masks.heads[i])), head_dim=int(l["head_dim"]),
                              ffn=int(np.count_nonzero(masks.neurons[i]))) for i, l in enumerate(layers))
    for i, b in enumerate(blocks):
        if b.heads < 1 or b.ffn < 1:
            raise ValueError(f"block {i} would keep {b.heads} heads and {b.ffn} neurons; keep at least one of each")
    return replace(cfg, blocks=blocks)


def _qkv_rows(heads: int, head_dim: int, kept: np.ndarray) -> np.ndarray:
    inner = heads * head_dim
    return np.concatenate([p * inner + h * head_dim + np.arange(head_dim) for p in range(3) for h in kept])


@torch.no_grad()
def prune_physically(model: nn.Module, masks: LayerMasks) -> nn.Module:
    """A new model without the pruned heads / neurons (scales folded in), in eval mode."""
    layers = prunable_layers(model)
    new = build_model(pruned_config(model.cfg, masks, layers))
    src = model.state_dict()
    state: Dict[str, torch.Tensor] = {}
    for i, l in enumerate(layers):
        kh, kn = masks.kept_heads(i), masks.kept_neurons(i)
        p = f"blocks.{i}."
        rows = torch.from_numpy(_qkv_rows(l["heads"], l["head_dim"], kh))
        cols = torch.from_numpy(np.concatenate([h * l["head_dim"] + np.arange(l["head_dim"]) for h in kh]))
        col_scale = torch.from_numpy(np.repeat(masks.heads[i][kh], l["head_dim"])).to(src[p + "attn.proj.weight"].dtype)
        state[p + "attn.qkv.weight"] = src[p + "attn.qkv.weight"][rows]
        if p + "attn.qkv.bias" in src:
            state[p + "attn.qkv.bias"] = src[p + "attn.qkv.bias"][rows]
        state[p + "attn.proj.weight"] = src[p + "attn.proj.weight"][:, cols] * col_scale
        nidx = torch.from_numpy(kn)
        n_scale = torch.from_numpy(masks.neurons[i][kn]).to(src[p + "fc2.weight"].dtype)
        state[p + "fc1.weight"] = src[p + "fc1.weight"][nidx]
        if p + "fc1.bias" in src:
            state[p + "fc1.bias"] = src[p + "fc1.bias"][nidx]
        state[p + "fc2.weight"] = src[p + "fc2.weight"][:, nidx] * n_scale
    target = new.state_dict()
    for k, v in target.items():
        if k in state:
            continue
        if k not in src or src[k].shape != v.shape:
            raise RuntimeError(f"pruned model parameter {k} {tuple(v.shape)} has no counterpart of the same shape")
        state[k] = src[k]
    new.load_state_dict(state)
    return new.eval()


def slice_noise(noise: Mapping[str, np.ndarray], model: nn.Module, masks: LayerMasks) -> Dict[str, np.ndarray]:
    """Noise drawn for ``model`` -> the pruned model's noise (kept heads / neurons of block-sized inputs)."""
    layers = prunable_layers(model)
    out = {}
    for spec in model.noise_specs():
        v = np.asarray(noise[spec.name])
        for i, l in enumerate(layers):
            if spec.name == f"block{i}_ffn_hidden" and v.shape[-1] == l["ffn"]:
                v = v[..., masks.kept_neurons(i)]
            elif spec.name == f"block{i}_attn_probs" and v.ndim >= 2 and v.shape[1] == l["heads"]:
                v = v[:, masks.kept_heads(i)]
        out[spec.name] = v
    return out


def count_params(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


@torch.no_grad()
def count_macs(model: nn.Module) -> int:
    """Multiply-accumulates of one deterministic pass on one window: Linear and Conv1d
    layers (hooked) plus the attention score and weighted-sum matmuls (T² · heads · head_dim each)."""
    total = [0]
    handles = []

    def lin(m, a, out):
        total[0] += int(out.numel() // out.shape[0]) * m.in_features

    def conv(m, a, out):
        total[0] += int(out.numel() // out.shape[0]) * (m.in_channels // m.groups) * m.kernel_size[0]

    for m in model.modules():
        if type(m) is nn.Linear:
            handles.append(m.register_forward_hook(lin))
        elif isinstance(m, nn.Conv1d):
            handles.append(m.register_forward_hook(conv))
    try:
        model.eval()
        x = torch.zeros(1, model.cfg.input_length, dtype=torch.int64 if model.cfg.embed == "token" else torch.float32)
        model(x)
    finally:
        for h in handles:
            h.remove()
    attn = sum(2 * model.cfg.block_tokens(i) ** 2 * model.cfg.block_shape(i).inner for i in range(model.cfg.depth))
    return int(total[0] + attn)
