"""Exact multiple-choice knapsack: one option per layer, minimum summed loss
under a cost budget.

Dynamic programming over the Pareto frontier of partial solutions: after each
layer keep every (cost, loss) state that no other state beats on both; a state
dominated there can never be part of an optimum, so the final frontier's best
feasible state is the exact optimum. Costs may be real numbers (milliseconds)
as well as integers (bytes); nothing is discretised.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Mapping, Sequence, Tuple

import numpy as np

__all__ = ["BudgetError", "Solution", "solve_mckp"]


class BudgetError(ValueError):
    """The budget is below the cheapest possible choice; ``smallest`` says what is reachable."""

    def __init__(self, message: str, smallest: float) -> None:
        super().__init__(message)
        self.smallest = smallest


@dataclass(frozen=True)
class Solution:
    choices: Tuple[str, ...]
    cost: float
    loss: float
    frontier_size: int


def solve_mckp(
    losses: Sequence[Mapping[str, float]],
    costs: Sequence[Mapping[str, float]],
    budget: float,
    fixed_cost: float = 0.0,
    unit: str = "",
    max_states: int = 2_000_000,
) -> Solution:
    """Pick one option per item minimising Σ loss subject to fixed_cost + Σ cost ≤ budget.

    Raises :class:`BudgetError` (with the smallest reachable total) when no
    choice fits; never returns a solution over budget.
    """
    if len(losses) != len(costs):
        raise ValueError(f"{len(losses)} loss tables but {len(costs)} cost tables")
    opts: List[List[Tuple[str, float, float]]] = []
    for i, (lt, ct) in enumerate(zip(losses, costs)):
        keys = [k for k in lt if k in ct]
        if not keys:
            raise ValueError(f"item {i}: no option has both a loss and a cost")
        for k in keys:
            if not (np.isfinite(lt[k]) and np.isfinite(ct[k])) or ct[k] < 0:
                raise ValueError(f"item {i} option {k!r}: loss and cost must be finite, cost >= 0")
        opts.append([(k, float(ct[k]), float(lt[k])) for k in keys])
    smallest = fixed_cost + sum(min(c for _, c, _ in o) for o in opts)
    if smallest > budget * (1 + 1e-12):
        raise BudgetError(
            f"budget {budget:g}{unit} cannot be met: the smallest achievable is {smallest:g}{unit}", smallest
        )
    # cheapest cost of the remaining items: prune states that cannot finish within budget
    tail = np.zeros(len(opts) + 1)
    for i in range(len(opts) - 1, -1, -1):
        tail[i] = tail[i + 1] + min(c for _, c, _ in opts[i])
    cost = np.array([fixed_cost])
    loss = np.array([0.0])
    back: List[Tuple[np.ndarray, np.ndarray]] = []
    for i, o in enumerate(opts):
        c = (cost[:, None] + np.array([x[1] for x in o])[None, :]).ravel()
        lo = (loss[:, None] + np.array([x[2] for x in o])[None, :]).ravel()
        parent = np.repeat(np.arange(len(cost)), len(o))
        choice = np.tile(np.arange(len(o)), len(cost))
        ok = c + tail[i + 1] <= budget * (1 + 1e-12)
        c, lo, parent, choice = c[ok], lo[ok], parent[ok], choice[ok]
        order = np.lexsort((lo, c))  # by cost, then loss
        c, lo, parent, choice = c[order], lo[order], parent[order], choice[order]
        best_before = np.minimum.accumulate(np.concatenate([[np.inf], lo[:-1]]))
        keep = lo < best_before  # strictly better loss than every cheaper (or equal-cost earlier) state
        cost, loss = c[keep], lo[keep]
        back.append((parent[keep], choice[keep]))
        if len(cost) > max_states:
            raise RuntimeError(f"Pareto frontier grew past {max_states} states at item {i}")
    best = int(np.argmin(loss))
    picks: List[str] = []
    state = best
    for i in range(len(opts) - 1, -1, -1):
        parent, choice = back[i]
        picks.append(opts[i][int(choice[state])][0])
        state = int(parent[state])
    return Solution(tuple(reversed(picks)), float(cost[best]), float(loss[best]), int(len(cost)))
