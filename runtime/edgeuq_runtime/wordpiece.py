"""BERT WordPiece tokenization in pure Python: text -> fixed-length int64 ids.

Reproduces the ``tokenizers`` library's BERT pipeline (``BertNormalizer`` ->
``BertPreTokenizer`` -> ``WordPiece`` -> ``[CLS] $A [SEP]`` template ->
truncation and right padding to ``max_length``) so a device without
``tokenizers`` produces the host's exact ids. The host writes the JSON from a
``tokenizer.json`` (``edgeuq.text.wordpiece``); tests compare this module
against the ``tokenizers`` library over whole data sets.

Algorithm (``version`` 1), following tokenizers' Rust sources
-------------------------------------------------------------
0. Special tokens (``[CLS]``, ``[UNK]``, ... : the tokenizer's non-normalized
   added tokens) found verbatim in the raw text are split out first and map to
   their own ids.
1. Normalise each remaining piece: drop NUL, U+FFFD and "other" characters
   (Unicode category C*, except tab/newline/carriage return), map Unicode
   White_Space to a space; put spaces around CJK ideographs; if
   ``strip_accents`` (default: ``lowercase``) NFD-decompose and drop
   non-spacing marks (Mn); lowercase character by character (no final-sigma
   context, as Rust's ``char::to_lowercase``).
2. Split on White_Space, then isolate every punctuation character (ASCII
   punctuation or Unicode category P*) as its own word.
3. Each word of more than ``max_input_chars_per_word`` characters becomes
   ``[UNK]``; otherwise greedy longest-match-first WordPiece with the
   ``##`` continuation prefix; a word with no complete segmentation becomes
   one ``[UNK]``.
4. Truncate to ``max_length - 2`` pieces, add ``[CLS]`` ... ``[SEP]``, pad
   with ``[PAD]`` on the right to ``max_length``.

JSON form::

    {"format": "edgeuq-wordpiece-tokenizer", "version": 1, "kind": "wordpiece",
     "max_length": 64, "lowercase": true, "strip_accents": null, "clean_text": true,
     "handle_chinese_chars": true, "max_input_chars_per_word": 100,
     "continuing_subword_prefix": "##", "unk_token": "[UNK]", "cls_token": "[CLS]",
     "sep_token": "[SEP]", "pad_token": "[PAD]", "special_tokens": ["[PAD]", ...],
     "vocab": ["[PAD]", "[unused0]", ...]}

``vocab[i]`` is the token of id ``i``.
"""
from __future__ import annotations

import string
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import InputError, ManifestError
from ._tokenjson import check_tokenizer_header, encode_texts, read_tokenizer_json, write_tokenizer_json

__all__ = ["WordPieceTokenizer", "WORDPIECE_FORMAT", "bert_normalize", "bert_pre_tokenize"]

WORDPIECE_FORMAT = "edgeuq-wordpiece-tokenizer"
WORDPIECE_VERSION = 1

#: Unicode White_Space property (what Rust's ``char::is_whitespace`` tests).
_WHITE_SPACE = frozenset(
    [chr(c) for c in range(0x09, 0x0E)] + [" ", "\x85", "\xa0", "\u1680"]
    + [chr(c) for c in range(0x2000, 0x200B)] + ["\u2028", "\u2029", "\u202f", "\u205f", "\u3000"]
)
_ASCII_PUNCT = frozenset(string.punctuation)
_CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
               (0x2B740, 0x2B81F), (0x2B920, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def _is_whitespace(c: str) -> bool:
    return c in _WHITE_SPACE


def _is_control(c: str) -> bool:
    if c in "\t\n\r":
        return False
    return unicodedata.category(c).startswith("C")


def _is_cjk(c: str) -> bool:
    o = ord(c)
    return any(lo <= o <= hi for lo, hi in _CJK_RANGES)


def _is_punctuation(c: str) -> bool:
    return c in _ASCII_PUNCT or unicodedata.category(c).startswith("P")


def bert_normalize(text: str, lowercase: bool = True, strip_accents: Optional[bool] = None,
                   clean_text: bool = True, handle_chinese_chars: bool = True) -> str:
    """Step 1 (tokenizers' ``BertNormalizer``)."""
    if clean_text:
        text = "".join(" " if _is_whitespace(c) else c for c in text
                       if not (c == "\x00" or c == "\ufffd" or _is_control(c)))
    if handle_chinese_chars:
        text = "".join(f" {c} " if _is_cjk(c) else c for c in text)
    if (lowercase if strip_accents is None else strip_accents):
        text = "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")
    if lowercase:
        text = "".join(c.lower() for c in text)
    return text


