"""The benchmark's data splits: CWRU (in-domain, cross-load, unseen fault, noise) and SST-2/TREC."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Mapping, Optional, Tuple

import numpy as np

from edgeuq_runtime.tokenizer import WordTokenizer

from ..data import (
    BEARING_CLASSES, Splits, add_noise, build_word_tokenizer, load_cwru, load_sst2, load_trec, split_by_load,
    split_in_domain, tokenize_dataset, window_records,
)
from .settings import BenchmarkSettings

__all__ = ["Task", "bearing_tasks", "text_task"]

Log = Callable[[str], None]
FAULT_CLASSES: Tuple[str, ...] = ("inner_race", "outer_race", "ball")


@dataclass(frozen=True, eq=False)
class Task:
    """One train/val/test problem plus its shifted (labelled) and OOD (unlabelled) sets."""

    name: str
    class_names: Tuple[str, ...]
    train: Tuple[np.ndarray, np.ndarray]
    val: Tuple[np.ndarray, np.ndarray]
    test: Tuple[np.ndarray, np.ndarray]
    fs: float
    normalization: str
    description: str
    shifts: Mapping[str, Tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    ood: Mapping[str, np.ndarray] = field(default_factory=dict)
    tokenizer: Optional[WordTokenizer] = None
    #: labels of an OOD set where they exist (e.g. the fault type of an unseen fault size)
    ood_labels: Mapping[str, np.ndarray] = field(default_factory=dict)

    @property
    def input_length(self) -> int:
        return int(self.train[0].shape[1])

    def sizes(self) -> str:
        parts = [f"train {len(self.train[1])}", f"val {len(self.val[1])}", f"test {len(self.test[1])}"]
        parts += [f"{k} {len(v)}" for k, v in self.ood.items()]
        return ", ".join(parts)


def _xy(ds) -> Tuple[np.ndarray, np.ndarray]:
    return ds.x, ds.y


def _from_splits(name: str, sp: Splits, desc: str, **kw) -> Task:
    return Task(name, sp.class_names, _xy(sp.train), _xy(sp.val), _xy(sp.test), sp.fs, "zscore", desc, **kw)


def bearing_tasks(cwru_dir: Path, s: BenchmarkSettings, log: Log = print) -> List[Task]:
    """Three trained tasks on CWRU 12 kHz drive-end data (windows of ``s.window``):

    * ``cwru_in_domain``: every record, first 70 % of each in time for training,
      15 % validation, last 15 % test (windows disjoint in time); four classes;
      plus the test set with white noise at each SNR of ``s.snr_db`` (shifts).
    * ``cwru_cross_load``: fault records only (normal exists at 0 hp only), three
      fault classes; train/val on loads 0-2 hp, test on ``s.cross_load_test`` hp.
    * ``cwru_unseen_fault``: records of fault size ``s.unseen_fault_size`` held out
      as the OOD set; the rest split as in-domain (four classes).
    """
    records = load_cwru(cwru_dir)
    w, hop = s.window, s.train_hop
    tasks = []
    sp = split_in_domain(records, w, hop, class_names=BEARING_CLASSES)
    shifts = {f"snr {snr:g} dB": _xy(add_noise(sp.test, snr, seed=100 + i)) for i, snr in enumerate(s.snr_db)}
    tasks.append(_from_splits("cwru_in_domain", sp, f"CWRU 12k DE, {len(records)} records, all loads, time-disjoint "
                              f"70/15/15, windows {w} hop {hop}", shifts=shifts))
    faults = [r for r in records if r.label != "normal"]
    sp = split_by_load(faults, [s.cross_load_test], w, hop, class_names=FAULT_CLASSES)
    tasks.append(_from_splits("cwru_cross_load", sp, f"CWRU fault records, train/val 0-2 hp, test "
                              f"{s.cross_load_test:g} hp, 3 fault classes, windows {w} hop {hop}"))
    held = [r for r in records if abs(float(r.meta["severity"]) - s.unseen_fault_size) < 1e-6]
    kept = [r for r in records if abs(float(r.meta["severity"]) - s.unseen_fault_size) >= 1e-6]
    sp = split_in_domain(kept, w, hop, class_names=BEARING_CLASSES)
    ood = window_records(held, w, s.eval_hop, class_names=BEARING_CLASSES, allow_unknown=True)
    tasks.append(_from_splits("cwru_unseen_fault", sp, f"CWRU without fault size {s.unseen_fault_size:g} in "
                              f"({len(kept)} records), time-disjoint 70/15/15; OOD: {len(held)} records of that size",
                              ood={f"fault size {s.unseen_fault_size:g} in": ood.x},
                              ood_labels={f"fault size {s.unseen_fault_size:g} in": ood.y}))
    for t in tasks:
        log(f"task {t.name}: {t.sizes()}")
    return tasks


def text_task(text_dir: Path, s: BenchmarkSettings, log: Log = print) -> Task:
    """SST-2 (train: GLUE train phrases, val: dev, test: GLUE dev sentences) with a word
    tokenizer built from the training texts; OOD: the 500 TREC test questions."""
    text_dir = Path(text_dir)
    sst = load_sst2(text_dir / "sst2")
    train = sst["train"]
    if s.text_max_train and len(train) > s.text_max_train:
        train = train.subset(np.random.default_rng(0).permutation(len(train))[: s.text_max_train])
    tok = build_word_tokenizer(train.texts, s.text_length, min_freq=s.text_min_freq)
    enc = {k: tokenize_dataset(tok, v) for k, v in (("train", train), ("dev", sst["dev"]), ("test", sst["test"]))}
    trec = tokenize_dataset(tok, load_trec(text_dir / "trec", "test"))
    task = Task("sst2", train.class_names, (enc["train"].x, enc["train"].y), (enc["dev"].x, enc["dev"].y),
                (enc["test"].x, enc["test"].y), 1.0, "none",
                f"SST-2 ({len(train)} training phrases), word tokenizer (vocab {tok.vocab_size}, min freq "
                f"{s.text_min_freq}, length {s.text_length}); OOD: TREC test questions",
                ood={"TREC questions": trec.x}, tokenizer=tok)
    log(f"task {task.name}: {task.sizes()}, vocab {tok.vocab_size}")
    return task
