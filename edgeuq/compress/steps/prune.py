"""``prune``: Fisher-guided structured pruning of heads and neurons (Kwon et al. 2022), as a step
(the algorithm is :func:`edgeuq.compress.prune.prune`; its options are :class:`PruneConfig` plus
``fisher``; ``keep_layers``: layer choice by layer-mask Fisher first). Every trunk with maskable
blocks is pruned (the signal trunk's pre-norm blocks, the BERT trunk's post-norm layers). Its
companion artifact ``plan`` is the :class:`PrunePlan` (masks, sizes, layer Fisher, kept layers)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from torch import nn

from ...models.trunks import get_trunk
from ..prune import PruneConfig, fisher_scores_from_report, prune, save_prune_plan
from . import COMPRESSION_STEPS, CompressionStep, StepData, StepResult


@dataclass(frozen=True)
class PruneOptions(PruneConfig):
    #: a FisherReport directory (``edgeuq fisher``) whose structure scores rank the heads and
    #: neurons; None: mask-gradient Fisher computed on the step's windows. The report's digest is
    #: not part of the step's cache key: a caller that passes one adds it to the data key
    #: (``edgeuq prune --fisher`` does).
    fisher: Optional[str] = None

    def config(self) -> PruneConfig:
        return PruneConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(PruneConfig)})


@COMPRESSION_STEPS.register("prune")
class Prune(CompressionStep):
    Options = PruneOptions

    def apply(self, model: nn.Module, data: StepData, options: PruneOptions) -> StepResult:
        if model.cfg.ranks:
            raise ValueError(f"compression step 'prune' works on dense blocks, but this model has factorised layers "
                             f"{[n for n, _ in model.cfg.ranks]}: prune before a factorising step")
        get_trunk(model.cfg.trunk).maskable_blocks(model)  # a trunk without maskable blocks refuses, naming itself
        scores = None
        if options.fisher:
            from ...fisher.report import load_fisher_report

            scores = fisher_scores_from_report(load_fisher_report(Path(options.fisher)), model.cfg.depth)
        res = prune(model, data.x, data.y, options.config(), scores=scores, log=data.log)
        return StepResult(res.model, dict(res.info),
                          companions={"plan": lambda d, parent: save_prune_plan(res, d, inputs=parent.sha256)})
