"""Compression: uncertainty-preserving distillation, Fisher-guided structured pruning, search."""
from .distill import DEFAULT_LOSS, LOSSES, DistillConfig, DistillResult, distill_model
from .losses import dirichlet_mutual_information, dirichlet_nll, mean_kl, uncertainty_matching
from .transfer import TransferConfig, TransferSet, TransferSetArtifact, augment_windows

__all__ = [
    "DEFAULT_LOSS", "LOSSES", "DistillConfig", "DistillResult", "distill_model", "dirichlet_mutual_information",
    "dirichlet_nll", "mean_kl", "uncertainty_matching", "TransferConfig", "TransferSet", "TransferSetArtifact",
    "augment_windows",
]
