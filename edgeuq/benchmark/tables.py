"""Markdown tables of the benchmark results."""
from __future__ import annotations

import math
from typing import List, Sequence

from ..report import format_table
from .settings import BenchmarkSettings

__all__ = ["format_tables", "TARGETS"]

#: (task, metric, comparison, threshold, text) of the issue's targets.
TARGETS = (
    ("cwru_in_domain", "accuracy", ">=", 0.995, "CWRU in-domain accuracy >= 99.5 %"),
    ("cwru_in_domain", "ece", "<=", 0.015, "CWRU in-domain ECE <= 1.5 %"),
    ("cwru_cross_load", "accuracy", ">=", 0.97, "CWRU cross-load accuracy >= 97 %"),
    ("cwru_unseen_fault", "auroc_mi", ">=", 0.9, "CWRU unseen-fault OOD AUROC (MI) >= 0.9"),
    ("sst2", "accuracy", ">=", 0.80, "SST-2 accuracy >= 80 %"),
    ("sst2", "auroc_best", ">=", 0.80, "SST-2 vs TREC OOD AUROC >= 0.8 (MI or total)"),
)


def _f(v, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v + 0.0:.{digits}f}".replace("-0.0000", "0.0000")


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}"


def _task_table(task, results) -> str:
    ood_names = list(task.ood)
    heads = ["variant", "acc %", "NLL", "Brier", "ECE %", "AURC", "acc@90% cov %"]
    for name in ood_names:
        heads += [f"AUROC MI ({name})", "AUPR MI", "FPR95 MI", "AUROC H", "AUPR H", "FPR95 H"]
        if name in task.ood_labels:
            heads.append("OOD class acc %")
    heads.append("T")
    rows = []
    for r in results:
        t = r.test
        row = [r.variant, _pct(t.get("accuracy")), _f(t.get("nll")), _f(t.get("brier")), _pct(t.get("ece")),
               _f(t.get("aurc"), 5), _pct(t.get("acc_at_90"))]
        for name in ood_names:
            o = r.ood.get(name, {})
            row += [_f(o.get("auroc_mi"), 3), _f(o.get("aupr_mi"), 3), _f(o.get("fpr95_mi"), 3),
                    _f(o.get("auroc_total"), 3), _f(o.get("aupr_total"), 3), _f(o.get("fpr95_total"), 3)]
            if name in task.ood_labels:
                row.append(_pct(o.get("accuracy")))
        row.append(_f(r.info.get("temperature"), 3))
        rows.append(row)
    return format_table(heads, rows, markdown=True)


def _shift_tables(task, results) -> str:
    names = list(task.shifts)
    heads = ["variant", *[f"acc % {n}" for n in names]]
    acc = [[r.variant, *[_pct(r.shifts[n].get("accuracy")) for n in names]] for r in results]
    ece = [[r.variant, *[_pct(r.shifts[n].get("ece")) for n in names]] for r in results]
    mi = [[r.variant, *[_f(r.shifts[n].get("auroc_mi"), 3) for n in names]] for r in results]
    return "\n\n".join([
        "Accuracy (%) on the in-domain test windows with white noise:\n\n" + format_table(heads, acc, markdown=True),
        "ECE (%):\n\n" + format_table(["variant", *[f"ECE % {n}" for n in names]], ece, markdown=True),
        "AUROC of MI, noisy vs clean test windows (shift detection):\n\n"
        + format_table(["variant", *[f"AUROC MI {n}" for n in names]], mi, markdown=True),
    ])


def _latency_table(results, s: BenchmarkSettings) -> str:
    keys = ["deterministic", *[f"S={k}" for k in s.latency_samples]]
    rows = [[f"{r.task} / {r.variant}", *[_f(r.latency_ms.get(k), 3) for k in keys]] for r in results if r.latency_ms]
    return format_table(["model", *[f"{k} ms" for k in keys]], rows, markdown=True)


def _targets(results) -> str:
    rows = []
    for task, metric, cmp, thr, text in TARGETS:
        vals = []
        for r in results:
            if r.task != task:
                continue
            if metric.startswith("auroc"):
                o = next(iter(r.ood.values()), {})
                v = o.get("auroc_mi") if metric == "auroc_mi" else max(o.get("auroc_mi", 0), o.get("auroc_total", 0))
            else:
                v = r.test.get(metric)
            if v is not None:
                vals.append((r.variant, v))
        if not vals:
            continue
        ok = [(n, v) for n, v in vals if (v >= thr if cmp == ">=" else v <= thr)]
        best = (max if cmp == ">=" else min)(vals, key=lambda nv: nv[1])
        rows.append([text, f"{len(ok)}/{len(vals)}", f"{best[0]} ({best[1]:.4f})",
                     ", ".join(n for n, _ in ok) or "none"])
    return format_table(["target", "variants reaching it", "best variant (value)", "reached by"], rows, markdown=True)


def format_tables(results: Sequence, tasks: Sequence, s: BenchmarkSettings, elapsed_s: float) -> str:
    train_s = sum(float(r.info.get("train_s") or 0.0) for r in results if "+ts" not in r.variant)
    parts: List[str] = [
        f"# UQ benchmark (device runtime, S = {s.samples})",
        f"This run: {elapsed_s / 60:.1f} min (models loaded from the cache where present). Training time of all "
        f"models (summed, when they were trained): {train_s / 60:.1f} min, one thread.",
    ]
    for task in tasks:
        rs = [r for r in results if r.task == task.name]
        parts += [f"## {task.name}", task.description + f" ({task.sizes()})", _task_table(task, rs)]
        if task.shifts:
            parts.append(_shift_tables(task, rs))
    lat = [r for r in results if r.latency_ms]
    if lat:
        parts += ["## Latency (one input, one thread, median ms, device runtime on ONNX Runtime)",
                  _latency_table(lat, s)]
    parts += ["## Targets", _targets(results)]
    return "\n\n".join(parts) + "\n"
