"""Argument groups shared by the ``edgeuq`` subcommands (declared once, here).

    from edgeuq.cli_args import add_data_arguments, data_options, load_training_splits
    add_data_arguments(parser)                 # --data --fs --key --label-map
    splits = load_training_splits(args, recipe)
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional

__all__ = ["add_data_arguments", "add_text_column_arguments", "add_progress_argument", "data_options",
           "data_path", "load_training_splits", "DATA_HELP"]

DATA_HELP = ("CWRU folder (with MANIFEST.csv), a signal file (.npz/.npy/.csv/.mat) or a folder of them; "
             "default: the recipe's synthetic data")


def add_data_arguments(p: argparse.ArgumentParser, *, required: bool = False, help: str = DATA_HELP,
                       label_map: bool = True) -> argparse._ArgumentGroup:
    """``--data``, ``--fs``, ``--key`` and (``label_map``) ``--label-map``, in one group."""
    g = p.add_argument_group("data")
    g.add_argument("--data", required=required, help=help)
    g.add_argument("--fs", type=float, help="sample rate (Hz) of .npy/.csv inputs (resampled to the model's)")
    g.add_argument("--key", help="variable name inside .mat inputs")
    if label_map:
        g.add_argument("--label-map", metavar="MAP",
                       help="translate your labels to class names: 'InnerRace=inner_race,Ball=ball' or a "
                            ".json/.toml file of label = class (case and separators are matched anyway)")
    return g


def add_text_column_arguments(g: Any) -> None:
    g.add_argument("--text-column", help="TSV text column: a header name or a 0-based index "
                                         "(default: 'sentence' or 'text', or column 0 when there is no header)")
    g.add_argument("--label-column", help="TSV label column: a header name or a 0-based index "
                                          "(default: 'label', or column 1 when there is no header)")


def add_progress_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bars (one line per step instead)")


def data_path(a: argparse.Namespace) -> Optional[Path]:
    return Path(a.data) if getattr(a, "data", None) else None


def data_options(a: argparse.Namespace):
    """The :class:`~edgeuq.data.sources.DataOptions` the shared arguments describe."""
    from .data.labels import parse_label_map
    from .data.sources import DataOptions

    return DataOptions(fs=getattr(a, "fs", None), key=getattr(a, "key", None),
                       label_map=parse_label_map(getattr(a, "label_map", None)),
                       text_column=getattr(a, "text_column", None), label_column=getattr(a, "label_column", None))


def load_training_splits(a: argparse.Namespace, recipe):
    """Train/val/test splits from ``--data`` (or the recipe's synthetic data)."""
    from .data.sources import training_splits

    path = data_path(a)
    if path is None:
        from .pipeline import prepare_data

        return prepare_data(recipe).splits
    return training_splits(path, recipe, data_options(a))
