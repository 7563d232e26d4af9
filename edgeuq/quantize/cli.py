"""``edgeuq quantize``: Fisher-guided mixed precision under a size or latency budget,
written as a runtime bundle (plus quant_plan.json and hls4ml_precision.json)."""
from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register"]


def _run(a: argparse.Namespace) -> int:
    from ..cli_args import data_options, data_path
    from ..fisher import load_fisher_report
    from ..fisher.data import calibration_data
    from ..report import format_table
    from ..training import load_checkpoint
    from .pipeline import quantize_checkpoint
    from .plan import Budget
    from .precision import QuantSettings

    ckpt = load_checkpoint(Path(a.checkpoint))
    report = load_fisher_report(Path(a.fisher))
    budget = Budget("bytes", float(a.budget_bytes)) if a.budget_bytes is not None else Budget("ms", float(a.budget_ms))
    settings = QuantSettings(calibration_windows=a.max_windows)
    data = calibration_data(ckpt, a.recipe, data_path(a), max_windows=a.max_windows, seed=a.seed,
                            options=data_options(a))
    res = quantize_checkpoint(ckpt, report, budget, Path(a.out), data.x, work_dir=Path(a.work) if a.work else None,
                              samples=a.samples, name=a.name, version=a.version, settings=settings,
                              progress=not a.no_progress)
    plan = res.plan
    rows = [[c.name, c.graph, c.precision, c.bytes, c.bytes_by_precision["fp32"], c.sensitivity]
            + ([c.latency_ms] if plan.predicted_ms is not None else []) for c in plan.layers]
    heads = ["layer", "graph", "precision", "bytes", "fp32 bytes", "predicted ΔL"] \
        + (["ms"] if plan.predicted_ms is not None else [])
    print(format_table(heads, rows))
    extra = f", predicted latency {plan.predicted_ms:.3f} ms" if plan.predicted_ms is not None else ""
    print(f"\nbudget {plan.budget.describe()}: model {plan.total_bytes} bytes (fp32 {plan.fp32_bytes}, "
          f"{plan.compression:.2f}x smaller; smallest possible {plan.min_bytes}){extra}; "
          f"predicted loss increase {plan.predicted_loss:.3g}")
    print(f"bundle: {res.bundle.root}  (quant_plan.json, hls4ml_precision.json: {res.hls4ml_precision})")
    return 0


def register(subparsers) -> None:
    from ..fisher.cli import add_data_arguments

    p = subparsers.add_parser("quantize", help="Fisher-guided mixed-precision quantization into a bundle")
    p.add_argument("--checkpoint", required=True, help="checkpoint directory")
    p.add_argument("--fisher", required=True, help="FisherReport directory (edgeuq fisher)")
    b = p.add_mutually_exclusive_group(required=True)
    b.add_argument("--budget-bytes", type=int, help="model size budget in bytes (serialized weights)")
    b.add_argument("--budget-ms", type=float, help="latency budget (ms, one window with --samples samples, "
                                                   "profiled per layer on ONNX Runtime, one thread)")
    p.add_argument("--out", required=True, help="bundle directory")
    p.add_argument("--work", help="fp32 export and the layer-cost cache (default: <out>.work next to the bundle)")
    add_data_arguments(p)
    p.add_argument("--samples", type=int, default=16, help="default MC samples S of the bundle")
    p.add_argument("--name", default="edgeuq-model")
    p.add_argument("--version", default="0.1.0")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run)
