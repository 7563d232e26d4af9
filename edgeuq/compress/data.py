"""Evaluation sets for compression: in-domain splits, a cross-load set and an unseen-fault OOD set."""
from __future__ import annotations

from dataclasses import dataclass

from ..data import BEARING_CLASSES, Splits, WindowDataset, split_in_domain, window_records

__all__ = ["CompressData", "compress_data"]


@dataclass(frozen=True, eq=False)
class CompressData:
    splits: Splits          # loads except the highest, fault sizes except the largest; time-disjoint 70/15/15
    cross_load: WindowDataset  # the highest load's records (same classes, unseen operating condition)
    ood: WindowDataset      # every record of the largest fault size (unseen severity), unlabelled for OOD
    description: str


def compress_data(records, window: int, hop: int) -> CompressData:
    """Split bearing records (CWRU or synthetic; ``meta`` has ``severity`` and ``load_hp``)."""
    faults = sorted({float(r.meta["severity"]) for r in records if r.label != "normal"})
    loads = sorted({float(r.meta["load_hp"]) for r in records})
    if len(faults) < 2 or len(loads) < 2:
        raise ValueError(f"need >= 2 fault sizes and >= 2 loads, got sizes {faults} and loads {loads}")
    ood_size, cross = faults[-1], loads[-1]
    held = [r for r in records if r.label != "normal" and abs(float(r.meta["severity"]) - ood_size) < 1e-9]
    kept = [r for r in records if not any(r is h for h in held)]
    train = [r for r in kept if float(r.meta["load_hp"]) != cross]
    cross_recs = [r for r in kept if float(r.meta["load_hp"]) == cross]
    splits = split_in_domain(train, window, hop, class_names=BEARING_CLASSES)
    desc = (f"train/val/test: {len(train)} records at loads {loads[:-1]} hp (fault sizes {faults[:-1]}), "
            f"cross-load: {len(cross_recs)} records at {cross:g} hp, OOD: {len(held)} records of fault size "
            f"{ood_size:g}")
    return CompressData(splits, window_records(cross_recs, window, window, class_names=BEARING_CLASSES),
                        window_records(held, window, window, class_names=BEARING_CLASSES, allow_unknown=True), desc)
