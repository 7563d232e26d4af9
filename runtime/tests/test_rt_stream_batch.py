"""Micro-batched streaming (issue 23 item 6): a batch of consecutive windows is decided exactly as
one window at a time (the reference ``Diagnoser.decide``), the batch size follows the deadline,
a batched window's latency is charged the hops it waited, and the pieces the batch path uses
(vectorised quality flags, input-major head sampling, trusted stream features, p-values against
pre-sorted calibration scores) equal their references."""
import numpy as np
import pytest
from test_rt_stream import _Clock
from test_rt_stream_calibration import _calibrate_tiny, _calibrate_tiny_pvalues

from edgeuq_runtime import UncertaintyRuntime
from edgeuq_runtime.calibration import AbstainSection
from edgeuq_runtime.conformal import mondrian_pvalues
from edgeuq_runtime.stream import ArraySource, Diagnoser, run_stream, window_flags
from edgeuq_runtime.stream.decide import Decision
from edgeuq_runtime.stream.loop import BatchPlan
from edgeuq_runtime.stream.quality import window_flags_batch

FLOATS = ("confidence", "total", "aleatoric", "epistemic", "density", "combined")


def _same(a: Decision, b: Decision, rtol: float = 1e-9) -> bool:
    """Equal decisions: labels, sets, reasons, flags and S exactly; numbers within ``rtol``."""
    if (a.label, a.class_index, a.prediction_set, a.reasons, a.flags, a.samples, a.abstain) != \
            (b.label, b.class_index, b.prediction_set, b.reasons, b.flags, b.samples, b.abstain):
        return False
    for name in FLOATS:
        x, y = getattr(a, name), getattr(b, name)
        if (x is None) != (y is None):
            return False
        if x is not None and not abs(x - y) <= rtol * max(1.0, abs(y)):
            return False
    if (a.probs is None) != (b.probs is None):
        return False
    if a.probs is not None and not np.max(np.abs(np.subtract(a.probs, b.probs))) <= rtol:
        return False
    pa, pb = a.extra.get("pvalues", {}), b.extra.get("pvalues", {})
    return pa.keys() == pb.keys() and all(abs(pa[k] - pb[k]) <= rtol for k in pa)


def _windows(tiny, n, seed=4):
    x = np.random.default_rng(seed).standard_normal((n, tiny.W.shape[0])).astype(np.float32)
    x[::3] = tiny.W[:, 0] * 10.0 + 0.1 * x[::3]     # far from the calibration data: some abstain
    x[5, 3:9] = np.nan                               # blocking flag inside a batch
    x[7] = 0.25                                      # flat line
    x[11] = np.clip(x[11], -0.3, 0.3)                # clipped: flagged, still decided
    return x


def test_window_flags_batch_equals_window_flags():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 256)).astype(np.float32)
    x[1, 10:20] = np.nan
    x[2] = np.inf
    x[3] = np.clip(x[3], -0.5, 0.5)
    x[4] = 0.3
    x[5] = np.where(np.arange(256) % 2, 0.7, -0.7)   # |x| constant: flat by the magnitude rule
    x[6] = 0.0
    x[7] *= 1e7                                      # implausible peak
    x[8] *= 1e-25                                    # implausibly small
    x[9, :3] = 5.0                                   # 3 samples at the peak: below clip_count
    x[10, :4] = -5.0                                 # 4 at the negative peak: clipped
    x[11, 0], x[11, 1:5] = 5.0, -5.0                 # peak on both sides
    got = window_flags_batch(x)
    expect = [window_flags(w) for w in x]
    assert got == expect
    assert sum(bool(f) for f in expect) >= 9         # the cases above do produce flags


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("pvalues", [False, True])
def test_decide_batch_equals_one_window_at_a_time(tiny, tmp_path, adaptive, pvalues):
    x = _windows(tiny, 24)
    if pvalues:
        _calibrate_tiny_pvalues(tiny, tmp_path)
    else:   # the epistemic threshold at the median of these windows' MI: both outcomes occur, whatever the noise stream
        _calibrate_tiny(tiny, tmp_path)
        decided = np.delete(x, [5, 7], axis=0)          # the non-finite and the flat window are refused
        mi = UncertaintyRuntime(tiny.dir).predict(decided, samples=8, seed=3).epistemic
        _calibrate_tiny(tiny, tmp_path, abstain=AbstainSection(0.05, float(np.median(mi)), 30.0, 2.5))
    rt = UncertaintyRuntime(tiny.dir)
    ref = Diagnoser(rt, adaptive=adaptive, samples=8, seed=3)
    expect = [ref.decide(w) for w in x]
    bat = Diagnoser(rt, adaptive=adaptive, samples=8, seed=3)
    got = []
    for sizes in ([1, 5, 7], [3, 8]):                # uneven batches: batch edges must not matter
        for k in sizes:
            got.extend(bat.decide_batch(x[len(got):len(got) + k]))
    assert len(got) == 24
    assert all(_same(a, b) for a, b in zip(got, expect))
    assert expect[5].samples == 0 and expect[7].samples == 0 and "clipped_input" in expect[11].flags
    assert any(d.abstain for d in expect) and any(not d.abstain for d in expect)
    # the comparison can fail: windows decided in another order (a mix-up of windows) differ
    mixed = Diagnoser(rt, adaptive=adaptive, samples=8, seed=3).decide_batch(x[[1, 0] + list(range(2, 8))])
    assert not (_same(mixed[0], expect[0]) and _same(mixed[1], expect[1]))
    # and so does another noise stream
    other = Diagnoser(rt, adaptive=adaptive, samples=8, seed=4).decide_batch(x[:8])
    assert not all(_same(a, b) for a, b in zip(other, expect[:8]) if b.samples)


