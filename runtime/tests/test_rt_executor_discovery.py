"""Executors are found by scanning the executors package and through the
``edgeuq_runtime.executors`` entry points (a real dist-info on sys.path, no mock); no hand list."""
import sys
from pathlib import Path

import numpy as np

import edgeuq_runtime.executors as executors
from edgeuq_runtime.executors import EXECUTORS, known_executors, load_graph


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
        sys.modules.pop("toy_exec_ep", None)
