"""Build and measure one compressed variant of a checkpoint (one search trial).

variant = per-block keep ratio (heads and neurons ranked by their mask Fisher
within the block, least-squares mask tuning, physical removal) + where the
stochastic part starts (MC-dropout checkpoints; MC dropout at inference needs
no retraining) + a bytes budget for the quantization knapsack + S. Measured
through the device runtime on this host: accuracy, OOD AUROC (MI), S-sample
latency of one window (1 thread, median), bytes of the bundle's graphs.
"""
from __future__ import annotations

import socket
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np

from ..models import build_model
from ..schemes import get_scheme
from ..training import Checkpoint, save_checkpoint
from .kwon import TeacherCaptures, block_costs, mask_gradients, search_masks, tune_masks
from .masks import LayerMasks, prunable_layers
from .slicing import prune_physically

__all__ = ["VariantBuilder", "fisher_guided_seeds"]


def _topk(scores: np.ndarray, k: int) -> np.ndarray:
    m = np.zeros(len(scores))
    m[np.argsort(-scores, kind="stable")[: max(1, min(len(scores), k))]] = 1.0
    return m


def _nearest(value: float, options: Sequence[float]) -> float:
    return min(options, key=lambda o: abs(o - value))


class VariantBuilder:
    """Callable ``(number, params) -> (metrics, bundle dir)`` for :func:`.search.run_search`."""

    def __init__(self, checkpoint: Checkpoint, calib: Tuple[np.ndarray, np.ndarray], test: Tuple[np.ndarray, np.ndarray],
                 ood: np.ndarray, work_dir: Path, repeats: int = 30, tune: bool = True, seed: int = 0) -> None:
        self.ck = checkpoint
        self.model = checkpoint.load_model()
        self.layers = prunable_layers(self.model)
        self.calib_x, self.calib_y = calib
        self.test_x, self.test_y = test
        self.ood = ood
        self.work = Path(work_dir)
        self.repeats = repeats
        #: ``latency_fn(bundle_dir, samples, repeats) -> ms``: where the latency objective is measured
        #: (None: here, through the runtime, 1 thread)
        self.latency_fn: Any = None
        self.tune = tune
        self.seed = seed
        grads = mask_gradients(self.model, self.calib_x, self.calib_y, seed=seed)
        self.head_scores, self.neuron_scores = grads.head_fisher(), grads.neuron_fisher()
        self.mc_dropout = get_scheme(self.model.cfg.scheme).relocatable_sites
        # the unpruned model's passes over the tuning windows: the same in every trial, run once
        self.reference = TeacherCaptures(self.model, self.calib_x[:256])

    # -------------------------------------------------------------- building
    def masks(self, params: Mapping[str, Any]) -> LayerMasks:
        heads, neurons = [], []
        for i, l in enumerate(self.layers):
            r = float(params[f"keep{i}"])
            heads.append(_topk(self.head_scores[i], int(round(r * l["heads"]))))
            neurons.append(_topk(self.neuron_scores[i], int(round(r * l["ffn"]))))
        return LayerMasks(tuple(heads), tuple(neurons))

    def build(self, params: Mapping[str, Any]):
        masks = self.masks(params)
        if self.tune and any(m.sum() < len(m) for m in list(masks.heads) + list(masks.neurons)):
            masks = tune_masks(self.model, masks, self.calib_x[:256], reference=self.reference)
        pruned = prune_physically(self.model, masks)
        if not self.mc_dropout:
            return pruned
        sf = int(params["stochastic_from"])
        cfg = replace(pruned.cfg, stochastic_blocks=tuple(range(sf, pruned.cfg.depth)), stochastic_head=True)
        model = build_model(cfg)
        model.load_state_dict(pruned.state_dict())
        return model.eval()

    # -------------------------------------------------------------- measuring
    def __call__(self, number: int, params: Mapping[str, Any]) -> Tuple[Dict[str, float], str, Dict[str, Any]]:
        from edgeuq_runtime import UncertaintyRuntime

        from ..bundle import build_bundle
        from ..evaluate import diagnosed_only, run_runtime
        from ..export import export_onnx
        from ..profile import measure
        from ..uq import auroc

        d = self.work / f"trial{number:04d}"
        model = self.build(params)
        s = int(params["samples"])
        ck = save_checkpoint(model, d / "checkpoint", self.ck.class_names, self.ck.sample_rate_hz,
                             self.ck.normalization, metrics={"search_params": dict(params),
                                                             "parent_sha256": self.ck.sha256})
        frac = float(params.get("bytes_fraction", 1.0))
        if frac >= 1.0:
            art = export_onnx(ck, d / "onnx", model=model)
            bundle = build_bundle(art, d / "bundle", f"search-{number}", "0", default_samples=s, overwrite=True,
                                  metadata={"search_params": dict(params)})
        else:
            from ..quantize import Budget, build_quantized, plan_for, prepare_model, sensitivity_for

            prep = prepare_model(ck, self.calib_x[:128], d / "quant-work", progress=False, model=model, samples=s)
            costs = prep.costs
            smallest = costs.fixed_bytes + sum(min(costs.bytes[q.name][p] for p in q.options) for q in prep.layers)
            budget = Budget("bytes", max(frac * costs.total_bytes({}), smallest))  # too small -> the smallest plan
            plan = plan_for(prep, sensitivity_for("range", prep), budget, "range")
            bundle = build_quantized(prep, plan, d / "bundle", name=f"search-{number}", samples=s,
                                     metadata={"search_params": dict(params)}).bundle
        rt = UncertaintyRuntime(bundle.root, threads=1, seed=0)
        test = run_runtime(rt, self.test_x, s, seed=0)
        ood = run_runtime(rt, self.ood, s, seed=1)
        x1 = self.test_x[:1]
        if self.latency_fn is not None:  # e.g. the board's timing agent (edgeuq search --agent / --tracker)
            got = self.latency_fn(bundle.root, s, self.repeats)
            lat, where = (float(got[0]), dict(got[1])) if isinstance(got, tuple) else (float(got), {})
        else:
            lat = measure(lambda: rt.predict(x1, samples=s), warmup=3, repeats=self.repeats).median_ms
            where = {"location": "host", "hostname": socket.gethostname()}
        nbytes = sum(p.stat().st_size for p in Path(bundle.root).rglob("*.onnx"))
        test, test_y = diagnosed_only(test, self.test_y)
        ood = diagnosed_only(ood)[0]
        return ({"latency_ms": lat, "accuracy": float(np.mean(test.prediction == test_y)),
                 "ood_auroc": float(auroc(test.epistemic, ood.epistemic)), "bytes": float(nbytes),
                 "samples": float(s)}, str(bundle.root), {"latency_measured_on": where})


