"""Per-sample gradient estimators are a registry (issue 20): ``FisherConfig.per_sample`` names one
(``vmap`` | ``loop``), the Fisher code looks it up instead of comparing names, a new estimator is
one registered class, and the old ``backend`` key is refused by name with its new key."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgeuq.fisher import FisherConfig, diagonal_fisher
from edgeuq.fisher.per_sample import PER_SAMPLE_GRADIENTS, PerSampleGradients, get_per_sample


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).eval()


def _data(n: int = 9):
    rng = np.random.default_rng(1)
    return rng.standard_normal((n, 5)).astype(np.float32), rng.integers(0, 3, n)


def _brute_empirical_diag(model: nn.Module, x: np.ndarray, y: np.ndarray) -> dict:
    """Mean over samples of the squared gradient of −log p(y_n|x_n), one autograd call per sample."""
    acc = {k: np.zeros(p.shape) for k, p in model.named_parameters()}
    for xi, yi in zip(x, y):
        model.zero_grad()
        logp = torch.log_softmax(model(torch.from_numpy(xi[None])), -1)
        (-logp[0, int(yi)]).backward()
        for k, p in model.named_parameters():
            acc[k] += p.grad.double().numpy() ** 2
    return {k: v / len(x) for k, v in acc.items()}


def test_builtin_estimators_are_registered_and_the_default_is_vmap():
    assert {"vmap", "loop"} <= set(PER_SAMPLE_GRADIENTS)
    assert FisherConfig().per_sample == "vmap"
    assert all(isinstance(get_per_sample(n), PerSampleGradients) for n in ("vmap", "loop"))


@pytest.mark.parametrize("name", ["vmap", "loop"])
def test_each_estimator_matches_brute_force(name):
    model, (x, y) = _mlp(), _data()
    got = diagonal_fisher(model, x, y, FisherConfig(labels="empirical", per_sample=name, batch_size=4, progress=False))
    ref = _brute_empirical_diag(model, x, y)
    for k, v in ref.items():
        err = float(np.max(np.abs(got.diag[k] - v)) / max(np.max(np.abs(v)), 1e-30))
        assert err <= 1e-4, (name, k, err)


def test_a_new_estimator_is_one_registered_class_and_is_used_by_name():
    """A toy estimator (the loop's gradients doubled) registered here: the diagonal Fisher uses it,
    so the result is 4x the reference (squared gradients) without any other edit."""

    @PER_SAMPLE_GRADIENTS.register("test_doubled")
    class Doubled(PerSampleGradients):
        def __call__(self, target, x, noise, labels):
            return {k: 2 * g for k, g in get_per_sample("loop")(target, x, noise, labels).items()}

    try:
        model, (x, y) = _mlp(), _data()
        cfg = dict(labels="empirical", batch_size=4, progress=False)
        toy = diagonal_fisher(model, x, y, FisherConfig(per_sample="test_doubled", **cfg))
        ref = diagonal_fisher(model, x, y, FisherConfig(per_sample="loop", **cfg))
        for k in ref.diag:
            err = float(np.max(np.abs(toy.diag[k] - 4 * ref.diag[k])) / max(np.max(np.abs(ref.diag[k])), 1e-30))
            assert err <= 1e-6, (k, err)
    finally:
        PER_SAMPLE_GRADIENTS.remove("test_doubled")
    with pytest.raises(ValueError, match="per_sample must be one of"):
        FisherConfig(per_sample="test_doubled")


def test_unknown_estimator_and_old_backend_key_are_refused_by_name():
    with pytest.raises(ValueError, match=r"per_sample must be one of \[.*'vmap'.*\], got 'auto'"):
        FisherConfig(per_sample="auto")
    with pytest.raises(TypeError):
        FisherConfig(backend="vmap")  # the old keyword is gone
    with pytest.raises(ValueError, match="'backend' is now 'per_sample'"):
        FisherConfig.from_dict({"labels": "true", "backend": "loop"})
    with pytest.raises(ValueError, match=r"unknown fisher settings \['per_samples'\]"):
        FisherConfig.from_dict({"per_samples": "loop"})
    cfg = FisherConfig(per_sample="loop", noise_samples=2, progress=False)
    assert FisherConfig.from_dict(cfg.to_dict()) == cfg
