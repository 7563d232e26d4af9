"""Calibration windows for a checkpoint: the recipe's synthetic data by default,
or a CWRU folder / signal files, windowed at the checkpoint's length and rate
with the checkpoint's class names (records of other classes are left out)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..data.sources import DataOptions, resolve_data_source
from ..training import Checkpoint

__all__ = ["CalibrationData", "calibration_data"]


@dataclass(frozen=True, eq=False)
class CalibrationData:
    x: np.ndarray
    y: np.ndarray
    description: str


def calibration_data(
    checkpoint: Checkpoint,
    recipe: str = "bearing-demo",
    data: Optional[Path] = None,
    fs: Optional[float] = None,
    key: Optional[str] = None,
    split: str = "train",
    max_windows: int = 512,
    seed: int = 0,
    options: Optional[DataOptions] = None,
) -> CalibrationData:
    """Windows of ``split`` ("train", "val" or "test"), at most ``max_windows`` (random, seeded)."""
    from ..catalog import get_recipe
    from ..data import split_in_domain
    from ..data.sources import load_records, relabel_records
    from ..pipeline import prepare_data

    rec = get_recipe(recipe)
    window = checkpoint.config.input_length
    classes = tuple(checkpoint.class_names)
    if data is None:
        if int(rec.data["window"]) != window:
            raise ValueError(f"recipe {rec.name!r} windows are {rec.data['window']} samples but the checkpoint "
                             f"expects {window}; pass --data or a matching --recipe")
        splits = prepare_data(rec).splits
        where = f"synthetic data of recipe {rec.name!r}"
    else:
        path = Path(data)
        opts = options if options is not None else DataOptions(fs=fs, key=key)
        native = resolve_data_source(path).native_rates  # e.g. CWRU: native rates here, resampled when windowed
        records, src = load_records(path, opts, None if native else checkpoint.sample_rate_hz)
        where = f"{src.describe} {path}"
        records = [r for r in relabel_records(records, classes, opts.label_map, allow_unknown=True)
                   if r.label in classes]
        if not records:
            raise ValueError(f"no record in {path} has one of the checkpoint's classes {list(classes)}")
        splits = split_in_domain(records, window, int(rec.data["hop"]), class_names=classes,
                                 target_fs=checkpoint.sample_rate_hz)
    if tuple(splits.class_names) != classes:
        raise ValueError(f"data classes {list(splits.class_names)} differ from the checkpoint's {list(classes)}")
    ds = {"train": splits.train, "val": splits.val, "test": splits.test}.get(split)
    if ds is None:
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    idx = np.arange(len(ds))
    if len(idx) > max_windows:
        idx = np.sort(np.random.default_rng(seed).choice(len(ds), max_windows, replace=False))
    return CalibrationData(np.ascontiguousarray(ds.x[idx], dtype=np.float32), np.asarray(ds.y[idx]),
                           f"{len(idx)} {split} windows of {where}")
