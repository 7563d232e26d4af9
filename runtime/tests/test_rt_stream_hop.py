"""The one-window path of a stream (``edgeuq_runtime.stream.hop.HopPath``, issue 23 item 6) decides
what the general path (``Diagnoser.decide_general``, the reference) decides, window by window and
over a whole stream (records, late and error accounting), for the configurations it covers; the
pieces it is built from (IO-bound graph runs, noise written into given buffers, the z-score into
buffers, quality flags from the extremes) equal their references; and configurations it does not
cover keep the general path."""
import dataclasses
import math

import numpy as np
import pytest
from test_rt_stream_batch import _same, _windows
from test_rt_stream_calibration import _calibrate_tiny, _calibrate_tiny_pvalues

from edgeuq_runtime import UncertaintyRuntime, load_bundle, write_bundle
from edgeuq_runtime.errors import BackendError
from edgeuq_runtime.noise import NoiseSpec, noise_writer, sample_noise_rows
from edgeuq_runtime.preprocess import normalize
from edgeuq_runtime.stream import ArraySource, Diagnoser, run_stream, window_flags
from edgeuq_runtime.stream.hop import HopPath


class _StepClock:
    """A clock that advances ``step`` seconds at every reading."""

    def __init__(self, step):
        self.t, self.step = 100.0, step

    def __call__(self):
        self.t += self.step
        return self.t


def _pair(tiny, samples=8, **kw):
    rt = UncertaintyRuntime(tiny.dir)
    fast = Diagnoser(rt, samples=samples, seed=5, **kw)
    ref = Diagnoser(UncertaintyRuntime(tiny.dir), samples=samples, seed=5, fast=False, **kw)
    return fast, ref


def _rewrite_pvalues(tiny, **changes):
    """The tiny bundle's p-value section with ``changes`` (e.g. ``mondrian=False``)."""
    b = load_bundle(tiny.dir)
    cal = b.manifest.sections["calibration"]
    cal = dataclasses.replace(cal, pvalues=dataclasses.replace(cal.pvalues, **changes))
    sources = {k: b.path(k) for k in b.manifest.files}
    write_bundle(tiny.dir, dataclasses.replace(b.manifest, files={}, sections={"calibration": cal}), sources,
                 overwrite=True)


@pytest.mark.parametrize("rule,mondrian", [("min", True), ("fisher", True), ("min", False), ("weighted", True),
                                           ("weighted", False)])
def test_hop_path_decides_as_the_general_path(tiny, tmp_path, rule, mondrian):
    _calibrate_tiny_pvalues(tiny, tmp_path, rule)
    if not mondrian:
        _rewrite_pvalues(tiny, mondrian=False)
    fast, ref = _pair(tiny)
    assert fast.hop_path is not None and ref.hop_path is None, fast.hop_path_reason
    x = _windows(tiny, 60)
    got = [fast.decide(w) for w in x]
    expect = [ref.decide_general(w) for w in x]
    bad = [i for i, (a, b) in enumerate(zip(got, expect)) if not _same(a, b, rtol=1e-9)]
    assert not bad, (bad[:5], got[bad[0]], expect[bad[0]])
    # the windows exercise what the path decides: refusals, flags, abstentions and answers, p-value reasons
    reasons = {r for d in expect for r in d.reasons}
    assert {"nonfinite_input", "flatline_input", "clipped_input", "set_size"} <= reasons
    assert any(r.startswith("pvalue:") for r in reasons)
    assert any(not d.abstain for d in expect) and any(d.samples == 0 for d in expect)
    assert all(d.extra.get("pvalues") for d in got if d.samples)
    if rule == "weighted":   # the weights matter here: some window's combined p-value is not Bonferroni min's
        assert any(abs(d.extra["p_combined"] - min(1.0, 3 * min(d.extra["pvalues"].values()))) > 1e-6
                   for d in expect if d.samples)


