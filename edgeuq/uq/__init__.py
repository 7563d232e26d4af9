"""Uncertainty: decomposition, calibration, OOD and selective-prediction metrics.

The decomposition (total = aleatoric + epistemic) is the device runtime's own,
re-exported so host and device compute exactly the same numbers.
"""
from edgeuq_runtime.uncertainty import UncertaintyResult, decompose, entropy, softmax

from .metrics import (
    ClassificationMetrics,
    ReliabilityBins,
    accuracy,
    accuracy_coverage_curve,
    aupr,
    aurc,
    auroc,
    brier,
    classification_metrics,
    expected_calibration_error,
    fpr_at_95_tpr,
    nll,
    reliability_bins,
    selective_accuracy,
)
from .calibration import TemperatureFit, fit_temperature, tempered_nll, tempered_probs
from .plots import plot_accuracy_coverage, plot_reliability_diagram, plot_uncertainty_histograms

__all__ = [
    "UncertaintyResult",
    "decompose",
    "entropy",
    "softmax",
    "ClassificationMetrics",
    "ReliabilityBins",
    "accuracy",
    "aupr",
    "aurc",
    "auroc",
    "brier",
    "classification_metrics",
    "expected_calibration_error",
    "fpr_at_95_tpr",
    "nll",
    "reliability_bins",
    "selective_accuracy",
    "plot_reliability_diagram",
    "plot_uncertainty_histograms",
    "plot_accuracy_coverage",
    "accuracy_coverage_curve",
    "TemperatureFit",
    "fit_temperature",
    "tempered_nll",
    "tempered_probs",
]
