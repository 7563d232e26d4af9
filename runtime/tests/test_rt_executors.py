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
