"""Split conformal prediction: set construction against brute force, empirical coverage over
many random splits (binomial/beta tolerance), class-conditional coverage, ACI's long-run bound."""
import math

import numpy as np
import pytest

from edgeuq_runtime.conformal import (
    AdaptiveConformal, conformal_quantile, class_scores, fit_conformal, label_scores, prediction_sets,
)
from edgeuq_runtime.errors import InputError


def _world(n: int, rng: np.random.Generator, classes: int = 5):
    """A miscalibrated model: labels drawn from softmax(z), the model reports softmax(1.8 z + noise)."""
    z = rng.normal(0.0, 1.5, size=(n, classes))
    true = np.exp(z - z.max(1, keepdims=True))
    true /= true.sum(1, keepdims=True)
    y = (rng.random(n)[:, None] > np.cumsum(true, 1)).sum(1)
    zm = 1.8 * z + rng.normal(0.0, 0.7, size=z.shape)
    p = np.exp(zm - zm.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True), y


def test_quantile_is_the_ceil_rank_order_statistic():
    s = np.arange(1, 20, dtype=float)[::-1]  # 19 scores 1..19, unsorted
    # n = 19, alpha = 0.1: k = ceil(20 * 0.9) = 18 -> 18th smallest = 18
    assert conformal_quantile(s, 0.1) == 18.0
    # alpha = 0.04: k = ceil(20 * 0.96) = 20 > 19 -> +inf (the set is every class)
    assert conformal_quantile(s, 0.04) == math.inf
    assert conformal_quantile(s, 0.5) == 10.0  # ceil(10) = 10


def test_scores_and_sets_match_brute_force():
    rng = np.random.default_rng(0)
    p, y = _world(200, rng)
    u = rng.random(200)
    aps = class_scores(p, "aps", u)
    for i in range(200):
        for c in range(p.shape[1]):
            above = sum(p[i, j] for j in range(p.shape[1]) if p[i, j] > p[i, c] or (p[i, j] == p[i, c] and j < c))
            assert abs(aps[i, c] - (above + u[i] * p[i, c])) < 1e-12
    assert np.allclose(label_scores(p, y, "lac"), 1 - p[np.arange(200), y])
    q = 0.6
    sets = prediction_sets(p, q, "lac")
    brute = np.array([[1 - p[i, c] <= q for c in range(p.shape[1])] for i in range(200)])
    assert np.array_equal(sets, brute)
    # APS with u = 1: the set is the smallest top-k prefix whose inclusive mass reaches past q (never skips)
    sets = prediction_sets(p, 0.8, "aps")
    for i in range(200):
        order = np.argsort(-p[i], kind="stable")
        k = sets[i].sum()
        assert set(np.flatnonzero(sets[i])) == set(order[:k])


@pytest.mark.parametrize("method", ["lac", "aps"])
@pytest.mark.parametrize("alpha", [0.1, 0.05])
def test_marginal_coverage_over_random_splits(method, alpha):
    """Mean test coverage over R random calibration/test splits lies in
    [1 - alpha, 1 - alpha + 1/(n+1)] up to 4 standard errors (beta + binomial variance)."""
    rng = np.random.default_rng(1)
    p, y = _world(4000, rng)
    n_cal, r = 500, 200
    covs, sizes = [], []
    for _ in range(r):
        perm = rng.permutation(len(y))
        cal, test = perm[:n_cal], perm[n_cal:]
        cp = fit_conformal(p[cal], y[cal], alpha, method, rng=rng)
        sets = cp.sets(p[test], rng=rng)
        covs.append(sets[np.arange(len(test)), y[test]].mean())
        sizes.append(sets.sum(1).mean())
    n_test = len(y) - n_cal
    var = alpha * (1 - alpha) / (n_cal + 2) + alpha * (1 - alpha) / n_test
    se = math.sqrt(var / r)
    mean = float(np.mean(covs))
    assert mean >= 1 - alpha - 4 * se, (mean, se)
    assert mean <= 1 - alpha + 1 / (n_cal + 1) + 4 * se, (mean, se)   # not trivially conservative
    assert 1.0 < np.mean(sizes) < p.shape[1]  # informative sets


def test_class_conditional_coverage_holds_per_class():
    rng = np.random.default_rng(2)
    p, y = _world(6000, rng, classes=4)
    hard = y == 3  # the model is much less sure on class 3: marginal thresholds under-cover it
    p[hard] = 0.3 * p[hard] + 0.7 / 4
    alpha, n_cal, r = 0.1, 2000, 60
    per_class = np.zeros((r, 4))
    for k in range(r):
        perm = rng.permutation(len(y))
        cal, test = perm[:n_cal], perm[n_cal:]
        cp = fit_conformal(p[cal], y[cal], alpha, "lac", class_conditional=True)
        assert len(cp.qhat) == 4
        sets = cp.sets(p[test])
        hit = sets[np.arange(len(test)), y[test]]
        for c in range(4):
            per_class[k, c] = hit[y[test] == c].mean()
    counts = np.bincount(y, minlength=4) * n_cal / len(y)
    for c in range(4):
        se = math.sqrt((alpha * (1 - alpha) / (counts[c] + 2) + alpha * (1 - alpha) / (counts[c] * 2)) / r)
        assert per_class[:, c].mean() >= 1 - alpha - 4 * se, (c, per_class[:, c].mean())
    # a marginal predictor on the same data under-covers the hardest class (so the test can tell them apart)
    cp = fit_conformal(p, y, alpha, "lac")
    hit = cp.sets(p)[np.arange(len(y)), y]
    assert min(hit[y == c].mean() for c in range(4)) < 1 - alpha - 0.02


def test_aci_tracks_target_under_shift():
    """ACI's deterministic guarantee: |miscoverage - alpha| <= (max(a, 1-a) + gamma) / (gamma T)."""
    rng = np.random.default_rng(3)
    p, y = _world(1000, rng)
    cal_scores = label_scores(p, y, "lac")
    alpha, gamma, t = 0.1, 0.01, 4000
    aci = AdaptiveConformal(cal_scores, alpha, gamma)
    # shifted stream: the model becomes much worse (labels from a different temperature)
    ps, ys = _world(t, rng)
    ys = np.where(rng.random(t) < 0.35, rng.integers(0, p.shape[1], t), ys)
    static = prediction_sets(ps, conformal_quantile(cal_scores, alpha), "lac")
    static_miss = 1 - static[np.arange(t), ys].mean()
    for i in range(t):
        s = aci.sets(ps[i:i + 1])
        aci.update(bool(s[0, ys[i]]))
    bound = (max(alpha, 1 - alpha) + gamma) / (gamma * t)
    assert abs(aci.miscoverage - alpha) <= bound + 1e-12, (aci.miscoverage, bound)
    assert static_miss > alpha + 0.05  # the shift really breaks the static threshold


def test_bad_inputs_are_refused():
    with pytest.raises(InputError, match="alpha"):
        fit_conformal(np.full((3, 2), 0.5), np.array([0, 1, 0]), 1.5)
    with pytest.raises(InputError, match="method"):
        fit_conformal(np.full((3, 2), 0.5), np.array([0, 1, 0]), 0.1, "raps")
    with pytest.raises(InputError, match="labels"):
        fit_conformal(np.full((3, 2), 0.5), np.array([0, 2, 0]), 0.1)
    with pytest.raises(InputError, match="NaN"):
        prediction_sets(np.array([[np.nan, 1.0]]), 0.5, "lac")
