"""``posterior``: refit the model's post-hoc posterior on the step's data, the last step of a
chain whose earlier steps changed the weights under it (a distilled student of a last-layer
Laplace teacher carries the teacher's stale posterior factors).

A model with a fitted last-layer posterior (:class:`~edgeuq.schemes.laplace.LastLayerLaplace`,
the ``laplace`` scheme's head) gets a new one: K-FAC (or full) GGN of its own last layer on the
step's windows ``data.x`` (the first ``rows``), prior precision chosen from ``prior_grid`` by the
validation NLL on ``data.x_val`` / ``data.y_val`` (:func:`~edgeuq.schemes.laplace.fit_laplace`).
A model without one (e.g. an MC-dropout head) passes unchanged, and the step's info says
``"fitted": false``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Tuple

import numpy as np
import torch
from torch import nn

from ...schemes.laplace import DEFAULT_PRIOR_GRID, LastLayerLaplace, fit_laplace
from . import COMPRESSION_STEPS, CompressionStep, StepData, StepResult

__all__ = ["Posterior"]


@COMPRESSION_STEPS.register("posterior")
class Posterior(CompressionStep):
    @dataclass(frozen=True)
    class Options:
        prior_grid: Tuple[float, ...] = DEFAULT_PRIOR_GRID
        rows: int = 0           # fit on the first N windows of data.x (0 = all)
        samples: int = 64       # fixed draws of the validation NLL
        seed: int = 0

        def __post_init__(self) -> None:
            object.__setattr__(self, "prior_grid", tuple(float(v) for v in self.prior_grid))
            if not self.prior_grid or not all(np.isfinite(v) and v > 0 for v in self.prior_grid):
                raise ValueError(f"posterior option prior_grid must be positive numbers, got {self.prior_grid!r}")
            for name, low in (("rows", 0), ("samples", 1), ("seed", 0)):
                v = getattr(self, name)
                if isinstance(v, bool) or not isinstance(v, int) or v < low:
                    raise ValueError(f"posterior option {name} must be an integer >= {low}, got {v!r}")

    def apply(self, model: nn.Module, data: StepData, options: "Posterior.Options") -> StepResult:
        new = copy.deepcopy(model).eval()
        if not any(isinstance(m, LastLayerLaplace) for m in new.modules()):
            data.log("posterior: the model has no post-hoc posterior (scheme "
                     f"{model.cfg.scheme!r}); nothing fitted")
            return StepResult(new, {"fitted": False, "scheme": model.cfg.scheme})
        if data.x_val is None or data.y_val is None:
            raise ValueError("compression step 'posterior' needs labelled validation windows (StepData.x_val, y_val) "
                             "to choose the prior precision")
        x = data.x if not options.rows else data.x[:options.rows]
        with torch.no_grad():
            fit = fit_laplace(new, np.asarray(x), np.asarray(data.x_val), np.asarray(data.y_val),
                              prior_grid=options.prior_grid, samples=options.samples, seed=options.seed)
        edge = fit.prior_precision in (min(options.prior_grid), max(options.prior_grid))
        data.log(f"posterior: GGN on {len(x)} windows, prior precision {fit.prior_precision:g}"
                 f"{' (the grid edge)' if edge else ''}")
        return StepResult(new, {"fitted": True, "rows": int(len(x)), "at_grid_edge": bool(edge), **fit.to_dict()})
