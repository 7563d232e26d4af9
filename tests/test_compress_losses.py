"""Distillation losses against independent references (numpy/scipy closed forms, Monte Carlo)."""
import numpy as np
import pytest
import torch
from scipy.stats import dirichlet

from edgeuq.compress.losses import (
    decompose, dirichlet_mutual_information, dirichlet_nll, mean_kl, uncertainty_matching,
)


def _softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def _entropy(p):
    return -(p * np.log(p)).sum(-1)


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    student = rng.normal(size=(5, 7, 4))  # K, B, C
    teacher = _softmax(rng.normal(size=(9, 7, 4)) * 2)  # S, B, C
    return student, teacher


@pytest.mark.parametrize("tau", [1.0, 2.5])
def test_mean_kl_matches_numpy_formula(batch, tau):
    s, t = batch
    p_t = _softmax(np.log(t.mean(0)) / tau)
    p_s = _softmax(s / tau).mean(0)
    want = tau ** 2 * np.mean((p_t * (np.log(p_t) - np.log(p_s))).sum(-1))
    got = float(mean_kl(torch.tensor(s), torch.tensor(t), tau))
    assert abs(got - want) <= 1e-9 * max(1.0, abs(want))


def test_mean_kl_is_zero_when_student_mean_equals_teacher_mean():
    rng = np.random.default_rng(1)
    t = _softmax(rng.normal(size=(1, 6, 3)))
    got = float(mean_kl(torch.tensor(np.log(t)), torch.tensor(np.repeat(t, 4, axis=0)), 1.0))
    assert abs(got) <= 1e-12


def test_uncertainty_matching_matches_numpy_decomposition(batch):
    s, t = batch
    ps = _softmax(s)

    def parts(p):
        total = _entropy(p.mean(0))
        eh = _entropy(p).mean(0)
        return eh, total - eh

    eh_s, mi_s = parts(ps)
    eh_t, mi_t = parts(t)
    want = np.mean((mi_t - mi_s) ** 2 + (eh_t - eh_s) ** 2)
    got = float(uncertainty_matching(torch.tensor(s), torch.tensor(t)))
    assert abs(got - want) <= 1e-9
    # identical sample sets match exactly
    assert abs(float(uncertainty_matching(torch.tensor(np.log(t)), torch.tensor(t)))) <= 1e-12


def test_decompose_mi_is_total_minus_expected_entropy(batch):
    _, t = batch
    mean, total, eh, mi = (v.numpy() for v in decompose(torch.tensor(t)))
    assert np.allclose(mean, t.mean(0))
    assert np.allclose(mi, _entropy(t.mean(0)) - _entropy(t).mean(0), atol=1e-12)


def test_dirichlet_nll_matches_scipy_logpdf():
    rng = np.random.default_rng(2)
    alpha = rng.uniform(0.5, 5.0, size=(3, 4))
    pi = rng.dirichlet(np.ones(4), size=(6, 3))  # S, B, C (interior points)
    got = float(dirichlet_nll(torch.tensor(alpha), torch.tensor(pi)))
    # same smoothing as the loss (EPS = 1e-8) so the reference sees the same points
    eps = 1e-8
    pis = (pi + eps) / (1 + 4 * eps)
    want = -np.mean([[dirichlet.logpdf(pis[s, b], alpha[b]) for b in range(3)] for s in range(6)])
    assert abs(got - want) <= 1e-8 * max(1.0, abs(want))


def test_dirichlet_nll_refuses_nonpositive_alpha():
    with pytest.raises(ValueError, match="> 0"):
        dirichlet_nll(torch.tensor([[1.0, 0.0]]), torch.full((2, 1, 2), 0.5))


def test_dirichlet_mutual_information_matches_monte_carlo():
    rng = np.random.default_rng(3)
    alpha = np.array([[0.7, 1.3, 2.0], [10.0, 10.0, 10.0]])
    got = dirichlet_mutual_information(torch.tensor(alpha)).numpy()
    for b in range(2):
        pi = rng.dirichlet(alpha[b], size=400_000)
        want = _entropy(alpha[b] / alpha[b].sum()) - np.mean(_entropy(np.clip(pi, 1e-300, None)))
        assert abs(got[b] - want) <= 3e-3, (b, got[b], want)


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match="teacher probabilities must have shape"):
        mean_kl(torch.zeros(2, 3, 4), torch.full((5, 3, 5), 0.2))
    with pytest.raises(ValueError, match="student logits"):
        uncertainty_matching(torch.zeros(3, 4), torch.full((5, 3, 4), 0.25))


def test_cli_loss_choices_match_the_registry():
    from edgeuq.compress import cli, distill

    assert set(cli.LOSS_CHOICES) == set(distill.LOSSES) and cli.DEFAULT_LOSS == distill.DEFAULT_LOSS
