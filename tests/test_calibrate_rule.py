"""Picking the device rule (edgeuq.calibrate.rule): the candidate grid (the default is the suite's
old one, Bonferroni min only; weighted candidates only when asked), the pick reproduced by a
brute-force AUROC (pairwise Mann-Whitney count) of every candidate with the stated tie-breaks, a
weighted rule beating min where one part is strong and the other weak (the text student's case),
and the pick written into a bundle's calibration as the device then runs it."""
import itertools
import math

import numpy as np
import pytest

from edgeuq.calibrate.rule import DENSITY_WEIGHTS, RuleCandidate, pick_rule, rule_candidates
from edgeuq_runtime.conformal import conformal_pvalues

PARTS = ("epistemic", "total", "density")


def _auroc_brute(s_in, s_out):
    """P(score out > score in) + P(tie) / 2 over every pair."""
    d = np.asarray(s_out)[:, None] - np.asarray(s_in)[None, :]
    return float(((d > 0).sum() + 0.5 * (d == 0).sum()) / d.size)


def test_default_candidates_are_the_suites_min_subsets_and_weighted_only_when_asked():
    want = [RuleCandidate(sub, "min") for k in (1, 2, 3) for sub in itertools.combinations(PARTS, k)]
    assert rule_candidates(PARTS) == want
    assert all(c.weights is None for c in rule_candidates(PARTS, ("min", "fisher")))
    got = rule_candidates(PARTS, ("min", "weighted"))
    weighted = [c for c in got if c.rule == "weighted"]
    # subsets of >= 2 parts holding density: (epi, dens), (total, dens), (epi, total, dens) x the grid
    assert len(weighted) == 3 * len(DENSITY_WEIGHTS) and len(got) == len(want) + len(weighted)
    for c in weighted:
        assert "density" in c.parts and len(c.parts) >= 2
        w = dict(zip(c.parts, c.weights))
        assert abs(math.fsum(c.weights) - 1.0) <= 1e-12 and w["density"] in DENSITY_WEIGHTS
        others = [v for p, v in w.items() if p != "density"]
        assert max(others) - min(others) <= 1e-15 and abs(others[0] - (1 - w["density"]) / len(others)) <= 1e-15
    assert not [c for c in rule_candidates(("epistemic", "total"), ("min", "weighted")) if c.rule == "weighted"]
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        rule_candidates(PARTS, ("weighted",), weights=(1.0,))


def _pvals(rng, n, shift, cal):
    d = {"density": rng.normal(shift * 2.0, 1, n), "epistemic": rng.normal(shift * 0.5, 1, n),
         "total": rng.normal(0, 1, n)}
    return {k: conformal_pvalues(cal[k], v) for k, v in d.items()}


def test_pick_is_the_brute_force_best_with_the_tie_breaks_and_weighted_helps_a_strong_part():
    """density strong, MI weak, entropy noise: every candidate's AUROC equals a pairwise count, the
    pick is the best (ties: fewer parts, min, first), a weighted candidate that leans on density
    beats min over the same parts, and the default (min only) table carries no weights."""
    rng = np.random.default_rng(0)
    cal = {k: rng.normal(0, 1, 400) for k in PARTS}
    p_in, p_out = _pvals(rng, 300, 0.0, cal), _pvals(rng, 300, 1.0, cal)
    pick = pick_rule(p_in, p_out, PARTS, ("min", "weighted"))
    cands = rule_candidates(PARTS, ("min", "weighted"))
    brute = [_auroc_brute(-np.log(c.combine(p_in)), -np.log(c.combine(p_out))) for c in cands]
    assert len(pick.table) == len(cands)
    for row, c, b in zip(pick.table, cands, brute):
        assert row["parts"] == list(c.parts) and row["rule"] == c.rule and abs(row["auroc"] - b) <= 1e-12
    best = max(brute)
    tied = [i for i, b in enumerate(brute) if abs(b - best) <= 1e-12]
    want = min(tied, key=lambda i: (len(cands[i].parts), cands[i].rule != "min", i))
    assert pick.candidate == cands[want] and abs(pick.auroc - best) <= 1e-12
    min_all = next(b for c, b in zip(cands, brute) if c.parts == PARTS and c.rule == "min")
    lean = next(b for c, b in zip(cands, brute) if c.parts == PARTS and c.weights and c.weights[2] == 0.9)
    assert lean > min_all + 0.005, (lean, min_all)
    plain = pick_rule(p_in, p_out, PARTS)
    assert all("weights" not in r for r in plain.table) and plain.weights is None
    # a tie between a single part and a weighted pair: the single part (fewer parts) wins
    same = {"epistemic": p_in["density"], "total": p_in["total"], "density": p_in["density"]}
    same_out = {"epistemic": p_out["density"], "total": p_out["total"], "density": p_out["density"]}
    tie = pick_rule(same, same_out, ("epistemic", "density"), ("min", "weighted"))
    assert len(tie.parts) == 1 and tie.rule == "min"


def test_text_rule_rows_round_trip_and_refuse_what_is_not_one(tmp_path):
    from edgeuq.calibrate.rule import TextRuleRows, load_text_rule_rows, save_text_rule_rows

    rows = TextRuleRows(("a fine film", "dull"), {"shuffled": ("film fine a",), "licenses": ("MIT licence", "GPL")},
                        "dev rows; constructed shifts")
    back = load_text_rule_rows(save_text_rule_rows(tmp_path / "rows.json", rows))
    assert back.in_distribution == rows.in_distribution and back.source == rows.source
    assert dict(back.shifted) == dict(rows.shifted)
    (tmp_path / "empty.json").write_text('{"in_distribution": ["x"], "shifted": {"s": []}}')
    (tmp_path / "numbers.json").write_text('{"in_distribution": [1], "shifted": {"s": ["y"]}}')
    (tmp_path / "list.json").write_text('["x"]')
    for bad in ("empty.json", "numbers.json", "list.json"):
        with pytest.raises(ValueError, match="not a device-rule rows file"):
            load_text_rule_rows(tmp_path / bad)
