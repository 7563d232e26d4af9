"""``edgeuq fisher``: estimate a checkpoint's Fisher on calibration windows, write a
FisherReport, print the per-layer sensitivity table and plot it."""
from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register"]


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    """``--recipe``, the shared data group (``--data --fs --key --label-map``) and ``--max-windows``."""
    from ..cli_args import add_data_arguments as shared

    p.add_argument("--recipe", default="bearing-demo", help="recipe (synthetic data and window hop)")
    g = shared(p)
    g.add_argument("--max-windows", type=int, default=512, help="calibration windows (random subset; default 512)")


def _run(a: argparse.Namespace) -> int:
    from ..artifact import digest_of
    from ..cli_args import data_options, data_path
    from ..report import format_table
    from ..training import load_checkpoint
    from .config import FisherConfig
    from .data import calibration_data
    from .estimate import estimate_fisher
    from .plot import SENSITIVITY_HEADERS, plot_sensitivity, sensitivity_rows

    ckpt = load_checkpoint(Path(a.checkpoint))
    data = calibration_data(ckpt, a.recipe, data_path(a), max_windows=a.max_windows, seed=a.seed,
                            options=data_options(a))
    cfg = FisherConfig(labels="empirical" if a.empirical else "true", noise_samples=a.noise_samples,
                       batch_size=a.batch_size, seed=a.seed, progress=not a.no_progress)
    model = ckpt.load_model()
    report = estimate_fisher(model, data.x, data.y, cfg, kfac=a.kfac, hessian_probes=a.hessian_probes,
                             meta={"checkpoint_sha256": ckpt.sha256, "checkpoint": str(ckpt.directory),
                                   "data": data.description})
    key = digest_of(ckpt, cfg.to_dict(), data.description, a.kfac, a.hessian_probes)
    saved = report.save(Path(a.out), inputs=key)
    png = plot_sensitivity(saved, Path(a.out) / "sensitivity.png")
    print(f"{saved.labels} Fisher over {data.description}"
          + (f", {cfg.noise_samples} noise draws each" if report.meta.get("stochastic") else ""))
    print(format_table(SENSITIVITY_HEADERS, sensitivity_rows(saved)))
    print(f"\nreport: {saved.directory} (sha256 {saved.sha256[:12]}…)  plot: {png}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("fisher", help="estimate the Fisher information of a checkpoint (FisherReport)")
    p.add_argument("--checkpoint", required=True, help="checkpoint directory")
    p.add_argument("--out", required=True, help="report directory (fisher.json, fisher.npz, sensitivity.png)")
    add_data_arguments(p)
    p.add_argument("--empirical", action="store_true", help="empirical Fisher (data labels) instead of the true one")
    p.add_argument("--noise-samples", type=int, default=4, help="noise draws per window for stochastic models")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--kfac", action="store_true", help="also K-FAC factors of the Linear layers")
    p.add_argument("--hessian-probes", type=int, default=0, help="also Hutchinson Hessian traces (HAWQ)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run)
