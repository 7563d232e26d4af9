"""Typed pipeline stages and the end-to-end demo.

    recipe ─prepare_data─► DemoData ─train_stage─► Checkpoint ─export_stage─► OnnxArtifact
           ─bundle_stage─► Bundle ─evaluate_sets (device runtime)─► metrics ─► report

Each stage writes its artifact under the run directory as soon as it exists, so
a failure later on loses nothing already computed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional

import numpy as np

from edgeuq_runtime import UncertaintyRuntime
from edgeuq_runtime.bundle import Bundle

from .catalog import Recipe, get_recipe
from .data import (
    SyntheticBearingConfig, WindowDataset, Splits, add_noise, synthetic_records, split_in_domain, window_records,
)
from .data.windowing import front_end_from_recipe
from .evaluate import SetEvaluation, evaluate_sets
from .data.sources import DATA_SOURCES
from .export import OnnxArtifact, export_onnx
from .models import ModelConfig
from .profile import LatencyStats, StageTimer, measure_stages
from .schemes import get_scheme
from .schemes.base import FitContext
from .training import Checkpoint, TrainConfig, UqConfig, save_checkpoint

__all__ = [
    "DemoData", "DemoResult", "prepare_data", "train_stage", "export_stage", "bundle_stage",
    "latency_stage", "run_demo", "UQ_TRAIN_KEYS",
]

#: Keys of a recipe's [uq] table (:class:`edgeuq.training.config.UqConfig`, read strictly).
UQ_TRAIN_KEYS = tuple(f.name for f in fields(UqConfig))

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class DemoData:
    splits: Splits
    shifted: Mapping[str, WindowDataset]  # name -> out-of-distribution / shifted set
    description: str


def _synthetic_config(recipe: Recipe, overrides: Mapping[str, Any]) -> SyntheticBearingConfig:
    syn = dict(recipe.data.get("synthetic", {}))
    syn.update({k: v for k, v in overrides.items() if v is not None})
    if "loads" in syn:
        syn["loads"] = tuple(float(v) for v in syn["loads"])
    return SyntheticBearingConfig(fs=float(recipe.data["fs_hz"]), **syn)


def prepare_data(recipe: Recipe, synthetic_overrides: Optional[Mapping[str, Any]] = None) -> DemoData:
    """The embedded default: synthetic bearing records, a time-disjoint split,
    an unseen-fault set and an additive-noise shifted copy of the test set."""
    data = recipe.data
    if "source" in data and not DATA_SOURCES.get(data["source"]).takes_no_path:
        raise ValueError(f"recipe {recipe.name!r}: the demo runs on the recipe's embedded data (a source that takes "
                         f"no path, e.g. source='synthetic'), got {data.get('source')!r}")
    classes = tuple(data["classes"])
    window, hop = int(data["window"]), int(data["hop"])
    cfg = _synthetic_config(recipe, synthetic_overrides or {})
    records = synthetic_records(cfg, kinds=classes)
    fe = front_end_from_recipe(data)
    splits = split_in_domain(records, window, hop, class_names=classes, front_end=fe)
    shifted: Dict[str, WindowDataset] = {}
    snr = float(data.get("shift_snr_db", 0.0))
    shifted[f"noise shift (SNR {snr:g} dB)"] = add_noise(splits.test, snr_db=snr, seed=cfg.seed + 1)
    ood_kind = data.get("ood_kind")
    if ood_kind:
        ood_records = synthetic_records(cfg, kinds=(ood_kind,))
        shifted[f"unseen fault ({ood_kind})"] = window_records(
            ood_records, window, window, class_names=classes, allow_unknown=True, front_end=fe
        )
    desc = (
        f"synthetic bearing vibration (physics-based generator, seed {cfg.seed}): {len(records)} records of "
        f"{cfg.duration_s:g} s at {cfg.fs:g} Hz, loads {list(cfg.loads)} hp, classes {list(classes)}; "
        f"windows {window} (hop {hop}), time-disjoint train/val/test"
    )
    return DemoData(splits=splits, shifted=shifted, description=desc)


def train_stage(
    splits: Splits, model_cfg: ModelConfig, train_cfg: TrainConfig, out_dir: Path,
    uq: Optional[Mapping[str, Any]] = None, progress: bool = True, log: Log = _quiet,
) -> Checkpoint:
    """Train a model of any scheme and save its checkpoint: the scheme's fitting hook
    (:meth:`edgeuq.schemes.base.Scheme.fit`) with the recipe's ``[uq]`` table:

    * ``kl_weight`` (default 1: the per-example ELBO of variational layers);
    * ``val_samples``: samples of the validation predictive used for early stopping
      (default 0: the deterministic pass);
    * ensemble: its members, seeds ``seed + m``; laplace: the MAP network, then the
      last-layer posterior with the prior precision tuned on the validation split
      (``laplace_samples`` draws);
    * ``temperature_scaling = true``: a temperature fitted on the validation
      predictive (``samples`` draws) is installed in the head.
    """
    ctx = FitContext(splits.train.x, splits.train.y, splits.val.x, splits.val.y, train_cfg, dict(uq or {}),
                     progress=progress, log=log)
    out = get_scheme(model_cfg.scheme).fit(model_cfg, ctx)
    return save_checkpoint(out.model, out_dir, splits.class_names, splits.fs, "zscore", metrics=out.metrics)


def export_stage(ckpt: Checkpoint, out_dir: Path) -> OnnxArtifact:
    return export_onnx(ckpt, out_dir, verify=True)


def bundle_stage(art: OnnxArtifact, out_dir: Path, recipe: Recipe, samples: int,
                 metadata: Optional[Mapping[str, Any]] = None) -> Bundle:
    from .bundle.build import write_artifact_bundle

    b = recipe.bundle
    fe = front_end_from_recipe(recipe.data)  # the recipe's order-tracking front end -> "preprocessing" section
    return write_artifact_bundle(
        art, out_dir, model_name=b["model_name"], model_version=b["model_version"], default_samples=samples,
        metadata={"recipe": recipe.name, **dict(metadata or {})}, overwrite=True,
        sections={"preprocessing": fe} if fe is not None else None,
    )


def latency_stage(bundle_dir: Path, window: np.ndarray, samples: int, threads: int = 1,
                  repeats: int = 50) -> Dict[str, LatencyStats]:
    """Latency of one deterministic pass and of S-sample inference (one window), timed in the same
    rounds in a seeded random order per round: ``samples_ms[i]`` of both come from round ``i``, so
    :func:`edgeuq.profile.paired_ratio` gives their paired ratio."""
    rt = UncertaintyRuntime(bundle_dir, threads=threads, seed=0)
    x = window[None, :]
    det_name, mc_name = "deterministic pass (S=1, mean masks)", f"S={samples} sample inference"
    st = measure_stages({det_name: lambda: rt.deterministic(x), mc_name: lambda: rt.predict(x, samples=samples)},
                        warmup=3, repeats=repeats)
    return {"deterministic": st[det_name], "mc": st[mc_name]}


@dataclass(frozen=True)
class DemoResult:
    out_dir: Path
    checkpoint: Checkpoint
    onnx: OnnxArtifact
    bundle: Bundle
    evaluations: Mapping[str, SetEvaluation]
    latency: Mapping[str, LatencyStats]
    samples: int
    timings_s: Mapping[str, float] = field(default_factory=dict)
    data_description: str = ""

    def summary(self) -> dict:
        return {
            "samples": self.samples,
            "data": self.data_description,
            "sets": {k: v.summary() for k, v in self.evaluations.items()},
            "latency_ms": {k: v.to_dict() for k, v in self.latency.items()},
            "timings_s": dict(self.timings_s),
            "bundle": str(self.bundle.root),
        }


def run_demo(
    out_dir: Path,
    recipe: str | Path | Recipe = "bearing-demo",
    epochs: Optional[int] = None,
    samples: Optional[int] = None,
    synthetic_overrides: Optional[Mapping[str, Any]] = None,
    progress: bool = True,
    log: Log = print,
) -> DemoResult:
    """Train, export, bundle and run the device runtime on held-out windows."""
    rec = recipe if isinstance(recipe, Recipe) else get_recipe(recipe)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    timer = StageTimer()
    s = int(samples or UqConfig.from_dict(rec.uq).samples)

    with timer.stage("data"):
        data = prepare_data(rec, synthetic_overrides)
    sp = data.splits
    log(f"data: {data.description}")
    log(f"      train {len(sp.train)} / val {len(sp.val)} / test {len(sp.test)} windows; "
        + ", ".join(f"{k} {len(v)}" for k, v in data.shifted.items()))

    model_cfg = ModelConfig.from_dict(rec.model, input_length=sp.window, num_classes=len(sp.class_names))
    train_cfg = TrainConfig.from_dict(rec.train, epochs=epochs)
    with timer.stage("train"):
        ckpt = train_stage(sp, model_cfg, train_cfg, out_dir / "checkpoint", uq=rec.uq, progress=progress, log=log)
    log(f"train: best epoch {ckpt.metrics['best_epoch']} (val acc {ckpt.metrics['val_acc']:.4f}) -> {ckpt.directory}")

    with timer.stage("export+bundle"):
        art = export_stage(ckpt, out_dir / "onnx")
        bundle = bundle_stage(art, out_dir / "bundle", rec, s, metadata={"train": dict(ckpt.metrics)})
    log(f"export: trunk/head ONNX verified against PyTorch; bundle -> {bundle.root}")

    sets = {"in-distribution test": sp.test, **data.shifted}
    with timer.stage("evaluate"):
        evals = evaluate_sets(bundle.root, sets, samples=s, seed=0, reference="in-distribution test",
                              progress=progress)
    with timer.stage("latency"):
        lat = latency_stage(bundle.root, sp.test.x[0], s)
    result = DemoResult(out_dir, ckpt, art, bundle, evals, lat, s, dict(timer.seconds), data.description)
    (out_dir / "results.json").write_text(json.dumps(result.summary(), indent=2, sort_keys=True, default=float))
    return result

