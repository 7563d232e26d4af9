"""Score a bundle through the device runtime: metrics and uncertainty per dataset."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Mapping, Optional

import numpy as np
from tqdm.auto import tqdm

from edgeuq_runtime import UncertaintyRuntime, UncertaintyResult

from .uq import auroc, classification_metrics

__all__ = ["SetEvaluation", "evaluate_sets", "run_runtime"]


@dataclass(frozen=True)
class SetEvaluation:
    """Runtime outputs for one dataset; metrics only where labels are known."""

    name: str
    result: UncertaintyResult
    labels: np.ndarray
    metrics: Mapping[str, float] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(len(self.labels))

    def summary(self) -> Dict[str, float]:
        r = self.result
        return {
            "n": self.n,
            **dict(self.metrics),
            "mean_total": float(r.total.mean()),
            "mean_aleatoric": float(r.aleatoric.mean()),
            "mean_epistemic": float(r.epistemic.mean()),
        }


def run_runtime(
    rt: UncertaintyRuntime, x: np.ndarray, samples: int, seed: int, chunk: int = 256, progress: bool = False, desc: str = ""
) -> UncertaintyResult:
    """Run ``rt.predict`` in chunks (bounded memory) and stitch the results."""
    parts = []
    rng_seeds = np.random.SeedSequence(seed).spawn(max(1, -(-len(x) // chunk)))
    for i, start in enumerate(tqdm(range(0, len(x), chunk), desc=desc, disable=not progress, leave=False)):
        seed_i = int(rng_seeds[i].generate_state(1)[0])
        parts.append(rt.predict(x[start : start + chunk], samples=samples, seed=seed_i))
    cat = lambda name, axis=0: np.concatenate([getattr(p, name) for p in parts], axis=axis)  # noqa: E731
    return UncertaintyResult(
        probs=cat("probs"), prediction=cat("prediction"), confidence=cat("confidence"), total=cat("total"),
        aleatoric=cat("aleatoric"), epistemic=cat("epistemic"), samples=cat("samples", axis=1),
        class_names=parts[0].class_names,
    )


def evaluate_sets(
    bundle_dir: Path,
    sets: Mapping[str, "object"],
    samples: Optional[int] = None,
    seed: int = 0,
    reference: Optional[str] = None,
    progress: bool = True,
) -> Dict[str, SetEvaluation]:
    """Evaluate WindowDataset-like objects (``.x``, ``.y``) through the runtime.

    Labelled sets (all labels >= 0) get accuracy/NLL/Brier/ECE. With
    ``reference`` naming the in-distribution set, every other set also gets the
    OOD AUROC of epistemic (MI) and total uncertainty against it.
    """
    rt = UncertaintyRuntime(bundle_dir, seed=seed)
    s = samples or rt.default_samples
    out: Dict[str, SetEvaluation] = {}
    for name, ds in sets.items():
        res = run_runtime(rt, ds.x, s, seed, progress=progress, desc=f"runtime: {name}")
        labels = np.asarray(ds.y)
        metrics = classification_metrics(res.probs, labels).to_dict() if len(labels) and labels.min() >= 0 else {}
        out[name] = SetEvaluation(name, res, labels, metrics)
    if reference is not None:
        ref = out[reference].result
        for name, ev in out.items():
            if name == reference:
                continue
            ood = {
                "auroc_epistemic": auroc(ref.epistemic, ev.result.epistemic),
                "auroc_total": auroc(ref.total, ev.result.total),
            }
            out[name] = SetEvaluation(name, ev.result, ev.labels, {**ev.metrics, **ood})
    return out