def fisher_guided_seeds(builder: VariantBuilder, space, ratios: Sequence[float] = (1.0, 0.5, 0.3)) -> List[dict]:
    """Kwon's global mask search at a few MACs budgets, rounded to the space's keep ratios per block;
    head-only stochastic, the smallest bytes fraction and the middle S (the cheap corner first)."""
    cfg = builder.model.cfg   # block i sees cfg.block_tokens(i) tokens
    costs = [block_costs(cfg.block_tokens(i), cfg.d_model, l["head_dim"]) for i, l in enumerate(builder.layers)]
    hc, nc = [c[0] for c in costs], [c[1] for c in costs]
    total = sum(l["heads"] * h + l["ffn"] * n for l, h, n in zip(builder.layers, hc, nc))
    seeds = []
    for r in ratios:
        try:
            m = search_masks(builder.head_scores, builder.neuron_scores, hc, nc, r * total)
        except ValueError:
            continue
        p = {f"keep{i}": _nearest(float((m.heads[i].sum() / l["heads"] + m.neurons[i].sum() / l["ffn"]) / 2),
                                  space.keep_ratios) for i, l in enumerate(builder.layers)}
        p.update(stochastic_from=max(space.stochastic_from), bytes_fraction=min(space.bytes_fractions),
                 samples=sorted(space.samples)[len(space.samples) // 2])
        if p not in seeds:
            seeds.append(p)
    return seeds
