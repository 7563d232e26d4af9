"""Moved to :mod:`edgeuq.models.bert` (the encoder is a ModelConfig trunk now, in the nn layer).

This alias keeps ``edgeuq.text.bert`` imports working (third-party code, and the pre-change
sources the parity tests run beside today's code)."""
from ..models.bert import (MASK_BIAS, BertConfig, BertEmbeddings, BertEncoder, BertLayer, FactorisedEmbeddings,
                           key_bias_from_mask, masked_mean_pool, position_rows)

__all__ = ["MASK_BIAS", "BertConfig", "BertEmbeddings", "BertEncoder", "BertLayer", "FactorisedEmbeddings",
           "key_bias_from_mask", "masked_mean_pool", "position_rows"]
