"""Typed pipeline stages and the end-to-end demo.

    recipe ─prepare_data─► DemoData ─train_stage─► Checkpoint ─export_stage─► OnnxArtifact
           ─bundle_stage─► Bundle ─evaluate_sets (device runtime)─► metrics ─► report

The demo (:func:`run_demo`) runs the whole product: the teacher above, then the student
(``distill_stage`` from the teacher, quantized to int8, bundled), both bundles calibrated
(density on the training windows, conformal and abstention thresholds on the validation
windows), both evaluated on the held-out and shifted sets through the device runtime, and
both timed in the same interleaved rounds. The student's bundle is the one it deploys.

Each stage writes its artifact under the run directory as soon as it exists, so
a failure later on loses nothing already computed; :class:`edgeuq.profile.StageTimer`
records each stage's wall and CPU time.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

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
    "latency_stage", "run_demo", "UQ_TRAIN_KEYS", "StudentOptions", "DemoModel", "models_latency_stage",
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


def _records(cfg: SyntheticBearingConfig, kinds, cache: bool) -> list:
    if not cache:
        return synthetic_records(cfg, kinds=kinds)
    from .data.synthetic_cache import cached_synthetic_records

    return cached_synthetic_records(cfg, kinds)[0]


def prepare_data(recipe: Recipe, synthetic_overrides: Optional[Mapping[str, Any]] = None,
                 cache: bool = False) -> DemoData:
    """The embedded default: synthetic bearing records, a time-disjoint split,
    an unseen-fault set and an additive-noise shifted copy of the test set.
    ``cache``: read/write the generator's records through the content-addressed cache
    (:mod:`edgeuq.data.synthetic_cache`; the same records either way)."""
    data = recipe.data
    if "source" in data and not DATA_SOURCES.get(data["source"]).takes_no_path:
        raise ValueError(f"recipe {recipe.name!r}: the demo runs on the recipe's embedded data (a source that takes "
                         f"no path, e.g. source='synthetic'), got {data.get('source')!r}")
    classes = tuple(data["classes"])
    window, hop = int(data["window"]), int(data["hop"])
    cfg = _synthetic_config(recipe, synthetic_overrides or {})
    records = _records(cfg, classes, cache)
    fe = front_end_from_recipe(data)
    splits = split_in_domain(records, window, hop, class_names=classes, front_end=fe)
    shifted: Dict[str, WindowDataset] = {}
    snr = float(data.get("shift_snr_db", 0.0))
    shifted[f"noise shift (SNR {snr:g} dB)"] = add_noise(splits.test, snr_db=snr, seed=cfg.seed + 1)
    ood_kind = data.get("ood_kind")
    if ood_kind:
        ood_records = _records(cfg, (ood_kind,), cache)
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
class StudentOptions:
    """How the demo builds its student from the teacher (``edgeuq distill`` + ``edgeuq quantize``):
    the student recipe's ``[model]``, ``[uq] samples`` and ``[bundle]``, distilled with the default
    uncertainty-keeping loss on the training windows (plus ``copies`` perturbed copies of each, and
    10 % synthetic off-distribution windows) labelled by the teacher with ``teacher_samples`` draws,
    then every quantizable layer int8 (per-channel QDQ, calibrated on training windows) unless
    ``precision`` says otherwise ("fp32" keeps it float). The defaults are the demo's time budget:
    labelling and training cost scale with ``copies + 1.1`` (measured on the demo: no copies, 8
    epochs at batch 32 gave a student of 0.92 test accuracy, batch 64 0.73; one copy, 8 epochs at
    batch 64 0.97 at 1.8x the cost). With the bearing-teacher (whose S samples cost 1.5x one pass,
    so labelling is cheap) one copy and 5 epochs took 36 CPU-s and stopped still improving: 8 epochs.
    The copies' noise is pink at 6-20 dB (``transfer_kinds``), never the evaluation's white 0 dB."""

    recipe: str = "bearing-student"
    epochs: Optional[int] = 8             # None: the student recipe's [train] epochs
    batch_size: Optional[int] = 32        # None: the student recipe's [train] batch_size
    copies: int = 1
    teacher_samples: int = 8
    student_samples: int = 8
    precision: str = "int8"
    calib_windows: int = 256
    #: perturbations of the transfer set's copies (:class:`edgeuq.compress.transfer.TransferConfig`):
    #: pink (1/f) noise at ``transfer_snr_db`` instead of the default white noise, because the
    #: demo's noise-shift evaluation set is white noise (at 0 dB): the student never trains on it
    transfer_kinds: Tuple[str, ...] = ("pink_noise", "shift", "clip", "mixup", "synthetic")
    transfer_snr_db: Tuple[float, float] = (6.0, 20.0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "transfer_kinds", tuple(self.transfer_kinds))
        object.__setattr__(self, "transfer_snr_db", tuple(float(v) for v in self.transfer_snr_db))
        if self.precision not in ("int8", "fp16", "fp32"):
            raise ValueError(f"StudentOptions.precision must be int8, fp16 or fp32, got {self.precision!r}")
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"StudentOptions.epochs must be >= 1, got {self.epochs}")
        if self.calib_windows < 1:
            raise ValueError(f"StudentOptions.calib_windows must be >= 1, got {self.calib_windows}")


@dataclass(frozen=True)
class DemoModel:
    """One model of the demo, as deployed: its checkpoint, bundle (calibrated), evaluations and latency."""

    role: str                       # "teacher" | "student"
    checkpoint: Checkpoint
    bundle: Bundle
    evaluations: Mapping[str, SetEvaluation]
    latency: Mapping[str, LatencyStats]
    samples: int
    graph_bytes: int                # the graphs (trunk + head files) as bundled
    bundle_bytes: int               # every file of the bundle (density, p-values, plans included)
    precision: str = "fp32"

    def summary(self) -> dict:
        return {
            "role": self.role, "samples": self.samples, "bundle": str(self.bundle.root),
            "model_name": self.bundle.manifest.model_name, "precision": self.precision,
            "graph_bytes": self.graph_bytes, "bundle_bytes": self.bundle_bytes,
            "sets": {k: v.summary() for k, v in self.evaluations.items()},
            "latency_ms": {k: v.to_dict() for k, v in self.latency.items()},
        }


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
    #: the teacher (this result's checkpoint/bundle/evaluations) and the student, when built
    models: Mapping[str, DemoModel] = field(default_factory=dict)
    cpu_s: Mapping[str, float] = field(default_factory=dict)
    #: what each model trained on beyond the clean training windows, and the evaluation's shift
    #: (declared so a reader sees the two never share a noise family and level)
    robustness: Mapping[str, str] = field(default_factory=dict)

    @property
    def deployed(self) -> Bundle:
        """The bundle the demo deploys: the student's when there is one, else the teacher's."""
        m = self.models.get("student")
        return m.bundle if m is not None else self.bundle

    def summary(self) -> dict:
        return {
            "samples": self.samples,
            "data": self.data_description,
            "sets": {k: v.summary() for k, v in self.evaluations.items()},
            "latency_ms": {k: v.to_dict() for k, v in self.latency.items()},
            "timings_s": dict(self.timings_s),
            "cpu_s": dict(self.cpu_s),
            "bundle": str(self.bundle.root),
            "deployed_bundle": str(self.deployed.root),
            "models": {k: m.summary() for k, m in self.models.items()},
            "robustness": dict(self.robustness),
        }


def _graph_bytes(bundle: Bundle) -> Tuple[int, int]:
    names = list(bundle.manifest.files)
    graphs = [n for n in names if n.endswith((".onnx", ".onnx.data", ".so", ".tar"))]
    return (int(sum(bundle.path(n).stat().st_size for n in graphs)),
            int(sum(bundle.path(n).stat().st_size for n in names)) + (bundle.root / "manifest.json").stat().st_size)


def _evaluate_calibrated(bundle_dir: Path, sets: Mapping[str, Any], samples: int, reference: str,
                         progress: bool) -> Dict[str, SetEvaluation]:
    """:func:`evaluate_sets`, plus the OOD AUROC of the calibrated bundle's density and combined
    scores (fitted on the training and validation windows, never on these sets)."""
    from .calibrate.scores import calibrated_extra_scores
    from .uq import auroc

    evals = evaluate_sets(bundle_dir, sets, samples=samples, seed=0, reference=reference, progress=progress)
    rt = UncertaintyRuntime(bundle_dir, seed=0)
    extra = {}
    for name, ev in evals.items():
        ok = ev.result.diagnosed
        r = ev.result
        extra[name] = {k: np.asarray(v)[ok] for k, v in (calibrated_extra_scores(
            rt, np.asarray(sets[name].x), r.epistemic, r.total, r.prediction) or {}).items()}
    out = {}
    for name, ev in evals.items():
        m = dict(ev.metrics)
        if name != reference:
            for key in ("density", "combined"):
                if key in extra[reference] and key in extra[name]:
                    m[f"auroc_{key}"] = auroc(extra[reference][key], extra[name][key])
        out[name] = SetEvaluation(name, ev.result, ev.labels, m)
    return out


def models_latency_stage(bundles: Mapping[str, Tuple[Path, int]], window: np.ndarray, threads: int = 1,
                         repeats: int = 50) -> Dict[str, Dict[str, LatencyStats]]:
    """:func:`latency_stage` for several bundles (name -> (bundle, S)) in the same rounds: every
    bundle's deterministic pass and S-sample call are timed once per round, in a seeded random order
    per round, so ratios within a bundle and between bundles are paired."""
    x = window[None, :]
    calls, keys = {}, {}
    for name, (bdir, s) in bundles.items():
        rt = UncertaintyRuntime(bdir, threads=threads, seed=0)
        det, mc = f"{name}: deterministic pass (S=1, mean masks)", f"{name}: S={s} sample inference"
        calls[det] = (lambda rt=rt: rt.deterministic(x))
        calls[mc] = (lambda rt=rt, s=s: rt.predict(x, samples=s))
        keys[name] = (det, mc)
    st = measure_stages(calls, warmup=3, repeats=repeats)
    return {name: {"deterministic": st[d], "mc": st[m]} for name, (d, m) in keys.items()}


def _chunked_teacher(ck: Checkpoint, chunk: int = 64):
    """:func:`edgeuq.compress.stages.load_teacher` of a checkpoint, labelling ``chunk`` windows at a
    time: the S-fold tiled activations of a chunk stay small (measured on the demo teacher, S = 16,
    one thread: 64 windows per chunk label 1.9x faster than 256, which page-fault on every chunk)."""
    from .compress.stages import Teacher
    from .compress.transfer import features_with_model, label_with_model

    model = ck.load_model()
    return Teacher(f"checkpoint {ck.directory} ({ck.config.scheme})", ck.sha256,
                   lambda x, s, seed: label_with_model(model, x, s, seed, chunk=chunk), ck.config.num_classes,
                   lambda x: features_with_model(model, x))


def _student_stage(teacher_ck: Checkpoint, data: DemoData, rec: Recipe, opts: StudentOptions, out_dir: Path,
                   progress: bool, log: Log, timer: StageTimer) -> Tuple[Checkpoint, Bundle]:
    """Distil the student from the teacher, quantize it, bundle it (metadata says it is the student)."""
    from .compress.distill import DISTILL_TRAIN, DistillConfig
    from .compress.stages import distill_stage
    from .compress.transfer import TransferConfig
    from .quantize.costs import uniform_assignment
    from .quantize.pipeline import build_quantized, plan_from_assignment, prepare_model, sensitivity_for

    srec = get_recipe(opts.recipe)
    sp = data.splits
    scfg = ModelConfig.from_dict(srec.model, input_length=sp.window, num_classes=len(sp.class_names))
    s_student = int(UqConfig.from_dict(srec.uq).samples)
    epochs = int(opts.epochs or srec.train.get("epochs", DISTILL_TRAIN.epochs))
    dcfg = DistillConfig(student_samples=opts.student_samples, train=replace(
        DISTILL_TRAIN, epochs=epochs, seed=int(srec.train.get("seed", 0)),
        batch_size=int(opts.batch_size or srec.train.get("batch_size", 64)), lr=float(srec.train.get("lr", 2e-3)),
        patience=int(srec.train.get("patience", 5))))
    tcfg = TransferConfig(copies=opts.copies, teacher_samples=opts.teacher_samples, seed=0,
                          kinds=opts.transfer_kinds, snr_db=opts.transfer_snr_db)
    with timer.stage("distil student"):
        ck = distill_stage(_chunked_teacher(teacher_ck), scfg, sp, out_dir, tcfg, dcfg, progress=progress,
                           log=log)
    d = ck.metrics["distill"]
    log(f"distil: student ({opts.recipe}) best epoch {d['best_epoch']} of {epochs}, val loss "
        f"{d['best_val_loss']:.4f} -> {ck.directory}")
    calib = sp.train.x[np.random.default_rng(0).permutation(len(sp.train))[:opts.calib_windows]]
    b = srec.bundle
    with timer.stage("quantize+bundle student"):
        prep = prepare_model(ck, calib, out_dir / "quantize", samples=s_student, progress=False)
        plan = plan_from_assignment(prep, uniform_assignment(prep.layers, opts.precision),
                                    sensitivity_for("range", prep), "range")
        res = build_quantized(prep, plan, out_dir / "bundle", work_dir=out_dir / "quantize" / opts.precision,
                              name=b["model_name"], version=b["model_version"], samples=s_student,
                              metadata={"recipe": srec.name, "demo_role": "student", "deployed": True,
                                        "distilled_from": {"recipe": rec.name,
                                                           "checkpoint_sha256": teacher_ck.sha256},
                                        "distill": dict(d)})
    log(f"quantize: student {opts.precision} ({plan.total_bytes} of {plan.fp32_bytes} fp32 weight bytes) "
        f"-> {res.bundle.root}")
    return ck, res.bundle


def _robustness(rec: Recipe, train_cfg: TrainConfig, student: Optional[StudentOptions]) -> Dict[str, str]:
    """The declared robustness methods of each model and the evaluation's own shift."""
    out = {"teacher training augmentation": train_cfg.augmentation()}
    if student is not None:
        lo, hi = student.transfer_snr_db
        noisy = [k for k in student.transfer_kinds if k in ("noise", "pink_noise")]
        out["student transfer set"] = (f"{student.copies} perturbed cop{'y' if student.copies == 1 else 'ies'} per "
                                       f"training window, kinds {list(student.transfer_kinds)}"
                                       + (f"; {'/'.join(noisy)} at SNR {lo:g}-{hi:g} dB" if noisy else ""))
    snr = float(rec.data.get("shift_snr_db", 0.0))
    out["evaluation noise shift"] = (f"white Gaussian noise at SNR {snr:g} dB on the test windows "
                                     "(edgeuq.data.add_noise); never in any model's training or transfer data")
    return out


