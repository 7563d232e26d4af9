"""``distill``: uncertainty-preserving distillation of the model (as the student, started from its
current weights) from the teacher's sample probabilities on ``data.x`` / ``data.x_val``."""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
import torch
from torch import nn

from ...training.config import TrainConfig
from ..distill import AUGMENT_KEYS, DistillConfig, distill_model
from ..transfer import TransferSet
from . import COMPRESSION_STEPS, CompressionStep, StepData, StepResult


def _labels(y, n: int) -> np.ndarray:
    return np.asarray(y, dtype=np.int64) if y is not None else np.full(n, -1, dtype=np.int64)


def _flat_fields():
    """The step's option keys: :class:`DistillConfig`'s loss options and the optimiser options of
    its ``train`` (not ``threads``: a step leaves torch's threads alone; not the augmentation
    fields, which distillation does not use), with their defaults."""
    base = DistillConfig()
    own = [(f.name, f.type, dataclasses.field(default=getattr(base, f.name)))
           for f in dataclasses.fields(DistillConfig) if f.name != "train"]
    opt = [(f.name, f.type, dataclasses.field(default=getattr(base.train, f.name)))
           for f in dataclasses.fields(TrainConfig) if f.name != "threads" and f.name not in AUGMENT_KEYS]
    return own + opt + [("teacher_samples", int, dataclasses.field(default=8))]


def _options_post_init(self) -> None:
    self.to_config()  # validates (the errors name the field)
    if isinstance(self.teacher_samples, bool) or not isinstance(self.teacher_samples, int) \
            or self.teacher_samples < 1:
        raise ValueError(f"distill option teacher_samples must be an integer >= 1, got {self.teacher_samples!r}")


def _to_config(self) -> DistillConfig:
    return DistillConfig.from_flat({k: v for k, v in dataclasses.asdict(self).items() if k != "teacher_samples"})


@COMPRESSION_STEPS.register("distill")
class Distill(CompressionStep):
    #: flat options (``compress.steps[i].epochs``, ``--option distill.epochs=3``), generated from
    #: DistillConfig and TrainConfig so the keys and defaults have one source; ``to_config()``.
    Options = dataclasses.make_dataclass(
        "Options", _flat_fields(), frozen=True,
        namespace={"__post_init__": _options_post_init, "to_config": _to_config,
                   "__module__": __name__, "__qualname__": "Distill.Options"})

    def apply(self, model: nn.Module, data: StepData, options: "Distill.Options") -> StepResult:
        if data.teacher is None or data.x_val is None:
            raise ValueError("compression step 'distill' needs a teacher and validation windows (StepData.teacher, "
                             "StepData.x_val)")
        s = options.teacher_samples
        train = TransferSet(data.x, data.teacher(data.x, s, options.seed))
        val = TransferSet(data.x_val, data.teacher(data.x_val, s, options.seed + 1))
        cfg = options.to_config()
        student = copy.deepcopy(model)
        torch.manual_seed(cfg.train.seed)
        res = distill_model(student, train, _labels(data.y, len(data.x)), val, _labels(data.y_val, len(data.x_val)),
                            cfg, progress=data.progress, log=data.log)
        return StepResult(student, res.to_dict())
