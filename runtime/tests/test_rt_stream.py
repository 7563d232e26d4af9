"""Streaming loop: ring buffer and windows against brute force, hysteresis against a brute-force
reference, deadline accounting with a controlled clock, bad input (NaN bursts, clipping, a stuck
sensor, the wrong sample format, a stalled or closed source, a failing model) never stops the loop."""
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edgeuq_runtime import UncertaintyRuntime
from edgeuq_runtime.stream import (
    ArraySource, Diagnoser, Hysteresis, RawStreamSource, RingBuffer, TcpSource, Windower, run_stream, window_flags,
)
from edgeuq_runtime.stream.decide import Decision

RUNTIME_DIR = Path(__file__).resolve().parents[1]


def test_ring_buffer_matches_history():
    rng = np.random.default_rng(0)
    ring = RingBuffer(37)
    hist = []
    for _ in range(300):
        x = rng.standard_normal(int(rng.integers(0, 60))).astype(np.float32)
        ring.push(x)
        hist.extend(x.tolist())
        h = np.array(hist, dtype=np.float32)
        assert ring.total == len(h)
        if len(h) >= 10:
            end = int(rng.integers(max(10, len(h) - 37 + 10), len(h) + 1))
            assert np.array_equal(ring.get(end, 10), h[end - 10:end])


def test_windower_yields_every_sliding_window():
    rng = np.random.default_rng(1)
    sig = rng.standard_normal(1000).astype(np.float32)
    w = Windower(64, 24)
    got = []
    pos = 0
    while pos < sig.size:
        n = int(rng.integers(1, 24))  # reads never larger than the hop, as the loop does
        w.push(sig[pos:pos + n])
        pos += n
        while w.ready():
            got.append(w.pop().copy())
    expect = [sig[i:i + 64] for i in range(0, sig.size - 64 + 1, 24)]
    assert len(got) == len(expect)
    assert all(np.array_equal(a, b) for a, b in zip(got, expect))


def _hysteresis_reference(labels, k, n, normal="normal"):
    """Brute force: recount the last n labels from the full history at every step."""
    state, out = normal, []
    for t in range(len(labels)):
        recent = labels[max(0, t - n + 1): t + 1]
        counts = {}
        for lab in recent:
            if lab is not None:
                counts[lab] = counts.get(lab, 0) + 1
        if state != normal and counts.get(normal, 0) >= k:
            state = normal
        else:
            cands = [lab for lab in set(recent) if lab not in (None, normal, state)]
            if cands:
                last = {lab: max(i for i, v in enumerate(recent) if v == lab) for lab in cands}
                best = max(cands, key=lambda lab: (counts[lab], last[lab]))
                if counts[best] >= k:
                    state = best
        out.append(state)
    return out


@pytest.mark.parametrize("k,n", [(1, 1), (2, 3), (3, 5), (4, 5), (5, 5), (2, 6)])
def test_hysteresis_matches_brute_force(k, n):
    rng = np.random.default_rng(k * 10 + n)
    alphabet = ["normal", "inner", "outer", None]
    for trial in range(20):
        # runs of the same label, so that alarms actually rise and clear
        labels = []
        while len(labels) < 300:
            labels += [alphabet[int(rng.integers(0, 4))]] * int(rng.integers(1, 2 * n + 2))
        h = Hysteresis(k, n)
        states = []
        for lab in labels:
            h.update(lab)
            states.append(h.state)
        assert states == _hysteresis_reference(labels, k, n)
    assert len(set(states)) > 1


class _Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


class _SlowDiagnoser:
    """Stands in for the model: each decision advances the controlled clock by the next latency."""

    def __init__(self, clock, latencies, rt):
        self.clock, self.latencies, self.rt = clock, list(latencies), rt
        self.adaptive, self.samples, self.digest, self.cfg = False, 4, None, None
        self.seen = []

    def decide(self, window):
        self.seen.append(window.copy())
        self.clock.t += self.latencies[len(self.seen) - 1]
        return Decision("rest", 0, 0.9, 0.1, 0.1, 0.0, None, None, None, False, [], [], 4)


class _FakeRT:
    input_length = 16


