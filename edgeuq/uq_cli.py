"""CLI commands of the uncertainty work: ``edgeuq evaluate`` and ``benchmark-uq`` (``train`` covers every scheme).

Registered through ``edgeuq.cli._command_modules``; imports stay inside the
command functions so ``edgeuq --help`` stays fast.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["register"]


def _cmd_evaluate(a: argparse.Namespace) -> int:
    from .cli_args import data_options
    from .data import DataError
    from .data.labels import UnknownLabelsError
    from .evaluate import evaluate_bundle, write_evaluation_plots
    from .report import format_table

    try:
        ev = evaluate_bundle(Path(a.bundle), Path(a.data), ood=Path(a.ood) if a.ood else None, samples=a.samples,
                             seed=a.seed, fs=a.fs, key=a.key, hop=a.hop, progress=not a.no_progress,
                             split=a.split, options=data_options(a))
    except UnknownLabelsError as exc:
        example = ",".join(f"{lab}=<class>" for lab in exc.labels[:2])
        raise DataError(
            f"labels {list(exc.labels)[:8]} are not among the bundle's classes {list(exc.class_names)}; "
            f"translate them with --label-map '{example}' (or a .json/.toml file)") from None
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
    if a.html:  # one file to open: tables + plots inlined (edgeuq.view)
        from .view import write_evaluation_html
        print(f"html: {write_evaluation_html(ev, doc, Path(a.html), doc.get('plots'))}")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(doc, indent=2, sort_keys=True))
        print(f"json: {a.json}")
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
    from .cli_args import add_data_arguments, add_text_column_arguments

    e = sub.add_parser("evaluate", help="score a bundle on a dataset (and OOD metrics against a second one)")
    e.add_argument("--bundle", required=True)
    g = add_data_arguments(e, required=True, help="signals: a CWRU folder, or .npz/.npy/.csv/.mat file(s) "
                                                  "(labels from the files); text bundles: a TSV")
    add_text_column_arguments(g)
    g.add_argument("--split", choices=("auto", "test", "all"), default="auto",
                   help="which windows to score: 'test' = the held-out time segment `edgeuq train` keeps out of "
                        "training, 'all' = every window; 'auto' (default) = test for a CWRU folder, all otherwise")
    e.add_argument("--ood", help="out-of-distribution data in the same formats (labels ignored)")
    e.add_argument("--json", help="write all metrics as JSON here (plots next to it unless --plots)")
    e.add_argument("--plots", help="directory for reliability / histogram / accuracy-vs-coverage PNGs")
    e.add_argument("--html", help="write the report (tables, plots embedded) as one self-contained HTML file")
    e.add_argument("--samples", type=int, help="MC samples S (default: the bundle's)")
    e.add_argument("--seed", type=int, default=0)
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
