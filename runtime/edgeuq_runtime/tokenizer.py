"""A word-level tokenizer in pure Python: text -> fixed-length int64 token ids.

The host builds the vocabulary from its training texts and writes it into the
bundle as JSON (``input.tokenizer`` in the manifest names the file); the device
loads the same JSON with :meth:`WordTokenizer.load` and produces the same ids.
Host and device run this one implementation, so equal JSON means equal ids.

Algorithm (``version`` 1)
-------------------------
1. Unicode NFKC normalisation, then ``str.lower()`` when ``lowercase``.
2. Split into tokens with the regular expression ``\\w+|[^\\w\\s]``: runs of
   word characters, and every other non-space character on its own
   (punctuation such as ``'`` ``,`` ``?`` is one token per character).
3. Map each token to its id in ``vocab``; unknown tokens map to ``unk``.
4. Truncate to ``max_length`` ids, then pad with ``pad`` on the right.

``vocab[0]`` is the padding token and ``vocab[1]`` the unknown token; a model
masks positions whose id is the padding id.

JSON form::

    {"format": "edgeuq-word-tokenizer", "version": 1, "lowercase": true,
     "max_length": 64, "vocab": ["[PAD]", "[UNK]", "the", ...]}
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Sequence, Tuple, Union

import numpy as np

from ._tokenjson import check_tokenizer_header, encode_texts, read_tokenizer_json, write_tokenizer_json
from .errors import InputError, ManifestError
from .wordpiece import WORDPIECE_FORMAT, WordPieceTokenizer

__all__ = ["WordTokenizer", "TOKENIZER_FORMAT", "PAD_TOKEN", "UNK_TOKEN", "split_words", "load_tokenizer", "encode_texts"]

TOKENIZER_FORMAT = "edgeuq-word-tokenizer"
TOKENIZER_VERSION = 1
PAD_TOKEN = "[PAD]"
UNK_TOKEN = "[UNK]"
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


def split_words(text: str, lowercase: bool = True) -> List[str]:
    """Steps 1-2 of the algorithm: normalised tokens of ``text``."""
    if not isinstance(text, str):
        raise InputError(f"text must be a string, got {type(text).__name__}")
    norm = unicodedata.normalize("NFKC", text)
    if lowercase:
        norm = norm.lower()
    return _TOKEN_RE.findall(norm)




@dataclass(frozen=True)
class WordTokenizer:
    """Vocabulary + fixed length. ``vocab[0]`` pads, ``vocab[1]`` is unknown."""

    vocab: Tuple[str, ...]
    max_length: int
    lowercase: bool = True

    def __post_init__(self) -> None:
        vocab = tuple(self.vocab)
        if len(vocab) < 3 or vocab[0] != PAD_TOKEN or vocab[1] != UNK_TOKEN:
            raise ManifestError(f"tokenizer vocab must start with [{PAD_TOKEN!r}, {UNK_TOKEN!r}] and hold at least "
                                f"one word, got {list(vocab[:3])}")
        if not all(isinstance(t, str) and t for t in vocab):
            raise ManifestError("tokenizer vocab entries must be non-empty strings")
        if len(set(vocab)) != len(vocab):
            raise ManifestError("tokenizer vocab has duplicate entries")
        if isinstance(self.max_length, bool) or not isinstance(self.max_length, int) or self.max_length < 1:
            raise ManifestError(f"tokenizer max_length must be an integer >= 1, got {self.max_length!r}")
        object.__setattr__(self, "vocab", vocab)
        object.__setattr__(self, "_index", {t: i for i, t in enumerate(vocab)})

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def unk_id(self) -> int:
        return 1

    def tokens(self, text: str) -> List[str]:
        return split_words(text, self.lowercase)

    def encode(self, text: str) -> List[int]:
        """Ids of ``text``, truncated and right-padded to ``max_length``."""
        index: Dict[str, int] = self._index  # type: ignore[attr-defined]
        ids = [index.get(t, 1) for t in self.tokens(text)][: self.max_length]
        return ids + [0] * (self.max_length - len(ids))

    def encode_batch(self, texts: Iterable[str]) -> np.ndarray:
        """int64 array of shape (len(texts), max_length)."""
        return encode_texts(self.encode, texts)

    def decode(self, ids: Sequence[int]) -> List[str]:
        """Tokens of non-padding ids (for inspection)."""
        return [self.vocab[int(i)] for i in ids if int(i) != 0]

    # -- JSON ---------------------------------------------------------------------------
    def to_json(self) -> Dict[str, Any]:
        return {"format": TOKENIZER_FORMAT, "version": TOKENIZER_VERSION, "lowercase": self.lowercase,
                "max_length": self.max_length, "vocab": list(self.vocab)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "WordTokenizer":
        check_tokenizer_header(data, TOKENIZER_FORMAT, TOKENIZER_VERSION, "tokenizer")
        try:
            return cls(vocab=tuple(data["vocab"]), max_length=data["max_length"], lowercase=bool(data["lowercase"]))
        except KeyError as exc:
            raise ManifestError(f"tokenizer JSON lacks {exc}") from None

    def save(self, path: Union[str, Path]) -> Path:
        return write_tokenizer_json(path, self.to_json())

    @classmethod
    def load(cls, path: Union[str, Path]) -> "WordTokenizer":
        """The tokenizer JSON at ``path`` (:func:`load_tokenizer`: a WordPiece JSON loads as
        :class:`~edgeuq_runtime.wordpiece.WordPieceTokenizer`, same encode API)."""
        return load_tokenizer(path)  # type: ignore[return-value]


def load_tokenizer(path: Union[str, Path]):
    """The bundle tokenizer at ``path``, its class picked by the JSON (``format`` of the
    WordPiece tokenizer or ``"kind": "wordpiece"`` -> :class:`WordPieceTokenizer`, otherwise
    the word-level :class:`WordTokenizer`). The one tokenizer loader of the runtime."""
    data = read_tokenizer_json(path)
    if isinstance(data, Mapping) and (data.get("format") == WORDPIECE_FORMAT or data.get("kind") == "wordpiece"):
        return WordPieceTokenizer.from_json(data)
    return WordTokenizer.from_json(data)