def test_deadline_accounting_counts_late_windows_and_drops_none():
    clock = _Clock()
    rate, hop = 50.0, 8                       # deadline = hop / rate = 0.16 s
    n_windows = (400 - 16) // hop + 1
    rng = np.random.default_rng(2)
    lat = rng.uniform(0.05, 0.3, n_windows)
    diag = _SlowDiagnoser(clock, lat, _FakeRT())
    src = ArraySource(np.arange(400, dtype=np.float32), rate, realtime=False, clock=clock)
    records = []
    stats = run_stream(diag, src, records.append, hop=hop, clock=clock, wall=clock)
    decisions = [r for r in records if r["type"] == "decision"]
    assert [d["window"] for d in decisions] == list(range(n_windows))       # none dropped, in order
    assert stats.late == int((lat > hop / rate).sum()) == sum(d["late"] for d in decisions)
    assert all(abs(d["latency_ms"] - 1e3 * l) < 1e-3 for d, l in zip(decisions, lat))
    assert records[-1]["type"] == "summary" and records[-1]["late"] == stats.late
    assert np.array_equal(diag.seen[3], np.arange(24, 40, dtype=np.float32))


def test_realtime_backlog_is_measured_from_sample_arrival():
    """Real-time source: when decisions are slower than the hop, later windows wait and their
    latency (from the arrival of their last sample) grows; every window is still decided."""
    clock = _Clock()
    sleeps = []

    def sleep(s):
        sleeps.append(s)
        clock.t += s

    src = ArraySource(np.zeros(16 + 8 * 9, dtype=np.float32) + np.arange(88), 50.0, realtime=True, clock=clock,
                      sleep=sleep)
    diag = _SlowDiagnoser(clock, [0.3] * 10, _FakeRT())   # 0.3 s per decision > 0.16 s hop
    recs = []
    stats = run_stream(diag, src, recs.append, hop=8, clock=clock, wall=clock)
    lat = [r["latency_ms"] for r in recs if r["type"] == "decision"]
    assert stats.windows == 10 and stats.late == 10
    assert all(b > a for a, b in zip(lat[1:], lat[2:]))   # the backlog grows


def test_pacer_releases_each_chunk_when_its_last_sample_is_due():
    """Pacing (the one copy every paced source uses): chunk k is due at t0 + samples so far / rate,
    the pacer sleeps exactly until then (not when a slow consumer already made it late), and
    ``restart`` starts a new clock; without real time a chunk is stamped now and nothing waits."""
    from edgeuq_runtime.stream.sources import Pacer

    clock, sleeps = _Clock(), []

    def sleep(s):
        sleeps.append(s)
        clock.t += s

    p = Pacer(100.0, True, clock=clock, sleep=sleep)
    x = np.zeros(10, np.float32)
    assert p.release(x).t_available == pytest.approx(100.1) and sleeps == [pytest.approx(0.1)]
    clock.t += 0.5                                   # the consumer was slow: chunk 2 is already late
    assert p.release(x).t_available == pytest.approx(100.2) and len(sleeps) == 1
    assert p.release(x[:5]).t_available == pytest.approx(100.25)   # by samples, not by chunks
    assert len(sleeps) == 1
    p.restart()
    t = clock.t
    assert p.release(x).t_available == pytest.approx(t + 0.1) and sleeps[-1] == pytest.approx(0.1)
    fast = Pacer(100.0, False, clock=clock, sleep=sleep)
    n = len(sleeps)
    assert fast.release(x).t_available == clock.t and len(sleeps) == n


def test_window_flags():
    rng = np.random.default_rng(3)
    x = rng.standard_normal(256).astype(np.float32)
    assert window_flags(x) == []
    y = x.copy()
    y[10:20] = np.nan
    assert window_flags(y) == ["nonfinite_input"]
    assert window_flags(np.clip(x, -0.5, 0.5)) == ["clipped_input"]
    assert window_flags(np.full(256, 0.3, np.float32)) == ["flatline_input"]
    wrong = np.frombuffer((x * 3000).astype("<i2").tobytes(), dtype="<f4")   # int16 bytes read as float32
    assert "implausible_values" in window_flags(wrong) or "nonfinite_input" in window_flags(wrong)


