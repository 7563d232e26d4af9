"""Mask Fisher and layer choice over the pretrained text encoder (Kwon et al. 2022, step 1).

    teacher (MiniLM-L6 + head)
      -> mask Fisher: squared gradients of a mask on every layer's residual update, every
         attention head and every FFN neuron, under the teacher's own predictions :func:`mask_fisher`
      -> keep k layers by layer Fisher (not simply the top ones)               :func:`choose_layers`

The student itself is built by the compression chain over the teacher
(:mod:`edgeuq.text.student_chain`, ``edgeuq text-student``: prune -> vocab -> distill ->
posterior); what stays here is the Fisher the ``prune`` step's layer choice moves into the
compression stage.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Tuple

import numpy as np
import torch
from torch import nn

from ..models.bert import key_bias_from_mask, masked_mean_pool
from .classifier import TextClassifier

__all__ = ["MaskFisher", "masked_forward", "mask_fisher", "choose_layers"]


# ----------------------------------------------------------------------------- mask Fisher
def _masked_layer(layer, x: torch.Tensor, bias: torch.Tensor, head_mask: torch.Tensor,
                  ffn_mask: torch.Tensor) -> torch.Tensor:
    """``BertLayer.forward`` with a (heads,) mask on the attention context and an (ffn,) mask
    on the FFN activations (eval mode: no dropout)."""
    b, t, d = x.shape
    a = layer.attention.self

    def split(y):
        return y.reshape(b, t, layer.heads, layer.head_dim).transpose(1, 2)

    q, k, v = split(a.query(x)), split(a.key(x)), split(a.value(x))
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(layer.head_dim)) + bias
    ctx = torch.softmax(scores, dim=-1) @ v * head_mask[None, :, None, None]
    ctx = ctx.transpose(1, 2).reshape(b, t, d)
    o = layer.attention.output
    x = o.LayerNorm(x + o.dense(ctx))
    h = nn.functional.gelu(layer.intermediate.dense(x)) * ffn_mask
    return layer.output.LayerNorm(x + layer.output.dense(h))


def masked_forward(model: TextClassifier, ids: torch.Tensor, layer_mask: torch.Tensor, head_mask: torch.Tensor,
                   ffn_mask: torch.Tensor) -> torch.Tensor:
    """Deterministic logits with masks: layer l's output is ``h + m_l (layer(h) - h)``."""
    enc = model.encoder
    mask = enc.mask(ids)
    bias = key_bias_from_mask(mask)
    h = enc.embeddings(ids)
    for i, layer in enumerate(enc.layers):
        out = _masked_layer(layer, h, bias, head_mask[i], ffn_mask[i])
        h = h + layer_mask[i] * (out - h)
    return model.head_forward(masked_mean_pool(h, mask))


@dataclass(frozen=True)
class MaskFisher:
    """Sum over mini-batches of squared mask gradients (empirical Fisher of each mask)."""

    layers: np.ndarray   # (L,)
    heads: np.ndarray    # (L, H)
    ffn: np.ndarray      # (L, F)
    rows: int


def mask_fisher(model: TextClassifier, ids: np.ndarray, batch_size: int = 8) -> MaskFisher:
    """Fisher of layer, head and FFN-neuron masks at 1, the loss being the cross-entropy
    against the model's own predicted class (label-free: any unlabelled text works)."""
    model.eval()
    cfg = model.cfg
    L, H, F = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size
    masks = [torch.ones(L, requires_grad=True), torch.ones(L, H, requires_grad=True),
             torch.ones(L, F, requires_grad=True)]
    acc = [np.zeros(L), np.zeros((L, H)), np.zeros((L, F))]
    pad = cfg.pad_token_id
    lengths = (ids != pad).sum(1)
    order = np.argsort(lengths, kind="stable")
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        for i in range(0, len(ids), batch_size):
            idx = order[i:i + batch_size]
            x = torch.from_numpy(ids[idx, :int(lengths[idx].max())])
            logits = masked_forward(model, x, *masks)
            loss = nn.functional.cross_entropy(logits, logits.argmax(-1).detach(), reduction="sum")
            grads = torch.autograd.grad(loss, masks)
            for a, g in zip(acc, grads):
                a += g.detach().double().numpy() ** 2
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
    return MaskFisher(acc[0], acc[1], acc[2], int(len(ids)))


def choose_layers(fisher: MaskFisher, k: int) -> Tuple[int, ...]:
    """The ``k`` layers of largest layer-mask Fisher, in network order."""
    if not 1 <= k <= len(fisher.layers):
        raise ValueError(f"k must lie in [1, {len(fisher.layers)}], got {k}")
    return tuple(sorted(int(i) for i in np.argsort(-fisher.layers, kind="stable")[:k]))
