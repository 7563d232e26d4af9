"""``prune``: Fisher-guided structured pruning of heads and neurons (Kwon et al. 2022), as a step
(the algorithm is :func:`edgeuq.compress.prune.prune`; its options are :class:`PruneConfig`)."""
from __future__ import annotations

from torch import nn

from ...models.trunks import get_trunk
from ..prune import PruneConfig, prune
from . import COMPRESSION_STEPS, CompressionStep, StepData, StepResult


@COMPRESSION_STEPS.register("prune")
class Prune(CompressionStep):
    Options = PruneConfig

    def apply(self, model: nn.Module, data: StepData, options: PruneConfig) -> StepResult:
        if not get_trunk(model.cfg.trunk).kwon_blocks:
            raise ValueError(f"compression step 'prune' masks the pre-norm blocks of the signal trunk; trunk "
                             f"{model.cfg.trunk!r} is not supported yet (no Kwon masks over its encoder)")
        if model.cfg.ranks:
            raise ValueError(f"compression step 'prune' works on dense blocks, but this model has factorised layers "
                             f"{[n for n, _ in model.cfg.ranks]}: prune before a factorising step")
        res = prune(model, data.x, data.y, options, log=data.log)
        return StepResult(res.model, dict(res.info))
