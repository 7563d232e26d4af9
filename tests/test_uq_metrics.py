"""Uncertainty metrics against hand-computed values, and the decomposition
identities through edgeuq.uq's re-export of the runtime's implementation."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import mannwhitneyu

import edgeuq_runtime.uncertainty as runtime_uq
from edgeuq import uq
from edgeuq.uq import metrics

# --------------------------------------------------------------- calibration


def test_ece_hand_example_and_edge_convention():
    probs = np.array([
        [0.95, 0.05],  # y=0 correct, conf 0.95 -> bin (0.9, 1.0]
        [0.15, 0.85],  # y=0 wrong,   conf 0.85 -> bin (0.8, 0.9]
        [0.80, 0.20],  # y=0 correct, conf 0.80 -> bin (0.7, 0.8]  (right edge belongs to the lower bin)
        [0.40, 0.60],  # y=1 correct, conf 0.60 -> bin (0.5, 0.6]  (right edge again)
        [0.55, 0.45],  # y=1 wrong,   conf 0.55 -> bin (0.5, 0.6]
    ])
    labels = np.array([0, 0, 0, 1, 1])
    # N = 5. Per bin |B|/N * |acc - conf|:
    #   (0.9,1.0]: 1/5 * |1 - 0.95|               = 0.2 * 0.05  = 0.01
    #   (0.8,0.9]: 1/5 * |0 - 0.85|               = 0.2 * 0.85  = 0.17
    #   (0.7,0.8]: 1/5 * |1 - 0.80|               = 0.2 * 0.20  = 0.04
    #   (0.5,0.6]: 2/5 * |1/2 - (0.60+0.55)/2|    = 0.4 * 0.075 = 0.03
    #   ECE = 0.01 + 0.17 + 0.04 + 0.03 = 0.25
    # (Left-closed bins would give 0.01 + 2/5*|0.5-0.825| + 0.4/5 + 0.55/5 = 0.33.)
    assert metrics.expected_calibration_error(probs, labels) == pytest.approx(0.25, abs=1e-12)

    bins = metrics.reliability_bins(probs, labels)
    assert bins.count.tolist() == [0, 0, 0, 0, 0, 2, 0, 1, 1, 1]
    assert bins.accuracy[5] == pytest.approx(0.5) and bins.confidence[5] == pytest.approx(0.575)
    assert np.isnan(bins.accuracy[0]) and np.isnan(bins.confidence[0])
    assert bins.ece() == pytest.approx(0.25)


def test_ece_of_perfect_calibration_is_zero():
    # 10 inputs at confidence 0.7 with 7 correct; 4 at 0.75 with 3 correct;
    # 3 (3-class) at 1/3 with 1 correct: accuracy equals confidence in every bin.
    probs = np.array([[0.7, 0.3]] * 10 + [[0.25, 0.75]] * 4)
    labels = np.array([0] * 7 + [1] * 3 + [1] * 3 + [0])
    assert metrics.expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)
    probs3 = np.full((3, 3), 1 / 3)
    assert metrics.expected_calibration_error(probs3, np.array([0, 1, 2])) == pytest.approx(0.0, abs=1e-12)
    # Flip one label: the 0.7 bin now has accuracy 0.6 -> ECE = 10/14 * 0.1.
    labels[0] = 1
    assert metrics.expected_calibration_error(probs, labels) == pytest.approx(10 / 14 * 0.1)


def test_ece_n_bins_changes_binning():
    probs = np.array([[0.62, 0.38], [0.68, 0.32]])
    labels = np.array([0, 1])
    # 10 bins: both in (0.6, 0.7] -> |0.5 - 0.65| = 0.15.
    # 20 bins: (0.60,0.65] holds 0.62 (correct) -> 1/2*0.38; (0.65,0.70] holds 0.68 (wrong) -> 1/2*0.68.
    assert metrics.expected_calibration_error(probs, labels, 10) == pytest.approx(0.15)
    assert metrics.expected_calibration_error(probs, labels, 20) == pytest.approx(0.5 * 0.38 + 0.5 * 0.68)


# ---------------------------------------------------- proper scoring rules


PROBS = np.array([[0.7, 0.2, 0.1], [0.1, 0.5, 0.4]])
LABELS = np.array([0, 2])


def test_brier_hand_example():
    # row 0: (0.7-1)^2 + 0.2^2 + 0.1^2 = 0.09 + 0.04 + 0.01 = 0.14
    # row 1: 0.1^2 + 0.5^2 + (0.4-1)^2 = 0.01 + 0.25 + 0.36 = 0.62
    # mean = 0.38
    assert metrics.brier(PROBS, LABELS) == pytest.approx(0.38)
    assert metrics.brier(np.eye(3), np.arange(3)) == 0.0
    assert metrics.brier(np.eye(2), np.array([1, 0])) == pytest.approx(2.0)


def test_nll_hand_example_and_clipping():
    # -(log 0.7 + log 0.4) / 2 = (0.356675 + 0.916291) / 2 = 0.636483
    assert metrics.nll(PROBS, LABELS) == pytest.approx(-(math.log(0.7) + math.log(0.4)) / 2)
    assert metrics.nll(PROBS, LABELS) == pytest.approx(0.636483, abs=1e-6)
    # p(y) = 0 is clipped at 1e-12: -log(1e-12) = 27.631...
    assert metrics.nll(np.array([[1.0, 0.0]]), np.array([1])) == pytest.approx(-math.log(1e-12))


def test_accuracy_and_summary():
    assert metrics.accuracy(PROBS, LABELS) == 0.5  # row 0 argmax 0 = y; row 1 argmax 1 != 2
    m = metrics.classification_metrics(PROBS, LABELS)
    assert m == metrics.ClassificationMetrics(
        accuracy=0.5, nll=metrics.nll(PROBS, LABELS), brier=metrics.brier(PROBS, LABELS),
        ece=metrics.expected_calibration_error(PROBS, LABELS), n=2)
    d = m.to_dict()
    assert set(d) == {"accuracy", "nll", "brier", "ece", "n"} and d["n"] == 2
    with pytest.raises(AttributeError):
        m.accuracy = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("probs,labels,match", [
    (np.array([0.5, 0.5]), np.array([0]), "shape"),
    (PROBS, np.array([0]), "labels must have shape"),
    (PROBS, np.array([0, 3]), "labels must lie in"),
    (PROBS, np.array([0, -1]), "labels must lie in"),
    (PROBS, np.array([0.0, 1.0]), "integers"),
    (np.array([[np.nan, 1.0], [0.5, 0.5]]), np.array([0, 1]), "NaN"),
    (np.array([[2.0, 3.0], [0.5, 0.5]]), np.array([0, 1]), "sum to 1"),
    (np.array([[1.5, -0.5], [0.5, 0.5]]), np.array([0, 1]), ">= 0"),
])
def test_invalid_inputs_raise(probs, labels, match):
    for fn in (metrics.accuracy, metrics.nll, metrics.brier, metrics.expected_calibration_error):
        with pytest.raises(ValueError, match=match):
            fn(probs, labels)


# ---------------------------------------------------------------------- OOD


def test_auroc_separated_reversed_and_ties():
    s_in, s_out = np.array([0.1, 0.2, 0.3]), np.array([0.7, 0.8])
    assert metrics.auroc(s_in, s_out) == 1.0
    assert metrics.auroc(s_out, s_in) == 0.0
    same = np.array([0.2, 0.2, 0.5, 0.9])
    assert metrics.auroc(same, same.copy()) == pytest.approx(0.5)
    assert metrics.auroc(np.zeros(4), np.zeros(7)) == pytest.approx(0.5)


def test_auroc_equals_mann_whitney_hand_example():
    s_in, s_out = np.array([0.1, 0.4, 0.35]), np.array([0.8, 0.4, 0.3])
    # Pairs (out > in counts 1, tie 1/2):
    #   0.8 beats 0.1, 0.4, 0.35        -> 3
    #   0.4 beats 0.1, ties 0.4, beats 0.35 -> 2.5
    #   0.3 beats 0.1 only              -> 1
    # U = 6.5, AUROC = 6.5 / (3 * 3) = 0.7222...
    assert metrics.auroc(s_in, s_out) == pytest.approx(6.5 / 9)
    u = mannwhitneyu(s_out, s_in, alternative="two-sided").statistic
    assert metrics.auroc(s_in, s_out) == pytest.approx(u / 9)


def test_aupr_hand_example():
    assert metrics.aupr(np.array([0.1, 0.2]), np.array([0.8, 0.9])) == 1.0
    # Sorted descending: 0.9 (out) P=1 R=1/2; 0.6 (in) P=1/2 R=1/2; 0.5 (out) P=2/3 R=1.
    # AP = 1/2 * 1 + 0 * 1/2 + 1/2 * 2/3 = 0.8333...
    assert metrics.aupr(np.array([0.1, 0.6]), np.array([0.9, 0.5])) == pytest.approx(5 / 6)
    # All tied: one threshold, precision = 1/2 at recall 1 -> AP = 1/2.
    assert metrics.aupr(np.zeros(2), np.zeros(2)) == pytest.approx(0.5)


def test_fpr_at_95_tpr_hand_example():
    s_out = np.arange(1.0, 21.0)  # 1..20
    s_in = np.arange(10) * 0.5  # 0, 0.5, ..., 4.5
    # TPR >= 0.95 needs >= 19 of 20 OOD scores flagged -> threshold = 19th largest = 2.
    # In-distribution scores >= 2: 2, 2.5, 3, 3.5, 4, 4.5 -> 6 of 10 -> FPR = 0.6.
    assert metrics.fpr_at_95_tpr(s_in, s_out) == pytest.approx(0.6)
    assert metrics.fpr_at_95_tpr(s_in - 10, s_out) == 0.0
    assert metrics.fpr_at_95_tpr(s_in, s_out, tpr=1.0) == pytest.approx(0.8)  # threshold 1: 8 of 10


def test_ood_inputs_validated():
    with pytest.raises(ValueError, match="scores_in"):
        metrics.auroc(np.array([]), np.array([1.0]))
    with pytest.raises(ValueError, match="scores_out"):
        metrics.aupr(np.array([1.0]), np.array([np.inf]))
    with pytest.raises(ValueError, match="tpr"):
        metrics.fpr_at_95_tpr(np.array([1.0]), np.array([2.0]), tpr=0.0)


# ---------------------------------------------------------------- selective


def test_aurc_hand_examples():
    conf = np.array([0.9, 0.8, 0.7, 0.6])
    # Perfect ranking (the error least confident): risks 0, 0, 0, 1/4 -> AURC = (1/4)/4 = 1/16.
    assert metrics.aurc(conf, np.array([1, 1, 1, 0])) == pytest.approx(1 / 16)
    # Worst ranking: risks 1, 1/2, 1/3, 1/4 -> AURC = (1 + 1/2 + 1/3 + 1/4)/4 = 25/48.
    assert metrics.aurc(conf, np.array([0, 1, 1, 1])) == pytest.approx(25 / 48)
    assert metrics.aurc(conf, np.ones(4, dtype=bool)) == 0.0
    # All confidences tied: every ordering is equally likely, expected risk = 1/4 at every k.
    assert metrics.aurc(np.full(4, 0.5), np.array([1, 1, 1, 0])) == pytest.approx(1 / 4)
    assert metrics.aurc(np.full(4, 0.5), np.array([0, 1, 1, 1])) == pytest.approx(1 / 4)


def test_selective_accuracy_hand_example():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])
    labels = np.array([0, 1, 1, 1])  # correct, wrong (conf 0.8), correct (0.7), correct (0.6)
    assert metrics.selective_accuracy(probs, labels, 1.0) == pytest.approx(0.75)
    assert metrics.selective_accuracy(probs, labels, 0.25) == 1.0  # top-1: conf 0.9, correct
    assert metrics.selective_accuracy(probs, labels, 0.5) == pytest.approx(0.5)  # 0.9 ok, 0.8 wrong
    # Rank by another confidence (e.g. -MI) that puts the wrong input last.
    other = np.array([4.0, 1.0, 3.0, 2.0])
    assert metrics.selective_accuracy(probs, labels, 0.75, confidence=other) == 1.0
    with pytest.raises(ValueError, match="coverage"):
        metrics.selective_accuracy(probs, labels, 0.0)


# --------------------------------------------- decomposition via re-export


def test_reexport_is_the_runtime_implementation():
    assert uq.decompose is runtime_uq.decompose
    assert uq.entropy is runtime_uq.entropy
    assert uq.softmax is runtime_uq.softmax
    assert uq.UncertaintyResult is runtime_uq.UncertaintyResult


def _dirichlet_samples(seed, s=8, n=50, c=5):
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.full(c, 0.5), size=(s, n))


@pytest.mark.parametrize("seed", range(3))
def test_total_is_aleatoric_plus_epistemic(seed):
    sp = _dirichlet_samples(seed)
    r = uq.decompose(sp)
    np.testing.assert_allclose(r.total, r.aleatoric + r.epistemic, atol=1e-12)
    np.testing.assert_allclose(r.total, uq.entropy(sp.mean(axis=0)), atol=1e-12)
    np.testing.assert_allclose(r.aleatoric, uq.entropy(sp).mean(axis=0), atol=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_mutual_information_nonnegative_and_positive_on_disagreement(seed):
    r = uq.decompose(_dirichlet_samples(seed))
    assert np.all(r.epistemic >= 0)
    assert np.all(r.epistemic > 1e-6)  # independent Dirichlet draws disagree


def test_mutual_information_zero_when_samples_agree():
    one = _dirichlet_samples(7, s=1)
    r = uq.decompose(np.repeat(one, 6, axis=0))
    np.testing.assert_allclose(r.epistemic, 0.0, atol=1e-12)
    np.testing.assert_allclose(r.total, r.aleatoric, atol=1e-12)


def test_metrics_accept_decomposition_output():
    sp = _dirichlet_samples(3, n=40, c=3)
    r = uq.decompose(sp)
    labels = np.random.default_rng(0).integers(0, 3, size=40)
    m = uq.classification_metrics(r.probs, labels)
    assert 0.0 <= m.accuracy <= 1.0 and m.nll > 0 and 0.0 <= m.ece <= 1.0 and m.n == 40


# -------------------------------------------------------------------- plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_reliability_diagram_writes_png(tmp_path):
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=200)
    labels = rng.integers(0, 4, size=200)
    out = uq.plot_reliability_diagram(probs, labels, tmp_path / "a" / "b" / "rel.png", title="test")
    assert out == tmp_path / "a" / "b" / "rel.png"
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 2000


def test_uncertainty_histograms_write_png(tmp_path):
    rng = np.random.default_rng(1)
    scores = {"in-distribution": rng.gamma(1.0, 0.02, 300), "OOD": rng.gamma(2.0, 0.05, 100),
              "constant": np.zeros(5)}
    out = uq.plot_uncertainty_histograms(scores, str(tmp_path / "hist" / "mi.png"), xlabel="epistemic MI (nats)")
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 2000
    with pytest.raises(ValueError, match="empty"):
        uq.plot_uncertainty_histograms({}, tmp_path / "x.png", xlabel="x")
    with pytest.raises(ValueError, match="OOD"):
        uq.plot_uncertainty_histograms({"OOD": np.array([np.nan])}, tmp_path / "x.png", xlabel="x")
