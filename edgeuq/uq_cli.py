"""CLI commands of the uncertainty work: ``edgeuq train-uq``, ``evaluate`` and ``benchmark-uq``.

Registered through ``edgeuq.cli._COMMAND_MODULES``; imports stay inside the
command functions so ``edgeuq --help`` stays fast.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["register"]


def _cmd_evaluate(a: argparse.Namespace) -> int:
    from .evaluate import evaluate_bundle, write_evaluation_plots
    from .report import format_table

    ev = evaluate_bundle(Path(a.bundle), Path(a.data), ood=Path(a.ood) if a.ood else None, samples=a.samples,
                         seed=a.seed, fs=a.fs, key=a.key, hop=a.hop, progress=not a.no_progress)
    print(f"bundle {ev.bundle} ({ev.model}), S = {ev.samples}")
    for role, text in ev.descriptions.items():
        print(f"  {role}: {text}")
    print()
    print(format_table(*ev.table()))
    if ev.ood is not None:
        print()
        print(format_table(*ev.ood_table()))
    plots_dir = a.plots or (str(Path(a.json).parent / (Path(a.json).stem + "_plots")) if a.json else None)
    doc = ev.to_json()
    if plots_dir:
        paths = write_evaluation_plots(ev, Path(plots_dir))
        doc["plots"] = {k: str(v) for k, v in paths.items()}
        print("\nplots: " + ", ".join(str(p) for p in paths.values()))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(doc, indent=2, sort_keys=True))
        print(f"json: {a.json}")
    return 0


def _cmd_train_uq(a: argparse.Namespace) -> int:
    from .catalog import get_recipe
    from .cli import _load_training_data
    from .models import ModelConfig
    from .pipeline import scheme_train_stage
    from .training import TrainConfig

    rec = get_recipe(a.recipe)
    splits = _load_training_data(a, rec)
    print(f"train {len(splits.train)} / val {len(splits.val)} / test {len(splits.test)} windows")
    cfg = ModelConfig.from_dict(rec.model, input_length=splits.window, num_classes=len(splits.class_names))
    ck = scheme_train_stage(splits, cfg, TrainConfig.from_dict(rec.train, epochs=a.epochs), Path(a.out), uq=rec.uq,
                            progress=not a.no_progress, log=print)
    extra = {k: ck.metrics[k] for k in ("laplace", "temperature") if k in ck.metrics}
    print(f"checkpoint: {ck.directory} (scheme {cfg.scheme}, sha256 {ck.sha256[:12]}…) {json.dumps(extra)[:200]}")
    return 0


def _cmd_benchmark(a: argparse.Namespace) -> int:
    from .benchmark import BenchmarkSettings, run_benchmark

    settings = BenchmarkSettings.quick() if a.quick else BenchmarkSettings()
    run_benchmark(
        Path(a.out), cwru_dir=Path(a.cwru) if a.cwru else None, text_dir=Path(a.text) if a.text else None,
        settings=settings, schemes=tuple(a.schemes) if a.schemes else None, progress=not a.no_progress,
    )
    return 0


def register(sub) -> None:
    t = sub.add_parser("train-uq", help="train any stochastic scheme from a recipe (ELBO, ensembles, Laplace, "
                                        "temperature)")
    t.add_argument("--recipe", required=True, help="recipe name or .toml path (e.g. cwru-variational)")
    t.add_argument("--data", help="CWRU folder (with MANIFEST.csv) or signal file(s); default: synthetic")
    t.add_argument("--fs", type=float, help="sample rate of .npy/.csv inputs")
    t.add_argument("--key", help="variable name inside .mat inputs")
    t.add_argument("--epochs", type=int)
    t.add_argument("--out", required=True, help="checkpoint directory")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=_cmd_train_uq)

    e = sub.add_parser("evaluate", help="score a bundle on a dataset (and OOD metrics against a second one)")
    e.add_argument("--bundle", required=True)
    e.add_argument("--data", required=True, help="signals: a CWRU folder, or .npz/.npy/.csv/.mat file(s) "
                                                 "(labels from the files); text bundles: a TSV")
    e.add_argument("--ood", help="out-of-distribution data in the same formats (labels ignored)")
    e.add_argument("--json", help="write all metrics as JSON here (plots next to it unless --plots)")
    e.add_argument("--plots", help="directory for reliability / histogram / accuracy-vs-coverage PNGs")
    e.add_argument("--samples", type=int, help="MC samples S (default: the bundle's)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--fs", type=float, help="sample rate of .npy/.csv inputs (resampled to the model's)")
    e.add_argument("--key", help="variable name inside .mat inputs")
    e.add_argument("--hop", type=int, help="window step in samples (default: non-overlapping)")
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=_cmd_evaluate)

    b = sub.add_parser("benchmark-uq", help="compare the stochastic schemes on CWRU and SST-2/TREC splits")
    b.add_argument("--out", default="runs/benchmark-uq", help="run directory (trained models are cached here)")
    b.add_argument("--cwru", help="CWRU folder (MANIFEST.csv + 12k_DE/); omit to skip the bearing benchmark")
    b.add_argument("--text", help="folder with sst2/ and trec/; omit to skip the text benchmark")
    b.add_argument("--schemes", nargs="+", help="subset of schemes (default: all)")
    b.add_argument("--quick", action="store_true", help="tiny models and few epochs (a smoke run)")
    b.add_argument("--no-progress", action="store_true")
    b.set_defaults(func=_cmd_benchmark)