def test_batched_stream_equals_window_by_window_stream(tiny, tmp_path):
    _calibrate_tiny_pvalues(tiny, tmp_path)
    rt = UncertaintyRuntime(tiny.dir)
    sig = _windows(tiny, 60, seed=9).reshape(-1)
    sig = sig[np.isfinite(sig)]                      # a stream without NaN: every window decided
    runs = {}
    for name, deadline in (("one", None), ("batched", 1000.0)):   # a deadline no load can miss: batches of 8
        recs = []
        stats = run_stream(Diagnoser(rt, samples=8, seed=5), ArraySource(sig, 50.0), recs.append, hop=16,
                           deadline=deadline, max_batch=8)
        runs[name] = ([r for r in recs if r["type"] == "decision"], recs[-1], stats)
    one, batched = runs["one"][0], runs["batched"][0]
    assert runs["one"][1]["mean_batch"] == 1.0 and runs["batched"][1]["mean_batch"] > 3
    assert len(one) == len(batched) == runs["one"][2].windows > 50
    keys = ("window", "class", "set", "reasons", "flags", "samples", "abstain", "status")
    for a, b in zip(one, batched):
        assert {k: a[k] for k in keys} == {k: b[k] for k in keys}
        for k in ("total", "epistemic", "density", "combined", "p_combined"):
            assert abs(a[k] - b[k]) <= 1e-5 * max(1.0, abs(a[k]))   # to_json rounds to 6 digits
    assert runs["batched"][2].late == 0 and runs["batched"][2].errors == 0


def test_batch_plan_is_the_largest_batch_within_the_deadline():
    for hop_s, deadline, cost, cap in [(0.17, 0.17, 3e-4, 32), (0.17, 1.0, 3e-4, 32), (0.17, 1.0, 0.05, 32),
                                       (0.01, 1.0, 1e-3, 32), (0.01, 1.0, 1e-3, 8), (0.5, 0.3, 1e-3, 32)]:
        plan = BatchPlan(hop_s, deadline, max_batch=cap, safety=2.0, warmup=4)
        assert plan.size() == 1                      # not measured yet
        plan.observe(4, 4 * cost)
        brute = max([b for b in range(1, cap + 1) if (b - 1) * hop_s + 2.0 * b * cost <= deadline] or [1])
        assert plan.size() == brute
    plan = BatchPlan(0.1, 1.0, warmup=1)
    plan.observe(1, 0.001)
    wide = plan.size()
    plan.observe(1, 0.2)                             # a slow batch narrows the next ones
    assert plan.size() < wide


