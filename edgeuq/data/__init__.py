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
from . import _dataset, _errors, cwru, signals, synthetic, text, windowing
from ._dataset import *  # noqa: F401,F403  (each submodule's __all__ is the package's: one list per name)
from ._errors import *  # noqa: F401,F403
from .cwru import *  # noqa: F401,F403
from .signals import *  # noqa: F401,F403
from .synthetic import *  # noqa: F401,F403
from .text import *  # noqa: F401,F403
from .windowing import *  # noqa: F401,F403

__all__ = [*_dataset.__all__, *_errors.__all__, *windowing.__all__, *synthetic.__all__, *cwru.__all__,
           *signals.__all__, *text.__all__]
