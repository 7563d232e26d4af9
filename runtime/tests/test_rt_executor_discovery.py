"""Executors are found by scanning the executors package and through the
``edgeuq_runtime.executors`` entry points (a real dist-info on sys.path, no mock); no hand list."""
import sys
from pathlib import Path

import numpy as np
import pytest

import edgeuq_runtime.executors as executors
from edgeuq_runtime.errors import BackendError
from edgeuq_runtime.executors import (COMPILED_LIBRARY, EXECUTORS, executor_capabilities, known_executors,
                                      load_graph, register_executor)


def test_every_public_module_of_the_package_is_a_registered_executor():
    pkg = Path(executors.__file__).parent
    modules = {p.stem for p in pkg.glob("*.py") if not p.stem.startswith("_")}
    assert modules == {"onnxruntime", "pynq", "tvm"}
    assert modules <= set(EXECUTORS)


def test_a_third_party_executor_arrives_through_an_entry_point(tmp_path, monkeypatch):
    (tmp_path / "toy_exec_ep.py").write_text(
        "import numpy as np\n"
        "class Echo:\n"
        "    input_names = ('x',)\n    output_names = ('y',)\n"
        "    def run(self, feeds):\n        return {'y': np.asarray(feeds['x']) * 2}\n"
        "def load_echo(path, threads, options):\n    return Echo()\n")
    dist = tmp_path / "toy_exec_ep-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-exec-ep\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[edgeuq_runtime.executors]\necho_ep = toy_exec_ep:load_echo\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(executors, "_ENTRY_POINTS_LOADED", False)
    try:
        assert "echo_ep" not in EXECUTORS
        g = load_graph("echo_ep", tmp_path / "graph.bin")            # the first miss loads the entry points
        out = g.run({"x": np.arange(3.0)})["y"]
        assert np.array_equal(out, np.arange(3.0) * 2)
        assert "echo_ep" in known_executors()
    finally:
        EXECUTORS.pop("echo_ep", None)
        executors.EXECUTOR_CAPABILITIES.pop("echo_ep", None)
        sys.modules.pop("toy_exec_ep", None)


def test_executors_declare_capabilities_instead_of_callers_naming_them():
    # the TVM executor loads compiled libraries (shape buckets, kernel table); the others declare nothing
    assert COMPILED_LIBRARY in executor_capabilities("tvm")
    assert executor_capabilities("onnxruntime") == frozenset() and executor_capabilities("pynq") == frozenset()
    try:
        register_executor("toy_caps", capabilities=("shape_buckets", COMPILED_LIBRARY))(lambda p, t, o: None)
        assert executor_capabilities("toy_caps") == {"shape_buckets", COMPILED_LIBRARY}
        register_executor("toy_caps")(lambda p, t, o: None)          # re-registered without: none left
        assert executor_capabilities("toy_caps") == frozenset()
    finally:
        EXECUTORS.pop("toy_caps", None)
        executors.EXECUTOR_CAPABILITIES.pop("toy_caps", None)
    with pytest.raises(BackendError, match="unknown backend 'no_such_executor'"):
        executor_capabilities("no_such_executor")
    with pytest.raises(ValueError, match="capabilities must be a sequence"):
        register_executor("toy_bad", capabilities="compiled_library")
