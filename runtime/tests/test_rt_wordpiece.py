"""Device WordPiece tokenizer: hand-worked expectations on a small vocabulary, the
``tokenizers`` library as an independent reference on tricky text (when it is
installed on the host), JSON round trip and the tokenizer dispatch by kind."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from edgeuq_runtime.errors import ManifestError
from edgeuq_runtime.tokenizer import WordTokenizer
from edgeuq_runtime.tokenizer import load_tokenizer
from edgeuq_runtime.wordpiece import WordPieceTokenizer, bert_normalize, bert_pre_tokenize

VOCAB = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "##aff", "##able", "the", "cafe", "!", ",", "a",
         "##b", "##c", "i", "##i", "hello", "world", "'", "s", "$", "5", "中", "x", "##x")
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def make(max_length: int = 12, **kw) -> WordPieceTokenizer:
    return WordPieceTokenizer(vocab=VOCAB, max_length=max_length, special_tokens=SPECIALS, **kw)


def ids(*tokens: str) -> list:
    return [VOCAB.index(t) for t in tokens]


# -- hand-worked expectations ---------------------------------------------------------
def test_greedy_longest_match_first_with_continuation_prefix():
    assert make().tokens("unaffable") == ["un", "##aff", "##able"]


def test_word_without_complete_segmentation_is_one_unk():
    # "unaffz": un ##aff then "z" matches nothing -> the whole word is [UNK], not a partial split
    assert make().tokens("unaffz the") == ["[UNK]", "the"]


def test_normalizer_strips_accents_lowercases_and_cleans():
    assert bert_normalize("CAFÉ\tA\x00b\ufffd\x07") == "cafe ab"
    assert make().tokens("Café!") == ["cafe", "!"]


def test_lowercase_is_per_character_no_final_sigma():
    # Python's str.lower() turns a word-final capital sigma into 'ς'; tokenizers (Rust
    # char::to_lowercase) gives 'σ' everywhere. Accents are stripped first (NFD, Mn).
    assert bert_normalize("ΟΔΟΣ") == "οδοσ"


def test_pre_tokenizer_isolates_every_punctuation_char_including_ascii_symbols():
    assert bert_pre_tokenize("it's $5,a") == ["it", "'", "s", "$", "5", ",", "a"]


def test_cjk_characters_become_words():
    assert make().tokens("x中x") == ["x", "中", "x"]


def test_long_word_is_unk():
    tok = make(max_input_chars_per_word=5)
    assert tok.tokens("xxxxx xxxxxx") == ["x", "##x", "##x", "##x", "##x", "[UNK]"]


def test_special_tokens_in_raw_text_are_kept_verbatim():
    # "[CLS]" in the text is the special token, not "[", "cls", "]"; lowercase "[cls]" is not special
    assert make().tokens("hello [SEP] world") == ["hello", "[SEP]", "world"]
    assert make().tokens("[cls]") == ["[UNK]", "[UNK]", "[UNK]"]


def test_encode_adds_cls_sep_truncates_and_pads():
    tok = make(max_length=6)
    assert tok.encode("hello world") == ids("[CLS]", "hello", "world", "[SEP]", "[PAD]", "[PAD]")
    assert tok.encode("a a a a a a a") == ids("[CLS]", "a", "a", "a", "a", "[SEP]")
    assert tok.encode("") == ids("[CLS]", "[SEP]", "[PAD]", "[PAD]", "[PAD]", "[PAD]")
    batch = tok.encode_batch(["hello", "world"])
    assert batch.dtype == np.int64 and batch.shape == (2, 6)


def test_json_round_trip_and_dispatch(tmp_path):
    tok = make()
    path = tok.save(tmp_path / "tok.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["kind"] == "wordpiece"
    again = load_tokenizer(path)
    assert isinstance(again, WordPieceTokenizer) and again == tok
    assert WordTokenizer.load(path) == tok  # the session's loader dispatches on "kind" too
    assert again.encode("unaffable, the cafe!") == tok.encode("unaffable, the cafe!")
    word = WordTokenizer(vocab=("[PAD]", "[UNK]", "hello"), max_length=4)
    assert isinstance(load_tokenizer(word.save(tmp_path / "word.json")), WordTokenizer)


def test_bad_json_is_refused(tmp_path):
    data = make().to_json()
    data["version"] = 99
    (tmp_path / "v.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="version"):
        load_tokenizer(tmp_path / "v.json")
    with pytest.raises(ManifestError, match="unk_token"):
        WordPieceTokenizer(vocab=("[PAD]", "[CLS]", "[SEP]"), max_length=8)


# -- the tokenizers library as reference ----------------------------------------------
TRICKY = [
    "Café naïve résumé ÉCOLE", "ΟΔΟΣ Σίσυφος", "İstanbul ß ﬁ", "中文字符 test日本", "a\x00b\ufffdc\x0bd\x1ce\u200bf",
    "tab\there\nnew\r\nline\u3000ideo\xa0nbsp\u2028ls", "[CLS] hello [SEP] [MASK][UNK]x [pad] [PAD]",
    "x" * 101, "$5 < 10 = ^ ` | ~ + ¿qué? «quote» — dash … ellipsis", "emoji 😀👍🏽 ok", "don't can't it's", "",
    "   ", "ＦＵＬＬＷＩＤＴＨ", "a\u0301\u0301b", "unaffable unaffz the,cafe!!", " ".join(["hello"] * 30),
]


def _reference(max_length: int):
    try:  # host-only reference; never a dependency of the runtime itself
        from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    except ImportError:
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail("CI=true: the tokenizers library (edgeuq's text extra) is not installed")
        pytest.skip("the tokenizers library is not installed (pip install 'edgeuq[text]')")

    ref = Tokenizer(models.WordPiece({t: i for i, t in enumerate(VOCAB)}, unk_token="[UNK]",
                                     max_input_chars_per_word=100))
    ref.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                                lowercase=True)
    ref.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    ref.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[
        ("[CLS]", VOCAB.index("[CLS]")), ("[SEP]", VOCAB.index("[SEP]"))])
    ref.add_special_tokens(list(SPECIALS))
    ref.enable_truncation(max_length=max_length)
    ref.enable_padding(length=max_length, pad_id=0, pad_token="[PAD]")
    return ref


def test_agrees_with_tokenizers_library_on_tricky_text():
    ref = _reference(16)
    tok = make(max_length=16)
    mismatches = [t for t in TRICKY if tok.encode(t) != ref.encode(t).ids]
    assert mismatches == []
