"""bench/search_workers.py's steady-state throughput: trials counted by the fraction of each inside
the window where every worker evaluates, checked against a brute-force integral over a fine time
grid, and the configurations both runs share."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("search_workers_bench", ROOT / "bench" / "search_workers.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _trials(rng, workers=2, per=6):
    out = []
    for w in range(workers):
        t = rng.uniform(0, 3)  # workers start at different moments (set-up)
        for i in range(per):
            d = rng.uniform(0.5, 2.0)
            out.append({"key": f"c{w}-{i}", "worker": f"w{w}", "start": t, "end": t + d})
            t += d + rng.uniform(0.0, 0.1)  # tell -> ask gap
    return out


def test_steady_state_throughput_matches_a_brute_force_integral(bench):
    rng = np.random.default_rng(0)
    for _ in range(5):
        trials = _trials(rng)
        t0, t1, n = bench._window(trials)
        assert n == 2
        # brute force: the window is where every worker has a trial started and not all of its trials ended
        grid = np.linspace(min(t["start"] for t in trials), max(t["end"] for t in trials), 200001)
        busy = np.ones_like(grid, dtype=bool)
        for w in ("w0", "w1"):
            mine = [t for t in trials if t["worker"] == w]
            busy &= (grid >= min(t["start"] for t in mine)) & (grid <= max(t["end"] for t in mine))
        assert abs(grid[busy][0] - t0) <= 1e-4 and abs(grid[busy][-1] - t1) <= 1e-4
        # completed-trial rate integrated over the window: each running trial advances at 1/duration
        rate = np.zeros_like(grid)
        for t in trials:
            rate += ((grid >= t["start"]) & (grid < t["end"])) / (t["end"] - t["start"])
        inside = (grid >= t0) & (grid <= t1)
        want = np.trapezoid(rate * inside, grid) / (t1 - t0) * 3600.0
        weight = {t["key"]: 2.0 for t in trials}
        got = bench._throughput(trials, weight)
        assert not abs(got["trials_per_hour"] - want) > 2e-3 * want, (got, want)
        assert not abs(got["work_rate"] - 2.0 * want / 3600.0) > 2e-3 * want / 3600.0


def test_a_run_without_an_overlap_window_is_refused_and_missing_weights_named(bench):
    one_after_other = [{"key": "a", "worker": "w0", "start": 0.0, "end": 1.0},
                       {"key": "b", "worker": "w1", "start": 2.0, "end": 3.0}]
    with pytest.raises(SystemExit, match="no steady-state window"):
        bench._throughput(one_after_other)
    trials = _trials(np.random.default_rng(1))
    with pytest.raises(SystemExit, match="without a 1-worker duration"):
        bench._throughput(trials, {})


def test_both_runs_get_the_same_seeded_configurations_of_the_default_space(bench):
    a = bench._configurations(14, 1, 3, (0, 1, 2, 3))
    assert a == bench._configurations(14, 1, 3, (0, 1, 2, 3)) != bench._configurations(14, 2, 3, (0, 1, 2, 3))
    assert all(set(p) == {"keep0", "keep1", "keep2", "stochastic_from", "bytes_fraction", "samples"} for p in a)
    assert {p["samples"] for p in a} <= {8, 16, 32} and {p["bytes_fraction"] for p in a} <= {1.0, 0.5, 0.3}
    text = bench._teacher_recipe()
    assert 'name = "bench-search-teacher"' in text and "\nepochs = 1 " in text and "duration_s = 2.0" in text
    assert "\nloads = [0]\n" in text
