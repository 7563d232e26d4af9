"""The three steps of Kwon et al. (NeurIPS 2022), retraining-free structured pruning:

1. **Mask search** under a MACs budget: the Fisher of each head / neuron mask
   (mean squared per-sample mask gradient) ranks structures globally; for each
   number of kept heads the rest of the budget goes to the best neurons; the
   combination that keeps the most Fisher wins (Kwon's Algorithm 1). Every block
   keeps at least one head and one neuron (a block's widths stay >= 1).
2. **Mask rearrangement** per layer: with the layer's per-sample gradient matrix
   G (N x groups) the second-order loss increase of pruning set P is
   ``1_P^T (G^T G / N) 1_P`` (interactions included, not only the diagonal);
   a greedy search over the layer picks the same number of structures with a
   lower value, kept only when it is lower.
3. **Mask tuning** per layer, in order, by linear least squares (numpy): the
   kept heads' (neurons') scales are chosen so that the pruned model's residual
   stream plus the attention (FFN) sublayer output matches the unpruned model's on
   calibration windows (a pre-norm block's residual stream; a post-norm BERT
   layer's LayerNorm input, as in the paper); the scales are then folded into the
   block's head / neuron projection (``attn.proj`` / ``fc2``, ``attention.output.dense``
   / ``output.dense``).

The blocks are the trunk's :class:`~edgeuq.models.trunks.MaskableBlock` s
(:meth:`~edgeuq.models.trunks.Trunk.maskable_blocks`), so the same code prunes the
signal trunk and the BERT trunk. :func:`mask_gradients` also returns the gradients
of whole-layer masks; :func:`choose_layers` keeps the layers of largest Fisher.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models.trunks import MaskableBlock, get_trunk
from .masks import LayerMasks, apply_masks, as_tensors, maskable_blocks

__all__ = ["MaskGradients", "mask_gradients", "choose_layers", "block_costs", "search_masks", "rearrange_layer", "rearrange_masks",
           "pruning_objective", "tune_masks", "TeacherCaptures"]


@dataclass(frozen=True, eq=False)
class MaskGradients:
    """Per block: per-sample gradients of the loss w.r.t. head masks (N, H) and neuron masks (N, F);
    ``layers`` (N, L): w.r.t. the layer masks (block output ``x + m (block(x) - x)`` at m = 1)."""

    heads: Sequence[np.ndarray]
    neurons: Sequence[np.ndarray]
    layers: Optional[np.ndarray] = None

    def head_fisher(self) -> List[np.ndarray]:
        return [np.mean(g ** 2, axis=0) for g in self.heads]

    def neuron_fisher(self) -> List[np.ndarray]:
        return [np.mean(g ** 2, axis=0) for g in self.neurons]

    def layer_fisher(self) -> np.ndarray:
        if self.layers is None:
            raise ValueError("these mask gradients have no layer masks")
        return np.mean(self.layers ** 2, axis=0)


def mask_gradients(model: nn.Module, x: np.ndarray, y: Optional[np.ndarray] = None, batch_size: int = 64,
                   seed: int = 0) -> MaskGradients:
    """Per-sample mask gradients of −log p(y | x) at all-ones masks, deterministic pass.

    ``y`` = the data labels (Kwon et al.; the empirical Fisher); ``None`` = labels
    sampled from the model's own prediction (the true Fisher, one draw per window).
    Each sample gets its own mask row (B, groups), so one backward gives every
    sample's gradient exactly; the same backward gives the layer masks' gradients.
    """
    bl = maskable_blocks(model)
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    gh: List[List[np.ndarray]] = [[] for _ in bl]
    gn: List[List[np.ndarray]] = [[] for _ in bl]
    gl: List[np.ndarray] = []
    trim = getattr(model, "trim_padding", None)   # token models with a padding mask: the batch's real length
    for start in range(0, len(x), batch_size):
        xb = torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size]))
        if trim is not None:
            xb = trim(xb)
        b = len(xb)
        hm = [torch.ones(b, l.heads, requires_grad=True) for l in bl]
        nm = [torch.ones(b, l.ffn, requires_grad=True) for l in bl]
        lm = [torch.ones(b, requires_grad=True) for _ in bl]
        with apply_masks(model, hm, nm, lm, blocks=bl):
            logits = model(xb)
        if y is None:
            with torch.no_grad():
                target = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)[:, 0]
        else:
            target = torch.from_numpy(np.asarray(y[start : start + batch_size], dtype=np.int64))
        grads = torch.autograd.grad(F.cross_entropy(logits, target, reduction="sum"), hm + nm + lm)
        L = len(bl)
        for i in range(L):
            gh[i].append(grads[i].double().numpy())
            gn[i].append(grads[L + i].double().numpy())
        gl.append(torch.stack(grads[2 * L:], 1).double().numpy())
    return MaskGradients(tuple(np.concatenate(g) for g in gh), tuple(np.concatenate(g) for g in gn),
                         np.concatenate(gl))


def choose_layers(layer_fisher: np.ndarray, k: int) -> Tuple[int, ...]:
    """The ``k`` layers of largest layer-mask Fisher, in network order (not simply the top k)."""
    layer_fisher = np.asarray(layer_fisher, dtype=np.float64)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= len(layer_fisher):
        raise ValueError(f"keep_layers must be an integer in [1, {len(layer_fisher)}], got {k!r}")
    if not np.all(np.isfinite(layer_fisher)):
        raise ValueError(f"layer Fisher has non-finite entries: {layer_fisher.tolist()}")
    return tuple(sorted(int(i) for i in np.argsort(-layer_fisher, kind="stable")[:k]))


def block_costs(tokens: int, d_model: int, head_dim: int) -> Tuple[float, float]:
    """MACs per window of one head (qkv slice, scores, weighted sum, proj slice) and of one FFN neuron."""
    head = tokens * head_dim * (3 * d_model + 2 * tokens + d_model)
    neuron = 2 * tokens * d_model
    return float(head), float(neuron)


def search_masks(head_scores: Sequence[np.ndarray], neuron_scores: Sequence[np.ndarray],
                 head_costs: Sequence[float], neuron_costs: Sequence[float], budget: float) -> LayerMasks:
    """Kwon's Algorithm 1 with per-layer costs: 0/1 masks keeping at most ``budget`` MACs."""
    L = len(head_scores)
    forced_cost = 0.0
    keep_h = [np.zeros(len(s), dtype=bool) for s in head_scores]
    keep_n = [np.zeros(len(s), dtype=bool) for s in neuron_scores]
    for i in range(L):  # a block keeps its best head and best neuron
        keep_h[i][int(np.argmax(head_scores[i]))] = True
        keep_n[i][int(np.argmax(neuron_scores[i]))] = True
        forced_cost += head_costs[i] + neuron_costs[i]
    if forced_cost > budget:
        raise ValueError(f"budget {budget:.0f} MACs is below the minimum of one head and one neuron per block "
                         f"({forced_cost:.0f})")
    rest_h = [(float(s), i, j, head_costs[i]) for i in range(L) for j, s in enumerate(head_scores[i]) if not keep_h[i][j]]
    rest_n = [(float(s), i, j, neuron_costs[i]) for i in range(L) for j, s in enumerate(neuron_scores[i])
              if not keep_n[i][j]]
    rest_h.sort(key=lambda t: -t[0])
    rest_n.sort(key=lambda t: -t[0])
    cum_h_cost = np.concatenate([[0.0], np.cumsum([t[3] for t in rest_h])])
    cum_h_score = np.concatenate([[0.0], np.cumsum([t[0] for t in rest_h])])
    cum_n_cost = np.concatenate([[0.0], np.cumsum([t[3] for t in rest_n])])
    cum_n_score = np.concatenate([[0.0], np.cumsum([t[0] for t in rest_n])])
    best, best_k = -np.inf, (0, 0)
    for nh in range(len(rest_h) + 1):
        left = budget - forced_cost - cum_h_cost[nh]
        if left < 0:
            break
        nn_ = int(np.searchsorted(cum_n_cost, left, side="right") - 1)  # most neurons that fit
        score = cum_h_score[nh] + cum_n_score[nn_]
        if score > best:
            best, best_k = score, (nh, nn_)
    for _, i, j, _ in rest_h[: best_k[0]]:
        keep_h[i][j] = True
    for _, i, j, _ in rest_n[: best_k[1]]:
        keep_n[i][j] = True
    return LayerMasks(tuple(k.astype(np.float64) for k in keep_h), tuple(k.astype(np.float64) for k in keep_n))


