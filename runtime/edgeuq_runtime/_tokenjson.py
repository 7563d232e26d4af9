"""What both tokenizers share: reading and (atomically) writing their JSON, and batch encoding.

Imported by :mod:`edgeuq_runtime.tokenizer` and :mod:`edgeuq_runtime.wordpiece`; imports
neither (the loader that picks the class is :func:`edgeuq_runtime.tokenizer.load_tokenizer`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Union

import numpy as np

from .errors import InputError, ManifestError
from .atomic import atomic_write

__all__ = ["read_tokenizer_json", "write_tokenizer_json", "check_tokenizer_header", "encode_texts"]


def read_tokenizer_json(path: Union[str, Path]) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"cannot read tokenizer {str(path)!r}: {exc}") from None


def check_tokenizer_header(data: Any, fmt: str, version: int, what: str) -> Mapping[str, Any]:
    """``data`` as a JSON object of ``format`` ``fmt`` and ``version`` (``what`` names the tokenizer
    kind in the error), or :class:`ManifestError`."""
    if not isinstance(data, Mapping) or data.get("format") != fmt:
        raise ManifestError(f"not an {fmt} JSON object")
    if data.get("version") != version:
        raise ManifestError(f"unsupported {what} version {data.get('version')!r}; this runtime supports {version}")
    return data


def write_tokenizer_json(path: Union[str, Path], data: Mapping[str, Any]) -> Path:
    """Write ``data`` as UTF-8 JSON to ``path`` atomically (a temporary file, then a rename)."""
    return atomic_write(path, json.dumps(data, ensure_ascii=False) + "\n", mkdir=False)


def encode_texts(encode: Any, texts: Iterable[str]) -> np.ndarray:
    """int64 ids (len(texts), max_length) from a tokenizer's one-text ``encode`` (shared by the
    word and WordPiece tokenizers); refuses a bare string and an empty batch."""
    if isinstance(texts, str):
        raise InputError("encode_batch needs a sequence of strings, got one string (wrap it in a list)")
    rows = [encode(t) for t in texts]
    if not rows:
        raise InputError("encode_batch got no texts")
    return np.asarray(rows, dtype=np.int64)
