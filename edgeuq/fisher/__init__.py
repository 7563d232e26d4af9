"""Fisher information estimators and the FisherReport artifact.

One estimator per module, all streaming a calibration set in batches with a
progress bar and sharing :class:`FisherConfig` (true Fisher by default,
empirical on request; stochastic models averaged over noise draws):

* :mod:`.diagonal`    per-parameter diagonal and per-layer traces (per-sample gradients)
* :mod:`.per_sample` the per-sample gradient estimators (``FisherConfig.per_sample``: ``vmap`` | ``loop``,
                     a registry)
* :mod:`.activations` activation Fisher traces and ranges of each layer's input
* :mod:`.structure`   attention-head / FFN-neuron / channel scores from mask gradients
* :mod:`.kfac`        K-FAC factors of Linear layers
* :mod:`.variational` closed-form Fisher of mean-field Gaussian weights
* :mod:`.hessian`     Hutchinson Hessian traces (HAWQ baseline)
* :mod:`.estimate`    all of the above -> :class:`FisherReport` (``fisher.json`` + ``fisher.npz``)
"""
from .activations import ActivationStats, activation_fisher
from .config import FisherConfig
from .diagonal import DiagonalFisher, diagonal_fisher, per_sample_grads
from .estimate import estimate_fisher
from .hessian import hutchinson_trace
from .kfac import KFACFactors, kfac_factors
from .plot import plot_sensitivity, sensitivity_rows
from .report import FisherReport, LayerFisher, StructureScores, load_fisher_report
from .structure import StructureSpec, default_structures, structure_scores
from .variational import (
    GaussianFisher, expected_fisher_trace, gaussian_score, gaussian_weight_fisher, variational_fisher,
)

__all__ = [
    "FisherConfig", "estimate_fisher", "FisherReport", "LayerFisher", "StructureScores", "load_fisher_report",
    "DiagonalFisher", "diagonal_fisher", "per_sample_grads", "ActivationStats", "activation_fisher",
    "StructureSpec", "default_structures", "structure_scores", "KFACFactors", "kfac_factors",
    "GaussianFisher", "gaussian_weight_fisher", "gaussian_score", "expected_fisher_trace", "variational_fisher",
    "hutchinson_trace", "plot_sensitivity", "sensitivity_rows",
]
