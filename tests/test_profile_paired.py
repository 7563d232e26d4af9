"""Order-proof comparisons: seeded random order per round, paired per-round ratios, bootstrap intervals.

A fake machine (its own clock) charges each call a cost that depends on the callable's work and on
its position within the harness's round: the call that runs second in a round finds a cache the
first one warmed and costs ``WARM`` of its work. The harness never sees those costs except through
the clock, so the checks below are against what the fake machine did, computed independently.
"""
import dataclasses
import itertools
import json
import math

import numpy as np
import pytest

from edgeuq.profile import PairedRatio, bootstrap_median_ci, compare, measure_rounds, measure_stages, paired_ratio

WARM = 0.8  # the second call of a round costs 80 % of its work: a warm cache, not faster code


class WarmCacheMachine:
    """Calls come in rounds of ``k`` (the harness calls each callable once per round): the call at
    position >= 1 of its round is warm. Costs carry a seeded ±3 % jitter (a real machine is noisy)."""

    def __init__(self, work_ms, seed=0):
        self.work_ms = dict(work_ms)
        self.k = len(self.work_ms)
        self.t = 0.0
        self.calls = 0
        self.rng = np.random.default_rng(1000 + seed)
        self.log = []  # (name, position in round, cost ms)

    def __call__(self):
        return self.t

    def fn(self, name):
        def run():
            pos = self.calls % self.k
            cost = self.work_ms[name] * (WARM if pos >= 1 else 1.0) * float(self.rng.uniform(0.97, 1.03))
            self.t += cost / 1e3
            self.calls += 1
            self.log.append((name, pos, cost))
        return run


def fixed_order_ratios(machine, first, second, warmup, repeats):
    """Brute force of the old harness: every round runs ``first`` then ``second``; per-round
    ratio second / first from the machine's own cost log (not through the harness)."""
    a, b = machine.fn(first), machine.fn(second)
    for _ in range(warmup + repeats):
        a()
        b()
    costs = [c for (_, _, c) in machine.log[2 * warmup:]]
    return np.array(costs[1::2]) / np.array(costs[0::2])


def test_a_callable_faster_only_because_it_runs_second_no_longer_wins():
    work = {"a": 10.0, "b": 10.0}  # the same work: neither is faster
    # the old fixed order (a then b): b "wins" by the warm cache alone, and clearly so
    old = fixed_order_ratios(WarmCacheMachine(work), "a", "b", warmup=3, repeats=60)
    assert np.all(np.abs(old - WARM) <= 0.07)  # b/a = 0.8 ± jitter every round
    old_ratio = paired_ratio(list(old), [1.0] * len(old), names=("b", "a"))
    assert old_ratio.ci_high < 1.0  # the old harness would have published "b is faster"
    m = WarmCacheMachine(work)
    old_h = measure_stages({"a": m.fn("a"), "b": m.fn("b")}, warmup=3, repeats=60, clock=m, shuffle=False)
    assert paired_ratio(old_h["b"], old_h["a"]).ci_high < 1.0  # same through the harness in fixed order

    # the harness: random order per round; whichever order they are listed in, b does not win
    for listed in (("a", "b"), ("b", "a")):
        m = WarmCacheMachine(work)
        fns = {n: m.fn(n) for n in listed}
        r = compare(fns["b"], fns["a"], names=("b", "a"), warmup=3, repeats=60, clock=m, seed=0)
        assert r.rounds == 60 and r.numerator == "b" and r.denominator == "a"
        assert r.ci_low < 1.0 < r.ci_high, r  # no winner
        assert not r.excludes_one()
        # independent check on the fake machine's log: b ran second in about half the timed rounds
        timed = m.log[2 * 3:]
        b_second = sum(1 for (n, pos, _) in timed if n == "b" and pos == 1)
        assert 18 <= b_second <= 42, b_second


@pytest.mark.parametrize("listed", [("slow", "fast"), ("fast", "slow")])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_truly_slower_callable_is_found_slower_in_either_order(listed, seed):
    work = {"fast": 10.0, "slow": 20.0}  # twice the work
    m = WarmCacheMachine(work, seed=seed)
    fns = {n: m.fn(n) for n in listed}
    r = compare(fns[listed[0]], fns[listed[1]], names=listed, warmup=3, repeats=40, clock=m, seed=seed)
    # per round slow/fast is 2 * 0.8 = 1.6 (slow second) or 2 / 0.8 = 2.5 (slow first), ± jitter
    if listed[0] == "slow":
        assert r.ci_low > 1.0 and 1.5 <= r.median <= 2.7, r
    else:
        assert r.ci_high < 1.0 and 1 / 2.7 <= r.median <= 1 / 1.5, r
    assert r.excludes_one()
    # the ratios are per round: recompute them from the fake machine's cost log
    timed = m.log[2 * 3:]
    own = {n: [c for (k, _, c) in timed if k == n] for n in listed}
    expect = np.array(own[listed[0]]) / np.array(own[listed[1]])
    np.testing.assert_allclose(r.ratios, expect, rtol=1e-9)
    assert r.median == pytest.approx(float(np.median(expect)), rel=1e-9)