def test_hop_path_stream_equals_general_stream_records_and_accounting(tiny, tmp_path):
    _calibrate_tiny_pvalues(tiny, tmp_path)
    x = _windows(tiny, 30).reshape(-1)
    out = {}
    for name, fast in (("fast", True), ("general", False)):
        d = Diagnoser(UncertaintyRuntime(tiny.dir), samples=8, seed=5, fast=fast)
        recs = []
        # a clock advancing 1 s per reading: every window is later than its 0.32 s deadline, in both paths
        clock = _StepClock(1.0)
        stats = run_stream(d, ArraySource(x, 50.0, clock=clock), recs.append, clock=clock)
        out[name] = (stats, [r for r in recs if r["type"] == "decision"])
    (sf, rf), (sg, rg) = out["fast"], out["general"]
    assert sf.windows == sg.windows == 30 and sf.late == sg.late == 30
    assert (sf.decided, sf.abstained, sf.flagged, sf.errors, sf.samples_sum) == \
        (sg.decided, sg.abstained, sg.flagged, sg.errors, sg.samples_sum)
    # the one-window branch of the loop (HopPath) and the batch branch (the general path: decide_batch of
    # one window) read the clock alike: the same latencies to the step clock's microsecond
    assert [r["latency_ms"] for r in rf] == [r["latency_ms"] for r in rg]
    assert all(r["latency_ms"] >= 1e3 for r in rf)     # at least the decision's own 1 s step
    drop = ("time", "latency_ms")
    for a, b in zip(rf, rg):
        a = {k: v for k, v in a.items() if k not in drop}
        b = {k: v for k, v in b.items() if k not in drop}
        assert a.keys() == b.keys()
        for k in a:
            if isinstance(a[k], float):
                assert abs(a[k] - b[k]) <= 1e-6 * max(1.0, abs(b[k])), k
            elif k == "pvalues":
                assert all(abs(a[k][q] - b[k][q]) <= 1e-9 for q in a[k])
            else:
                assert a[k] == b[k], k


def test_a_model_error_on_the_hop_path_is_counted_as_an_error(tiny, tmp_path, monkeypatch):
    _calibrate_tiny_pvalues(tiny, tmp_path)
    d = Diagnoser(UncertaintyRuntime(tiny.dir), samples=8, seed=5)
    calls = {"n": 0}
    real = d.hop_path.logits

    def flaky(features, rng):
        calls["n"] += 1
        if calls["n"] == 3:
            raise BackendError("head exploded")
        return real(features, rng)

    monkeypatch.setattr(d.hop_path, "logits", flaky)
    x = np.random.default_rng(1).standard_normal(16 * 6).astype(np.float32)
    recs = []
    stats = run_stream(d, ArraySource(x, 50.0), recs.append)
    dec = [r for r in recs if r["type"] == "decision"]
    assert stats.windows == 6 and stats.errors == 1 and stats.decided == 5
    bad = [r for r in dec if r["status"] == "error"]
    assert len(bad) == 1 and bad[0]["abstain"] is None and "head exploded" in bad[0]["error"]
    assert stats.abstained == sum(1 for r in dec if r["status"] == "ok" and r["abstain"])


def test_configurations_without_the_hop_path_keep_the_general_path(tiny, tmp_path):
    _calibrate_tiny(tiny, tmp_path)     # thresholds, no p-value rule
    d = Diagnoser(UncertaintyRuntime(tiny.dir), samples=8)
    assert d.hop_path is None and "p-value" in d.hop_path_reason
    _calibrate_tiny_pvalues(tiny, tmp_path)
    rt = UncertaintyRuntime(tiny.dir)
    assert Diagnoser(rt, adaptive=True).hop_path is None
    assert Diagnoser(rt, samples=8, fast=False).hop_path is None
    assert Diagnoser(rt, use_calibration=False).hop_path is None

    class Sub(Diagnoser):
        def _features(self, x):
            return super()._features(x)

    assert Sub(rt, samples=8).hop_path is None
    # float64 windows are not the stream's float32: the general path decides them (same decision)
    fast, ref = _pair(tiny)
    w = _windows(tiny, 12)[1].astype(np.float64)
    assert _same(fast.decide(w), ref.decide_general(w))


def test_zscore_into_buffers_equals_normalize(tiny, tmp_path):
    _calibrate_tiny_pvalues(tiny, tmp_path)
    h = Diagnoser(UncertaintyRuntime(tiny.dir), samples=8).hop_path
    rng = np.random.default_rng(3)
    cases = [rng.standard_normal(16).astype(np.float32) * s + o for s, o in ((1, 0), (1e-3, 1e4), (1e5, -3), (1, 1e6))]
    cases.append(np.full(16, 2.5, np.float32))               # constant: zeros, as zscore_windows
    for w in cases:
        h.features(w)
        expect = normalize(w[None, :], "zscore")
        err = float(np.max(np.abs(h._x - expect)))
        assert err <= 1e-6, err
    assert not np.any(h._x)


