"""``edgeuq shifts``: run deployed models (bundles, or checkpoints exported to bundles) through the
shift suite on any labelled signal data with record metadata (load, fault size, type)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["register"]


def _named(spec: str, kind: str):
    name, sep, path = spec.partition("=")
    return (name, Path(path)) if sep else (f"{kind} {Path(spec).name}", Path(spec))


def _cmd_shifts(a: argparse.Namespace) -> int:
    import tempfile

    from ..cli_args import data_options
    from ..data.sources import load_records
    from .protocol import ShiftProtocol
    from .run import plot_suite, run_suite, suite_tables
    from .sets import SetOptions
    from .suite import SuiteOptions

    models = [_named(b, "bundle") for b in a.bundle or []]
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="edgeuq-shifts-"))
    for spec in a.checkpoint or []:
        from ..bundle import build_bundle
        from ..export import export_onnx
        from ..training import load_checkpoint

        name, path = _named(spec, "checkpoint")
        ck = load_checkpoint(path)
        art = export_onnx(ck, work / "export" / name.replace(" ", "_"), verify=True)
        b = build_bundle(art, work / "bundles" / name.replace(" ", "_"), name, "0.0.0",
                         default_samples=a.samples or 32, overwrite=True)
        models.append((name, b.root))
    if not models:
        raise ValueError("give at least one --bundle or --checkpoint")
    opts = data_options(a)
    records, src = load_records(Path(a.data), opts)
    print(f"data: {len(records)} records from {a.data} ({src.describe})")
    proto = ShiftProtocol(held_load=a.held_load, held_size=a.held_size, eval_hop=a.eval_hop,
                          max_eval_windows=a.max_windows)
    doc = run_suite(models, records, work / "suite", proto, SetOptions(seed=a.seed),
                    SuiteOptions(samples=a.samples, alpha=a.alpha, false_alarm_rate=a.false_alarm_rate, seed=a.seed,
                                 progress=not a.no_progress), opts.label_map)
    from ..report import format_table

    for name, t in suite_tables(doc).items():
        print(f"\n{name}:")
        print(format_table(t["headers"], t["rows"]))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(doc, indent=1, default=str))
        print(f"json: {a.json}")
    if a.plot:
        print(f"plot: {plot_suite(doc, Path(a.plot))}")
    return 0


def register(sub) -> None:
    from ..cli_args import add_data_arguments, add_progress_argument

    p = sub.add_parser("shifts", help="shift suite: leak-free whole-recording shifts to generalise over (accuracy, "
                                      "false abstention) and to flag (AUROC, FPR95, abstention), every score")
    p.add_argument("--bundle", action="append", help="a deployed bundle (NAME=PATH to name it); repeatable")
    p.add_argument("--checkpoint", action="append", help="a checkpoint, exported to a bundle first; repeatable")
    add_data_arguments(p, required=True)
    p.add_argument("--held-load", type=float, help="the load the models were not trained on (default: largest)")
    p.add_argument("--held-size", type=float, help="the fault size they were not trained on (default: largest)")
    p.add_argument("--samples", type=int)
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--false-alarm-rate", type=float, default=0.05)
    p.add_argument("--eval-hop", type=int)
    p.add_argument("--max-windows", type=int, help="at most this many windows per evaluated set (quick runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", help="work folder (calibrated copies of the bundles)")
    p.add_argument("--json")
    p.add_argument("--plot", help="PNG of AUROC per should-flag shift and score")
    add_progress_argument(p)
    p.set_defaults(func=_cmd_shifts)
