"""Executor registry and the onnxruntime executor."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from edgeuq_runtime import EXECUTORS, BackendError, GraphRunner, load_graph, register_executor
from rt_helpers import F, L


def test_unknown_backend_lists_known(tiny):
    with pytest.raises(BackendError, match=r"unknown backend 'no-such-backend'; known backends: \[.*'onnxruntime'.*\]"):
        load_graph("no-such-backend", tiny.dir / "trunk.onnx")


def test_register_custom_executor(tmp_path):
    class Echo:
        input_names = ("a",)
        output_names = ("a",)

        def run(self, feeds):
            return dict(feeds)

    seen = {}

    @register_executor("echo-test")
    def load_echo(path, threads, options):
        seen.update(path=path, threads=threads, options=options)
        return Echo()

    try:
        runner = load_graph("echo-test", tmp_path / "g.bin", threads=3, options={"device": "x"})
        assert isinstance(runner, GraphRunner)
        assert seen == {"path": tmp_path / "g.bin", "threads": 3, "options": {"device": "x"}}
        assert runner.run({"a": np.ones(2)})["a"].tolist() == [1.0, 1.0]
    finally:
        EXECUTORS.pop("echo-test")


def test_onnxruntime_runner(tiny):
    runner = load_graph("onnxruntime", tiny.dir / "trunk.onnx", threads=2)
    assert isinstance(runner, GraphRunner)
    assert tuple(runner.input_names) == ("signal",) and tuple(runner.output_names) == ("features",)
    assert runner.input_shapes == {"signal": (None, L)}
    x = np.ones((4, L), np.float32)
    np.testing.assert_allclose(runner.run({"signal": x})["features"], x @ tiny.W, rtol=1e-5)


@pytest.mark.parametrize("threads", [0, -1, 1.5, True])
def test_bad_threads(tiny, threads):
    with pytest.raises(BackendError, match="threads must be None or an integer >= 1"):
        load_graph("onnxruntime", tiny.dir / "trunk.onnx", threads=threads)


def test_corrupt_graph_is_backend_error(tiny):
    path = tiny.dir / "head.onnx"
    path.write_bytes(b"definitely not a protobuf" * 10)
    with pytest.raises(BackendError, match=r"could not load graph 'head.onnx'"):
        load_graph("onnxruntime", path)


def test_run_failure_names_graph(tiny):
    runner = load_graph("onnxruntime", tiny.dir / "head.onnx")
    feeds = {"features": np.ones((2, F), np.float32), "mask_0": np.ones((3, F), np.float32)}
    with pytest.raises(BackendError, match=r"graph 'head.onnx' .* failed to run"):
        runner.run(feeds)


def test_missing_onnxruntime_is_backend_error(tiny, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(BackendError, match=r"needs the onnxruntime package.*pip install"):
        load_graph("onnxruntime", tiny.dir / "trunk.onnx")


def test_import_is_light():
    code = ("import sys, edgeuq_runtime, edgeuq_runtime.__main__; "
            "bad = sorted(m for m in ('onnxruntime', 'onnx', 'torch', 'edgeuq') if m in sys.modules); "
            "assert 'onnxruntime' in edgeuq_runtime.EXECUTORS; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_onnxruntime_refuses_options(tiny):
    with pytest.raises(BackendError, match="takes no graph options"):
        load_graph("onnxruntime", tiny.dir / "trunk.onnx", options={"device": "cuda"})


class _RunSpy:
    """Wraps an InferenceSession and records the run options each call got."""

    def __init__(self, session):
        self.session, self.calls = session, []

    def __getattr__(self, name):
        return getattr(self.session, name)

    def run(self, outputs, feeds, run_options=None):
        self.calls.append(run_options)
        return self.session.run(outputs, feeds, run_options)


def test_onnxruntime_arena_shrink_is_applied_to_large_runs_and_recorded(tiny):
    from edgeuq_runtime.executors import graph_evidence
    from edgeuq_runtime.executors.onnxruntime import SHRINK_ROWS

    runner = load_graph("onnxruntime", tiny.dir / "trunk.onnx", threads=1)
    assert runner.arena_shrink == f"enabled for runs of >= {SHRINK_ROWS} rows"
    assert graph_evidence(runner) == {"arena_shrink": runner.arena_shrink}
    spy = runner._session = _RunSpy(runner._session)
    small, big = np.ones((2, L), np.float32), np.ones((SHRINK_ROWS, L), np.float32)
    runner.run({"signal": small})
    out = runner.run({"signal": big})["features"]
    assert spy.calls[0] is None and spy.calls[1] is not None  # only the large run carries the shrink option
    assert spy.calls[1].get_run_config_entry("memory.enable_memory_arena_shrinkage") == "cpu:0"
    np.testing.assert_allclose(out, big @ tiny.W, rtol=1e-5)


def test_onnxruntime_without_arena_shrink_says_so(tiny, monkeypatch):
    import onnxruntime as ort

    class NoShrink:
        def add_run_config_entry(self, key, value):
            raise RuntimeError(f"unknown run config key {key}")

    monkeypatch.setattr(ort, "RunOptions", NoShrink)
    with pytest.warns(RuntimeWarning, match="arena shrinkage unavailable.*unknown run config key"):
        runner = load_graph("onnxruntime", tiny.dir / "trunk.onnx", threads=1)
    assert runner.arena_shrink.startswith("unavailable: ") and "RuntimeError: unknown run config key" in \
        runner.arena_shrink
    assert runner.evidence["arena_shrink"] == runner.arena_shrink
    x = np.ones((300, L), np.float32)  # a large run still runs (without shrinking) and is right
    np.testing.assert_allclose(runner.run({"signal": x})["features"], x @ tiny.W, rtol=1e-5)


class _FakeVM:
    """Stands in for a Relax VM: reports ``params`` for "main", or cannot describe it."""

    def __init__(self, params=None, fail=None):
        self.params, self.fail = params, fail

    def _get_function_arity(self, entry):
        if self.fail:
            raise self.fail
        return len(self.params)

    def _get_function_param_name(self, entry, i):
        return self.params[i]


class _OldVM:
    """A VM without the introspection methods."""


def _tvm_graph(vm):
    from pathlib import Path

    from edgeuq_runtime.executors.tvm import TvmGraph

    return TvmGraph(vm, None, None, Path("head.so"), {"inputs": ["features", "mask_0"], "outputs": ["logits"]})


def test_tvm_input_order_check_outcome_is_recorded_and_never_silently_skipped():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a checked graph warns about nothing
        g = _tvm_graph(_FakeVM(["features", "mask_0"]))
    assert g.input_order_check == "checked: the library's parameters are ['features', 'mask_0']"
    assert g.evidence == {"input_order": g.input_order_check, "library": "head.so (the graph's only library)"}
    with pytest.raises(BackendError, match="takes parameters"):
        _tvm_graph(_FakeVM(["mask_0", "features"]))
    with pytest.warns(RuntimeWarning, match=r"input order not checked: the library could not describe function "
                                            r"'main' \(KeyError"):
        g = _tvm_graph(_FakeVM(fail=KeyError("main")))
    assert g.library_inputs is None and g.input_order_check.startswith("not checked: ")
    assert "taken from the manifest's options unverified" in g.evidence["input_order"]
    with pytest.warns(RuntimeWarning, match="cannot report function parameter names"):
        g = _tvm_graph(_OldVM())
    assert g.input_order_check.startswith("not checked: this TVM's VirtualMachine")
