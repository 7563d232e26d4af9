"""Text augmentation for distillation transfer sets (Tang et al. 2019, "Distilling
task-specific knowledge from BERT into simple neural networks").

The student learns from the teacher's sample probabilities, so its transfer set may
hold text that has no human label: each augmented copy of a training sentence is
labelled by the teacher alone. Two word-level operations, applied to a copy:

* **masking**: each word is replaced by ``mask_token`` with probability ``p_mask``
  (the teacher sees ``[MASK]``, a token of its vocabulary, and so does the student);
* **n-gram sampling**: with probability ``p_ngram`` the copy is cut to one random
  contiguous run of ``1 .. max_ngram`` of its words.

Words are whitespace-separated; a copy identical to its source is redrawn (up to a few
times), so augmentation adds new inputs rather than duplicates.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

import numpy as np

__all__ = ["AugmentConfig", "augment_texts"]


@dataclass(frozen=True)
class AugmentConfig:
    copies: int = 1
    p_mask: float = 0.1
    p_ngram: float = 0.25
    max_ngram: int = 5
    mask_token: str = "[MASK]"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.copies < 0:
            raise ValueError(f"copies must be >= 0, got {self.copies}")
        if not (0.0 <= self.p_mask <= 1.0 and 0.0 <= self.p_ngram <= 1.0):
            raise ValueError(f"p_mask and p_ngram must lie in [0, 1], got {self.p_mask}, {self.p_ngram}")
        if self.max_ngram < 1:
            raise ValueError(f"max_ngram must be >= 1, got {self.max_ngram}")
        if not self.mask_token.strip():
            raise ValueError("mask_token must be a non-empty token")


def _one(words: List[str], cfg: AugmentConfig, rng: np.random.Generator) -> List[str]:
    out = [cfg.mask_token if rng.random() < cfg.p_mask else w for w in words]
    if len(out) > 1 and rng.random() < cfg.p_ngram:
        n = int(rng.integers(1, min(cfg.max_ngram, len(out)) + 1))
        start = int(rng.integers(0, len(out) - n + 1))
        out = out[start:start + n]
    return out


def augment_texts(texts: Sequence[str], cfg: AugmentConfig = AugmentConfig()) -> List[str]:
    """``cfg.copies`` augmented copies of every text, in order (copy 0 of every text, then copy 1, ...).
    Texts of no words are copied unchanged (there is nothing to vary)."""
    rng = np.random.default_rng(cfg.seed)
    out: List[str] = []
    for _ in range(cfg.copies):
        for text in texts:
            words = str(text).split()
            new = words
            for _attempt in range(4):
                new = _one(words, cfg, rng)
                if new != words:
                    break
            out.append(" ".join(new))
    return out