class _BatchDiagnoser:
    """Each call advances the controlled clock by ``per_window`` per window (plus a spike on call ``spike``)."""

    def __init__(self, clock, per_window, spike_call=None, spike=0.0):
        self.clock, self.per_window, self.spike_call, self.spike = clock, per_window, spike_call, spike
        self.rt = type("RT", (), {"input_length": 16})()
        self.adaptive, self.samples, self.digest, self.cfg, self.batched = False, 4, None, None, True
        self.calls = []

    def decide_batch(self, windows):
        self.calls.append(len(windows))
        self.clock.t += self.per_window * len(windows) + (self.spike if len(self.calls) == self.spike_call else 0.0)
        return [Decision("rest", 0, 0.9, 0.1, 0.1, 0.0, None, None, None, False, [], [], 4) for _ in windows]


def test_batched_latency_charges_the_hops_a_window_waited():
    clock = _Clock()
    rate, hop, deadline = 50.0, 8, 0.6                      # hop 0.16 s: batches of 4 fit (3 hops + 2 x compute)
    diag = _BatchDiagnoser(clock, 0.01, spike_call=12, spike=0.5)
    recs = []
    stats = run_stream(diag, ArraySource(np.arange(16 + 8 * 99, dtype=np.float32), rate, clock=clock), recs.append,
                       hop=hop, clock=clock, wall=clock, deadline=deadline, max_batch=8)
    dec = [r for r in recs if r["type"] == "decision"]
    assert [d["window"] for d in dec] == list(range(100)) and stats.windows == 100
    brute = max(b for b in range(1, 9) if (b - 1) * 0.16 + 2.0 * b * 0.01 <= deadline)
    assert brute == 4 and diag.calls[:8] == [1] * 8 and max(diag.calls) == brute
    # replayed as fast as possible, a batched window is charged the later windows' hops plus the compute
    i = 8
    for k in diag.calls[8:11]:
        for j in range(k):
            compute = 0.01 * k
            assert abs(dec[i + j]["latency_ms"] - 1e3 * ((k - 1 - j) * 0.16 + compute)) < 1e-3
        i += k
    # the spiked call (0.5 s more) makes its first windows late, and they are counted
    late = [d for d in dec if d["late"]]
    assert stats.late == len(late) >= 1 and all(d["latency_ms"] > 600 for d in late)
    summary = recs[-1]
    assert summary["batches"] == len(diag.calls) and summary["late"] == stats.late


def test_default_deadline_never_batches():
    clock = _Clock()
    diag = _BatchDiagnoser(clock, 1e-4)
    run_stream(diag, ArraySource(np.zeros(16 + 8 * 60, np.float32) + 1, 50.0, clock=clock), lambda r: None, hop=8,
               clock=clock, wall=clock)
    assert set(diag.calls) == {1}


def test_sample_logits_per_input_equals_calls_per_input(tiny):
    for max_batch in (1024, 20, 3):                 # whole batch, chunks of inputs, fewer rows than S
        rt = UncertaintyRuntime(tiny.dir, max_batch=max_batch)
        f = rt.trunk_features(np.random.default_rng(1).standard_normal((6, tiny.W.shape[0])).astype(np.float32))
        got = rt.sample_logits_per_input(f, 8, np.random.default_rng(7))
        rng = np.random.default_rng(7)
        expect = np.concatenate([rt.sample_logits(f[b:b + 1], 8, rng) for b in range(6)], axis=1)
        assert got.shape == (8, 6, 3)
        assert np.max(np.abs(got - expect)) <= 1e-6
        # sample-major rows (sample_logits on the whole batch) are another assignment: they differ
        assert not np.max(np.abs(rt.sample_logits(f, 8, np.random.default_rng(7)) - expect)) <= 1e-6


def test_stream_features_equal_trunk_features_and_refuse_other_input(tiny):
    from edgeuq_runtime.errors import InputError

    rt = UncertaintyRuntime(tiny.dir)
    x = (np.random.default_rng(2).standard_normal((5, tiny.W.shape[0])) * 3 + 1).astype(np.float32)
    assert np.max(np.abs(rt.stream_features(x) - rt.trunk_features(x))) <= 1e-6
    for bad in (x.astype(np.float64), x[:, ::2], x.T.copy(), x[:, :-1]):
        with pytest.raises(InputError, match="stream_features"):
            rt.stream_features(bad)


