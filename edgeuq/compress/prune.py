"""``edgeuq prune``: Fisher-guided structured pruning (Kwon et al. 2022) + physical removal.

    checkpoint + calibration windows (+ FisherReport)
      ─mask_gradients─► per-sample head/neuron mask gradients
      ─search_masks──► 0/1 masks under a MACs budget (or a measured-latency target)
      ─rearrange─────► per-layer greedy swap on the full mask Fisher
      ─tune_masks────► least-squares scales of the kept heads/neurons
      ─prune_physically► smaller model (per-block widths), checkpoint + prune_plan.json

The MACs budget (``target_flops``) is the fraction of the encoder blocks' MACs
kept (the embedding and the head are not pruned; with ``keep_layers``, of the kept blocks').
Every trunk with maskable blocks (:meth:`~edgeuq.models.trunks.Trunk.maskable_blocks`:
the signal trunk's pre-norm blocks, the BERT trunk's post-norm layers) is pruned this way. ``target_ms``: the largest
budget whose pruned model's deterministic pass, measured on this host (PyTorch,
one thread, median), is within ``target_ms`` — found by bisection on the budget.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..artifact import Artifact, ArtifactWriter
from .kwon import block_costs, choose_layers, mask_gradients, rearrange_masks, search_masks, tune_masks
from .masks import LayerMasks, prunable_layers
from .slicing import count_macs, count_params, drop_layers, prune_physically

__all__ = ["PruneConfig", "PruneResult", "PrunePlan", "prune", "fisher_scores_from_report", "save_prune_plan"]


@dataclass(frozen=True)
class PruneConfig:
    target_flops: Optional[float] = None
    target_ms: Optional[float] = None
    labels: str = "data"  # "data": empirical Fisher (Kwon); "model": labels sampled from the model
    rearrange: bool = True
    tune: bool = True
    seed: int = 0
    #: keep this many encoder blocks, chosen by the Fisher of whole-layer masks (not simply the
    #: top ones), before the head/neuron search; None = keep every block
    keep_layers: Optional[int] = None

    def __post_init__(self) -> None:
        k = self.keep_layers
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"keep_layers must be an integer >= 1 (or omitted), got {k!r}")
        if (self.target_flops is None) == (self.target_ms is None):
            raise ValueError("give exactly one of target_flops (fraction of block MACs kept) and target_ms")
        if self.target_flops is not None and not 0.0 < self.target_flops <= 1.0:
            raise ValueError(f"target_flops must be in (0, 1], got {self.target_flops}")
        if self.target_ms is not None and not self.target_ms > 0:
            raise ValueError(f"target_ms must be > 0, got {self.target_ms}")
        if self.labels not in ("data", "model"):
            raise ValueError(f"labels must be 'data' or 'model', got {self.labels!r}")


@dataclass(frozen=True, eq=False)
class PruneResult:
    model: nn.Module
    masks: LayerMasks
    search_masks: LayerMasks
    info: Mapping[str, Any]


def fisher_scores_from_report(report, depth: int) -> Tuple[list, list]:
    """Head and neuron scores of every block from a :class:`~edgeuq.fisher.report.FisherReport`."""
    heads, neurons = [], []
    for i in range(depth):
        try:
            heads.append(np.asarray(report.structures[f"blocks.{i}.attn.heads"].scores, dtype=np.float64))
            neurons.append(np.asarray(report.structures[f"blocks.{i}.ffn.neurons"].scores, dtype=np.float64))
        except KeyError as exc:
            raise ValueError(f"Fisher report has no structure score {exc}; it has {sorted(report.structures)}") from None
    return heads, neurons


def _budget(model: nn.Module, layers, ratio: float) -> Tuple[list, list, float, float]:
    cfg = model.cfg   # a block sees cfg.block_tokens(i) tokens (fewer after a stochastic_tokens pooling)
    costs = [block_costs(cfg.block_tokens(i), cfg.d_model, l["head_dim"]) for i, l in enumerate(layers)]
    hc, nc = [c[0] for c in costs], [c[1] for c in costs]
    total = sum(l["heads"] * h + l["ffn"] * n for l, h, n in zip(layers, hc, nc))
    return hc, nc, total, ratio * total


def _host_ms(model: nn.Module, repeats: int = 20) -> float:
    from ..profile import measure

    x = torch.zeros(1, model.cfg.input_length, dtype=torch.int64 if model.cfg.embed == "token" else torch.float32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            return measure(lambda: model(x), warmup=3, repeats=repeats).median_ms
    finally:
        torch.set_num_threads(threads)


def prune(model: nn.Module, x: np.ndarray, y: Optional[np.ndarray], cfg: PruneConfig,
          scores: Optional[Tuple[Sequence[np.ndarray], Sequence[np.ndarray]]] = None,
          log: Callable[[str], None] = lambda s: None) -> PruneResult:
    """Prune ``model`` (left unchanged) on calibration windows ``x`` (labels ``y``).

    With ``cfg.keep_layers`` = k the k blocks of largest layer-mask Fisher are kept first
    (:func:`~edgeuq.compress.slicing.drop_layers`); the head/neuron steps then run on that
    model (its mask gradients recomputed, mask tuning matching it), and ``target_flops`` is
    the fraction of *its* block MACs kept. ``info`` records the layer Fisher and the kept
    indices; the masks index the kept blocks in order."""
    labels = y if cfg.labels == "data" else None
    grads = mask_gradients(model, x, labels, seed=cfg.seed)
    layer_info: dict = {"layer_fisher": [float(v) for v in grads.layer_fisher()]}
    n_blocks = len(grads.heads)
    source = model
    if cfg.keep_layers is not None and cfg.keep_layers != n_blocks:
        if cfg.keep_layers > n_blocks:
            raise ValueError(f"keep_layers ({cfg.keep_layers}) exceeds the model's {n_blocks} blocks")
        if scores is not None:
            raise ValueError("keep_layers with given Fisher scores (a report of the full model) is not supported: "
                             "the head/neuron scores are recomputed on the kept layers")
        kept = choose_layers(grads.layer_fisher(), cfg.keep_layers)
        model = drop_layers(model, kept)
        grads = mask_gradients(model, x, labels, seed=cfg.seed)
        log(f"layer choice: layer Fisher {[f'{v:.3g}' for v in layer_info['layer_fisher']]}; kept {list(kept)}")
    else:
        kept = tuple(range(n_blocks))
    layer_info["kept_layers"] = list(kept)
    layers = prunable_layers(model)
    hs, ns = scores if scores is not None else (grads.head_fisher(), grads.neuron_fisher())
    if len(hs) != len(layers) or any(len(h) != l["heads"] or len(n) != l["ffn"] for h, n, l in zip(hs, ns, layers)):
        raise ValueError("Fisher scores do not match the model's heads / neurons (another checkpoint's report?)")

    def run(ratio: float):
        hc, nc, total, budget = _budget(model, layers, ratio)
        searched = search_masks(hs, ns, hc, nc, budget)
        masks = rearrange_masks(searched, grads) if cfg.rearrange else searched
        if cfg.tune:
            masks = tune_masks(model, masks, x, log=log)
        return searched, masks, total

    if cfg.target_flops is not None:
        ratio = cfg.target_flops
        searched, masks, total = run(ratio)
        pruned = prune_physically(model, masks)
    else:
        lo, hi, best = 0.0, 1.0, None
        base_ms = _host_ms(model)
        log(f"unpruned deterministic pass {base_ms:.3f} ms (PyTorch, 1 thread); target {cfg.target_ms} ms")
        for step in range(8):
            mid = 1.0 if step == 0 else (lo + hi) / 2  # no pruning first: maybe it is fast enough already
            try:
                s, m, total = run(mid)
            except ValueError:
                lo = mid
                continue
            p = prune_physically(model, m)
            ms = _host_ms(p)
            log(f"budget {mid:.3f} of block MACs: {ms:.3f} ms")
            if ms <= cfg.target_ms:
                best, lo = (mid, s, m, p, total, ms), mid
                if mid >= 1.0:
                    break
            else:
                hi = mid
        if best is None:
            raise ValueError(f"no pruning budget reaches {cfg.target_ms} ms on this host "
                             f"(the smallest model measured above it)")
        ratio, searched, masks, pruned, total, _ = best
    kept_macs = sum(np.count_nonzero(masks.heads[i]) * block_costs(model.cfg.block_tokens(i), model.cfg.d_model,
                                                                   l["head_dim"])[0]
                    + np.count_nonzero(masks.neurons[i]) * block_costs(model.cfg.block_tokens(i), model.cfg.d_model,
                                                                       l["head_dim"])[1]
                    for i, l in enumerate(layers))
    info = {
        "budget_ratio": ratio, "block_macs_before": total, "block_macs_after": float(kept_macs),
        "model_macs_before": count_macs(source), "model_macs_after": count_macs(pruned),
        "params_before": count_params(source), "params_after": count_params(pruned),
        "heads_kept": [int(np.count_nonzero(h)) for h in masks.heads],
        "neurons_kept": [int(np.count_nonzero(n)) for n in masks.neurons],
        "config": asdict(cfg),
        **layer_info,
    }
    log(f"pruned: heads {info['heads_kept']} neurons {info['neurons_kept']}; model MACs "
        f"{info['model_macs_before']} -> {info['model_macs_after']}, params {info['params_before']} -> "
        f"{info['params_after']}")
    return PruneResult(pruned, masks, searched, info)


@dataclass(frozen=True)
class PrunePlan(Artifact):
    """What was pruned and how: masks (tuned scales) before slicing, and the sizes."""

    KIND: ClassVar[str] = "prune_plan"
    FORMAT_VERSION: ClassVar[int] = 1
    META_FILE: ClassVar[str] = "prune_plan.json"

    masks: Mapping[str, Any] = field(default_factory=dict)
    search_masks: Mapping[str, Any] = field(default_factory=dict)
    info: Mapping[str, Any] = field(default_factory=dict)

    def to_meta(self) -> dict:
        return {"masks": dict(self.masks), "search_masks": dict(self.search_masks), "info": dict(self.info)}

    @classmethod
    def from_meta(cls, meta, **base) -> "PrunePlan":
        return cls(masks=meta["masks"], search_masks=meta["search_masks"], info=meta["info"], **base)

    def layer_masks(self) -> LayerMasks:
        return LayerMasks.from_dict(self.masks)


def save_prune_plan(res: PruneResult, directory: Path, inputs: str = "") -> PrunePlan:
    with ArtifactWriter(directory) as w:
        plan = PrunePlan(masks=res.masks.to_dict(), search_masks=res.search_masks.to_dict(), info=dict(res.info))
        if inputs:
            plan = replace(plan, inputs=inputs)
        return w.commit(plan)
