"""Train (or load from the cache) one model per scheme and task."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Callable, Dict, Optional

import torch

from ..bayes import calibrate_temperature, fit_laplace, fit_model, train_ensemble
from ..export import TOKENIZER_FILE
from ..models import ModelConfig, SignalTransformer
from ..models.config import BLOCK_DROPOUT_POSITIONS
from ..models.ensemble import member_config
from ..training import Checkpoint, TrainConfig, load_checkpoint, save_checkpoint
from .settings import SCHEME_NAMES, BenchmarkSettings
from .tasks import Task

__all__ = ["scheme_config", "trained_checkpoint", "temperature_checkpoint"]

Log = Callable[[str], None]


def scheme_config(scheme: str, task: Task, s: BenchmarkSettings) -> ModelConfig:
    """The ModelConfig of ``scheme`` on ``task`` (architecture from the settings)."""
    text = task.tokenizer is not None
    base = dict(s.text_model if text else s.bearing_model)
    base.update(input_length=task.input_length, num_classes=len(task.class_names))
    if text:
        base["vocab_size"] = task.tokenizer.vocab_size
    if scheme == "mc_dropout":
        extra: dict = {}
    elif scheme == "mc_dropout_attn":
        extra = dict(block_dropout_positions=BLOCK_DROPOUT_POSITIONS)
    elif scheme == "variational":
        extra = dict(scheme="variational", vi_prior_sigma=s.vi_prior_sigma)
    elif scheme == "hsa":
        extra = dict(scheme="hsa", stochastic_head=False, hsa_tau1=s.hsa_tau1, hsa_tau2=s.hsa_tau2,
                     hsa_centroids=s.hsa_centroids)
    elif scheme == "ensemble":
        extra = dict(scheme="ensemble", stochastic_blocks=(), ensemble_members=s.ensemble_members)
    elif scheme == "laplace":
        extra = dict(scheme="laplace", stochastic_blocks=(), stochastic_head=True,
                     laplace_structure=s.laplace_structure)
    else:
        raise ValueError(f"unknown scheme {scheme!r}; known: {list(SCHEME_NAMES)}")
    return ModelConfig(**{**base, **extra})


def _train_cfg(task: Task, s: BenchmarkSettings) -> TrainConfig:
    return TrainConfig(**(s.text_train if task.tokenizer is not None else s.bearing_train), threads=s.threads)


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _cached(directory: Path, key: str) -> Optional[Checkpoint]:
    if (directory / "checkpoint.json").is_file():
        ck = load_checkpoint(directory)
        if ck.metrics.get("cache_key") == key:
            return ck
    return None


def _save(model: SignalTransformer, directory: Path, task: Task, key: str, metrics: dict) -> Checkpoint:
    ck = save_checkpoint(model, directory, task.class_names, task.fs, task.normalization,
                         metrics={**metrics, "cache_key": key})
    if task.tokenizer is not None:
        task.tokenizer.save(directory / TOKENIZER_FILE)
    return ck


def _member(task: Task, s: BenchmarkSettings, root: Path, m: int, progress: bool, log: Log) -> SignalTransformer:
    """Ensemble member m (deterministic network, seed + m), cached on its own."""
    cfg = member_config(scheme_config("ensemble", task, s))
    tcfg = dataclasses.replace(_train_cfg(task, s), seed=_train_cfg(task, s).seed + m)
    directory = root / task.name / "ensemble" / f"member{m}"
    key = _key(cfg.to_dict(), tcfg.to_dict(), task.description, "member")
    ck = _cached(directory, key)
    if ck is not None:
        return ck.load_model()
    log(f"  training ensemble member {m + 1}/{s.ensemble_members}")
    t0 = time.perf_counter()
    torch.manual_seed(tcfg.seed)
    model = SignalTransformer(cfg)
    res = fit_model(model, *task.train, *task.val, tcfg, kl_weight=0.0, progress=progress)
    _save(model, directory, task, key, {"train": res.to_dict(), "train_s": time.perf_counter() - t0})
    return model


def trained_checkpoint(scheme: str, task: Task, s: BenchmarkSettings, root: Path, progress: bool = True,
                       log: Log = print) -> Checkpoint:
    """The trained model of ``scheme`` on ``task``, from ``root/<task>/<scheme>/checkpoint`` when
    its cache key (configs + data description) matches, else trained now and saved there."""
    cfg = scheme_config(scheme, task, s)
    tcfg = _train_cfg(task, s)
    directory = root / task.name / scheme / "checkpoint"
    extra = {"kl_weight": s.kl_weight, "val_samples": s.val_samples} if scheme != "ensemble" else {}
    if scheme in ("ensemble", "laplace"):
        extra["members"] = s.ensemble_members
    key = _key(cfg.to_dict(), tcfg.to_dict(), task.description, scheme, extra)
    ck = _cached(directory, key)
    if ck is not None:
        log(f"{task.name}/{scheme}: cached")
        return ck
    log(f"{task.name}/{scheme}: training")
    t0 = time.perf_counter()
    metrics: Dict[str, object] = {}
    if scheme == "ensemble":
        members = [_member(task, s, root, m, progress, log) for m in range(s.ensemble_members)]
        model, _ = train_ensemble(cfg, *task.train, *task.val, tcfg, progress=progress, members=members)
    elif scheme == "laplace":
        model = SignalTransformer(cfg)
        missing, unexpected = model.load_state_dict(_member(task, s, root, 0, progress, log).state_dict(),
                                                    strict=False)
        if unexpected or any(not k.startswith("head.fc2.") for k in missing):
            raise RuntimeError(f"member weights do not fit the Laplace model: {missing} {unexpected}")
        metrics["laplace"] = fit_laplace(model, task.train[0], *task.val).to_dict()
    else:
        torch.manual_seed(tcfg.seed)
        model = SignalTransformer(cfg)
        res = fit_model(model, *task.train, *task.val, tcfg, kl_weight=s.kl_weight if scheme == "variational" else 0.0,
                        val_samples=s.val_samples, progress=progress, log=log)
        metrics["train"] = res.to_dict()
    metrics["train_s"] = time.perf_counter() - t0
    log(f"{task.name}/{scheme}: done in {metrics['train_s']:.0f} s")
    return _save(model, directory, task, key, metrics)


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
