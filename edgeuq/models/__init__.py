"""Bayesian transformer models; one stochastic layer kind per module."""
from .config import SCHEMES, ModelConfig
from .mc_dropout import MCDropout
from .sampling import mc_sample_probs, tile_samples
from .stochastic import StochasticLayer, is_stochastic_layer
from .transformer import SignalTransformer
from .ensemble import EnsembleTransformer, MemberSelector  # noqa: E402  (subclasses SignalTransformer)
from .hsa import HierarchicalStochasticAttention  # noqa: E402
from .laplace import LastLayerLaplace
from .variational import BayesLinear, kl_divergence

__all__ = [
    "ModelConfig", "MCDropout", "SignalTransformer", "mc_sample_probs", "tile_samples", "build_model",
    "SCHEMES", "StochasticLayer", "is_stochastic_layer", "BayesLinear", "kl_divergence",
    "HierarchicalStochasticAttention", "EnsembleTransformer", "MemberSelector", "LastLayerLaplace",
]


def build_model(cfg: ModelConfig) -> SignalTransformer:
    return SignalTransformer(cfg)
