"""Per-operator tables from ONNX Runtime's profiling trace: warm-up runs dropped, figures
checked against a hand-made trace whose answer is worked out by hand."""
from __future__ import annotations

import json

import pytest

from edgeuq.profile.ort_ops import OrtTraceError, aggregate_trace, load_trace


def _run(ts, dur):
    return {"cat": "Session", "name": "model_run", "ts": ts, "dur": dur, "ph": "X", "args": {}}


def _node(name, op, ts, dur):
    return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur, "ph": "X",
            "args": {"op_name": op, "provider": "CPUExecutionProvider"}}


def hand_trace():
    """Three runs. Run 0 (warm-up) is slow: 1000 µs of MatMul that must not count.
    Runs 1 and 2: MatMul 10 + 30 µs, Add 5 µs (once per run), Relu twice in run 1 (2 + 4 µs), absent in run 2.
    ONNX Runtime writes a run's event after its kernels; order in the list must not matter."""
    return [
        {"cat": "Session", "name": "session_initialization", "ts": 0, "dur": 50, "args": {}},
        _node("/fc/MatMul", "MatMul", 101, 1000), _node("/fc/Add", "Add", 1102, 500), _run(100, 1600),
        _node("/fc/MatMul", "MatMul", 2001, 10), _node("/fc/Add", "Add", 2012, 5),
        _node("/act/Relu", "Relu", 2018, 2), _node("/act/Relu", "Relu", 2021, 4), _run(2000, 30),
        _run(3000, 40), _node("/fc/MatMul", "MatMul", 3001, 30), _node("/fc/Add", "Add", 3032, 5),
        _node("/stray/Add", "Add", 9000, 7),  # inside no run: ignored
        {"cat": "Session", "name": "SequentialExecutor::Execute", "ts": 2000, "dur": 29, "args": {}},
    ]


def test_warmup_runs_are_dropped_and_figures_match_the_hand_count():
    rows, runs = aggregate_trace(hand_trace(), warmup=1)
    assert runs == 2
    by = {r["name"]: r for r in rows}
    assert set(by) == {"/fc/MatMul", "/fc/Add", "/act/Relu"}
    assert by["/fc/MatMul"]["us_per_run"] == pytest.approx(20.0)     # (10 + 30) / 2, not (1000 + 10 + 30) / 3
    assert by["/fc/MatMul"]["median_us"] == pytest.approx(20.0)
    assert by["/fc/Add"]["us_per_run"] == pytest.approx(5.0) and by["/fc/Add"]["calls_per_run"] == 1.0
    assert by["/act/Relu"]["us_per_run"] == pytest.approx(3.0)       # (2 + 4 + 0) / 2
    assert by["/act/Relu"]["calls_per_run"] == 1.0                   # 2 calls over 2 runs
    total = 20.0 + 5.0 + 3.0
    assert by["/fc/MatMul"]["share"] == pytest.approx(20.0 / total)
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)
    assert [r["name"] for r in rows] == ["/fc/MatMul", "/fc/Add", "/act/Relu"]   # largest first
    assert by["/fc/MatMul"]["op"] == "MatMul" and by["/fc/MatMul"]["provider"] == "CPUExecutionProvider"


def test_without_dropping_the_warmup_the_slow_run_counts():
    rows, runs = aggregate_trace(hand_trace(), warmup=0)
    by = {r["name"]: r for r in rows}
    assert runs == 3 and by["/fc/MatMul"]["us_per_run"] == pytest.approx(1040.0 / 3)
    assert by["/fc/MatMul"]["median_us"] == pytest.approx(30.0)


def test_too_few_runs_and_bad_traces_are_refused(tmp_path):
    with pytest.raises(OrtTraceError, match="nothing is left"):
        aggregate_trace(hand_trace(), warmup=3)
    with pytest.raises(OrtTraceError, match="warmup"):
        aggregate_trace(hand_trace(), warmup=-1)
    bad = tmp_path / "t.json"
    bad.write_text(json.dumps({"traceEvents": []}))
    with pytest.raises(OrtTraceError, match="JSON list"):
        load_trace(bad)
    with pytest.raises(OrtTraceError, match="numeric 'dur'"):
        aggregate_trace([_run(0, 10), {"cat": "Node", "name": "x_kernel_time", "ts": 1, "dur": "9"}], warmup=0)
