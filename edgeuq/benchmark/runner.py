"""Run the benchmark: train/load every scheme, export + bundle, score through the device runtime."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch

from edgeuq_runtime import UncertaintyRuntime

from ..evaluate import diagnosed_only, ood_metrics, run_runtime, set_metrics
from ..bundle import build_bundle
from ..export import export_onnx
from ..profile import measure
from ..training import Checkpoint
from .schemes import temperature_checkpoint, trained_checkpoint
from .settings import SCHEME_NAMES, BenchmarkSettings
from .tables import format_tables
from .tasks import Task, bearing_tasks, text_task

__all__ = ["VariantResult", "run_benchmark", "evaluate_variant"]

Log = Callable[[str], None]


@dataclass(frozen=True)
class VariantResult:
    """Runtime scores of one model variant (a scheme, optionally temperature-scaled) on one task."""

    task: str
    variant: str
    test: Mapping[str, float]
    ood: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    shifts: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    latency_ms: Mapping[str, float] = field(default_factory=dict)
    info: Mapping[str, object] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"task": self.task, "variant": self.variant, "test": dict(self.test), "ood": dict(self.ood),
                "shifts": dict(self.shifts), "latency_ms": dict(self.latency_ms), "info": dict(self.info)}

    @classmethod
    def from_json(cls, d: Mapping) -> "VariantResult":
        return cls(d["task"], d["variant"], d["test"], d.get("ood", {}), d.get("shifts", {}), d.get("latency_ms", {}),
                   d.get("info", {}))


def _bundle(ck: Checkpoint, out: Path, name: str, samples: int):
    art = export_onnx(ck, out / "onnx", verify=True)
    return build_bundle(art, out / "bundle", name, "0.1.0", default_samples=samples, overwrite=True)


def evaluate_variant(task: Task, variant: str, ck: Checkpoint, out: Path, s: BenchmarkSettings,
                     latency: bool, progress: bool) -> VariantResult:
    """Export ``ck`` (verified against PyTorch), bundle it and score it with the device runtime."""
    bundle = _bundle(ck, out, f"{task.name}-{variant}".replace("+", "-"), s.samples)
    rt = UncertaintyRuntime(bundle.root, threads=s.threads, seed=0)
    res = run_runtime(rt, task.test[0], s.samples, seed=0, progress=progress, desc=f"{variant}: test")
    test = set_metrics(res, task.test[1])
    ood = {}
    for name, x in task.ood.items():
        o = run_runtime(rt, x, s.samples, seed=1, progress=progress, desc=f"{variant}: {name}")
        ood[name] = {**ood_metrics(res, o), "mean_epistemic": float(o.epistemic.mean()),
                     "mean_total": float(o.total.mean()), "mean_confidence": float(o.confidence.mean())}
        labels = task.ood_labels.get(name)
        if labels is not None and len(labels) and labels.min() >= 0:  # e.g. fault type of an unseen size
            o_ok, labels_ok = diagnosed_only(o, labels)
            ood[name]["accuracy"] = float(np.mean(o_ok.prediction == labels_ok))
    shifts = {}
    for name, (x, y) in task.shifts.items():
        r = run_runtime(rt, x, s.samples, seed=2, progress=progress, desc=f"{variant}: {name}")
        shifts[name] = {**set_metrics(r, y), **{k: v for k, v in ood_metrics(res, r).items() if k.startswith("auroc")}}
    lat: Dict[str, float] = {}
    if latency:
        x1 = task.test[0][:1]
        lat["deterministic"] = measure(lambda: rt.deterministic(x1), repeats=s.latency_repeats, name="det").median_ms
        for k in s.latency_samples:
            lat[f"S={k}"] = measure(lambda: rt.predict(x1, samples=k), repeats=s.latency_repeats,
                                     name=f"S={k}").median_ms
    info = {"noise_inputs": [n.name for n in rt.manifest.noise], "temperature": ck.config.temperature,
            "train_s": ck.metrics.get("train_s"), "laplace": ck.metrics.get("laplace"),
            "temperature_fit": ck.metrics.get("temperature")}
    return VariantResult(task.name, variant, test, ood, shifts, lat, info)


def run_benchmark(out_dir: Path, cwru_dir: Optional[Path] = None, text_dir: Optional[Path] = None,
                  settings: BenchmarkSettings = BenchmarkSettings(), schemes: Optional[Sequence[str]] = None,
                  progress: bool = True, log: Log = print) -> List[VariantResult]:
    """Every scheme (and its temperature-scaled variant) on every task; prints and writes
    ``tables.md`` and ``results.json`` under ``out_dir``. Trained models are cached there."""
    if cwru_dir is None and text_dir is None:
        raise ValueError("nothing to benchmark: give a CWRU folder and/or a text folder (sst2/ + trec/)")
    schemes = tuple(schemes or SCHEME_NAMES)
    unknown = sorted(set(schemes) - set(SCHEME_NAMES))
    if unknown:
        raise ValueError(f"unknown schemes {unknown}; known: {list(SCHEME_NAMES)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(settings.threads)
    t_start = time.perf_counter()
    tasks: List[Task] = []
    if cwru_dir is not None:
        tasks += bearing_tasks(Path(cwru_dir), settings, log)
    if text_dir is not None:
        tasks.append(text_task(Path(text_dir), settings, log))
    results: List[VariantResult] = []
    for task in tasks:
        task_schemes = [k for k in schemes if task.tokenizer is None or k in settings.text_schemes]
        for scheme in task_schemes:
            ck = trained_checkpoint(scheme, task, settings, out_dir, progress=progress, log=log)
            latency = task.name in ("cwru_in_domain", "sst2")
            results.append(evaluate_variant(task, scheme, ck, out_dir / task.name / scheme, settings, latency,
                                            progress))
            ts = temperature_checkpoint(ck, scheme, task, settings, out_dir)
            results.append(evaluate_variant(task, f"{scheme}+ts", ts, out_dir / task.name / f"{scheme}+ts",
                                            settings, False, progress))
            log(f"{task.name}/{scheme}: acc {results[-2].test.get('accuracy', float('nan')):.4f} "
                f"(+ts ece {results[-1].test.get('ece', float('nan')):.4f})")
            (out_dir / "results.json").write_text(json.dumps(
                {"settings": settings.to_dict(), "results": [r.to_json() for r in results]}, indent=2, default=str))
    elapsed = time.perf_counter() - t_start
    text = format_tables(results, tasks, settings, elapsed)
    (out_dir / "tables.md").write_text(text)
    print(text)
    return results