def pruning_objective(grads: np.ndarray, pruned: np.ndarray) -> float:
    """Second-order loss increase of pruning ``pruned`` (bool/0-1 per group): mean_s (Σ_{j∈P} g_sj)²."""
    return float(np.mean((grads @ pruned.astype(np.float64)) ** 2))


def rearrange_layer(grads: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Greedy choice of the same number of pruned groups with a lower objective (0/1 keep mask back)."""
    n = grads.shape[1]
    p = int(n - np.count_nonzero(keep))
    if p == 0 or p == n:
        return keep.astype(np.float64)
    fisher = grads.T @ grads / len(grads)
    pruned = np.zeros(n, dtype=bool)
    acc = np.zeros(n)  # acc[j] = Σ_{k∈P} F[j, k]
    current = 0.0
    for _ in range(p):
        delta = 2.0 * acc + np.diag(fisher)  # objective(P ∪ {j}) − objective(P)
        delta[pruned] = np.inf
        j = int(np.argmin(delta))
        current += float(delta[j])
        pruned[j] = True
        acc += fisher[:, j]
    before = pruning_objective(grads, keep == 0)
    if pruning_objective(grads, pruned) < before:
        return (~pruned).astype(np.float64)
    return keep.astype(np.float64)


def rearrange_masks(masks: LayerMasks, grads: MaskGradients) -> LayerMasks:
    return LayerMasks(tuple(rearrange_layer(g, m) for g, m in zip(grads.heads, masks.heads)),
                      tuple(rearrange_layer(g, m) for g, m in zip(grads.neurons, masks.neurons)))


# --------------------------------------------------------------------- mask tuning
class _Capture:
    """Forward hooks recording, for one block, the input of ``head_proj`` / ``ffn_proj`` (the
    head outputs / FFN neurons, before any mask), their outputs (after the masks) and the two
    sums residual + sublayer output (``attn_sum`` / ``ffn_sum``) where tuning matches the model."""

    def __init__(self, block: MaskableBlock) -> None:
        self.data: dict = {}

        def put(key):
            return lambda m, a: self.data.__setitem__(key, a[0].detach())

        def put_out(key):
            return lambda m, a, out: self.data.__setitem__(key, out.detach())

        self.handles = [
            block.sub(block.head_proj).register_forward_pre_hook(put("heads")),
            block.sub(block.ffn_proj).register_forward_pre_hook(put("hidden")),
        ]
        for key, (name, where) in (("attn_sum", block.attn_sum), ("ffn_sum", block.ffn_sum)):
            m = block.sub(name)
            self.handles.append(m.register_forward_pre_hook(put(key)) if where == "input"
                                else m.register_forward_hook(put_out(key)))
        self.handles += [block.sub(block.head_proj).register_forward_hook(put_out("attn_out")),
                         block.sub(block.ffn_proj).register_forward_hook(put_out("ffn_out"))]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


class _Stop(Exception):
    """Raised by the capture hook once block ``index`` has run: the rest of the forward is not needed."""


@torch.no_grad()
def _capture(model: nn.Module, blocks: Sequence[MaskableBlock], index: int, x: torch.Tensor,
             masks: Optional[LayerMasks]) -> dict:
    cap = _Capture(blocks[index])  # registered before the mask hooks: sees pre-mask inputs

    def stop(m, a, out):  # after the block's output is recorded, skip the later blocks and the head
        raise _Stop

    cap.handles.append(blocks[index].module.register_forward_hook(stop))
    try:
        if masks is None:
            model(x)
        else:
            with apply_masks(model, *as_tensors(masks), blocks=blocks):
                model(x)
    except _Stop:
        pass
    finally:
        cap.remove()
    return cap.data


class TeacherCaptures:
    """The unpruned model's per-block residual streams (after attention, after the block) on the
    calibration chunks of :func:`tune_masks`, computed on first use and kept: a search tunes the
    masks of every trial against the same model and windows, so the reference half of the
    forward passes is run once per search instead of once per trial. Bound to one model and one
    calibration array (``tune_masks`` checks both)."""

    def __init__(self, model: nn.Module, x: np.ndarray, batch_size: int = 128) -> None:
        self.model, self.x, self.batch_size = model, np.array(x, copy=True), int(batch_size)
        self.blocks = maskable_blocks(model)
        self._data: dict = {}
        self.computed = 0  # reference captures run (one per block and chunk at most)

    def check(self, model: nn.Module, x: np.ndarray, batch_size: int) -> None:
        if model is not self.model or int(batch_size) != self.batch_size or not np.array_equal(x, self.x):
            raise ValueError("TeacherCaptures: built for another model, calibration set or batch size")

    def get(self, index: int, chunk: int, xb: torch.Tensor) -> dict:
        key = (index, chunk)
        if key not in self._data:
            full = _capture(self.model, self.blocks, index, xb, None)
            self._data[key] = {"attn_sum": full["attn_sum"], "ffn_sum": full["ffn_sum"]}
            self.computed += 1
        return self._data[key]


def _solve(gram: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    ridge = 1e-8 * max(float(np.mean(np.diag(gram))), 1e-30)
    return np.linalg.lstsq(gram + ridge * np.eye(len(gram)), rhs, rcond=None)[0]


def _residual_error(gram: np.ndarray, rhs: np.ndarray, rr: float, m: np.ndarray) -> float:
    return float(m @ gram @ m - 2 * m @ rhs + rr)


def tune_masks(model: nn.Module, masks: LayerMasks, x: np.ndarray, batch_size: int = 128,
               log: Optional[Callable[[str], None]] = None,
               reference: Optional[TeacherCaptures] = None) -> LayerMasks:
    """Least-squares scales for the kept heads and neurons, block by block (deterministic pass).

    For each sublayer the pruned model's residual stream plus the kept heads' (neurons')
    scaled contributions is fitted to the unpruned model's at the same point (the block's
    ``attn_sum`` / ``ffn_sum``: a pre-norm block's residual stream, a post-norm layer's
    LayerNorm input), on calibration inputs ``x`` (their real positions: a token trunk's padding
    is left out, :meth:`~edgeuq.models.trunks.Trunk.real_positions`), with the earlier blocks
    already tuned.
    Returns masks whose nonzero entries are the tuned scales; a layer keeps its
    previous scales if the fit would not lower its calibration error. ``reference``: the
    unpruned model's captures on ``x`` kept across calls (:class:`TeacherCaptures`; a search
    passes one for all its trials); without it they are computed here.
    """
    model.eval()
    if reference is not None:
        reference.check(model, x, batch_size)
    bl = maskable_blocks(model)
    heads = [np.asarray(m, dtype=np.float64).copy() for m in masks.heads]
    neurons = [np.asarray(m, dtype=np.float64).copy() for m in masks.neurons]
    chunks = [torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size])) for i in range(0, len(x), batch_size)]
    # rows fitted: every position, or (token trunks) the real tokens, padding left out
    trunk = get_trunk(model.cfg.trunk)
    real = [trunk.real_positions(model, xb) for xb in chunks]
    for i, l in enumerate(bl):
        dh = l.head_dim
        for part in ("attn", "ffn"):
            proj = l.sub(l.head_proj if part == "attn" else l.ffn_proj)
            w = proj.weight.detach().double()
            bias = proj.bias.detach().double() if proj.bias is not None else 0.0
            kept = np.flatnonzero(heads[i] if part == "attn" else neurons[i])
            gram = np.zeros((len(kept), len(kept)))
            rhs = np.zeros(len(kept))
            rr = 0.0
            for j, xb in enumerate(chunks):
                full = _capture(model, bl, i, xb, None) if reference is None else reference.get(i, j, xb)
                cur = _capture(model, bl, i, xb, LayerMasks(tuple(heads), tuple(neurons)))
                key = part + "_sum"
                # residual stream of the pruned model at this point = its sum minus its sublayer output
                resid = cur[key].double() - cur[part + "_out"].double()
                rows = slice(None) if real[j] is None else real[j].reshape(-1)
                r = (full[key].double() - resid - bias).reshape(-1, w.shape[0])[rows]
                if part == "attn":
                    a = cur["heads"].double().reshape(-1, l.heads, dh)[rows][:, kept]  # rows, k, dh
                    contrib = torch.einsum("rkd,okd->rko", a, w.reshape(-1, l.heads, dh)[:, kept])
                    gram += torch.einsum("rko,rlo->kl", contrib, contrib).numpy()
                    rhs += torch.einsum("rko,ro->k", contrib, r).numpy()
                else:
                    h = cur["hidden"].double().reshape(-1, l.ffn)[rows][:, kept]
                    wk = w[:, kept]
                    gram += ((h.T @ h) * (wk.T @ wk)).numpy()
                    rhs += (h * (r @ wk)).sum(0).numpy()
                rr += float((r * r).sum())
            old = (heads[i] if part == "attn" else neurons[i])[kept]
            new = _solve(gram, rhs)
            before, after = _residual_error(gram, rhs, rr, old), _residual_error(gram, rhs, rr, new)
            if np.all(np.isfinite(new)) and after < before:
                (heads[i] if part == "attn" else neurons[i])[kept] = new
            if log is not None:
                log(f"mask tuning block {i} {part}: squared error {before:.4g} -> {min(before, after):.4g}")
    return LayerMasks(tuple(heads), tuple(neurons))
