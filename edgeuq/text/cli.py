"""``edgeuq text-tokenizer``: write the device WordPiece tokenizer of the packaged
MiniLM (or a model folder) and optionally check it against the ``tokenizers``
library on the texts of TSV files (first column, header skipped)."""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

__all__ = ["register"]


def _cmd_tokenizer(a: argparse.Namespace) -> int:
    import numpy as np

    from .pretrained import load_pretrained
    from .wordpiece import reference_tokenizer, wordpiece_from_tokenizer_json

    pre = load_pretrained(a.model)
    tok = wordpiece_from_tokenizer_json(pre.tokenizer_json, a.max_length)
    if a.out:
        tok.save(Path(a.out))
        print(f"device WordPiece tokenizer ({tok.vocab_size} tokens, max_length {tok.max_length}) -> {a.out}")
    if not a.check:
        return 0
    ref = reference_tokenizer(pre.tokenizer_json, a.max_length)
    total = bad = 0
    for path in a.check:
        with open(path, encoding="utf-8", newline="") as fh:
            texts = [r[0] for r in list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))[1:] if r]
        for i in range(0, len(texts), 2048):
            chunk = texts[i:i + 2048]
            want = np.asarray([e.ids for e in ref.encode_batch(chunk)], dtype=np.int64)
            bad += int((tok.encode_batch(chunk) != want).any(axis=1).sum())
        total += len(texts)
        print(f"{path}: {len(texts)} texts checked", flush=True)
    print(f"agreement with tokenizers: {total - bad}/{total} texts identical")
    return 0 if bad == 0 else 1


def register(subparsers) -> None:
    p = subparsers.add_parser("text-tokenizer", help="write (and check) the device WordPiece tokenizer of the "
                                                     "pretrained text encoder (text extra)")
    p.add_argument("--model", help="model folder or .zip (default: the packaged all-MiniLM-L6-v2)")
    p.add_argument("--max-length", type=int, default=64, help="fixed token length incl. [CLS]/[SEP] (default 64)")
    p.add_argument("--out", help="write the tokenizer JSON here")
    p.add_argument("--check", nargs="*", default=[], help="TSV files whose texts are compared with `tokenizers`")
    p.set_defaults(func=_cmd_tokenizer)
