"""Conformal p-values of anomaly scores: brute-force counts, uniform under exchangeability (KS check
with a tolerance derived from the number of trials and the grid 1/(n+1)), Mondrian (per-group)
validity where the pooled p-value fails per group, and the combination rules (Bonferroni min valid
under any dependence; Fisher anti-conservative under dependence, exact under independence)."""
import math

import numpy as np
import pytest

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
    stats = pytest.importorskip("scipy.stats")
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
