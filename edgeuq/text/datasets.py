"""Labelled text files for the text teacher: any TSV or CSV layout, any label spelling.

The file goes through the project's data-source registry
(:func:`edgeuq.data.sources.resolve_data_source`): a ``.tsv`` is the ``text``
source; a ``.csv`` or ``.txt`` is read as text here (the registry would take it
for signal samples, but this command reads text); anything else (a CWRU folder,
``.npz`` signals) is refused with the source it is. Columns and labels are read by
:func:`edgeuq.data.text.read_text_tsv`: a header naming ``sentence``/``text`` and
``label`` (or the columns given by name or 0-based index), labels as class indices
or names placed forgivingly (case, separators, ``--label-map``). Without given
class names they are read off the training labels
(:func:`edgeuq.data.text.discover_class_names`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np

from ..artifact import sha256_file
from ..data._errors import DataError
from ..data.sources import DataOptions, resolve_data_source
from ..data.text import TextDataset, read_text_tsv

__all__ = ["TEXT_SUFFIXES", "TextSplits", "read_labelled_text", "read_texts", "text_splits"]

#: File suffix -> field delimiter of the text files this module reads.
TEXT_SUFFIXES = {".tsv": "\t", ".txt": "\t", ".csv": ","}


def _delimiter(path: Path) -> str:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"text file not found: {path}")
    src = resolve_data_source(path)
    if not src.holds_text and (path.is_dir() or path.suffix.lower() not in TEXT_SUFFIXES):
        raise DataError(f"{path}: a {src.describe}, not a text file; give a .tsv or .csv file of texts and labels")
    return TEXT_SUFFIXES.get(path.suffix.lower(), "\t")


def read_labelled_text(path: Path, class_names: Optional[Sequence[str]], options: DataOptions = DataOptions(),
                       name: str = "") -> TextDataset:
    """Every row labelled (an unplaceable label raises, naming it and the classes);
    ``class_names=None``: the classes are this file's labels."""
    path = Path(path)
    ds = read_text_tsv(path, None if class_names is None else tuple(class_names), text_column=options.text_column,
                       label_column=options.label_column, label_map=options.label_map, delimiter=_delimiter(path))
    if np.any(ds.y < 0):
        raise DataError(f"{path}: {int(np.sum(ds.y < 0))} of {len(ds)} rows have no label column to read; "
                        "give the label column (name or 0-based index)")
    return replace(ds, name=name or ds.name)


def read_texts(path: Path, class_names: Sequence[str], options: DataOptions = DataOptions(),
               name: str = "") -> TextDataset:
    """The texts of a file (labels ignored: an out-of-distribution set). Its text column is
    ``options.text_column`` when the file has it, else ``sentence``/``text``, else column 0."""
    path = Path(path)

    def read(column):
        return read_text_tsv(path, tuple(class_names), text_column=column, label_column=None, allow_unknown=True,
                             label_map={}, delimiter=_delimiter(path))

    try:
        ds = read(options.text_column)
    except DataError:
        if options.text_column is None:
            raise
        ds = read(None)
    return replace(ds, y=np.full(len(ds), -1, dtype=np.int64), name=name or ds.name)


@dataclass(frozen=True)
class TextSplits:
    """Train / validation / test texts with one set of class names, OOD sets, and where each came from."""

    train: TextDataset
    val: TextDataset
    test: TextDataset
    ood: Tuple[TextDataset, ...]
    class_names: Tuple[str, ...]
    sources: dict   # split -> {"path", "sha256", "rows"} or {"held_out_from": "train", ...}


def _file_record(path: Path, rows: int) -> dict:
    return {"path": str(path), "sha256": sha256_file(path), "rows": int(rows)}


def text_splits(train: Path, val: Optional[Path] = None, test: Optional[Path] = None, ood: Sequence[Path] = (),
                class_names: Optional[Sequence[str]] = None, options: DataOptions = DataOptions(),
                held_out: float = 0.1, seed: int = 0) -> TextSplits:
    """Read the files; a missing validation or test file is held out of the training file
    (``held_out`` of its rows each, at least one, seeded random, disjoint)."""
    if not 0.0 < held_out < 0.5:
        raise ValueError(f"held_out must lie in (0, 0.5), got {held_out}")
    tr = read_labelled_text(Path(train), class_names, options, "train")
    names = tr.class_names
    if len(names) < 2:
        raise DataError(f"{train}: {len(names)} class ({list(names)}); a classifier needs at least two")
    sources = {"train": _file_record(Path(train), len(tr))}
    given = {k: read_labelled_text(Path(p), names, options, k) for k, p in (("val", val), ("test", test)) if p}
    for k, p in (("val", val), ("test", test)):
        if p:
            sources[k] = _file_record(Path(p), len(given[k]))
    missing = [k for k in ("val", "test") if k not in given]
    if missing:
        n_out = max(1, int(round(held_out * len(tr))))
        if len(tr) - n_out * len(missing) < 2:
            raise DataError(f"{train}: {len(tr)} rows are too few to hold out {' and '.join(missing)} rows; "
                            "give more rows or --val/--test files")
        perm = np.random.default_rng(seed).permutation(len(tr))
        for i, k in enumerate(missing):
            idx = np.sort(perm[i * n_out:(i + 1) * n_out])
            given[k] = replace(tr.subset(idx), name=k)
            sources[k] = {"held_out_from": "train", "rows": int(n_out), "seed": int(seed)}
        tr = replace(tr.subset(np.sort(perm[len(missing) * n_out:])), name="train")
        sources["train"]["rows_used"] = len(tr)
    present = set(np.unique(tr.y).tolist())
    if len(present) < 2:
        raise DataError(f"{train}: the training rows hold one class only ({names[int(tr.y[0])]!r})")
    labels = [f"ood:{Path(p).stem}" for p in ood]
    labels = [lab if labels.count(lab) == 1 else f"{lab}#{i + 1}" for i, lab in enumerate(labels)]
    oods = tuple(read_texts(Path(p), names, options, lab) for p, lab in zip(ood, labels))
    for p, ds in zip(ood, oods):
        sources[ds.name] = _file_record(Path(p), len(ds))
    return TextSplits(tr, given["val"], given["test"], oods, tuple(names), sources)
