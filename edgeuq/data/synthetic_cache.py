"""A content-addressed cache of the synthetic generator's records.

:func:`synthetic_records` is deterministic in its configuration, the kinds asked for and the
generator's code, so its output is stored under the sha256 of exactly those three
(:func:`records_digest`): a second demo run, or a test that asks for the same records, reads
them back instead of simulating again. Any change of a configuration field, of the kinds or of
``synthetic.py`` gives another digest (a new entry; stale entries are never read).

An entry is ``<digest>.npz`` (every record's signal, concatenated, plus offsets) and
``<digest>.json`` (metadata, labels, and the sha256 of the signal bytes, checked on read).
Both are written to temporary names and renamed, the JSON last, so a crash never leaves an
entry that reads as complete. A damaged entry (bad JSON, size or checksum) raises
:class:`SyntheticCacheError` naming the file; it is never silently regenerated.

The folder: ``cache_dir`` if given, else ``$EDGEUQ_CACHE_DIR/synthetic``, else
``$XDG_CACHE_HOME/edgeuq/synthetic`` (``~/.cache/edgeuq/synthetic``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np

from ._dataset import SignalRecord
from ._errors import DataError
from .synthetic import SyntheticBearingConfig, synthetic_records

__all__ = ["default_cache_dir", "records_digest", "cached_synthetic_records", "SyntheticCacheError"]

_FORMAT = 1


class SyntheticCacheError(DataError):
    """A cache entry exists but is damaged (named in the message)."""


def default_cache_dir() -> Path:
    env = os.environ.get("EDGEUQ_CACHE_DIR")
    if env:
        return Path(env) / "synthetic"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "edgeuq" / "synthetic"


def _generator_source_digest() -> str:
    from . import synthetic

    return hashlib.sha256(Path(synthetic.__file__).read_bytes()).hexdigest()


def records_digest(config: SyntheticBearingConfig, kinds: Optional[Sequence[str]] = None) -> str:
    """sha256 of the configuration (every field, the geometry included), the kinds and the
    generator's source: what the records depend on."""
    kinds = tuple(config.kinds if kinds is None else kinds)
    doc = {"format": _FORMAT, "config": dataclasses.asdict(config), "kinds": list(kinds),
           "generator_sha256": _generator_source_digest()}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=repr).encode()).hexdigest()


def _write(records: Sequence[SignalRecord], npz: Path, meta: Path) -> None:
    signals = [np.ascontiguousarray(r.signal, dtype=np.float32) for r in records]
    flat = np.concatenate(signals) if signals else np.zeros(0, np.float32)
    offsets = np.cumsum([0] + [len(s) for s in signals]).astype(np.int64)
    tmp_npz = npz.with_name(f".{npz.name}.{os.getpid()}.tmp")
    with open(tmp_npz, "wb") as fh:
        np.savez(fh, signal=flat, offsets=offsets)
    os.replace(tmp_npz, npz)
    doc = {"format": _FORMAT, "signal_sha256": hashlib.sha256(flat.tobytes()).hexdigest(),
           "records": [{"fs": r.fs, "label": r.label, "meta": dict(r.meta)} for r in records]}
    tmp_meta = meta.with_name(f".{meta.name}.{os.getpid()}.tmp")
    tmp_meta.write_text(json.dumps(doc))
    os.replace(tmp_meta, meta)


def _read(npz: Path, meta: Path) -> list:
    try:
        doc = json.loads(meta.read_text())
        with np.load(npz) as z:
            flat, offsets = z["signal"], z["offsets"]
    except (OSError, ValueError, KeyError) as exc:
        raise SyntheticCacheError(f"synthetic cache entry {meta} / {npz} is damaged ({exc}); delete both files") \
            from None
    if doc.get("format") != _FORMAT or len(offsets) != len(doc.get("records", ())) + 1:
        raise SyntheticCacheError(f"synthetic cache entry {meta}: format or record count does not match {npz}; "
                                  "delete both files")
    if hashlib.sha256(np.ascontiguousarray(flat, dtype=np.float32).tobytes()).hexdigest() != doc["signal_sha256"]:
        raise SyntheticCacheError(f"synthetic cache entry {npz}: signal checksum differs from {meta}; delete both files")
    return [SignalRecord(signal=flat[offsets[i]:offsets[i + 1]], fs=float(r["fs"]), label=r["label"], meta=r["meta"])
            for i, r in enumerate(doc["records"])]


def cached_synthetic_records(config: SyntheticBearingConfig, kinds: Optional[Sequence[str]] = None,
                             cache_dir: Optional[Path] = None) -> Tuple[list, bool]:
    """:func:`synthetic_records` ``(config, kinds)``, read from the cache when present.
    Returns ``(records, hit)``; ``hit`` says whether they came from the cache."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    digest = records_digest(config, kinds)
    npz, meta = folder / f"{digest}.npz", folder / f"{digest}.json"
    if meta.is_file():
        return _read(npz, meta), True
    records = synthetic_records(config, kinds=kinds)
    folder.mkdir(parents=True, exist_ok=True)
    _write(records, npz, meta)
    return records, False
