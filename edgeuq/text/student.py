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

from dataclasses import dataclass
from typing import Tuple

import numpy as np
import torch

from ..compress.kwon import choose_layers as kwon_choose_layers, mask_gradients
from ..compress.masks import apply_masks
from ..models.trunks import bert_maskable_blocks
from .classifier import TextClassifier

__all__ = ["MaskFisher", "masked_forward", "mask_fisher", "choose_layers"]


# ----------------------------------------------------------------------------- mask Fisher
# One copy of the masks and their gradients: the compression stage's (edgeuq.compress.masks /
# edgeuq.compress.kwon, over the encoder's maskable blocks); these are thin calls for the
# TextClassifier callers.
def _blocks(model: TextClassifier):
    return bert_maskable_blocks(model.encoder, "encoder.")


def masked_forward(model: TextClassifier, ids: torch.Tensor, layer_mask: torch.Tensor, head_mask: torch.Tensor,
                   ffn_mask: torch.Tensor) -> torch.Tensor:
    """Deterministic logits with masks (:func:`edgeuq.compress.masks.apply_masks`): layer l's output
    is ``h + m_l (layer(h) - h)``, head masks scale the attention context, FFN masks the neurons."""
    L = len(model.encoder.layers)
    with apply_masks(model, [head_mask[i] for i in range(L)], [ffn_mask[i] for i in range(L)],
                     [layer_mask[i] for i in range(L)], blocks=_blocks(model)):
        return model(ids)


@dataclass(frozen=True)
class MaskFisher:
    """Sum over mini-batches of squared mask gradients (empirical Fisher of each mask)."""

    layers: np.ndarray   # (L,)
    heads: np.ndarray    # (L, H)
    ffn: np.ndarray      # (L, F)
    rows: int


def mask_fisher(model: TextClassifier, ids: np.ndarray, batch_size: int = 8) -> MaskFisher:
    """Fisher of layer, head and FFN-neuron masks at 1, the loss being the cross-entropy
    against the model's own predicted class (label-free: any unlabelled text works): the
    compression stage's per-sample mask gradients (:func:`edgeuq.compress.kwon.mask_gradients`)
    summed over each mini-batch (texts sorted by length), squared, summed over batches."""
    model.eval()
    blocks = _blocks(model)
    pad = model.cfg.pad_token_id
    lengths = (ids != pad).sum(1)
    order = np.argsort(lengths, kind="stable")
    acc = None
    for i in range(0, len(ids), batch_size):
        idx = order[i:i + batch_size]
        x = np.ascontiguousarray(ids[idx, :int(lengths[idx].max())])
        with torch.no_grad():
            pred = model(torch.from_numpy(x)).argmax(-1).numpy()
        g = mask_gradients(model, x, pred, batch_size=len(x), blocks=blocks)
        parts = [g.layers.sum(0) ** 2, np.stack([h.sum(0) for h in g.heads]) ** 2,
                 np.stack([n.sum(0) for n in g.neurons]) ** 2]
        acc = parts if acc is None else [a + p for a, p in zip(acc, parts)]
    return MaskFisher(acc[0], acc[1], acc[2], int(len(ids)))


def choose_layers(fisher: MaskFisher, k: int) -> Tuple[int, ...]:
    """The ``k`` layers of largest layer-mask Fisher, in network order
    (:func:`edgeuq.compress.kwon.choose_layers`)."""
    return kwon_choose_layers(fisher.layers, k)