def bert_pre_tokenize(text: str) -> List[str]:
    """Step 2 (tokenizers' ``BertPreTokenizer``): words and single punctuation characters."""
    words: List[str] = []
    cur: List[str] = []
    for c in text:
        if _is_whitespace(c):
            if cur:
                words.append("".join(cur))
                cur = []
        elif _is_punctuation(c):
            if cur:
                words.append("".join(cur))
                cur = []
            words.append(c)
        else:
            cur.append(c)
    if cur:
        words.append("".join(cur))
    return words


@dataclass(frozen=True)
class WordPieceTokenizer:
    """BERT WordPiece vocabulary + settings + fixed length (see module doc)."""

    vocab: Tuple[str, ...]
    max_length: int
    lowercase: bool = True
    strip_accents: Optional[bool] = None
    clean_text: bool = True
    handle_chinese_chars: bool = True
    max_input_chars_per_word: int = 100
    continuing_subword_prefix: str = "##"
    unk_token: str = "[UNK]"
    cls_token: str = "[CLS]"
    sep_token: str = "[SEP]"
    pad_token: str = "[PAD]"
    special_tokens: Tuple[str, ...] = ()

    def __post_init__(self) -> None:
        vocab = tuple(self.vocab)
        if not all(isinstance(t, str) and t for t in vocab):
            raise ManifestError("wordpiece vocab entries must be non-empty strings")
        index = {t: i for i, t in enumerate(vocab)}
        if len(index) != len(vocab):
            raise ManifestError("wordpiece vocab has duplicate entries")
        for role in ("unk_token", "cls_token", "sep_token", "pad_token"):
            if getattr(self, role) not in index:
                raise ManifestError(f"wordpiece {role} {getattr(self, role)!r} is not in the vocab")
        if isinstance(self.max_length, bool) or not isinstance(self.max_length, int) or self.max_length < 3:
            raise ManifestError(f"wordpiece max_length must be an integer >= 3 ([CLS] x [SEP]), got {self.max_length!r}")
        specials = tuple(self.special_tokens)
        missing = [t for t in specials if t not in index]
        if missing:
            raise ManifestError(f"wordpiece special tokens {missing} are not in the vocab")
        object.__setattr__(self, "vocab", vocab)
        object.__setattr__(self, "special_tokens", specials)
        object.__setattr__(self, "_index", index)
        # longest first, so "[CLS]x" never matches a shorter special that is a prefix
        object.__setattr__(self, "_specials", sorted(specials, key=len, reverse=True))

    # -- properties the session relies on --------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def pad_id(self) -> int:
        return self._index[self.pad_token]  # type: ignore[attr-defined]

    @property
    def unk_id(self) -> int:
        return self._index[self.unk_token]  # type: ignore[attr-defined]

    # -- algorithm ------------------------------------------------------------------
    def _split_specials(self, text: str) -> List[Tuple[str, bool]]:
        """(piece, is_special) in order; leftmost, longest special match first."""
        specials: List[str] = self._specials  # type: ignore[attr-defined]
        if not specials:
            return [(text, False)]
        out: List[Tuple[str, bool]] = []
        start = i = 0
        while i < len(text):
            hit = next((s for s in specials if text.startswith(s, i)), None)
            if hit is None:
                i += 1
                continue
            if i > start:
                out.append((text[start:i], False))
            out.append((hit, True))
            i += len(hit)
            start = i
        if start < len(text):
            out.append((text[start:], False))
        return out

    def _word_pieces(self, word: str) -> List[str]:
        index: Dict[str, int] = self._index  # type: ignore[attr-defined]
        if len(word) > self.max_input_chars_per_word:
            return [self.unk_token]
        pieces: List[str] = []
        start = 0
        while start < len(word):
            end = len(word)
            found = None
            while start < end:
                sub = word[start:end]
                if start > 0:
                    sub = self.continuing_subword_prefix + sub
                if sub in index:
                    found = sub
                    break
                end -= 1
            if found is None:
                return [self.unk_token]
            pieces.append(found)
            start = end
        return pieces

    def tokens(self, text: str) -> List[str]:
        """WordPiece tokens of ``text`` (no [CLS]/[SEP], no truncation)."""
        if not isinstance(text, str):
            raise InputError(f"text must be a string, got {type(text).__name__}")
        out: List[str] = []
        for piece, special in self._split_specials(text):
            if special:
                out.append(piece)
                continue
            norm = bert_normalize(piece, self.lowercase, self.strip_accents, self.clean_text,
                                  self.handle_chinese_chars)
            for word in bert_pre_tokenize(norm):
                out.extend(self._word_pieces(word))
        return out

    def encode(self, text: str) -> List[int]:
        """Ids ``[CLS] pieces [SEP] [PAD]...`` of length ``max_length``."""
        index: Dict[str, int] = self._index  # type: ignore[attr-defined]
        body = [index[t] for t in self.tokens(text)][: self.max_length - 2]
        ids = [index[self.cls_token], *body, index[self.sep_token]]
        return ids + [self.pad_id] * (self.max_length - len(ids))

    def encode_batch(self, texts: Iterable[str]) -> np.ndarray:
        """int64 array of shape (len(texts), max_length)."""
        return encode_texts(self.encode, texts)

    def decode(self, ids: Sequence[int]) -> List[str]:
        """Tokens of non-padding ids (for inspection)."""
        return [self.vocab[int(i)] for i in ids if int(i) != self.pad_id]

    # -- JSON ---------------------------------------------------------------------------
    def to_json(self) -> Dict[str, Any]:
        return {"format": WORDPIECE_FORMAT, "version": WORDPIECE_VERSION, "kind": "wordpiece",
                "max_length": self.max_length, "lowercase": self.lowercase, "strip_accents": self.strip_accents,
                "clean_text": self.clean_text, "handle_chinese_chars": self.handle_chinese_chars,
                "max_input_chars_per_word": self.max_input_chars_per_word,
                "continuing_subword_prefix": self.continuing_subword_prefix, "unk_token": self.unk_token,
                "cls_token": self.cls_token, "sep_token": self.sep_token, "pad_token": self.pad_token,
                "special_tokens": list(self.special_tokens), "vocab": list(self.vocab)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "WordPieceTokenizer":
        check_tokenizer_header(data, WORDPIECE_FORMAT, WORDPIECE_VERSION, "wordpiece tokenizer")
        try:
            sa = data["strip_accents"]
            return cls(vocab=tuple(data["vocab"]), max_length=data["max_length"], lowercase=bool(data["lowercase"]),
                       strip_accents=None if sa is None else bool(sa), clean_text=bool(data["clean_text"]),
                       handle_chinese_chars=bool(data["handle_chinese_chars"]),
                       max_input_chars_per_word=int(data["max_input_chars_per_word"]),
                       continuing_subword_prefix=str(data["continuing_subword_prefix"]),
                       unk_token=data["unk_token"], cls_token=data["cls_token"], sep_token=data["sep_token"],
                       pad_token=data["pad_token"], special_tokens=tuple(data.get("special_tokens", ())))
        except KeyError as exc:
            raise ManifestError(f"wordpiece tokenizer JSON lacks {exc}") from None

    def save(self, path: Union[str, Path]) -> Path:
        return write_tokenizer_json(path, self.to_json())

    @classmethod
    def load(cls, path: Union[str, Path]) -> "WordPieceTokenizer":
        return cls.from_json(read_tokenizer_json(path))
