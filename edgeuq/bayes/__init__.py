"""Training and post-hoc fitting of the Bayesian schemes (host side, torch).

* :func:`fit_model` -- the training loop for every scheme: cross-entropy plus,
  for variational layers, ``kl_weight * KL / N`` (the per-example negative
  ELBO); early stopping on the validation NLL of the posterior predictive.
* :func:`train_ensemble` -- M deterministic members, different seeds.
* :func:`fit_laplace` -- last-layer Laplace: GGN curvature on the training
  features, prior precision tuned on validation NLL.
* :func:`calibrate_temperature` -- post-hoc temperature scaling of any scheme.
* :func:`sample_logits` / :func:`predictive_probs` -- trunk once, head S times,
  with the runtime's numpy noise samplers (same draws as the device).
"""
from .ensemble_train import train_ensemble
from .laplace_fit import LaplaceFit, fit_laplace, head_features
from .predict import predictive_probs, sample_logits
from .temperature import calibrate_temperature, with_temperature
from .train import fit_model, uses_sampling

__all__ = [
    "fit_model", "uses_sampling", "train_ensemble", "LaplaceFit", "fit_laplace", "head_features",
    "calibrate_temperature", "with_temperature", "sample_logits", "predictive_probs",
]
