"""The latency harness against a scripted clock: every statistic checked by brute force."""
import math

import numpy as np
import pytest

from edgeuq.profile import LatencyStats, StageTimer, measure, measure_stages, percentile


class ScriptedClock:
    """A clock that only moves when a timed function runs, by scripted durations (ms)."""

    def __init__(self, durations_ms):
        self.t = 0.0
        self.durations = list(durations_ms)
        self.calls = 0

    def __call__(self):
        return self.t

    def work(self):
        self.t += self.durations[self.calls % len(self.durations)] / 1e3
        self.calls += 1


def test_measure_reports_exact_statistics_of_the_timed_calls():
    rng = np.random.default_rng(0)
    script = list(rng.uniform(1.0, 9.0, size=3 + 101))  # 3 warm-up calls, then 101 timed
    clock = ScriptedClock(script)
    st = measure(clock.work, warmup=3, repeats=101, clock=clock, name="x")
    timed = np.array(script[3:])
    assert clock.calls == 104 and st.repeats == 101 and st.name == "x"
    np.testing.assert_allclose(st.samples_ms, timed, rtol=0, atol=1e-9)  # warm-up calls excluded, order kept
    srt = np.sort(timed)
    assert st.median_ms == pytest.approx(float(np.median(timed)), abs=1e-9)
    assert st.mean_ms == pytest.approx(float(timed.mean()), abs=1e-9)
    assert st.min_ms == pytest.approx(srt[0], abs=1e-9)
    assert st.p90_ms == pytest.approx(srt[90], abs=1e-9)   # rank int(0.9 * 101) = 90
    assert st.p99_ms == pytest.approx(srt[99], abs=1e-9)   # rank int(0.99 * 101) = 99
    assert st.min_ms <= st.median_ms <= st.p90_ms <= st.p99_ms


def test_min_time_keeps_sampling_past_repeats():
    clock = ScriptedClock([10.0])
    st = measure(clock.work, warmup=0, repeats=2, min_time_s=0.095, clock=clock)
    assert st.repeats == 10  # 10 calls of 10 ms reach 95 ms


def test_bad_arguments_are_refused():
    for kw in ({"repeats": 0}, {"repeats": 2.5}, {"warmup": -1}, {"repeats": True}, {"min_time_s": float("nan")}):
        with pytest.raises(ValueError):
            measure(lambda: None, **kw)
    with pytest.raises(ValueError, match="no samples"):
        percentile([], 0.5)


def test_measure_names_its_stats_and_keeps_the_samples_out_of_the_dict():
    real = measure(lambda: sum(range(100)), repeats=5, warmup=0, name="n")
    assert real.repeats == 5 and real.name == "n" and real.min_ms >= 0 and math.isfinite(real.p99_ms)
    d = real.to_dict()
    assert "samples_ms" not in d and len(real.to_dict(samples=True)["samples_ms"]) == 5


def test_measure_stages_interleaves_in_a_seeded_random_order_and_totals():
    order = []
    clock = ScriptedClock([1.0])
    durations = {"trunk": 3.0, "head": 5.0, "noise": 1.0}

    def stage(name):
        def run():
            order.append(name)
            clock.t += durations[name] / 1e3
        return run

    out = measure_stages({k: stage(k) for k in durations}, warmup=1, repeats=4, clock=clock, seed=7)
    names = list(durations)
    rng = np.random.default_rng(7)  # independent reference: one permutation per round, warm-up round first
    expected = [names[i] for _ in range(5) for i in rng.permutation(3)]
    assert order == expected
    assert len({tuple(order[i:i + 3]) for i in range(0, 15, 3)}) > 1  # the order really changes between rounds
    assert out["trunk"].median_ms == pytest.approx(3.0) and out["head"].median_ms == pytest.approx(5.0)
    assert out["total"].median_ms == pytest.approx(9.0) and out["total"].repeats == 4


def test_measure_stages_without_shuffle_keeps_pipeline_order():
    order = []
    stages = {k: (lambda k=k: order.append(k)) for k in ("vn", "trunk", "head")}
    measure_stages(stages, warmup=1, repeats=3, shuffle=False)
    assert order == ["vn", "trunk", "head"] * 4


def test_stage_timer_accumulates_per_stage():
    t = [0.0]
    timer = StageTimer(clock=lambda: t[0])
    with timer.stage("a"):
        t[0] += 2.0
    with timer.stage("b"):
        t[0] += 1.0
    with pytest.raises(RuntimeError):
        with timer.stage("a"):
            t[0] += 0.5
            raise RuntimeError("fails inside a stage")
    assert timer.seconds == {"a": 2.5, "b": 1.0} and timer.total() == 3.5


def test_stage_timer_records_cpu_time_apart_from_wall_time():
    """Wall and CPU clocks are read separately: a stage that waits (wall moves, CPU does not)
    and one that computes on two threads (CPU moves twice as fast as wall) each get their own."""
    wall, cpu = [0.0], [0.0]
    timer = StageTimer(clock=lambda: wall[0], cpu_clock=lambda: cpu[0])
    with timer.stage("wait"):
        wall[0] += 3.0
    with timer.stage("compute"):
        wall[0] += 1.0
        cpu[0] += 2.0
    assert timer.seconds == {"wait": 3.0, "compute": 1.0}
    assert timer.cpu_seconds == {"wait": 0.0, "compute": 2.0} and timer.cpu_total() == 2.0


def test_stage_timer_cpu_clock_defaults_to_process_time():
    import time as _time

    timer = StageTimer()
    with timer.stage("spin"):
        t0 = _time.process_time()
        while _time.process_time() - t0 < 0.05:
            pass
    assert timer.cpu_seconds["spin"] >= 0.05 and timer.seconds["spin"] >= 0.0


def test_from_samples_keeps_order_and_rejects_empty():
    st = LatencyStats.from_samples([3.0, 1.0, 2.0])
    assert st.samples_ms == (3.0, 1.0, 2.0) and st.median_ms == 2.0 and st.min_ms == 1.0
    with pytest.raises(ValueError):
        LatencyStats.from_samples([])
