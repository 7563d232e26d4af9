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
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np

from edgeuq_runtime.tokenizer import PAD_TOKEN, UNK_TOKEN, WordTokenizer, split_words

from ._errors import DataError
from .labels import LabelMapper, UnknownLabelsError, normalize_label

__all__ = [
    "SST2_CLASSES", "TextDataset", "TokenDataset", "read_text_tsv", "discover_class_names", "load_sst2", "load_trec",
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


def _column(spec: Optional[str | int], col: dict, header: Optional[list], path: Path, what: str) -> Optional[int]:
    """A column given by header name or 0-based index -> its index."""
    if spec is None:
        return None
    text = str(spec).strip()
    if text in col:
        return col[text]
    if text.lstrip("-").isdigit():
        return int(text)
    raise DataError(f"{path}: {what} column {text!r} is not a header name "
                    + (f"(header {header})" if header is not None else "(the file has no header row)")
                    + " nor a 0-based column index")


def discover_class_names(raw_labels: Iterable[str], label_map: Optional[Mapping[str, str]] = None,
                         where: str = "data") -> tuple[str, ...]:
    """Class names read off a file's labels: class indices ``0..K-1`` -> ``("0", ..., "K-1")``;
    names (after ``label_map``) -> their normalized spellings, sorted (``Positive`` and
    ``positive`` are one class). A mix of indices and names is refused."""
    label_map = dict(label_map or {})
    raws = {r.strip() for r in raw_labels if r.strip()}
    if not raws:
        raise DataError(f"{where}: no labels to take the class names from")
    mapped = {label_map[r] if r in label_map else normalize_label(r) for r in raws}
    numeric = {r for r in mapped if r.isdigit()}
    if numeric and numeric != mapped:
        raise DataError(f"{where}: labels mix class indices {sorted(numeric)[:4]} and names "
                        f"{sorted(mapped - numeric)[:4]}; give the class names")
    if numeric:
        return tuple(str(i) for i in range(max(int(r) for r in numeric) + 1))
    return tuple(sorted(mapped))


def read_text_tsv(path: str | Path, class_names: Optional[Sequence[str]], text_column: Optional[str | int] = None,
                  label_column: Optional[str | int] = None, allow_unknown: bool = False,
                  label_map: Optional[Mapping[str, str]] = None, header: Optional[bool] = None,
                  delimiter: str = "\t") -> TextDataset:
    """Read a tab-separated file of texts and (optionally) labels.

    With a header row (detected when it names ``sentence``, ``text`` or ``label``, or
    a column given by name; ``header`` forces it) the text column is ``text_column`` or
    the first of ``sentence``/``text``, the label column ``label_column`` or ``label``
    when present. Without one, text is column 0 and the label column 1 (when rows have
    two fields). Columns may also be given as 0-based indices. Labels are class
    indices or names, placed forgivingly (case, separators, then ``label_map``);
    others raise, or become -1 with ``allow_unknown``. Without a label column every
    label is -1. ``class_names=None`` takes them from the labels (:func:`discover_class_names`).
    ``delimiter=","`` reads CSV (with CSV quoting; TSV is read verbatim, unquoted)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text file not found: {path}")
    with path.open(newline="", encoding="utf-8-sig") as fh:  # -sig: a spreadsheet's byte-order mark
        reader = csv.reader(fh, delimiter=delimiter, quoting=csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL)
        rows = [r for r in reader if r and any(c.strip() for c in r)]
    if not rows:
        raise DataError(f"{path}: empty file")
    first = [h.strip() for h in rows[0]]
    named = {str(c).strip() for c in (text_column, label_column) if c is not None}
    if header is None:
        header = any(h in (*_TEXT_COLUMNS, "label") or h in named for h in first)
    head = first if header else None
    col = {h: i for i, h in enumerate(first)} if header else {}
    body = rows[1:] if header else rows
    first_line = 2 if header else 1
    tidx = _column(text_column, col, head, path, "text")
    if tidx is None:
        if header:
            tname = next((c for c in _TEXT_COLUMNS if c in col), None)
            if tname is None:
                raise DataError(f"{path}: no text column ({' or '.join(_TEXT_COLUMNS)}) in header {head}; "
                                "name it, or give the text column (name or 0-based index)")
            tidx = col[tname]
        else:
            tidx = 0
    lidx = _column(label_column, col, head, path, "label")
    if lidx is None and label_column is None:
        if header:
            lidx = col.get("label")
        elif body and min(len(r) for r in body) >= 2:
            lidx = 1 if tidx != 1 else 0
    if class_names is None:
        if lidx is None:
            raise DataError(f"{path}: no label column to take the class names from; give the label column")
        class_names = discover_class_names((r[lidx] for r in body if len(r) > lidx), label_map, str(path))
    names = tuple(class_names)
    mapper = LabelMapper(names, dict(label_map or {}))
    texts, labels, unknown = [], [], set()
    for n, row in enumerate(body, start=first_line):
        if len(row) <= tidx:
            raise DataError(f"{path}:{n}: row has {len(row)} fields, text column {tidx} missing")
        texts.append(row[tidx].strip())
        if lidx is None:
            labels.append(-1)
            continue
        raw = row[lidx].strip() if len(row) > lidx else ""
        placed = mapper.resolve(raw) if raw else None
        if placed is not None:
            labels.append(names.index(placed))
        elif raw.lstrip("-").isdigit() and 0 <= int(raw) < len(names):
            labels.append(int(raw))
        elif allow_unknown:
            labels.append(-1)
        else:
            unknown.add(raw)
    if unknown:
        raise UnknownLabelsError(str(path), sorted(unknown), names)
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
