"""Bayesian transformer models; one stochastic layer kind per module."""
from .config import ModelConfig
from .mc_dropout import MCDropout
from .sampling import mc_sample_probs, tile_samples
from .transformer import SignalTransformer

__all__ = ["ModelConfig", "MCDropout", "SignalTransformer", "mc_sample_probs", "tile_samples", "build_model"]


def build_model(cfg: ModelConfig) -> SignalTransformer:
    return SignalTransformer(cfg)
