"""Train (or load from the cache) one model per scheme and task."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Callable, Dict, Optional

import torch

from ..bayes import calibrate_temperature, fit_model
from ..export import TOKENIZER_FILE
from ..models import ModelConfig, SignalTransformer
from ..schemes import get_scheme
from ..schemes.base import FitContext
from ..artifact import ArtifactError
from ..training import Checkpoint, TrainConfig, load_checkpoint, save_checkpoint
from .settings import BenchmarkSettings
from .tasks import Task

__all__ = ["scheme_config", "trained_checkpoint", "temperature_checkpoint"]

Log = Callable[[str], None]


def scheme_config(variant: str, task: Task, s: BenchmarkSettings) -> ModelConfig:
    """The ModelConfig of ``variant`` on ``task`` (architecture from the settings,
    scheme and options from ``s.variants``)."""
    if variant not in s.variants:
        raise ValueError(f"unknown scheme {variant!r}; known: {list(s.variants)}")
    text = task.tokenizer is not None
    base = dict(s.text_model if text else s.bearing_model)
    base.update(input_length=task.input_length, num_classes=len(task.class_names))
    if text:
        base["vocab_size"] = task.tokenizer.vocab_size
    return ModelConfig.from_dict({**base, **s.variants[variant]})


def _train_cfg(task: Task, s: BenchmarkSettings) -> TrainConfig:
    return TrainConfig(**(s.text_train if task.tokenizer is not None else s.bearing_train), threads=s.threads)


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _cached(directory: Path, key: str) -> Optional[Checkpoint]:
    if (directory / "checkpoint.json").is_file():
        try:
            ck = load_checkpoint(directory)
        except ArtifactError:  # written by an older edgeuq, or damaged: train again
            return None
        if ck.metrics.get("cache_key") == key:
            return ck
    return None


def _save(model: torch.nn.Module, directory: Path, task: Task, key: str, metrics: dict) -> Checkpoint:
    ck = save_checkpoint(model, directory, task.class_names, task.fs, task.normalization,
                         metrics={**metrics, "cache_key": key})
    if task.tokenizer is not None:
        task.tokenizer.save(directory / TOKENIZER_FILE)
    return ck


def _member(cfg: ModelConfig, task: Task, s: BenchmarkSettings, root: Path, m: int, progress: bool,
            log: Log) -> SignalTransformer:
    """Deterministic network m (seed + m), cached on its own under ``<task>/ensemble/member<m>``:
    the ensemble's members, and member 0 is the MAP network of the Laplace variant."""
    tcfg = dataclasses.replace(_train_cfg(task, s), seed=_train_cfg(task, s).seed + m)
    directory = root / task.name / "ensemble" / f"member{m}"
    key = _key(cfg.to_dict(), tcfg.to_dict(), task.description, "member")
    ck = _cached(directory, key)
    if ck is not None:
        return ck.load_model()
    log(f"  training ensemble member {m + 1}")
    t0 = time.perf_counter()
    torch.manual_seed(tcfg.seed)
    model = SignalTransformer(cfg)
    res = fit_model(model, *task.train, *task.val, tcfg, kl_weight=0.0, progress=progress)
    _save(model, directory, task, key, {"train": res.to_dict(), "train_s": time.perf_counter() - t0})
    return model


def trained_checkpoint(variant: str, task: Task, s: BenchmarkSettings, root: Path, progress: bool = True,
                       log: Log = print) -> Checkpoint:
    """The trained model of ``variant`` on ``task``, from ``root/<task>/<variant>/checkpoint`` when
    its cache key (configs + data description) matches, else trained now by its scheme's
    fitting hook (deterministic members come from the shared member cache) and saved there."""
    cfg = scheme_config(variant, task, s)
    tcfg = _train_cfg(task, s)
    directory = root / task.name / variant / "checkpoint"
    uq = {"kl_weight": s.kl_weight, "val_samples": s.val_samples}
    key = _key(cfg.to_dict(), tcfg.to_dict(), task.description, variant, uq)
    ck = _cached(directory, key)
    if ck is not None:
        log(f"{task.name}/{variant}: cached")
        return ck
    log(f"{task.name}/{variant}: training")
    t0 = time.perf_counter()
    ctx = FitContext(*task.train, *task.val, tcfg, uq, progress=progress, log=log,
                     member=lambda m_cfg, m: (_member(m_cfg, task, s, root, m, progress, log), None))
    out = get_scheme(cfg.scheme).train(cfg, ctx)
    metrics: Dict[str, object] = dict(out.metrics)
    if len(out.runs) == 1:
        metrics["train"] = out.runs[0].to_dict()
    metrics["train_s"] = time.perf_counter() - t0
    log(f"{task.name}/{variant}: done in {metrics['train_s']:.0f} s")
    return _save(out.model, directory, task, key, metrics)


def temperature_checkpoint(base: Checkpoint, scheme: str, task: Task, s: BenchmarkSettings,
                           root: Path) -> Checkpoint:
    """``base`` with a temperature fitted on the validation predictive (S = s.samples)."""
    directory = root / task.name / f"{scheme}+ts" / "checkpoint"
    key = _key(base.sha256, s.samples, "temperature", 2)
    ck = _cached(directory, key)
    if ck is not None:
        return ck
    model = base.load_model()
    fit = calibrate_temperature(model, *task.val, samples=s.samples, seed=1)
    return _save(model, directory, task, key, {**dict(base.metrics), "temperature": fit.to_dict()})
