"""Where data comes from: one registry of data sources, one resolver.

Every command that takes ``--data`` resolves it here, in registration order:

=============  ==========================================================
``cwru``       a folder holding ``MANIFEST.csv`` (the CWRU layout)
``text``       a ``.tsv`` file (labelled text; token models)
``signals``    a ``.npz/.npy/.csv/.txt/.mat`` file or a folder of them
``synthetic``  no path: the recipe's embedded synthetic data
=============  ==========================================================

A new source registers a :class:`DataSource` with :func:`register_data_source`
(``detect(path) -> bool`` and ``load(path, options) -> records``).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from ._dataset import SignalRecord
from ._errors import DataError
from .labels import LabelMapper, UnknownLabelsError

__all__ = [
    "DataOptions", "DataSource", "DATA_SOURCES", "register_data_source", "resolve_data_source", "load_records",
    "relabel_records", "training_splits",
]


@dataclass(frozen=True)
class DataOptions:
    """What a user can say about their data (the shared ``--data`` argument group)."""

    fs: Optional[float] = None          # sample rate of .npy/.csv inputs
    key: Optional[str] = None           # variable inside .mat inputs
    label_map: Mapping[str, str] = field(default_factory=dict)
    text_column: Optional[str] = None   # TSV: column name or 0-based index
    label_column: Optional[str] = None


@dataclass(frozen=True)
class DataSource:
    name: str
    describe: str
    detect: Callable[[Optional[Path]], bool]
    load: Optional[Callable[[Path, DataOptions, Optional[float]], List[SignalRecord]]] = None  # signal sources


DATA_SOURCES: Dict[str, DataSource] = {}


def register_data_source(source: DataSource) -> DataSource:
    if source.name in DATA_SOURCES:
        raise ValueError(f"data source {source.name!r} is already registered")
    DATA_SOURCES[source.name] = source
    return source


def _load_cwru(path: Path, opts: DataOptions, target_fs: Optional[float]) -> List[SignalRecord]:
    from .cwru import load_cwru

    return load_cwru(path, target_fs=target_fs) if target_fs else load_cwru(path)


def _load_signal_files(path: Path, opts: DataOptions, target_fs: Optional[float]) -> List[SignalRecord]:
    from .signals import load_signals

    return load_signals(path, fs=opts.fs, key=opts.key, target_fs=target_fs)


register_data_source(DataSource(
    "cwru", "CWRU folder", lambda p: p is not None and p.is_dir() and (p / "MANIFEST.csv").is_file(), _load_cwru))
register_data_source(DataSource(
    "text", "text TSV", lambda p: p is not None and p.suffix.lower() == ".tsv" and not p.is_dir()))
register_data_source(DataSource("signals", "signal file(s)", lambda p: p is not None, _load_signal_files))
register_data_source(DataSource("synthetic", "the recipe's synthetic data", lambda p: p is None))


def resolve_data_source(path: Optional[Path]) -> DataSource:
    """The first registered source whose ``detect`` accepts ``path`` (None = no ``--data``)."""
    p = None if path is None else Path(path)
    for src in DATA_SOURCES.values():
        if src.detect(p):
            return src
    raise DataError(f"{path}: not a data source edgeuq knows ({', '.join(DATA_SOURCES)})")


def load_records(path: Path, options: DataOptions = DataOptions(),
                 target_fs: Optional[float] = None) -> Tuple[List[SignalRecord], DataSource]:
    """Signal records from a CWRU folder or signal files (resampled to ``target_fs``)."""
    src = resolve_data_source(path)
    if src.load is None:
        raise DataError(f"{path}: a {src.describe} holds no vibration signals; this command needs a CWRU folder "
                        f"or .npz/.npy/.csv/.mat signal files")
    return src.load(Path(path), options, target_fs), src


def relabel_records(records: Sequence[SignalRecord], class_names: Sequence[str],
                    label_map: Mapping[str, str] = {}, allow_unknown: bool = False,
                    where: str = "data") -> List[SignalRecord]:
    """Records with labels placed among ``class_names`` (case/separator-insensitive, then
    ``label_map``). Labels that cannot be placed raise :class:`UnknownLabelsError`, or
    (``allow_unknown``) become None (unlabelled)."""
    mapper = LabelMapper(tuple(class_names), dict(label_map))
    unknown = mapper.unknown(r.label for r in records)
    if unknown and not allow_unknown:
        raise UnknownLabelsError(where, unknown, mapper.class_names)
    out = []
    for r in records:
        lab = mapper.resolve(r.label)
        out.append(r if lab == r.label else replace(r, label=lab))
    return out


def training_splits(data: Path, recipe: Any, options: DataOptions = DataOptions()):
    """Train/val/test splits of a CWRU folder or signal files, windowed at the recipe's
    window, hop and rate, time-disjoint (the recipe's synthetic data is
    ``edgeuq.pipeline.prepare_data(recipe).splits``; ``edgeuq.cli_args.load_training_splits``
    picks between them)."""
    from .windowing import front_end_from_recipe, split_in_domain

    if data is None:
        raise DataError("training_splits needs a data path; the synthetic default is pipeline.prepare_data(recipe)")
    src = resolve_data_source(data)
    d = recipe.data
    window, hop, fs = int(d["window"]), int(d["hop"]), float(d["fs_hz"])
    records, _ = load_records(Path(data), options, None if src.name == "cwru" else fs)
    classes = tuple(d["classes"])
    records = relabel_records(records, classes, options.label_map, where=str(data))
    return split_in_domain(records, window, hop, class_names=classes, target_fs=fs,
                           front_end=front_end_from_recipe(d))