def test_bad_input_is_flagged_and_the_loop_keeps_running(tiny):
    rt = UncertaintyRuntime(tiny.dir)
    rng = np.random.default_rng(4)
    sig = rng.standard_normal(16 * 40).astype(np.float32)
    sig[16 * 5 + 3: 16 * 5 + 9] = np.nan          # a NaN burst inside window 5
    sig[16 * 10: 16 * 11] = np.clip(sig[16 * 10: 16 * 11], -0.3, 0.3)   # clipping in window 10
    sig[16 * 20: 16 * 21] = 0.7                    # stuck sensor in window 20
    recs = []
    stats = run_stream(Diagnoser(rt, samples=8), ArraySource(sig, 50.0), recs.append, hop=16)
    dec = {r["window"]: r for r in recs if r["type"] == "decision"}
    assert len(dec) == 40 and stats.errors == 0
    assert dec[5]["abstain"] and dec[5]["flags"] == ["nonfinite_input"] and dec[5]["class"] is None
    assert dec[10]["abstain"] and dec[10]["flags"] == ["clipped_input"] and dec[10]["class"] is not None
    assert dec[20]["abstain"] and dec[20]["flags"] == ["flatline_input"]
    clean = [w for w in dec if w not in (5, 10, 20)]
    assert not any(dec[w]["abstain"] for w in clean) and all(dec[w]["samples"] == 8 for w in clean)
    assert stats.flagged == 3


class _Flaky(Diagnoser):
    def decide(self, window):
        if float(window[0]) > 20.0:
            raise RuntimeError("backend fell over")
        return super().decide(window)


def test_model_errors_give_error_records(tiny):
    rt = UncertaintyRuntime(tiny.dir)
    sig = np.random.default_rng(5).standard_normal(16 * 30).astype(np.float32)
    sig[16 * 7] = 50.0
    recs = []
    stats = run_stream(_Flaky(rt, samples=4), ArraySource(sig, 50.0), recs.append, hop=16)
    dec = [r for r in recs if r["type"] == "decision"]
    assert len(dec) == 30 and stats.errors == 1
    assert dec[7]["reasons"] == ["error"] and "backend fell over" in dec[7]["error"]
    assert dec[7]["status"] == "error" and dec[7]["abstain"] is None and dec[7]["class"] is None
    assert dec[8]["class"] is not None and dec[8]["status"] == "ok"
    # the error is not an abstention: brute-force count of the abstaining "ok" records
    assert stats.abstained == sum(1 for d in dec if d["status"] == "ok" and d["abstain"])
    summary = [r for r in recs if r["type"] == "summary"][0]
    assert summary["errors"] == 1 and summary["error_examples"] == ["RuntimeError: backend fell over"]


class _Broken(Diagnoser):
    def decide(self, window):
        raise ValueError("model graph is corrupt\nsecond line")


def test_an_erroring_model_gives_error_records_and_zero_abstentions(tiny):
    rt = UncertaintyRuntime(tiny.dir)
    sig = np.random.default_rng(6).standard_normal(16 * 12).astype(np.float32)
    recs = []
    alarm = Hysteresis(2, 3, "normal")
    stats = run_stream(_Broken(rt, samples=4), ArraySource(sig, 50.0), recs.append, hop=16, alarm=alarm)
    dec = [r for r in recs if r["type"] == "decision"]
    assert len(dec) == 12 and stats.windows == 12
    assert stats.errors == 12 and stats.abstained == 0 and stats.decided == 0
    assert all(d["status"] == "error" and d["abstain"] is None and d["class"] is None for d in dec)
    assert all(d["error"] == "ValueError: model graph is corrupt" for d in dec)
    summary = [r for r in recs if r["type"] == "summary"][0]
    assert summary["errors"] == 12 and summary["abstained"] == 0 and summary["decided"] == 0
    assert summary["error_examples"] == ["ValueError: model graph is corrupt"]  # distinct messages, bounded
    assert not [r for r in recs if r["type"] == "alarm"]  # errors raise no fault alarm either


def test_stalled_pipe_reports_and_gives_up(tiny):
    rt = UncertaintyRuntime(tiny.dir)
    r, w = os.pipe()
    try:
        src = RawStreamSource(os.fdopen(r, "rb", buffering=0), "f32", 50.0, stall_timeout=0.05)
        recs = []
        stats = run_stream(Diagnoser(rt, samples=4), src, recs.append, max_stalls=3)
        assert stats.stalls == 3 and stats.windows == 0
        assert [x["event"] for x in recs if x["type"] == "status"] == ["stalled"] * 3 + ["giving_up"]
    finally:
        os.close(w)


