"""``distill``: uncertainty-preserving distillation of the model (as the student, started from its
current weights) from the teacher's sample probabilities on ``data.x`` / ``data.x_val``."""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..distill import DistillConfig, distill_model
from ..transfer import TransferSet
from . import COMPRESSION_STEPS, CompressionStep, StepData, StepResult


def _labels(y, n: int) -> np.ndarray:
    return np.asarray(y, dtype=np.int64) if y is not None else np.full(n, -1, dtype=np.int64)


@COMPRESSION_STEPS.register("distill")
class Distill(CompressionStep):
    @dataclass(frozen=True)
    class Options(DistillConfig):
        teacher_samples: int = 8

        def __post_init__(self) -> None:
            super().__post_init__()
            if isinstance(self.teacher_samples, bool) or not isinstance(self.teacher_samples, int) \
                    or self.teacher_samples < 1:
                raise ValueError(f"distill option teacher_samples must be an integer >= 1, got {self.teacher_samples!r}")

    def apply(self, model: nn.Module, data: StepData, options: "Distill.Options") -> StepResult:
        if data.teacher is None or data.x_val is None:
            raise ValueError("compression step 'distill' needs a teacher and validation windows (StepData.teacher, "
                             "StepData.x_val)")
        s = options.teacher_samples
        train = TransferSet(data.x, data.teacher(data.x, s, options.seed))
        val = TransferSet(data.x_val, data.teacher(data.x_val, s, options.seed + 1))
        cfg = DistillConfig(**{f.name: getattr(options, f.name) for f in dataclasses.fields(DistillConfig)})
        student = copy.deepcopy(model)
        torch.manual_seed(cfg.seed)
        res = distill_model(student, train, _labels(data.y, len(data.x)), val, _labels(data.y_val, len(data.x_val)),
                            cfg, progress=data.progress, log=data.log)
        return StepResult(student, res.to_dict())
