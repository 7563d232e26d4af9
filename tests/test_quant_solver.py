"""The allocation solver is exact: it agrees with brute-force enumeration and never exceeds the budget."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from edgeuq.quantize import BudgetError, solve_mckp

OPTIONS = ("fp32", "fp16", "int8", "int4")


def random_instance(rng, items: int, integer: bool):
    losses, costs = [], []
    for _ in range(items):
        k = int(rng.integers(2, 5))
        opts = OPTIONS[:k]
        c = np.sort(rng.uniform(1, 100, k))[::-1]  # more bits cost more ...
        lo = np.sort(rng.exponential(1.0, k))        # ... and lose less
        if integer:
            c = np.round(c)
        costs.append(dict(zip(opts, map(float, c))))
        losses.append(dict(zip(opts, map(float, lo))))
    return losses, costs


def brute(losses, costs, budget, fixed=0.0):
    best = None
    for combo in itertools.product(*[list(t) for t in losses]):
        c = fixed + sum(costs[i][o] for i, o in enumerate(combo))
        if c <= budget:
            lo = sum(losses[i][o] for i, o in enumerate(combo))
            if best is None or lo < best[0] - 1e-12:
                best = (lo, c, combo)
    return best


@pytest.mark.parametrize("integer", [True, False])
def test_matches_brute_force_on_random_instances(integer):
    rng = np.random.default_rng(0 if integer else 1)
    for trial in range(40):
        losses, costs = random_instance(rng, int(rng.integers(1, 8)), integer)
        lo_cost = sum(min(t.values()) for t in costs)
        hi_cost = sum(max(t.values()) for t in costs)
        fixed = float(rng.uniform(0, 20))
        budget = fixed + float(rng.uniform(lo_cost, hi_cost))
        sol = solve_mckp(losses, costs, budget, fixed_cost=fixed)
        ref = brute(losses, costs, budget, fixed)
        assert sol.loss == pytest.approx(ref[0], abs=1e-9), trial
        assert sol.cost <= budget + 1e-9
        assert sol.cost == pytest.approx(fixed + sum(costs[i][o] for i, o in enumerate(sol.choices)))
        assert sol.loss == pytest.approx(sum(losses[i][o] for i, o in enumerate(sol.choices)))


def greedy(losses, costs, budget):
    """Loss-per-saved-cost greedy descent (what an exact solver must beat)."""
    pick = [min(t, key=lambda o: t[o]) for t in losses]  # lossless start
    while sum(costs[i][o] for i, o in enumerate(pick)) > budget:
        moves = [((losses[i][o] - losses[i][pick[i]]) / (costs[i][pick[i]] - costs[i][o]), i, o)
                 for i, t in enumerate(costs) for o in t if t[o] < t[pick[i]]]
        _, i, o = min(moves)
        pick[i] = o
    return sum(losses[i][o] for i, o in enumerate(pick))


def test_greedy_is_wrong_here_and_the_solver_is_not():
    losses = [{"a": 0.0, "b": 0.5, "c": 3.0}, {"a": 0.0, "b": 1.0}]
    costs = [{"a": 20.0, "b": 15.0, "c": 10.0}, {"a": 20.0, "b": 14.0}]
    assert greedy(losses, costs, 34.0) == 1.5
    sol = solve_mckp(losses, costs, budget=34.0)
    assert sol.choices == ("a", "b") and sol.loss == 1.0 == brute(losses, costs, 34.0)[0]


def test_infeasible_budget_reports_smallest_size():
    losses = [{"fp32": 0.0, "int8": 1.0}] * 3
    costs = [{"fp32": 400.0, "int8": 100.0}] * 3
    with pytest.raises(BudgetError, match="smallest achievable is 350") as err:
        solve_mckp(losses, costs, budget=349.0, fixed_cost=50.0, unit=" bytes")
    assert err.value.smallest == 350.0
    sol = solve_mckp(losses, costs, budget=350.0, fixed_cost=50.0)  # exactly the smallest: feasible
    assert sol.choices == ("int8",) * 3 and sol.cost == 350.0


def test_generous_budget_keeps_everything_lossless():
    losses = [{"fp32": 0.0, "int8": 1.0, "int4": 3.0}] * 4
    costs = [{"fp32": 4.0, "int8": 1.0, "int4": 0.5}] * 4
    assert solve_mckp(losses, costs, budget=1e9).choices == ("fp32",) * 4


def test_bad_tables_are_refused():
    with pytest.raises(ValueError, match="finite"):
        solve_mckp([{"a": float("nan")}], [{"a": 1.0}], 10)
    with pytest.raises(ValueError, match="2 loss tables but 1"):
        solve_mckp([{"a": 1.0}, {"a": 1.0}], [{"a": 1.0}], 10)
