"""Where data comes from: one registry of data sources, one resolver.

Every command that takes ``--data`` resolves it here. Each source *declares* what it reads,
and the path goes to the source that claims it most specifically:

=============  ================================================  =====================
``cwru``       a folder holding ``MANIFEST.csv`` (the CWRU layout)  specific (marker file)
``text``       a ``.tsv`` file (labelled text; token models)       specific (suffix)
``signals``    a ``.npz/.npy/.csv/.txt/.mat`` file                  specific (suffix)
               or a folder of them                                  generic (folder)
``synthetic``  no path: the recipe's embedded synthetic data        (no path)
=============  ================================================  =====================

A specific claim (a suffix, a marker file, a custom ``detect``) beats a generic one (a folder
holding files of the source's suffixes); two equal best claims are an error naming both.
So a new ``.h5`` source is resolved for ``.h5`` files only, and a CWRU folder (which holds
``.mat`` files) stays ``cwru``. Properties that callers need are declared here too
(``native_rates``, ``held_out_split``, ``holds_text``), so nothing compares source names.

A new source registers a :class:`DataSource` with :func:`register_data_source` (or an
``edgeuq.data_source`` entry point naming a module that does).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple

from ..registry import Registry
from ._dataset import SignalRecord
from ._errors import DataError
from .labels import LabelMapper, UnknownLabelsError
from .signals import SUPPORTED_EXTENSIONS

__all__ = [
    "DataOptions", "DataSource", "DATA_SOURCES", "register_data_source", "resolve_data_source", "load_records",
    "relabel_records", "training_splits", "NO_CLAIM", "GENERIC", "SPECIFIC",
]

#: how strongly a source claims a path
NO_CLAIM, GENERIC, SPECIFIC = 0, 1, 2


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
    """A kind of data and what it claims.

    * ``detect(path) -> bool``: a custom test; True is a specific claim;
    * ``suffixes``: files it reads (a file with one of them: a specific claim);
    * ``marker``: a folder holding this file is its (a specific claim);
    * ``reads_folders``: a folder holding files of ``suffixes`` is its (a generic claim);
    * ``takes_no_path``: the source used when no ``--data`` is given;
    * capabilities: ``native_rates`` (records are loaded at their own sample rates and
      resampled when windowed), ``held_out_split`` (evaluation defaults to the held-out test
      split: the folder is a training corpus), ``holds_text`` (labelled texts, not signals).
    """

    name: str
    describe: str
    detect: Optional[Callable[[Optional[Path]], bool]] = None
    load: Optional[Callable[[Path, DataOptions, Optional[float]], List[SignalRecord]]] = None  # signal sources
    suffixes: Tuple[str, ...] = ()
    marker: Optional[str] = None
    reads_folders: bool = False
    takes_no_path: bool = False
    native_rates: bool = False
    held_out_split: bool = False
    holds_text: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "suffixes", tuple(x.lower() for x in self.suffixes))
        bad = [x for x in self.suffixes if not x.startswith(".")]
        if bad:
            raise ValueError(f"data source {self.name!r}: suffixes start with a dot, got {bad}")
        if not (self.detect or self.suffixes or self.marker or self.takes_no_path):
            raise ValueError(f"data source {self.name!r} claims nothing: give detect, suffixes, marker "
                             f"or takes_no_path")

    def claim(self, path: Optional[Path]) -> int:
        """NO_CLAIM, GENERIC or SPECIFIC for ``path`` (None = no ``--data``)."""
        if path is None:
            return SPECIFIC if self.takes_no_path else NO_CLAIM
        if self.detect is not None and self.detect(path):
            return SPECIFIC
        if path.is_dir():
            if self.marker and (path / self.marker).is_file():
                return SPECIFIC
            if self.reads_folders and self.suffixes and any(
                    f.is_file() and f.suffix.lower() in self.suffixes for f in path.iterdir()):
                return GENERIC
            return NO_CLAIM
        return SPECIFIC if path.suffix.lower() in self.suffixes else NO_CLAIM


#: name -> data source, in registration order
DATA_SOURCES: Registry[DataSource] = Registry("data_source", label="data source", name_attr=None)


def register_data_source(source: DataSource) -> DataSource:
    """Add ``source`` (a name already registered is an error)."""
    return DATA_SOURCES.add(source.name, source)


def _load_cwru(path: Path, opts: DataOptions, target_fs: Optional[float]) -> List[SignalRecord]:
    from .cwru import load_cwru

    return load_cwru(path, target_fs=target_fs) if target_fs else load_cwru(path)


def _load_signal_files(path: Path, opts: DataOptions, target_fs: Optional[float]) -> List[SignalRecord]:
    from .signals import load_signals

    return load_signals(path, fs=opts.fs, key=opts.key, target_fs=target_fs)


register_data_source(DataSource("cwru", "CWRU folder", load=_load_cwru, marker="MANIFEST.csv", native_rates=True,
                                 held_out_split=True))
register_data_source(DataSource("text", "text TSV", suffixes=(".tsv",), holds_text=True))
register_data_source(DataSource("signals", "signal file(s)", load=_load_signal_files, suffixes=SUPPORTED_EXTENSIONS,
                                reads_folders=True))
register_data_source(DataSource("synthetic", "the recipe's synthetic data", takes_no_path=True))


def resolve_data_source(path: Optional[Path]) -> DataSource:
    """The source that claims ``path`` most specifically (None = no ``--data``); no claim, or two
    equal best claims, raise a DataError naming the sources."""
    p = None if path is None else Path(path)
    claims = [(src.claim(p), src) for src in DATA_SOURCES.values_()]
    best = max((c for c, _ in claims), default=NO_CLAIM)
    if best == NO_CLAIM:
        raise DataError(f"{path}: not a data source edgeuq knows ({', '.join(DATA_SOURCES)})")
    winners = [src for c, src in claims if c == best]
    if len(winners) > 1:
        raise DataError(f"{path}: ambiguous data: claimed equally by the data sources "
                        f"{[w.name for w in winners]}; make one of them more specific")
    return winners[0]


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
    records, _ = load_records(Path(data), options, None if src.native_rates else fs)
    classes = tuple(d["classes"])
    records = relabel_records(records, classes, options.label_map, where=str(data))
    return split_in_domain(records, window, hop, class_names=classes, target_fs=fs,
                           front_end=front_end_from_recipe(d))
