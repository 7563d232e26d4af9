"""bench/tune_tracker_vs_host.py's bookkeeping: which tasks of a tuning database hold a measured
record (failed candidates, stored with a 1e10 s time or none, do not count), and the verdict "within
the host-vs-host spread" only when the two 95 % intervals overlap (checked against a brute-force
scan of a fine grid)."""
from __future__ import annotations

import json
import math
import runpy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    # the bench's functions, without running its main (run_name is not "__main__")
    return SimpleNamespace(**runpy.run_path(str(ROOT / "bench" / "tune_tracker_vs_host.py"), run_name="bench"))


def _record(workload: int, run_secs) -> str:
    # MetaSchedule's JSON database line: [workload index, [trace, run_secs, target, args_info]]
    return json.dumps([workload, [[[], []], run_secs, {"kind": "llvm"}, []]])


def test_measured_tasks_counts_only_records_with_a_measured_time(bench, tmp_path):
    lines = [_record(0, [2.5e-4]), _record(0, [3.0e-4, 3.1e-4]),   # task 0: two measured records
             _record(1, [1e10]),                                     # task 1: failed run (MetaSchedule's 1e10 s)
             _record(2, None), _record(2, []),                       # task 2: no time at all
             _record(3, [1e10]), _record(3, [7.0e-3]),               # task 3: one failure, one measured
             _record(4, [float("nan")])]                              # task 4: NaN is no measurement
    (tmp_path / "database_tuning_record.json").write_text("\n".join(lines) + "\n\n")
    assert bench.measured_tasks(tmp_path) == {0: 2, 3: 1}
    assert bench.measured_tasks(tmp_path / "absent") == {}


def _overlap_brute_force(a, b) -> bool:
    if any(math.isnan(v) for v in (*a, *b)):
        return False
    grid = np.linspace(0.5, 1.5, 100001)      # step 1e-5: every interval below has endpoints on it
    return bool(np.any((grid >= a[0]) & (grid <= a[1]) & (grid >= b[0]) & (grid <= b[1])))


def test_verdict_is_within_only_when_the_intervals_overlap(bench):
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(400):
        lo1, lo2 = np.round(rng.uniform(0.8, 1.2, 2), 3)
        a = (float(lo1), float(lo1 + np.round(rng.uniform(0.0, 0.1), 3)))
        b = (float(lo2), float(lo2 + np.round(rng.uniform(0.0, 0.1), 3)))
        verdict = bench.spread_verdict(a, b)
        within = verdict.startswith("within")
        assert within == _overlap_brute_force(a, b), (a, b, verdict)
        assert within != verdict.startswith("not within")
        seen.add(within)
    assert seen == {True, False}      # both outcomes were exercised
    # touching intervals overlap; NaN bounds never do; no spread is said, not guessed
    assert bench.spread_verdict((1.0, 1.1), (0.9, 1.0)).startswith("within")
    assert bench.spread_verdict((float("nan"), 1.1), (0.9, 1.2)).startswith("not within")
    assert bench.spread_verdict((1.0, 1.1), None) == "no host-vs-host spread measured"