def test_bound_graph_runs_like_run(tiny):
    rt = UncertaintyRuntime(tiny.dir)
    trunk = rt.graph_runners["trunk"]
    x = np.zeros((2, 16), np.float32)
    f = np.empty((2, 8), np.float32)
    run = trunk.bind({"signal": x}, {"features": f})
    rng = np.random.default_rng(0)
    for _ in range(3):
        x[...] = rng.standard_normal(x.shape)                # the bound buffer is read at every run
        run()
        expect = trunk.run({"signal": x})["features"]
        assert float(np.max(np.abs(f - expect))) <= 1e-6
    with pytest.raises(BackendError, match="bind needs exactly the inputs"):
        trunk.bind({"nope": x}, {"features": f})
    with pytest.raises(BackendError, match="C-contiguous"):
        trunk.bind({"signal": np.zeros((16, 2), np.float32).T}, {"features": f})


def test_noise_rows_into_given_arrays_equal_new_arrays():
    specs = (NoiseSpec("a", "dropout_mask", (6,), {"p": 0.3}), NoiseSpec("b", "standard_normal", (2, 3)),
             NoiseSpec("c", "dropout_mask", (5,), {"p": 0.3}))
    expect = sample_noise_rows(specs, 7, np.random.default_rng(9))
    into = {"a": np.full((7, 6), -1.0, np.float32), "b": np.full((7, 2, 3), -1.0, np.float32),
            "c": np.full((7, 5), -1.0, np.float32)}
    got = sample_noise_rows(specs, 7, np.random.default_rng(9), into=into)
    for name in expect:
        assert got[name] is into[name]
        assert np.array_equal(got[name], expect[name]), name
    partial = sample_noise_rows(specs, 7, np.random.default_rng(9), into={"c": np.zeros((7, 5), np.float32)})
    assert all(np.array_equal(partial[n], expect[n]) for n in expect)
    with pytest.raises(ValueError, match="into"):
        sample_noise_rows(specs, 7, np.random.default_rng(9), into={"a": np.zeros((7, 5), np.float32)})



@pytest.mark.parametrize("specs", [
    (NoiseSpec("a", "dropout_mask", (6,), {"p": 0.3}), NoiseSpec("b", "standard_normal", (2, 3)),
     NoiseSpec("c", "dropout_mask", (5,), {"p": 0.3})),
    # a 16-bit dropout threshold, a uniform and a categorical spec (no in-place step: copied into the array)
    (NoiseSpec("d", "dropout_mask", (4,), {"p": 0.123456}), NoiseSpec("u", "uniform", (3,)),
     NoiseSpec("k", "categorical", (2, 3), {"k": 3})),
])
def test_noise_writer_draws_what_sample_noise_rows_draws(specs):
    """A bound writer (arrays checked once) draws the same stream as sample_noise_rows, call after call."""
    ref_rng, rng = np.random.default_rng(4), np.random.default_rng(4)
    into = {s.name: np.full((7,) + s.shape, -1.0, np.float32) for s in specs}
    held = dict(into)
    draw = noise_writer(specs, 7, into)
    for _ in range(3):
        expect = sample_noise_rows(specs, 7, ref_rng)
        draw(rng)
        for name in expect:
            assert into[name] is held[name]
            assert np.array_equal(into[name], expect[name]), name
    with pytest.raises(ValueError, match="missing"):
        noise_writer(specs, 7, {specs[0].name: into[specs[0].name]})
    with pytest.raises(ValueError, match="into"):
        noise_writer(specs, 7, {**into, specs[0].name: np.zeros((7, 99), np.float32)})



def _blocked(specs, rows, order=None):
    """Arrays for ``specs`` as consecutive slabs of one block (in ``order`` of the specs, default theirs)."""
    order = list(range(len(specs))) if order is None else order
    block = np.full((len(specs), rows) + specs[0].shape, -1.0, np.float32)
    return {specs[j].name: block[i] for i, j in enumerate(order)}


