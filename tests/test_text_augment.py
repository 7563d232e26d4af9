"""Distillation text augmentation: masking rate, n-gram spans, determinism, bad options."""
import math

import numpy as np
import pytest

from edgeuq.text.augment import AugmentConfig, augment_texts

SOURCE = [" ".join(f"w{i}_{j}" for j in range(n)) for i, n in enumerate([1, 2, 5, 9, 14, 30] * 40)]


def _is_run_of(out_words, src_words, mask):
    """Brute force: some contiguous run of ``src_words`` equals ``out_words`` up to masked positions."""
    n = len(out_words)
    for start in range(len(src_words) - n + 1):
        if all(o == mask or o == s for o, s in zip(out_words, src_words[start:start + n])):
            return True
    return False


def test_every_copy_is_a_masked_contiguous_run_of_its_source():
    cfg = AugmentConfig(copies=3, p_mask=0.2, p_ngram=0.5, max_ngram=4, seed=3)
    out = augment_texts(SOURCE, cfg)
    assert len(out) == 3 * len(SOURCE)
    for k, text in enumerate(out):
        src = SOURCE[k % len(SOURCE)].split()
        words = text.split()
        assert 1 <= len(words) <= len(src)
        if len(words) < len(src):
            assert len(words) <= cfg.max_ngram
        assert _is_run_of(words, src, cfg.mask_token), (SOURCE[k % len(SOURCE)], text)


def test_masking_rate_matches_p_mask_without_ngrams():
    cfg = AugmentConfig(copies=1, p_mask=0.3, p_ngram=0.0, seed=0)
    long = [" ".join(f"t{j}" for j in range(50))] * 200
    out = augment_texts(long, cfg)
    masked = sum(w == cfg.mask_token for t in out for w in t.split())
    total = 50 * 200
    # binomial(10000, 0.3): sd = 45.8; 5 sd
    assert abs(masked - 0.3 * total) <= 5 * math.sqrt(total * 0.3 * 0.7)


def test_copies_differ_from_their_source_when_they_can():
    out = augment_texts(SOURCE, AugmentConfig(copies=1, p_mask=0.15, p_ngram=0.25, seed=1))
    multi = [(s, o) for s, o in zip(SOURCE, out) if len(s.split()) >= 5]
    same = sum(s == o for s, o in multi)
    # P(no change) per 5+-word text is <= 0.75 * 0.85**5 ~ 0.33 per attempt, four attempts: ~0.012
    assert same <= 0.05 * len(multi)


def test_same_seed_same_output_other_seed_differs():
    cfg = AugmentConfig(copies=2, seed=7)
    assert augment_texts(SOURCE, cfg) == augment_texts(SOURCE, cfg)
    assert augment_texts(SOURCE, cfg) != augment_texts(SOURCE, AugmentConfig(copies=2, seed=8))


def test_zero_copies_and_empty_text():
    assert augment_texts(SOURCE, AugmentConfig(copies=0)) == []
    assert augment_texts([""], AugmentConfig(copies=1)) == [""]


@pytest.mark.parametrize("kw", [dict(copies=-1), dict(p_mask=1.5), dict(p_ngram=-0.1), dict(max_ngram=0),
                                dict(mask_token=" ")])
def test_bad_options_are_refused(kw):
    with pytest.raises(ValueError):
        AugmentConfig(**kw)
