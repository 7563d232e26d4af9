"""``distill``: uncertainty-preserving distillation of the model (as the student, started from its
current weights) from the teacher's sample probabilities on ``data.x`` / ``data.x_val``, optionally
with perturbed copies of them (the transfer set of :mod:`edgeuq.compress.transfer`; off by default)
and the teacher's trunk features. With ``keep_transfer`` its companion artifact ``transfer`` is the
labelled transfer set."""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
import torch
from torch import nn

from ...training.config import TrainConfig
from ..distill import AUGMENT_KEYS, DistillConfig, distill_model
from ..transfer import AUGMENTATIONS, TransferConfig, TransferSet, augment_windows, save_transfer_set, \
    with_teacher_features
from . import COMPRESSION_STEPS, CompressionStep, StepData, StepResult


def _labels(y, n_real: int, total: int) -> np.ndarray:
    """The real windows' labels (-1 without labels), then -1 for the perturbed and synthetic ones."""
    out = np.full(total, -1, dtype=np.int64)
    if y is not None:
        out[:n_real] = np.asarray(y, dtype=np.int64)
    return out


#: the transfer-set options (TransferConfig's, but for teacher_samples and seed, which the step
#: has already) with the step's defaults: no perturbed copies, no synthetic windows, nothing kept
_TRANSFER = (("copies", int, 0), ("kinds", tuple, AUGMENTATIONS), ("snr_db", tuple, (-6.0, 20.0)),
             ("clip_level", tuple, (0.5, 2.0)), ("synthetic_fraction", float, 0.0), ("keep_transfer", bool, False))


def _flat_fields():
    """The step's option keys: :class:`DistillConfig`'s loss options and the optimiser options of
    its ``train`` (not ``threads``: a step leaves torch's threads alone; not the augmentation
    fields, which distillation does not use), with their defaults."""
    base = DistillConfig()
    own = [(f.name, f.type, dataclasses.field(default=getattr(base, f.name)))
           for f in dataclasses.fields(DistillConfig) if f.name != "train"]
    opt = [(f.name, f.type, dataclasses.field(default=getattr(base.train, f.name)))
           for f in dataclasses.fields(TrainConfig) if f.name != "threads" and f.name not in AUGMENT_KEYS]
    return own + opt + [("teacher_samples", int, dataclasses.field(default=8))] + \
        [(name, typ, dataclasses.field(default=default)) for name, typ, default in _TRANSFER]


def _options_post_init(self) -> None:
    for name in ("kinds", "snr_db", "clip_level"):   # TOML arrays arrive as lists
        object.__setattr__(self, name, tuple(getattr(self, name)))
    self.to_config()  # validates (the errors name the field)
    if self.augments():
        self.transfer_config()
    if isinstance(self.teacher_samples, bool) or not isinstance(self.teacher_samples, int) \
            or self.teacher_samples < 1:
        raise ValueError(f"distill option teacher_samples must be an integer >= 1, got {self.teacher_samples!r}")


def _to_config(self) -> DistillConfig:
    skip = {"teacher_samples", *(name for name, _, _ in _TRANSFER)}
    return DistillConfig.from_flat({k: v for k, v in dataclasses.asdict(self).items() if k not in skip})


def _augments(self) -> bool:
    return self.copies > 0 or self.synthetic_fraction > 0


def _transfer_config(self) -> TransferConfig:
    return TransferConfig(copies=self.copies, kinds=self.kinds, snr_db=self.snr_db, clip_level=self.clip_level,
                          synthetic_fraction=self.synthetic_fraction, teacher_samples=self.teacher_samples,
                          seed=self.seed)


@COMPRESSION_STEPS.register("distill")
class Distill(CompressionStep):
    #: flat options (``compress.steps[i].epochs``, ``--option distill.epochs=3``), generated from
    #: DistillConfig and TrainConfig so the keys and defaults have one source; ``to_config()``.
    Options = dataclasses.make_dataclass(
        "Options", _flat_fields(), frozen=True,
        namespace={"__post_init__": _options_post_init, "to_config": _to_config, "augments": _augments,
                   "transfer_config": _transfer_config,
                   "__module__": __name__, "__qualname__": "Distill.Options"})

    def apply(self, model: nn.Module, data: StepData, options: "Distill.Options") -> StepResult:
        if data.teacher is None or data.x_val is None:
            raise ValueError("compression step 'distill' needs a teacher and validation windows (StepData.teacher, "
                             "StepData.x_val)")
        s, cfg = options.teacher_samples, options.to_config()
        x_tr, x_va = data.x, data.x_val
        if options.augments():   # as edgeuq.compress.stages.label_transfer: the val copies at seed + 1
            tcfg = options.transfer_config()
            x_tr, x_va = augment_windows(x_tr, tcfg), augment_windows(x_va, dataclasses.replace(tcfg, seed=tcfg.seed + 1))
        train = TransferSet(x_tr, data.teacher(x_tr, s, options.seed))
        val = TransferSet(x_va, data.teacher(x_va, s, options.seed + 1))
        if cfg.feature_weight > 0:
            if data.features is None:
                raise ValueError("compression step 'distill': feature distillation (feature_weight > 0) needs the "
                                 "teacher's trunk features (StepData.features)")
            data.log("distill: teacher pooled trunk features for feature distillation")
            train, val = with_teacher_features(train, data.features), with_teacher_features(val, data.features)
        student = copy.deepcopy(model)
        torch.manual_seed(cfg.train.seed)
        if cfg.hidden_weight > 0 and data.teacher_hidden is None:
            raise ValueError("compression step 'distill': hidden-state matching (hidden_weight > 0) needs the "
                             "teacher's hidden states (StepData.teacher_hidden)")
        if cfg.density_weight > 0 and data.teacher_density is None:
            raise ValueError("compression step 'distill': density-feature matching (density_weight > 0) needs the "
                             "teacher's density feature (StepData.teacher_density; a text teacher with "
                             "ood_features other than 'none'), or set the option distill.density_weight = 0")
        res = distill_model(student, train, _labels(data.y, len(data.x), len(x_tr)), val,
                            _labels(data.y_val, len(data.x_val), len(x_va)), cfg, progress=data.progress, log=data.log,
                            teacher_hidden=data.teacher_hidden, teacher_density=data.teacher_density)
        companions = {}
        if options.keep_transfer:
            info = {**data.teacher_info, "transfer": options.transfer_config().to_dict()}
            companions["transfer"] = lambda d, parent: save_transfer_set(train, d, info=info)
        return StepResult(student, res.to_dict(), companions=companions)