@pytest.mark.parametrize("case", ["block", "three in a block", "gaps in the row", "swapped slabs", "mixed kinds"])
def test_noise_writer_writes_a_block_of_dropout_inputs_as_the_specs_do(case):
    """Dropout inputs whose arrays are slabs of one block (as HopPath allocates them) are written in one
    go where the layout allows it, and the values are sample_noise_rows' in every case; the layouts that
    do not allow it (elements not back to back in a row, slabs out of order, another kind between) keep
    the per-spec step."""
    from edgeuq_runtime.noise import _dropout_run_parts, _joint_block, row_layout

    p = {"p": 0.2}
    specs = {"block": (NoiseSpec("a", "dropout_mask", (16,), p), NoiseSpec("b", "dropout_mask", (16,), p)),
             "three in a block": tuple(NoiseSpec(n, "dropout_mask", (2, 8), p) for n in "abc"),
             "gaps in the row": (NoiseSpec("a", "dropout_mask", (5,), p), NoiseSpec("b", "dropout_mask", (5,), p)),
             "swapped slabs": (NoiseSpec("a", "dropout_mask", (16,), p), NoiseSpec("b", "dropout_mask", (16,), p)),
             "mixed kinds": (NoiseSpec("a", "dropout_mask", (16,), p), NoiseSpec("n", "standard_normal", (16,)),
                             NoiseSpec("b", "dropout_mask", (16,), p))}[case]
    rows = 6
    into = _blocked(specs, rows, [1, 0] if case == "swapped slabs" else None)
    joint = case in ("block", "three in a block")
    layout = row_layout(specs)
    members = [(sp, layout[i][0]) for i, sp in enumerate(specs) if sp.kind == "dropout_mask"]
    run = members if case != "mixed kinds" else members[:1]      # a normal spec ends the run
    parts = _dropout_run_parts(run, 8)[3]
    assert (_joint_block(run, parts, rows, into) is not None) == joint
    ref_rng, rng = np.random.default_rng(8), np.random.default_rng(8)
    draw = noise_writer(specs, rows, into)
    for _ in range(3):
        expect = sample_noise_rows(specs, rows, ref_rng)
        draw(rng)
        for name in expect:
            assert np.array_equal(into[name], expect[name]), (case, name)


def _flags_brute(x, max_abs=1e6, clip_count=4):
    """window_flags' rules sample by sample in Python floats."""
    vals = [float(v) for v in np.asarray(x).ravel()]
    fin = [v for v in vals if math.isfinite(v)]
    flags = [] if len(fin) == len(vals) else ["nonfinite_input"]
    if not fin:
        return flags
    mags = [abs(v) for v in fin]
    peak = max(mags)
    if peak > max_abs or 0 < peak < 1e-20:
        flags.append("implausible_values")
    if all(m == peak for m in mags) and not flags:
        flags.append("flatline_input")
    elif peak > 0 and sum(m == peak for m in mags) >= clip_count:
        flags.append("clipped_input")
    return flags


def test_window_flags_equal_the_rules_sample_by_sample():
    rng = np.random.default_rng(2)
    cases = [rng.standard_normal(64).astype(np.float32) for _ in range(5)]
    w = rng.standard_normal(64).astype(np.float32); w[:4] = 3.0; cases.append(w)               # clipped high
    w = rng.standard_normal(64).astype(np.float32); w[:2], w[2:4] = 3.0, -3.0; cases.append(w)  # on both sides
    w = rng.standard_normal(64).astype(np.float32); w[:3] = -3.0; cases.append(w)              # 3: not clipped
    w = rng.standard_normal(64).astype(np.float32); w[:5] = -3.0; cases.append(w)              # clipped low
    cases += [np.where(np.arange(64) % 2, 0.5, -0.5).astype(np.float32), np.zeros(64, np.float32),
              np.full(64, -0.0, np.float32), np.full(64, 7.0), rng.standard_normal(64) * 1e7,
              rng.standard_normal(64) * 1e-25, np.r_[np.full(63, 1e-25), 0.0]]
    w = rng.standard_normal(64).astype(np.float32); w[5] = np.nan; cases.append(w)
    w = rng.standard_normal(64).astype(np.float32); w[:6] = np.inf; cases.append(w)
    cases.append(np.full(8, np.nan, np.float32))
    for i, w in enumerate(cases):
        assert window_flags(w) == _flags_brute(w), (i, window_flags(w), _flags_brute(w))
    assert sum(bool(_flags_brute(w)) for w in cases) >= 12
