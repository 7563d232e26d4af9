"""Conformal p-values of anomaly scores: brute-force counts, uniform under exchangeability (KS check
with a tolerance derived from the number of trials and the grid 1/(n+1)), Mondrian (per-group)
validity where the pooled p-value fails per group, and the combination rules (Bonferroni min valid
under any dependence; Fisher anti-conservative under dependence, exact under independence)."""
import math

import numpy as np
import pytest
from rt_helpers import require_extra

from edgeuq_runtime.conformal import chi2_sf_even, combine_pvalues, conformal_pvalues, mondrian_pvalues
from edgeuq_runtime.errors import InputError


def test_pvalues_match_brute_force_count():
    rng = np.random.default_rng(0)
    cal = rng.integers(0, 20, 57).astype(float)  # ties on purpose
    s = np.concatenate([rng.integers(-2, 23, 200).astype(float), [np.nan]])
    p = conformal_pvalues(cal, s)
    brute = np.array([(1 + np.sum(cal >= v)) / (cal.size + 1) for v in s[:-1]])
    assert np.array_equal(p[:-1], brute)
    assert p[-1] == 1 / (cal.size + 1)  # NaN: beyond every calibration score
    with pytest.raises(InputError):
        conformal_pvalues([], [1.0])


def _ks_discrete_uniform(p: np.ndarray, n: int) -> float:
    """sup |F_emp - F| on the grid j/(n+1), where F(j/(n+1)) = j/(n+1) under exchangeability."""
    grid = np.arange(1, n + 2) / (n + 1)
    emp = np.searchsorted(np.sort(p), grid, side="right") / p.size
    return float(np.max(np.abs(emp - grid)))


def test_pvalues_uniform_under_exchangeability_and_not_under_shift():
    rng = np.random.default_rng(1)
    n, trials = 49, 6000
    tol = 1.63 / math.sqrt(trials)  # KS critical value at ~1 %, n-point grid handled exactly above
    ex = rng.standard_normal((trials, n + 1))
    p = np.array([conformal_pvalues(row[:n], row[n:])[0] for row in ex])
    assert set(np.unique(p)) <= set(np.arange(1, n + 2) / (n + 1))
    assert _ks_discrete_uniform(p, n) <= tol, _ks_discrete_uniform(p, n)
    # P(p <= a) <= a for a on and off the grid (validity), within the binomial tolerance
    for a in (0.02, 0.05, 0.1, 0.33):
        assert (p <= a).mean() <= math.floor(a * (n + 1)) / (n + 1) + 3 * math.sqrt(a * (1 - a) / trials)
    # a shifted test point is not uniform: the check can fail
    p_shift = np.array([conformal_pvalues(row[:n], row[n:] + 1.0)[0] for row in ex])
    assert _ks_discrete_uniform(p_shift, n) > 5 * tol


def test_mondrian_pvalues_valid_per_group_where_pooled_fails():
    rng = np.random.default_rng(2)
    loc, scale = np.array([0.0, 2.0, 5.0]), np.array([1.0, 0.5, 2.0])
    n_g, m_g, a = 300, 4000, 0.1
    cal = [rng.normal(loc[g], scale[g], n_g) for g in range(3)]
    pooled = np.concatenate(cal)
    test_g = np.repeat(np.arange(3), m_g)
    test_s = rng.normal(loc[test_g], scale[test_g])
    pm = mondrian_pvalues(cal, pooled, test_s, test_g)
    pp = conformal_pvalues(pooled, test_s)
    # brute force for a few points
    for i in (0, m_g + 5, 2 * m_g + 9):
        g = test_g[i]
        assert pm[i] == (1 + np.sum(cal[g] >= test_s[i])) / (n_g + 1)
    for g in range(3):
        sel = test_g == g
        rate = (pm[sel] <= a).mean()
        a_eff = math.floor(a * (n_g + 1)) / (n_g + 1)
        # conditional on the calibration draw the rate fluctuates with both n_g and m_g
        tol = 4 * math.sqrt(a * (1 - a) * (1 / n_g + 1 / m_g))
        assert abs(rate - a_eff) <= tol, (g, rate)
    pooled_rates = [(pp[test_g == g] <= a).mean() for g in range(3)]
    assert max(abs(r - a) for r in pooled_rates) > 0.2, pooled_rates  # marginal p-values miss per group
    # a group without its own calibration scores uses the pooled ones
    pm2 = mondrian_pvalues([cal[0], None, cal[2]], pooled, test_s, test_g)
    assert np.array_equal(pm2[test_g == 1], pp[test_g == 1])


def test_chi2_sf_even_closed_form():
    x = np.array([0.0, 0.5, 3.0, 10.0, 40.0])
    assert np.allclose(chi2_sf_even(x, 2), np.exp(-x / 2))
    assert np.allclose(chi2_sf_even(x, 4), np.exp(-x / 2) * (1 + x / 2))
    stats = require_extra("scipy.stats", "scipy: the runtime's test reference (a main dependency of edgeuq; make test installs it)")
    for dof in (2, 4, 6, 10):
        assert np.allclose(chi2_sf_even(x, dof), stats.chi2.sf(x, dof), rtol=1e-10, atol=1e-15)
    with pytest.raises(InputError):
        chi2_sf_even(x, 3)


def test_combination_rules_validity_under_dependence():
    rng = np.random.default_rng(3)
    m, a = 200_000, 0.05
    tol = 4 * math.sqrt(a * (1 - a) / m)
    u = rng.random(m)
    dep = np.stack([u, u, u], axis=1)                 # perfectly dependent parts (MI ~ entropy)
    ind = rng.random((m, 3))
    # Bonferroni min: valid whatever the dependence
    assert (combine_pvalues(dep, "min") <= a).mean() <= a + tol
    assert (combine_pvalues(ind, "min") <= a).mean() <= a + tol
    # Fisher: exact under independence, anti-conservative under dependence (why the suite defaults to min)
    assert abs((combine_pvalues(ind, "fisher") <= a).mean() - a) <= tol
    assert (combine_pvalues(dep, "fisher") <= a).mean() > 2 * a
    with pytest.raises(InputError):
        combine_pvalues(ind, "max")