def test_tcp_source_survives_disconnects(tiny):
    rt = UncertaintyRuntime(tiny.dir)
    src = TcpSource(0, "i16", 50.0, stall_timeout=3.0)  # generous: the producer may be slow on a loaded machine
    rng = np.random.default_rng(6)
    parts = [(rng.standard_normal(16 * 6) * 3000).astype("<i2") for _ in range(2)]

    def produce():
        for p in parts:
            with socket.create_connection(("127.0.0.1", src.port)) as s:
                s.sendall(p.tobytes() + (b"\x01" if p is parts[0] else b""))   # a stray byte: partial sample
            time.sleep(0.1)

    t = threading.Thread(target=produce)
    t.start()
    recs = []
    try:
        stats = run_stream(Diagnoser(rt, samples=4), src, recs.append, hop=16, max_stalls=2)
    finally:
        t.join()
        src.close()
    assert stats.closes == 2
    closed = [x for x in recs if x.get("event") == "closed"]
    assert "stray bytes" in closed[0]["message"] and "stray" not in closed[1]["message"]
    # the stray byte is discarded with the connection: 6 windows from each producer
    assert stats.windows == 12 and stats.errors == 0


def test_cli_stream_from_stdin_int16(tiny):
    sig = (np.random.default_rng(7).standard_normal(16 * 12) * 2000).astype("<i2")
    env = {**os.environ, "PYTHONPATH": str(RUNTIME_DIR)}
    proc = subprocess.run([sys.executable, "-m", "edgeuq_runtime", "stream", str(tiny.dir), "--source", "stdin:i16",
                           "--hop", "8", "--samples", "4", "--alarm", "2/3"],
                          input=sig.tobytes() + b"\x07", capture_output=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    lines = [json.loads(x) for x in proc.stdout.decode().splitlines()]
    dec = [x for x in lines if x["type"] == "decision"]
    assert len(dec) == (16 * 12 - 16) // 8 + 1
    eof = [x for x in lines if x.get("event") == "eof"][0]
    assert "wrong sample format" in eof["message"]
    summ = lines[-1]
    assert summ["type"] == "summary" and summ["windows"] == len(dec) and summ["mean_samples"] == 4.0
    assert all({"class", "confidence", "total", "aleatoric", "epistemic", "density", "abstain", "reasons", "samples",
                "latency_ms", "late", "time", "bundle_digest"} <= set(d) for d in dec)


def test_cli_bad_source_is_a_clear_error(tiny):
    env = {**os.environ, "PYTHONPATH": str(RUNTIME_DIR)}
    proc = subprocess.run([sys.executable, "-m", "edgeuq_runtime", "stream", str(tiny.dir), "--source", "udp:9"],
                          capture_output=True, env=env, timeout=60)
    assert proc.returncode == 2 and "unknown source" in proc.stderr.decode()


def test_file_sources_read_every_format(tmp_path):
    import wave

    from edgeuq_runtime.errors import InputError
    from edgeuq_runtime.stream import FileSource, open_source

    x = (np.random.default_rng(8).standard_normal(500) * 0.2).astype(np.float32)
    i16 = np.round(x * 32768).astype("<i2")
    np.save(tmp_path / "a.npy", x)
    np.savez(tmp_path / "a.npz", signal=x, fs=50.0)
    x.astype("<f4").tofile(tmp_path / "a.f32")
    i16.tofile(tmp_path / "a.i16")
    with wave.open(str(tmp_path / "a.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(50)
        w.writeframes(i16.tobytes())
    for name, expect in (("a.npy", x), ("a.npz", x), ("a.f32", x), ("a.i16", i16 / 32768.0), ("a.wav", i16 / 32768.0)):
        src = open_source(f"file:{tmp_path / name}", 50.0)
        got = np.concatenate([src.read(64).samples for _ in range(8)])
        assert np.allclose(got, expect, atol=1e-7), name
        assert src.read(64).status == "eof"
    np.savez(tmp_path / "b.npz", signal=x, fs=48.0)
    with pytest.raises(InputError, match="differs from the bundle"):
        open_source(f"file:{tmp_path / 'b.npz'}", 50.0)
    with pytest.raises(InputError, match="does not exist"):
        FileSource(tmp_path / "nope.npy", rate=50.0)


def test_simulated_sensor_is_continuous_and_named_simulated():
    from edgeuq_runtime.stream import SimSource, SimulatedSensor

    a = SimSource("inner_race", 12000.0, realtime=False, seed=1, max_seconds=0.5)
    assert a.simulated and "simulated" in a.description
    total = sum(a.read(700).samples.size for _ in range(20))
    assert total == 6000 and a.read(10).status == "eof"
    s = SimulatedSensor("outer_race", 12000.0, seed=2)
    x = np.concatenate([s.read(1000) for _ in range(12)])
    # impacts every 1 / (3.5848 fr): the envelope spectrum peaks at the outer-race rate
    env = np.abs(x - x.mean())
    spec = np.abs(np.fft.rfft(env - env.mean()))
    freqs = np.fft.rfftfreq(env.size, 1 / 12000.0)
    band = (freqs > 20) & (freqs < 200)
    peak = freqs[band][np.argmax(spec[band])]
    assert abs(peak - 3.5848 * 1772 / 60) < 2.0, peak


def test_latency_histogram_quantiles_match_numpy():
    from edgeuq_runtime.stream import LatencyHistogram

    rng = np.random.default_rng(9)
    lat = np.exp(rng.normal(np.log(3e-3), 0.8, 20000))
    h = LatencyHistogram()
    for v in lat:
        h.add(float(v))
    for q in (0.5, 0.9, 0.99):
        ref = np.sort(lat)[int(np.ceil(q * lat.size)) - 1]       # the ceil(q n)-th smallest
        got = h.quantile(q)
        assert ref <= got <= ref * 1.0051, (q, ref, got)           # upper bin edge, bins 0.5 % wide
    assert h.n == lat.size and h.max == lat.max()


def _to_json_reference(d):
    """Decision.to_json as first written (a rounding helper per field), the reference of its
    written-out form and of ``record``."""
    r = lambda v: None if v is None else round(float(v), 6)  # noqa: E731
    out = {"class": d.label, "class_index": d.class_index, "confidence": r(d.confidence), "total": r(d.total),
           "aleatoric": r(d.aleatoric), "epistemic": r(d.epistemic), "density": r(d.density),
           "combined": r(d.combined), "set": d.prediction_set, "abstain": d.abstain, "reasons": d.reasons,
           "flags": d.flags, "samples": d.samples}
    if "pvalues" in d.extra:
        out["pvalues"] = {k: r(v) for k, v in d.extra["pvalues"].items()}
        out["p_combined"] = r(d.extra["p_combined"])
    return out


def test_decision_record_equals_the_reference_record_in_order():
    rng = np.random.default_rng(7)
    cases = [Decision(None, None, None, None, None, None, None, None, None, True, ["flatline_input"],
                      ["flatline_input"], 0)]
    for i in range(20):
        v = [float(x) for x in rng.standard_normal(6) * 10.0 ** rng.integers(-8, 4, 6)]
        if i % 3 == 0:
            v = [np.float64(x) for x in v]           # numpy scalars become Python floats
        extra = {} if i % 4 == 0 else {"pvalues": {"epistemic": v[0] ** 2 / 7, "density": np.float32(0.3),
                                                   "total": 1 / 3}, "p_combined": v[1] ** 2 / 11}
        cases.append(Decision("ball", 2, v[0], v[1], v[2], v[3], None if i % 5 == 0 else v[4], v[5],
                              ["ball"] if i % 2 else None, bool(i % 2), ["set_size"] * (i % 2), [], 32,
                              [0.1, 0.9], extra))
    for d in cases:
        ref = _to_json_reference(d)
        got = d.record({"status": "ok"})
        assert list(got) == ["status"] + list(ref) and got == {"status": "ok", **ref}
        assert all(type(v) is float for v in got.values() if isinstance(v, float))
        assert d.to_json() == ref and list(d.to_json()) == list(ref)
    # control: the records do round (to 6 decimals, not 5)
    d = Decision("ball", 2, 0.1234567, 0.5, 0.25, 0.25, None, None, None, False, [], [], 32)
    assert d.record({})["confidence"] == round(0.1234567, 6) != round(0.1234567, 5)


def test_ring_buffer_push_flattens_what_it_is_given():
    a, b = RingBuffer(50), RingBuffer(50)
    x = np.arange(24, dtype=np.float64).reshape(2, 3, 4)
    a.push(x)
    b.push(x.reshape(-1).astype(np.float32))
    assert a.total == b.total == 24 and np.array_equal(a.get(24, 24), b.get(24, 24))
    assert a.get(24, 24).dtype == np.float32