def test_pvalues_against_sorted_scores_equal_mondrian_pvalues(tiny, tmp_path):
    from edgeuq_runtime.calibration import Calibrated

    _calibrate_tiny_pvalues(tiny, tmp_path)
    rt = UncertaintyRuntime(tiny.dir)
    cal = Calibrated.from_bundle(rt.bundle)
    rng = np.random.default_rng(3)
    for n in (1, 5, 40):                            # the per-row and the per-group paths
        scores = {p: rng.standard_normal(n) * 0.5 + 0.5 for p in ("epistemic", "total")}
        scores["density"] = rng.standard_normal(n) * 5 + 10
        if n > 1:
            scores["density"][0] = np.nan
        pred = rng.integers(0, 3, n)
        got = cal.pvalues(scores["epistemic"], scores["total"], scores["density"], pred)
        for part, (per, pooled) in cal.pvalue_scores.items():
            ref = mondrian_pvalues(per, pooled, scores[part], pred)
            assert np.array_equal(got[part], ref)


def test_cli_deadline_batches_and_decides_the_same(tiny):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    sig = (np.random.default_rng(8).standard_normal(16 * 40) * 2000).astype("<i2").tobytes()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = {}
    for name, extra in (("one", []), ("batched", ["--deadline-ms", "60000", "--max-batch", "6"])):
        proc = subprocess.run([sys.executable, "-m", "edgeuq_runtime", "stream", str(tiny.dir), "--source", "stdin:i16",
                               "--hop", "8", "--samples", "4", *extra], input=sig, capture_output=True, env=env,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr.decode()
        out[name] = [json.loads(x) for x in proc.stdout.decode().splitlines()]
    assert out["one"][-1]["mean_batch"] == 1.0 and out["batched"][-1]["mean_batch"] > 3
    assert out["batched"][-1]["deadline_ms"] == 60000.0
    dec = {k: [r for r in v if r["type"] == "decision"] for k, v in out.items()}
    assert len(dec["one"]) == len(dec["batched"]) == 79
    for a, b in zip(dec["one"], dec["batched"]):
        assert (a["window"], a["class"], a["samples"], a["abstain"]) == (b["window"], b["class"], b["samples"],
                                                                         b["abstain"])
        assert abs(a["epistemic"] - b["epistemic"]) <= 1e-5 and abs(a["total"] - b["total"]) <= 1e-5


@pytest.mark.parametrize("table", [True, False])
def test_mondrian_pvalues_of_any_rows_equal_the_reference(monkeypatch, table):
    """The rank table (every row in one lookup) and the per-class fallback equal ``mondrian_pvalues``:
    ties with calibration scores, NaN / +-inf scores, a pooled class, one to many rows."""
    import edgeuq_runtime.calibration as calmod
    from test_rt_stream_calibration import _cal

    from edgeuq_runtime.calibration import Calibrated, PValueSection

    if not table:
        monkeypatch.setattr(calmod, "RANK_TABLE_MAX", 0)
    rng = np.random.default_rng(5)
    parts = ("epistemic", "total", "density")
    scores = {}
    for part in parts:
        per = [np.round(rng.standard_normal(n), 1) for n in (30, 7, 0, 55)]   # rounded: many ties
        per[2] = None                                                       # class 2 uses the pooled scores
        pooled = np.concatenate([c for c in per if c is not None] + [rng.standard_normal(9)])
        scores[part] = (per, pooled)
    pv = PValueSection("pvalues.npz", parts, "min", True, 0.1, 101, (2,))
    cal = Calibrated(_cal(density=None, pvalues=pv), None, scores)
    assert (set(cal._ranks) == set(parts)) == table
    for n in (1, 3, 16, 17, 200):
        pred = rng.integers(0, 4, n)
        given = {}
        for part in parts:
            pool = scores[part][1]
            v = np.where(rng.random(n) < 0.5, rng.choice(pool, n), rng.standard_normal(n) * 2)
            v[rng.random(n) < 0.1] = np.nan
            if n > 2:
                v[1], v[2] = np.inf, -np.inf
            given[part] = v
        got = cal.pvalues(given["epistemic"], given["total"], given["density"], pred)
        for part in parts:
            ref = mondrian_pvalues(scores[part][0], scores[part][1], given[part], pred)
            assert np.array_equal(got[part], ref), (part, n)
    # the comparison can fail: another class's ranks differ
    wrong = cal.pvalues(given["epistemic"], given["total"], given["density"], (pred + 1) % 4)
    assert not np.array_equal(wrong["density"], got["density"])