def _tight_pvalues(M: int, weights) -> np.ndarray:
    """Valid, strongly dependent p-values (all functions of one index ``i`` uniform on ``0..M-1``) on
    which the union bound of the weighted rule is *tight*: ``p_k = ((i - S_k) mod M + 1) / M`` (each a
    permutation of the grid ``1/M .. 1``, so a valid discrete p-value) with offsets ``S_k = M sum_{j<k}
    w_j`` that make the events ``{p_k <= w_k a}`` disjoint for every ``a <= 1``: the rate is
    ``sum_k floor(w_k a M) / M``, i.e. ``a`` up to the grid."""
    s = np.round(M * np.concatenate([[0.0], np.cumsum(weights)[:-1]])).astype(np.int64)
    i = np.arange(M)
    return (np.mod(i[:, None] - s[None, :], M) + 1.0) / M


def test_weighted_rule_false_alarm_guarantee_brute_force_and_simulated():
    """P(min_k p_k / w_k <= a) <= a whatever the dependence: (1) exactly, by enumerating every point of
    a discrete uniform law (``u = (i + 1) / M``, each ``p_k`` a valid discrete p-value) for p-values that
    are perfectly dependent, tight (disjoint rejection regions) and anti-monotone; (2) by simulation of
    dependent Gaussian-copula p-values. The tight case is at the bound, so a rule spending more than the
    level (weights summing to 1.5) is caught by the same check."""
    M = 20_000
    u = (np.arange(M) + 1.0) / M
    for w in ((0.1, 0.1, 0.8), (0.05, 0.05, 0.9), (0.5, 0.5), (1 / 3, 1 / 3, 1 / 3)):
        cases = {"identical": np.stack([u] * len(w), 1), "tight": _tight_pvalues(M, w),
                 "anti": np.stack([u if k % 2 == 0 else 1.0 + 1.0 / M - u for k in range(len(w))], 1)}
        for name, P in cases.items():
            # each part is a valid p-value: P(p_k <= t) <= t for every t on the grid (exact count)
            for k in range(P.shape[1]):
                t = np.sort(P[:, k])
                assert np.all(np.arange(1, M + 1) / M <= t + 1e-12), (w, name, k)
            comb = combine_pvalues(P, "weighted", w)
            for a in (0.01, 0.05, 0.1, 0.25):
                rate = np.count_nonzero(comb <= a) / M
                assert rate <= a + 1e-9, (w, name, a, rate)
                if name == "tight":   # at the bound (up to the grid), so the check above can fail
                    assert rate >= a - len(w) / M, (w, a, rate)
                    over = np.minimum(1.0, (P / (1.5 * np.asarray(w))).min(1))    # weights summing to 1.5
                    assert np.count_nonzero(over <= a) / M > 1.4 * a
    rng = np.random.default_rng(11)
    m, a = 200_000, 0.05
    tol = 4 * math.sqrt(a * (1 - a) / m)
    z = rng.standard_normal((m, 1))
    corr = np.concatenate([z, 0.9 * z + math.sqrt(1 - 0.81) * rng.standard_normal((m, 1)),
                           -0.5 * z + math.sqrt(0.75) * rng.standard_normal((m, 1))], 1)
    P = 0.5 * np.vectorize(math.erfc)(corr / math.sqrt(2))         # upper-tail normal p-values: each uniform
    for w in ((0.1, 0.1, 0.8), (0.6, 0.2, 0.2)):
        assert (combine_pvalues(P, "weighted", w) <= a).mean() <= a + tol


def test_weighted_rule_equal_weights_is_bonferroni_min():
    """Equal weights 1/K give min(1, K min_k p_k) (closed form), within float round-off of p / (1 / K)."""
    rng = np.random.default_rng(2)
    for k in (1, 2, 3, 5):
        P = rng.random((5000, k)) ** 3
        P[:7] = 1.0
        closed = np.minimum(1.0, k * P.min(axis=1))
        got = combine_pvalues(P, "weighted", [1.0 / k] * k)
        err = float(np.max(np.abs(got - closed) / closed))
        assert err <= 4e-16, (k, err)
        assert np.array_equal(combine_pvalues(P, "min"), closed)
        # unequal weights do change it (the check above can tell the rules apart)
        if k > 1:
            w = np.full(k, 0.1 / (k - 1))
            w[-1] = 0.9
            assert np.max(np.abs(combine_pvalues(P, "weighted", w) - closed)) > 0.01


def test_weighted_rule_refuses_bad_weights():
    P = np.random.default_rng(0).random((4, 3))
    for w, msg in ((None, "needs one weight"), ((0.5, 0.5), "needs 3 weights"), ((0.5, 0.6, -0.1), "> 0"),
                   ((0.5, 0.5, 0.0), "> 0"), ((0.3, 0.3, 0.3), "sum to 1"), ((0.2, 0.2, 0.6 + 2e-9), "sum to 1"),
                   ((0.2, 0.2, float("nan")), "finite")):
        with pytest.raises(InputError, match=msg):
            combine_pvalues(P, "weighted", w)
    assert combine_pvalues(P, "weighted", (0.2, 0.2, 0.6 + 5e-10)).shape == (4,)     # within 1e-9
    with pytest.raises(InputError, match="only for the 'weighted' rule"):
        combine_pvalues(P, "min", (0.2, 0.2, 0.6))
