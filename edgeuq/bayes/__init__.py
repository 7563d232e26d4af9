"""Scheme-independent tools for Bayesian models (host side, torch).

* :func:`fit_model` -- the training loop for every scheme: the scheme's loss
  (cross-entropy; the per-example negative ELBO for variational layers),
  early stopping on the validation NLL of the posterior predictive.
* :func:`calibrate_temperature` -- post-hoc temperature scaling of any scheme.
* :func:`sample_logits` / :func:`predictive_probs` -- trunk once, head S times,
  with the runtime's numpy noise samplers (same draws as the device).

Scheme-specific fitting (ensemble members, the Laplace posterior) lives with
the scheme in :mod:`edgeuq.schemes`.
"""
from .predict import predictive_probs, sample_logits
from .temperature import calibrate_temperature, with_temperature
from .train import fit_model, uses_sampling

__all__ = [
    "fit_model", "uses_sampling", "calibrate_temperature", "with_temperature", "sample_logits", "predictive_probs",
]
