"""Transformer classifiers; the stochastic layers come from the scheme plug-ins (edgeuq.schemes)."""
from .attention import AttentionBase, SelfAttention
from .config import BlockShape, ModelConfig
from .layers import StochasticLayer, TORCH_NOISE_DRAWS, is_stochastic_layer
from .sampling import mc_sample_probs, tile_samples
from .transformer import DeployableModel, SignalTransformer, build_model

__all__ = [
    "ModelConfig", "BlockShape", "SignalTransformer", "DeployableModel", "build_model", "mc_sample_probs",
    "tile_samples", "StochasticLayer", "TORCH_NOISE_DRAWS", "is_stochastic_layer", "AttentionBase", "SelfAttention",
]
