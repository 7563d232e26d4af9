"""The device WordPiece tokenizer (edgeuq_runtime.wordpiece, pure Python) against the
``tokenizers`` library on the packaged all-MiniLM-L6-v2 ``tokenizer.json``: tricky text
(unit) and every sentence of SST-2 and TREC (data test, skipped without the data)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from require_extras import in_ci, require_extra

require_extra("tokenizers", "text")

from edgeuq.text.wordpiece import reference_tokenizer, wordpiece_from_tokenizer_json  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "text"
MAX_LENGTH = 64

TRICKY = [
    "Café naïve résumé ÉCOLE", "ΟΔΟΣ Σίσυφος", "İstanbul ß ﬁ", "中文字符 test日本", "a\x00b\ufffdc\x0bd\x1ce\u200bf",
    "tab\there\nnew\r\nline\u3000ideo\xa0nbsp\u2028ls", "[CLS] hello [SEP] [MASK][UNK]x [pad] [PAD]", "x" * 101,
    "y" * 100, "$5 < 10 = ^ ` | ~ + ¿qué? «quote» — dash … ellipsis", "emoji 😀👍🏽 ok", "don't can't it's", "",
    "   ", "ＦＵＬＬＷＩＤＴＨ", "Ǆ ǅ ǆ Å Ω", "a\u0301\u0301\u0301b", "antidisestablishmentarianism supercalifragilistic",
    " ".join(["word"] * 80), "\u0660\u0661 arabic \u0627\u0644\u0639\u0631\u0628\u064a\u0629", "ﷺ ﷽",
]


@pytest.fixture(scope="module")
def pair():
    from edgeuq.text.pretrained import TextExtraMissing, load_pretrained

    try:
        p = load_pretrained()
    except TextExtraMissing as exc:
        if in_ci():
            pytest.fail(f"CI=true: {exc}")
        pytest.skip(str(exc))
    return (wordpiece_from_tokenizer_json(p.tokenizer_json, MAX_LENGTH),
            reference_tokenizer(p.tokenizer_json, MAX_LENGTH))


def test_tricky_text_matches_tokenizers(pair):
    ours, ref = pair
    bad = [(t, ours.tokens(t)) for t in TRICKY if ours.encode(t) != ref.encode(t).ids]
    assert bad == []
    # not vacuous: accents, CJK, long words and specials produce different pieces than plain split
    assert ours.tokens("ΟΔΟΣ") != ["οδος"] and ours.tokens("x" * 101) == ["[UNK]"]


def test_unsupported_tokenizer_json_is_refused(pair):
    from edgeuq.text.pretrained import load_pretrained

    data = dict(load_pretrained().tokenizer_json)
    data["normalizer"] = {"type": "NFKC"}
    with pytest.raises(ValueError, match="normalizer"):
        wordpiece_from_tokenizer_json(data, 16)


def _texts(path: Path) -> list:
    with path.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [r[0] for r in rows[1:] if r]


@pytest.mark.slow
def test_every_sst2_and_trec_sentence_matches_tokenizers(pair):
    files = [DATA / "sst2" / f"{s}.tsv" for s in ("train", "dev", "test")] + \
            [DATA / "trec" / f"{s}.tsv" for s in ("train", "test")]
    if not all(f.is_file() for f in files):
        pytest.skip(f"SST-2/TREC data not found under {DATA}")
    ours, ref = pair
    texts = [t for f in files for t in _texts(f)]
    assert len(texts) > 70000
    mismatched = []
    for i in range(0, len(texts), 2048):
        chunk = texts[i:i + 2048]
        want = np.asarray([e.ids for e in ref.encode_batch(chunk)], dtype=np.int64)
        got = ours.encode_batch(chunk)
        mismatched += [chunk[j] for j in np.flatnonzero((got != want).any(axis=1))]
    assert mismatched == [], f"{len(mismatched)} of {len(texts)} differ, e.g. {mismatched[:3]}"
