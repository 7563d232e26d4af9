"""Bearing-vibration data: containers, windowing and splits, synthetic data, loaders.

* :mod:`~edgeuq.data._dataset` -- :class:`SignalRecord`, :class:`WindowDataset`,
  :class:`Splits`, :data:`BEARING_CLASSES`.
* :mod:`~edgeuq.data.windowing` -- sliding windows, anti-aliased resampling,
  time-disjoint splits (in-domain, leave-load-out), additive noise at an SNR.
* :mod:`~edgeuq.data.synthetic` -- the embedded, seeded, physics-based default
  dataset (CWRU-like drive-end signals; no download needed).
* :mod:`~edgeuq.data.cwru` -- the CWRU 12 kHz drive-end recordings.
* :mod:`~edgeuq.data.signals` -- a user's own ``.npz/.npy/.csv/.mat`` signals.
* :mod:`~edgeuq.data.text` -- labelled text (SST-2, TREC, any TSV) and word tokenization.
"""
from ._dataset import (
    BEARING_CLASSES,
    WINDOW_META_KEYS,
    SignalRecord,
    Splits,
    WindowDataset,
    concat_datasets,
)
from ._errors import DataError, DataIntegrityError
from .cwru import CWRU_FAULT_LABELS, load_cwru, parse_cwru_filename
from .signals import SUPPORTED_EXTENSIONS, load_signal_file, load_signals
from .synthetic import (
    FAULT_KINDS,
    BearingGeometry,
    FaultSource,
    SyntheticBearingConfig,
    make_synthetic_splits,
    shaft_rpm,
    simulate_bearing_signal,
    synthetic_ood_dataset,
    synthetic_records,
)
from .text import (
    SST2_CLASSES,
    TextDataset,
    TokenDataset,
    build_word_tokenizer,
    load_sst2,
    load_trec,
    read_text_tsv,
    tokenize_dataset,
)
from .windowing import (
    add_noise,
    resample,
    resample_record,
    sliding_windows,
    split_by_load,
    split_in_domain,
    window_records,
)

__all__ = [
    # containers
    "BEARING_CLASSES",
    "WINDOW_META_KEYS",
    "SignalRecord",
    "WindowDataset",
    "Splits",
    "concat_datasets",
    # errors
    "DataError",
    "DataIntegrityError",
    # windowing and splits
    "sliding_windows",
    "resample",
    "resample_record",
    "window_records",
    "split_in_domain",
    "split_by_load",
    "add_noise",
    # synthetic
    "BearingGeometry",
    "FaultSource",
    "FAULT_KINDS",
    "SyntheticBearingConfig",
    "shaft_rpm",
    "simulate_bearing_signal",
    "synthetic_records",
    "make_synthetic_splits",
    "synthetic_ood_dataset",
    # loaders
    "load_cwru",
    "parse_cwru_filename",
    "CWRU_FAULT_LABELS",
    "load_signal_file",
    "load_signals",
    "SUPPORTED_EXTENSIONS",
    # text
    "SST2_CLASSES",
    "TextDataset",
    "TokenDataset",
    "read_text_tsv",
    "load_sst2",
    "load_trec",
    "build_word_tokenizer",
    "tokenize_dataset",
]
