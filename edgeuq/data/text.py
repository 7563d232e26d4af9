"""Text classification data: labelled TSV files, SST-2 / TREC layouts, tokenization.

Layouts (the root folders are passed in; nothing here knows where they live):

* SST-2: ``root/{train,dev,test}.tsv`` with a header ``sentence<TAB>label``,
  label 0 = negative, 1 = positive (GLUE's files; GLUE's dev set serves as test).
* TREC: ``root/{train,test}.tsv`` with a header ``text<TAB>label_coarse<TAB>label_fine``.
* Any TSV: a header row, a text column and (optionally) a label column holding
  class indices or class names.

Token ids come from :class:`edgeuq_runtime.tokenizer.WordTokenizer` — the same
code the device runs on the bundled vocabulary — built here from training texts
with :func:`build_word_tokenizer`.
"""
from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from edgeuq_runtime.tokenizer import PAD_TOKEN, UNK_TOKEN, WordTokenizer, split_words

from ._errors import DataError

__all__ = [
    "SST2_CLASSES", "TextDataset", "TokenDataset", "read_text_tsv", "load_sst2", "load_trec",
    "build_word_tokenizer", "tokenize_dataset",
]

SST2_CLASSES: tuple[str, ...] = ("negative", "positive")
_TEXT_COLUMNS = ("sentence", "text")


@dataclass(frozen=True, eq=False)
class TextDataset:
    """Texts with integer labels (``-1`` = unlabelled / out-of-distribution)."""

    texts: tuple[str, ...]
    y: np.ndarray
    class_names: tuple[str, ...]
    name: str = ""

    def __post_init__(self) -> None:
        texts = tuple(self.texts)
        y = np.asarray(self.y, dtype=np.int64)
        if y.shape != (len(texts),):
            raise DataError(f"{self.name or 'TextDataset'}: {len(texts)} texts but labels of shape {y.shape}")
        if len(y) and (y.min() < -1 or y.max() >= len(self.class_names)):
            raise DataError(f"{self.name or 'TextDataset'}: labels must lie in [-1, {len(self.class_names) - 1}]")
        object.__setattr__(self, "texts", texts)
        object.__setattr__(self, "y", y)
        object.__setattr__(self, "class_names", tuple(self.class_names))

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, index: np.ndarray) -> "TextDataset":
        idx = np.asarray(index, dtype=np.int64)
        return replace(self, texts=tuple(self.texts[i] for i in idx), y=self.y[idx])


@dataclass(frozen=True, eq=False)
class TokenDataset:
    """Token ids (N, L) int64 with labels, e.g. ``tokenize_dataset(tok, texts)``."""

    x: np.ndarray
    y: np.ndarray
    class_names: tuple[str, ...]
    name: str = ""

    def __post_init__(self) -> None:
        x = np.asarray(self.x)
        if x.ndim != 2 or not np.issubdtype(x.dtype, np.integer):
            raise DataError(f"{self.name or 'TokenDataset'}: ids must be an integer (N, L) array, got {x.dtype} {x.shape}")
        object.__setattr__(self, "x", np.ascontiguousarray(x, dtype=np.int64))
        object.__setattr__(self, "y", np.asarray(self.y, dtype=np.int64))

    def __len__(self) -> int:
        return int(self.x.shape[0])


def read_text_tsv(path: str | Path, class_names: Sequence[str], text_column: Optional[str] = None,
                  label_column: Optional[str] = None, allow_unknown: bool = False) -> TextDataset:
    """Read a TSV with a header. The text column is ``text_column`` or the first of
    ``sentence``/``text``; the label column is ``label_column`` or ``label`` when
    present (values: class indices or names). Labels outside ``class_names``
    raise, or become -1 with ``allow_unknown``. Without a label column every
    label is -1."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text file not found: {path}")
    names = tuple(class_names)
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(f"{path}: empty file") from None
        rows = [r for r in reader if r and any(c.strip() for c in r)]
    col = {h.strip(): i for i, h in enumerate(header)}
    tcol = text_column or next((c for c in _TEXT_COLUMNS if c in col), None)
    if tcol is None or tcol not in col:
        raise DataError(f"{path}: no text column ({text_column or ' or '.join(_TEXT_COLUMNS)}) in header {header}")
    lcol = label_column or ("label" if "label" in col else None)
    if lcol is not None and lcol not in col:
        raise DataError(f"{path}: label column {lcol!r} not in header {header}")
    texts, labels, unknown = [], [], set()
    for n, row in enumerate(rows, start=2):
        if len(row) <= col[tcol]:
            raise DataError(f"{path}:{n}: row has {len(row)} fields, text column {tcol!r} missing")
        texts.append(row[col[tcol]].strip())
        if lcol is None:
            labels.append(-1)
            continue
        raw = row[col[lcol]].strip() if len(row) > col[lcol] else ""
        if raw in names:
            labels.append(names.index(raw))
        elif raw.lstrip("-").isdigit() and 0 <= int(raw) < len(names):
            labels.append(int(raw))
        elif allow_unknown:
            labels.append(-1)
        else:
            unknown.add(raw)
    if unknown:
        raise DataError(f"{path}: labels {sorted(unknown)[:5]} are not classes {list(names)} (nor indices)")
    if not texts:
        raise DataError(f"{path}: no rows")
    return TextDataset(tuple(texts), np.asarray(labels, dtype=np.int64), names, path.stem)


def load_sst2(root: str | Path) -> dict[str, TextDataset]:
    """``{"train", "dev", "test"}`` from an SST-2 folder (classes negative, positive)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"SST-2 folder not found: {root} (expected train.tsv, dev.tsv, test.tsv)")
    return {split: replace(read_text_tsv(root / f"{split}.tsv", SST2_CLASSES), name=f"sst2-{split}")
            for split in ("train", "dev", "test")}


def load_trec(root: str | Path, split: str = "test", class_names: Sequence[str] = SST2_CLASSES) -> TextDataset:
    """TREC questions as an unlabelled (label -1) set against ``class_names``
    (an out-of-distribution set for a sentiment model)."""
    path = Path(root) / f"{split}.tsv"
    ds = read_text_tsv(path, class_names, text_column="text", label_column=None)
    return replace(ds, name=f"trec-{split}")


def build_word_tokenizer(texts: Iterable[str], max_length: int, min_freq: int = 2,
                         max_vocab: Optional[int] = None) -> WordTokenizer:
    """Vocabulary of the words seen at least ``min_freq`` times (most frequent first,
    ties alphabetical; at most ``max_vocab`` entries including [PAD] and [UNK])."""
    counts: Counter = Counter()
    for t in texts:
        counts.update(split_words(t))
    words = sorted((w for w, c in counts.items() if c >= min_freq and w not in (PAD_TOKEN, UNK_TOKEN)),
                   key=lambda w: (-counts[w], w))
    if max_vocab is not None:
        words = words[: max(1, max_vocab - 2)]
    if not words:
        raise DataError(f"no word occurs at least {min_freq} times; cannot build a vocabulary")
    return WordTokenizer(vocab=(PAD_TOKEN, UNK_TOKEN, *words), max_length=int(max_length))


def tokenize_dataset(tokenizer: WordTokenizer, ds: TextDataset) -> TokenDataset:
    return TokenDataset(tokenizer.encode_batch(ds.texts), ds.y.copy(), ds.class_names, ds.name)