def test_rounds_follow_the_seeded_permutations_and_discard_warmup():
    calls = []
    fns = {k: (lambda k=k: calls.append(k)) for k in "abcd"}
    t = iter(range(10 ** 6))
    times, orders = measure_rounds(fns, warmup=2, repeats=5, seed=3, clock=lambda: float(next(t)))
    rng = np.random.default_rng(3)
    perms = [tuple("abcd"[i] for i in rng.permutation(4)) for _ in range(7)]
    assert orders == perms[2:]  # warm-up rounds were shuffled too, then discarded
    assert calls == [k for p in perms for k in p]
    assert all(len(v) == 5 for v in times.values())
    _, again = measure_rounds(fns, warmup=2, repeats=5, seed=3)
    _, other = measure_rounds(fns, warmup=2, repeats=5, seed=4)
    assert again == orders and other != orders


def _exact_bootstrap_median_cdf(n):
    """Closed form: for n (odd) distinct values, P(median of a resample <= x_(k)) =
    P(Binomial(n, k/n) >= (n + 1) / 2)."""
    m = (n + 1) // 2
    return [sum(math.comb(n, j) * (k / n) ** j * (1 - k / n) ** (n - j) for j in range(m, n + 1))
            for k in range(0, n + 1)]


def test_closed_form_matches_brute_force_enumeration():
    n = 5
    values = np.array([3.0, 1.0, 4.0, 1.5, 9.0])
    srt = np.sort(values)
    meds = np.median(values[np.array(list(itertools.product(range(n), repeat=n)))], axis=1)  # all 5^5 resamples
    brute = [float(np.mean(meds <= srt[k - 1])) if k else 0.0 for k in range(n + 1)]
    np.testing.assert_allclose(brute, _exact_bootstrap_median_cdf(n), atol=1e-12)


@pytest.mark.parametrize("n", [5, 15, 31])
def test_bootstrap_interval_matches_the_closed_form_quantiles(n):
    rng = np.random.default_rng(n)
    values = rng.lognormal(0.0, 0.3, size=n)
    srt = np.sort(values)
    cdf = _exact_bootstrap_median_cdf(n)
    resamples = 20000
    checked = 0
    for conf in (0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99):
        lo, hi = bootstrap_median_ci(values, resamples=resamples, confidence=conf, seed=11)
        for q, got in (((1 - conf) / 2, lo), ((1 + conf) / 2, hi)):
            k = next(k for k in range(1, n + 1) if cdf[k] >= q)  # exact inverted-CDF quantile: x_(k)
            sd = math.sqrt(q * (1 - q) / resamples)  # sd of the empirical CDF near q
            if abs(cdf[k] - q) < 5 * sd or abs(cdf[k - 1] - q) < 5 * sd:
                continue  # too close to call with this many resamples: Monte Carlo may land next door
            assert got == srt[k - 1], (n, conf, q, got, srt[k - 1])
            checked += 1
    assert checked >= 4
    lo, hi = bootstrap_median_ci(values, resamples=resamples, confidence=0.95, seed=11)
    assert lo <= float(np.median(values)) <= hi


def test_bad_inputs_are_refused_with_the_field_named():
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_median_ci([1.0, 2.0], confidence=1.0)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_median_ci([1.0, 2.0], confidence=float("nan"))
    with pytest.raises(ValueError, match="resamples"):
        bootstrap_median_ci([1.0, 2.0], resamples=0)
    with pytest.raises(ValueError, match="finite"):
        bootstrap_median_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="same number of rounds"):
        paired_ratio([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="positive"):
        paired_ratio([1.0], [0.0])
    with pytest.raises(ValueError, match="names"):
        compare(lambda: None, lambda: None, names=("x", "x"))
    with pytest.raises(ValueError, match="seed"):
        measure_stages({"a": lambda: None}, seed=-1)


def test_paired_ratio_is_frozen_and_serializes():
    r = paired_ratio([2.0, 4.0, 6.0], [1.0, 2.0, 2.0], names=("x", "y"), resamples=50)
    assert isinstance(r, PairedRatio) and r.median == 2.0 and list(r.ratios) == [2.0, 2.0, 3.0]
    assert r.numerator_median_ms == 4.0 and r.denominator_median_ms == 2.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.median = 1.0
    d = json.loads(json.dumps(r.to_dict()))
    assert d["median"] == 2.0 and d["rounds"] == 3 and "ratios" not in d and "bootstrap" in d["interval"]
    assert json.loads(json.dumps(r.to_dict(ratios=True)))["ratios"] == [2.0, 2.0, 3.0]
    assert r.format() == f"2.00x [{r.ci_low:.2f}, {r.ci_high:.2f}]"
