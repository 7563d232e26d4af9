"""Physical removal of pruned heads and FFN neurons: a smaller model, same function.

The pruned model has ``ModelConfig.blocks`` = per-block :class:`BlockShape`
(kept heads, same head_dim, kept neurons); its weights are the kept rows/columns
of the original, with the masks' scales folded into the columns of the block's
``head_proj`` and ``ffn_proj`` (``attn.proj`` / ``fc2`` of the signal trunk,
``attention.output.dense`` / ``output.dense`` of the BERT trunk), so its outputs equal
the masked model's. :func:`drop_layers` removes whole blocks (layer choice). Stochastic layers are rebuilt
from the new widths (their noise shapes follow); :func:`slice_noise` maps noise
drawn for the original model onto the pruned one (the same masks on the kept units).
"""
from __future__ import annotations

from typing import Dict, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..models import build_model
from ..models.config import BlockShape
from ..models.trunks import get_trunk
from .masks import LayerMasks, maskable_blocks, prunable_layers

__all__ = ["pruned_config", "prune_physically", "drop_layers", "slice_noise", "count_macs", "count_params"]


def pruned_config(cfg, masks: LayerMasks, layers) -> object:
    """``cfg`` with the widths that ``masks`` keep (``ModelConfig.blocks``), through the trunk."""
    blocks = tuple(BlockShape(heads=int(np.count_nonzero(masks.heads[i])), head_dim=int(l["head_dim"]),
                              ffn=int(np.count_nonzero(masks.neurons[i]))) for i, l in enumerate(layers))
    for i, b in enumerate(blocks):
        if b.heads < 1 or b.ffn < 1:
            raise ValueError(f"block {i} would keep {b.heads} heads and {b.ffn} neurons; keep at least one of each")
    return get_trunk(cfg.trunk).sliced_config(cfg, range(len(blocks)), blocks)


def _head_rows(heads: int, head_dim: int, kept: np.ndarray, parts: int) -> np.ndarray:
    """Rows of a head-major linear (``parts`` stacks, e.g. fused q|k|v) belonging to heads ``kept``."""
    inner = heads * head_dim
    return np.concatenate([p * inner + h * head_dim + np.arange(head_dim) for p in range(parts) for h in kept])


def _finish(new: nn.Module, src: Mapping[str, torch.Tensor], state: Dict[str, torch.Tensor],
            rename: Mapping[str, str] = {}) -> nn.Module:
    """Load ``state`` + every other tensor of ``new`` from ``src`` (under its old name when renamed)."""
    for k, v in new.state_dict().items():
        if k in state:
            continue
        old = next((o + k[len(n):] for n, o in rename.items() if k.startswith(n)), k)
        if old not in src or src[old].shape != v.shape:
            raise RuntimeError(f"pruned model parameter {k} {tuple(v.shape)} has no counterpart of the same shape")
        state[k] = src[old]
    new.load_state_dict(state)
    return new.eval()


@torch.no_grad()
def prune_physically(model: nn.Module, masks: LayerMasks) -> nn.Module:
    """A new model without the pruned heads / neurons (scales folded in), in eval mode: for every
    maskable block (:func:`~edgeuq.compress.masks.maskable_blocks`) the kept heads' rows of its
    ``head_rows`` linears and columns of ``head_proj``, the kept neurons' rows of ``ffn_in`` and
    columns of ``ffn_proj``; everything else (embeddings, norms, head) is copied."""
    blocks = maskable_blocks(model)
    new = build_model(pruned_config(model.cfg, masks, [b.widths() for b in blocks]))
    src = model.state_dict()
    state: Dict[str, torch.Tensor] = {}
    for i, b in enumerate(blocks):
        kh, kn = masks.kept_heads(i), masks.kept_neurons(i)
        p, dh = b.prefix, b.head_dim
        for name, parts in b.head_rows:
            rows = torch.from_numpy(_head_rows(b.heads, dh, kh, parts))
            state[f"{p}{name}.weight"] = src[f"{p}{name}.weight"][rows]
            if f"{p}{name}.bias" in src:
                state[f"{p}{name}.bias"] = src[f"{p}{name}.bias"][rows]
        cols = torch.from_numpy(_head_rows(b.heads, dh, kh, 1))
        w = src[f"{p}{b.head_proj}.weight"]
        state[f"{p}{b.head_proj}.weight"] = w[:, cols] * torch.from_numpy(np.repeat(masks.heads[i][kh], dh)).to(w.dtype)
        nidx = torch.from_numpy(kn)
        state[f"{p}{b.ffn_in}.weight"] = src[f"{p}{b.ffn_in}.weight"][nidx]
        if f"{p}{b.ffn_in}.bias" in src:
            state[f"{p}{b.ffn_in}.bias"] = src[f"{p}{b.ffn_in}.bias"][nidx]
        w2 = src[f"{p}{b.ffn_proj}.weight"]
        state[f"{p}{b.ffn_proj}.weight"] = w2[:, nidx] * torch.from_numpy(masks.neurons[i][kn]).to(w2.dtype)
    return _finish(new, src, state)


@torch.no_grad()
def drop_layers(model: nn.Module, kept: Sequence[int]) -> nn.Module:
    """A new model with only the encoder blocks ``kept`` (in network order; renumbered 0..k-1), in
    eval mode; embeddings, positions, norms outside the blocks and the head are copied unchanged
    (the trunk's :meth:`~edgeuq.models.trunks.Trunk.sliced_config` says what else changes)."""
    blocks = maskable_blocks(model)
    kept = [int(i) for i in kept]
    if not kept or kept != sorted(set(kept)) or not 0 <= kept[0] <= kept[-1] < len(blocks):
        raise ValueError(f"kept layers must be distinct block indices in [0, {len(blocks)}) in order, got {kept}")
    shapes = tuple(model.cfg.block_shape(i) for i in kept)
    new = build_model(get_trunk(model.cfg.trunk).sliced_config(model.cfg, kept, shapes))
    new_blocks = maskable_blocks(new)
    src = model.state_dict()
    old_prefixes = [b.prefix for b in blocks]
    dropped = [p for i, p in enumerate(old_prefixes) if i not in kept]
    src = {k: v for k, v in src.items() if not any(k.startswith(p) for p in dropped)}
    return _finish(new, src, {}, {nb.prefix: blocks[i].prefix for nb, i in zip(new_blocks, kept)})


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
