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

import numpy as np
import torch
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
    #: calibration windows: a seeded random ``rows`` of the step's windows (0 = all of them); with
    #: ``labels = "data"`` only windows with a label (y >= 0; a transfer set's augmented copies have
    #: none) are drawn. Token windows are ordered by their real length (the mask gradients' batches
    #: are then cut to their real tokens; the Fisher is a sum over windows, so the order does not
    #: change it).
    rows: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.rows, bool) or not isinstance(self.rows, int) or self.rows < 0:
            raise ValueError(f"prune option rows must be an integer >= 0 (0 = every window), got {self.rows!r}")

    def config(self) -> PruneConfig:
        return PruneConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(PruneConfig)})


def calibration_rows(model: nn.Module, x: np.ndarray, y: Optional[np.ndarray], options: PruneOptions) -> np.ndarray:
    """The indices of the windows the step calibrates on (:attr:`PruneOptions.rows`)."""
    n = len(x)
    pool = np.arange(n)
    if options.labels == "data" and y is not None:
        pool = np.flatnonzero(np.asarray(y) >= 0)
        if not len(pool):
            raise ValueError("compression step 'prune' with labels = 'data' found no labelled window (every y < 0): "
                             "give labelled windows or labels = 'model'")
    if options.rows and options.rows < len(pool):
        pool = np.sort(np.random.default_rng(options.seed).permutation(pool)[:options.rows])
    trim = getattr(model, "trim_padding", None)
    if trim is not None:
        lengths = np.array([trim(torch.from_numpy(np.ascontiguousarray(x[i:i + 1]))).shape[1] for i in pool])
        pool = pool[np.argsort(lengths, kind="stable")]
    return pool


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
        rows = calibration_rows(model, data.x, data.y, options)
        x = data.x[rows]
        trim = getattr(model, "trim_padding", None)
        if trim is not None:   # the subset's longest real row (outputs unchanged; mask tuning sees fewer pads)
            x = trim(torch.from_numpy(np.ascontiguousarray(x))).numpy()
        res = prune(model, x, None if data.y is None else np.asarray(data.y)[rows], options.config(), scores=scores,
                    log=data.log)
        res_info = dict(res.info)
        res_info["calibration_rows"] = int(len(rows))
        return StepResult(res.model, res_info,
                          companions={"plan": lambda d, parent: save_prune_plan(res, d, inputs=parent.sha256)})
