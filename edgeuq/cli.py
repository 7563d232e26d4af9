"""`edgeuq` command line: a thin layer over the Python API."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

__all__ = ["main"]



def _command_modules() -> tuple:
    """Stage packages that add their own subcommands: each module has register(subparsers),
    which adds parsers whose ``func`` runs the command (imports stay inside ``func``). Plain
    imports, so the import graph (and the import-linter contract) sees every one."""
    from . import uq_cli
    from .calibrate import cli as calibrate_cli
    from .compress import cli as compress_cli
    from .fisher import cli as fisher_cli
    from .lower import cli as lower_cli
    from .ota import cli as ota_cli
    from .profile import cli as profile_cli
    from .quantize import cli as quantize_cli
    from .shifts import cli as shifts_cli
    from .text import cli as text_cli
    from . import view_cli

    return (fisher_cli, quantize_cli, lower_cli, uq_cli, compress_cli, ota_cli, calibrate_cli, text_cli, profile_cli,
            shifts_cli, view_cli)


def _cmd_demo(a: argparse.Namespace) -> int:
    from .demo_report import demo_model_tables, demo_stage_table, demo_tables, write_demo_report
    from .pipeline import StudentOptions, run_demo
    from .provenance import start
    from .report import format_table

    import torch

    prov = start("full", torch.get_num_threads())   # the torch threads the demo trains with
    overrides = {"duration_s": a.duration} if a.duration else None
    student = None if a.no_student else StudentOptions(
        recipe=a.student_recipe, **({"epochs": a.student_epochs} if a.student_epochs else {}))
    res = run_demo(Path(a.out), recipe=a.recipe, epochs=a.epochs, samples=a.samples,
                   synthetic_overrides=overrides, progress=not a.no_progress, student=student,
                   cache=not a.no_cache)
    report = write_demo_report(res, prov)
    h, rows, lh, lrows = demo_tables(res)
    print()
    print(format_table(h, rows))
    print()
    print(format_table(lh, lrows))
    if len(res.models) > 1:
        mh, mrows, oh, orows = demo_model_tables(res)
        print()
        print(format_table(mh, mrows))
        print()
        print(format_table(oh, orows))
    if res.robustness:
        print("\nrobustness methods (declared) and the evaluation's shift:")
        for k, v in res.robustness.items():
            print(f"  {k}: {v}")
    sh, srows = demo_stage_table(res)
    print()
    print(format_table(sh, srows))
    print(f"\nreport: {report}  (plots: {res.out_dir / 'reliability.png'}, {res.out_dir / 'epistemic_hist.png'})")
    print(f"deployed bundle ({res.deployed.manifest.model_name}): {res.deployed.root}\n"
          f"  next: edgeuq predict --bundle {res.deployed.root} --input SIGNAL_FILE")
    return 0


def _cmd_train(a: argparse.Namespace) -> int:
    from .catalog import get_recipe
    from .cli_args import load_training_splits
    from .models import ModelConfig
    from .pipeline import train_stage
    from .training import TrainConfig

    rec = get_recipe(a.recipe)
    splits = load_training_splits(a, rec)
    print(f"train {len(splits.train)} / val {len(splits.val)} / test {len(splits.test)} windows")
    cfg = ModelConfig.from_dict(rec.model, input_length=splits.window, num_classes=len(splits.class_names))
    ck = train_stage(splits, cfg, TrainConfig.from_dict(rec.train, epochs=a.epochs), Path(a.out), uq=rec.uq,
                     progress=not a.no_progress, log=print)
    fitted = {k: ck.metrics[k] for k in ("best_epoch", "laplace", "temperature") if k in ck.metrics}
    print(f"checkpoint: {ck.directory} (scheme {cfg.scheme}, sha256 {ck.sha256[:12]}…) {json.dumps(fitted)[:200]}")
    return 0


def _cmd_export(a: argparse.Namespace) -> int:
    from .export import export_onnx
    from .training import load_checkpoint

    art = export_onnx(load_checkpoint(Path(a.checkpoint)), Path(a.out))
    print(f"exported {art.trunk_path} and {art.head_path}; {len(art.noise)} noise inputs: "
          + ", ".join(f"{s.name}{list(s.shape)}" for s in art.noise))
    return 0


def _cmd_bundle(a: argparse.Namespace) -> int:
    from .bundle import build_bundle
    from .export import load_onnx_artifact

    art = load_onnx_artifact(Path(a.onnx))
    b = build_bundle(art, Path(a.out), a.name, a.version, default_samples=a.samples, overwrite=a.overwrite)
    print(f"bundle {b.root}: {b.manifest.model_name} {b.manifest.model_version}, "
          f"{len(b.manifest.files)} files hashed, default S={b.manifest.default_samples}")
    return 0


def _cmd_predict(a: argparse.Namespace) -> int:
    from edgeuq_runtime import UncertaintyRuntime

    from .data import load_signals, sliding_windows
    from .report import format_table

    rt = UncertaintyRuntime(Path(a.bundle), seed=a.seed)
    spec = rt.manifest.input
    records = load_signals(Path(a.input), fs=a.fs, key=a.key, target_fs=spec.sample_rate_hz)
    hop = a.hop or spec.length
    rows, out = [], []
    for rec in records:
        x = sliding_windows(rec.signal, spec.length, hop)
        res = rt.predict(x, samples=a.samples)
        for i, r in enumerate(res.to_rows()):
            name = rec.meta.get("record_id", "signal")
            rows.append([name, i * hop, r["prediction"], r["confidence"], r["total"], r["aleatoric"], r["epistemic"]])
            out.append({"record": name, "start": i * hop, **r})
    print(format_table(("record", "start", "prediction", "confidence", "total", "aleatoric", "epistemic"), rows))
    print(f"\n{len(rows)} windows, S={a.samples or rt.default_samples}, bundle {rt.manifest.model_name} "
          f"{rt.manifest.model_version}")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))
        print(f"json: {a.json}")
    return 0


def _cmd_list(kind: str):
    def run(a: argparse.Namespace) -> int:
        from . import catalog

        if kind == "boards":
            print(catalog.format_boards_table())
        elif kind == "targets":
            print(catalog.format_targets_table())
        else:
            for r in catalog.load_recipes().values():
                print(f"{r.name:<20} {r.description}")
        return 0

    return run


def build_parser() -> argparse.ArgumentParser:
    from .cli_args import add_data_arguments

    p = argparse.ArgumentParser(prog="edgeuq", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="train the teacher, distil + quantize the student, calibrate, bundle and run both "
                                          "through the device runtime on the synthetic default; deploys the student")
    d.add_argument("--out", default="runs/demo", help="run directory (default runs/demo)")
    d.add_argument("--recipe", default="bearing-teacher", help="the teacher's recipe, name or .toml path "
                   "(default bearing-teacher)")
    d.add_argument("--epochs", type=int, help="override the recipe's epoch count")
    d.add_argument("--samples", type=int, help="MC samples S (default: recipe)")
    d.add_argument("--duration", type=float, help="seconds of synthetic signal per record")
    d.add_argument("--student-recipe", default="bearing-student",
                   help="recipe of the distilled student the demo deploys (its [model], [uq], [bundle])")
    d.add_argument("--student-epochs", type=int, help="distillation epochs (default 8)")
    d.add_argument("--no-student", action="store_true", help="teacher only (deploys the teacher)")
    d.add_argument("--no-cache", action="store_true",
                   help="regenerate the synthetic records instead of reading the content-addressed cache")
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(func=_cmd_demo)

    t = sub.add_parser("train", help="train a model of any stochastic scheme from a recipe (ELBO, ensembles, "
                                     "Laplace, temperature)")
    t.add_argument("--recipe", default="bearing-demo")
    add_data_arguments(t)
    t.add_argument("--epochs", type=int)
    t.add_argument("--out", required=True, help="checkpoint directory")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("export", help="export a checkpoint to trunk/head ONNX graphs")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--out", required=True)
    e.set_defaults(func=_cmd_export)

    b = sub.add_parser("bundle", help="build a verified runtime bundle from an ONNX export")
    b.add_argument("--onnx", required=True, help="directory written by `edgeuq export`")
    b.add_argument("--out", required=True)
    b.add_argument("--name", default="edgeuq-model")
    b.add_argument("--version", default="0.1.0")
    b.add_argument("--samples", type=int, default=16, help="default MC samples S")
    b.add_argument("--overwrite", action="store_true")
    b.set_defaults(func=_cmd_bundle)

    r = sub.add_parser("predict", help="run a bundle on a signal file or folder (.npz/.npy/.csv/.mat)")
    r.add_argument("--bundle", required=True)
    r.add_argument("--input", required=True)
    r.add_argument("--fs", type=float, help="sample rate of .npy/.csv inputs (resampled to the model's)")
    r.add_argument("--key", help="variable name inside .mat inputs")
    r.add_argument("--samples", type=int)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--hop", type=int, help="window step in samples (default: non-overlapping)")
    r.add_argument("--json", help="also write per-window results as JSON")
    r.set_defaults(func=_cmd_predict)

    for kind in ("boards", "targets", "recipes"):
        sub.add_parser(kind, help=f"list the {kind} shipped as data").set_defaults(func=_cmd_list(kind))
    for module in _command_modules():
        module.register(sub)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    from edgeuq_runtime.errors import RuntimeUQError

    from .catalog import DescriptorError
    from .data._errors import DataError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (RuntimeUQError, DescriptorError, DataError, FileNotFoundError, ValueError) as exc:
        print(f"edgeuq {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
