"""Host side of WordPiece: turn a ``tokenizers`` ``tokenizer.json`` (BERT
normalizer, BERT pre-tokenizer, WordPiece model, ``[CLS] $A [SEP]``) into the
device runtime's :class:`~edgeuq_runtime.wordpiece.WordPieceTokenizer`, and
build the ``tokenizers`` reference with the same fixed length (tests, checks).
Settings the device implementation does not reproduce are refused, not
silently approximated."""
from __future__ import annotations

from typing import Any, Mapping

from edgeuq_runtime.wordpiece import WordPieceTokenizer

__all__ = ["wordpiece_from_tokenizer_json", "reference_tokenizer"]


def _expect(cond: bool, what: str) -> None:
    if not cond:
        raise ValueError(f"tokenizer.json: {what} is not supported by the device WordPiece tokenizer")


def wordpiece_from_tokenizer_json(data: Mapping[str, Any], max_length: int) -> WordPieceTokenizer:
    model = data.get("model") or {}
    _expect(model.get("type") == "WordPiece", f"model type {model.get('type')!r}")
    norm = data.get("normalizer") or {}
    _expect(norm.get("type") == "BertNormalizer", f"normalizer {norm.get('type')!r}")
    _expect((data.get("pre_tokenizer") or {}).get("type") == "BertPreTokenizer",
            f"pre_tokenizer {(data.get('pre_tokenizer') or {}).get('type')!r}")
    post = data.get("post_processor") or {}
    _expect(post.get("type") in ("TemplateProcessing", "BertProcessing"), f"post_processor {post.get('type')!r}")
    if post.get("type") == "TemplateProcessing":
        single = [next(iter(p.values()))["id"] for p in post["single"]]
        _expect(len(single) == 3 and single[1] == "A", f"template {single}")
        cls_token, sep_token = single[0], single[2]
    else:
        cls_token, sep_token = post["cls"][0], post["sep"][0]
    vocab_map = model["vocab"]
    vocab = sorted(vocab_map, key=vocab_map.get)
    _expect([vocab_map[t] for t in vocab] == list(range(len(vocab))), "a vocabulary with gaps in its ids")
    added = data.get("added_tokens") or []
    _expect(all(a["content"] in vocab_map and a["id"] == vocab_map[a["content"]] for a in added),
            "an added token outside the WordPiece vocabulary")
    _expect(all(not a.get("normalized") and not a.get("lstrip") and not a.get("rstrip") and not a.get("single_word")
                for a in added), "a normalized / stripped / single-word added token")
    pad = (data.get("padding") or {}).get("pad_token", "[PAD]")
    _expect(vocab_map.get(pad) == 0, f"padding token {pad!r} with an id other than 0")
    return WordPieceTokenizer(
        vocab=tuple(vocab), max_length=int(max_length), lowercase=bool(norm.get("lowercase", True)),
        strip_accents=norm.get("strip_accents"), clean_text=bool(norm.get("clean_text", True)),
        handle_chinese_chars=bool(norm.get("handle_chinese_chars", True)),
        max_input_chars_per_word=int(model.get("max_input_chars_per_word", 100)),
        continuing_subword_prefix=model.get("continuing_subword_prefix", "##"), unk_token=model["unk_token"],
        cls_token=cls_token, sep_token=sep_token, pad_token=pad,
        special_tokens=tuple(a["content"] for a in added),
    )


def reference_tokenizer(data: Mapping[str, Any], max_length: int):
    """The ``tokenizers`` library's tokenizer, truncating and padding to ``max_length``."""
    import json

    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(json.dumps(data))
    tok.enable_truncation(max_length=int(max_length))
    pad = (data.get("padding") or {}).get("pad_token", "[PAD]")
    tok.enable_padding(length=int(max_length), pad_id=tok.token_to_id(pad), pad_token=pad)
    return tok