def run_demo(
    out_dir: Path,
    recipe: str | Path | Recipe = "bearing-teacher",
    epochs: Optional[int] = None,
    samples: Optional[int] = None,
    synthetic_overrides: Optional[Mapping[str, Any]] = None,
    progress: bool = True,
    log: Log = print,
    student: Optional[StudentOptions] = StudentOptions(),
    cache: bool = True,
    latency_repeats: int = 50,
) -> DemoResult:
    """Train the teacher, distil and quantize the student (``student=None``: teacher only), calibrate
    both, run the device runtime on held-out and shifted windows, time both in the same rounds.
    ``cache``: the synthetic records through :mod:`edgeuq.data.synthetic_cache`."""
    from .calibrate.fit import CalibrationOptions, calibrate_bundle

    rec = recipe if isinstance(recipe, Recipe) else get_recipe(recipe)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    timer = StageTimer()
    s = int(samples or UqConfig.from_dict(rec.uq).samples)

    with timer.stage("data"):
        data = prepare_data(rec, synthetic_overrides, cache=cache)
    sp = data.splits
    log(f"data: {data.description}")
    log(f"      train {len(sp.train)} / val {len(sp.val)} / test {len(sp.test)} windows; "
        + ", ".join(f"{k} {len(v)}" for k, v in data.shifted.items()))

    model_cfg = ModelConfig.from_dict(rec.model, input_length=sp.window, num_classes=len(sp.class_names))
    train_cfg = TrainConfig.from_dict(rec.train, epochs=epochs)
    with timer.stage("train teacher"):
        ckpt = train_stage(sp, model_cfg, train_cfg, out_dir / "checkpoint", uq=rec.uq, progress=progress, log=log)
    log(f"train: best epoch {ckpt.metrics['best_epoch']} (val acc {ckpt.metrics['val_acc']:.4f}) -> {ckpt.directory}")

    with timer.stage("export+bundle teacher"):
        art = export_stage(ckpt, out_dir / "onnx")
        bundle = bundle_stage(art, out_dir / "bundle", rec, s, metadata={"train": dict(ckpt.metrics),
                                                                         "demo_role": "teacher",
                                                                         "deployed": student is None})
    log(f"export: trunk/head ONNX verified against PyTorch; bundle -> {bundle.root}")

    bundles: Dict[str, Tuple[Path, int, Checkpoint, str]] = {"teacher": (bundle.root, s, ckpt, "fp32")}
    if student is not None:
        sck, sbundle = _student_stage(ckpt, data, rec, student, out_dir / "student", progress, log, timer)
        bundles["student"] = (sbundle.root, int(sbundle.manifest.default_samples), sck, student.precision)

    cal_opts = CalibrationOptions(fit_source="training windows (time-disjoint from the calibration windows)")
    with timer.stage("calibrate"):
        for name, (bdir, bs, _, _) in bundles.items():
            calibrate_bundle(bdir, sp.val.x, sp.val.y, sp.train.x, sp.train.y,
                             dataclasses.replace(cal_opts, samples=bs))
    log("calibrate: density on the training windows, conformal + abstention thresholds on the validation windows")

    sets = {"in-distribution test": sp.test, **data.shifted}
    evals: Dict[str, Dict[str, SetEvaluation]] = {}
    with timer.stage("evaluate"):
        for name, (bdir, bs, _, _) in bundles.items():
            evals[name] = _evaluate_calibrated(bdir, sets, bs, "in-distribution test", progress)
    with timer.stage("latency"):
        lat = models_latency_stage({k: (v[0], v[1]) for k, v in bundles.items()}, sp.test.x[0],
                                   repeats=latency_repeats)
    models = {}
    from edgeuq_runtime import load_bundle

    for name, (bdir, bs, ck, prec) in bundles.items():
        b = load_bundle(bdir)
        gb, bb = _graph_bytes(b)
        models[name] = DemoModel(name, ck, b, evals[name], lat[name], bs, gb, bb, prec)
    t = models["teacher"]
    result = DemoResult(out_dir, ckpt, art, t.bundle, t.evaluations, t.latency, s, dict(timer.seconds),
                        data.description, models, dict(timer.cpu_seconds),
                        _robustness(rec, train_cfg, student))
    (out_dir / "results.json").write_text(json.dumps(result.summary(), indent=2, sort_keys=True, default=float))
    return result
