"""Decomposition identities, ECE by hand, temperature scaling, accuracy-coverage curves."""
import math

import numpy as np
import pytest

from edgeuq.uq import (
    accuracy_coverage_curve, decompose, entropy, expected_calibration_error, fit_temperature, nll,
    plot_accuracy_coverage, selective_accuracy, tempered_nll, tempered_probs,
)


def _dirichlet_samples(seed, s=8, b=50, c=4, conc=0.5):
    return np.random.default_rng(seed).dirichlet(np.full(c, conc), size=(s, b))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_total_is_aleatoric_plus_epistemic_and_mi_is_non_negative(seed):
    sp = _dirichlet_samples(seed)
    r = decompose(sp)
    assert np.allclose(r.total, r.aleatoric + r.epistemic, atol=1e-12)
    assert np.all(r.epistemic >= 0)
    assert np.allclose(r.total, entropy(sp.mean(0)))
    assert np.allclose(r.aleatoric, entropy(sp).mean(0))
    assert r.samples.shape == (8, 50, 4)


def test_mi_is_zero_when_all_samples_agree():
    p = np.random.default_rng(3).dirichlet(np.ones(5), size=6)
    r = decompose(np.repeat(p[None], 10, axis=0))
    assert np.allclose(r.epistemic, 0.0, atol=1e-12)
    assert np.allclose(r.total, r.aleatoric)


def test_decomposition_of_two_confident_disagreeing_samples():
    r = decompose(np.array([[[1.0, 0.0]], [[0.0, 1.0]]]))
    assert r.total[0] == pytest.approx(math.log(2))
    assert r.aleatoric[0] == pytest.approx(0.0)
    assert r.epistemic[0] == pytest.approx(math.log(2))


def test_ece_hand_computed_example():
    # confidences 0.95, 0.9 (bin (0.9,1.0] and (0.8,0.9]), 0.65 x2 (bin (0.6,0.7]), 0.55 (bin (0.5,0.6])
    probs = np.array([[0.95, 0.05], [0.9, 0.1], [0.65, 0.35], [0.35, 0.65], [0.55, 0.45]])
    labels = np.array([0, 1, 0, 0, 0])  # correct, wrong, correct, wrong, correct
    # bins: {0.95: acc 1} gap .05; {0.9: acc 0} gap .9; {0.65, 0.65: acc .5} gap .15; {0.55: acc 1} gap .45
    expected = (1 * 0.05 + 1 * 0.9 + 2 * 0.15 + 1 * 0.45) / 5
    assert expected_calibration_error(probs, labels, n_bins=10) == pytest.approx(expected)


def test_temperature_recovers_the_overconfidence_factor():
    rng = np.random.default_rng(0)
    n, c = 4000, 4
    true_logits = rng.standard_normal((n, c)) * 2.0
    p = np.exp(true_logits - true_logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    labels = np.array([rng.choice(c, p=row) for row in p])
    fit = fit_temperature(3.0 * true_logits, labels)          # a model 3x over-confident
    assert fit.temperature == pytest.approx(3.0, rel=0.1) and not fit.degenerate
    assert fit.nll_after < fit.nll_before
    calibrated = fit_temperature(true_logits, labels)
    assert calibrated.temperature == pytest.approx(1.0, rel=0.1)


def test_temperature_fit_without_errors_is_degenerate_and_keeps_identity():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, 200)
    logits = np.eye(3)[labels] * 4.0 + 0.1 * rng.standard_normal((200, 3))  # every prediction correct
    fit = fit_temperature(logits, labels)
    assert fit.degenerate and fit.optimum < 0.2                       # NLL -> 0 as T -> 0
    assert fit.temperature == 1.0 and fit.nll_after == fit.nll_before


def test_tempered_nll_uses_the_mean_of_sampled_softmaxes():
    rng = np.random.default_rng(1)
    z = rng.standard_normal((5, 30, 3)) * 3
    y = rng.integers(0, 3, 30)
    p_bar = tempered_probs(z, 1.7)
    assert p_bar.shape == (30, 3) and np.allclose(p_bar.sum(1), 1)
    assert tempered_nll(z, y, 1.7) == pytest.approx(nll(p_bar, y), rel=1e-9)
    with pytest.raises(ValueError, match="shape"):
        tempered_nll(z[0, 0], y, 1.0)
    with pytest.raises(ValueError, match="temperature"):
        tempered_probs(z, 0.0)


def test_accuracy_coverage_curve_endpoints_and_ranking(tmp_path):
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.55, 0.45]])
    labels = np.array([0, 0, 1, 0])
    cov, acc = accuracy_coverage_curve(probs, labels)
    assert np.allclose(cov, [0.25, 0.5, 0.75, 1.0])
    assert np.allclose(acc, [1.0, 1.0, 2 / 3, 0.75])
    assert acc[-1] == pytest.approx(np.mean(probs.argmax(1) == labels))
    assert selective_accuracy(probs, labels, 0.5) == pytest.approx(acc[1])
    path = plot_accuracy_coverage({"confidence": (cov, acc)}, tmp_path / "ac.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="empty"):
        plot_accuracy_coverage({}, tmp_path / "x.png")
