"""The ``tvm`` executor: a TVM-compiled bundle runs through UncertaintyRuntime unchanged and
matches the ONNX Runtime bundle given the same seed (dynamic and fixed batch)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import numpy as np
import pytest

from edgeuq_runtime import BackendError, GraphSpec, UncertaintyRuntime, write_bundle
from edgeuq_runtime.executors import EXECUTORS, load_graph
from rt_helpers import C, F, L, make_head, make_manifest, make_trunk

tvm = pytest.importorskip("tvm")

IN = {"trunk": {"signal": (L,)}, "head": {"features": (F,), "mask_0": (F,)}}
OUT = {"trunk": ["features"], "head": ["logits"]}


def _compile(onnx_path: Path, role: str, batch: Optional[int], out: Path) -> dict:
    """Compile one ONNX graph with TVM (x86 host); returns the executor options."""
    import onnx
    from tvm.relax.frontend.onnx import from_onnx

    shapes = None if batch is None else {n: [batch, *s] for n, s in IN[role].items()}
    mod = from_onnx(onnx.load(str(onnx_path)), shape_dict=shapes, keep_params_in_input=False)
    ex = tvm.compile(mod, target=tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu"}))
    ex.export_library(str(out))
    return {"inputs": list(IN[role]), "outputs": OUT[role], "batch": batch,
            "shapes": {n: list(s) for n, s in IN[role].items()}}


@pytest.fixture(autouse=True, scope="module")
def _tvm_registered():
    """Register "tvm" for this module only; leave the registry as found afterwards."""
    from edgeuq_runtime.executors import tvm as tvm_executor

    saved = dict(EXECUTORS)
    tvm_executor.ensure_registered()
    yield tvm_executor
    EXECUTORS.clear()
    EXECUTORS.update(saved)


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    src = tmp_path_factory.mktemp("tvm-src")
    rng = np.random.default_rng(1234)
    W = rng.standard_normal((L, F)).astype(np.float32)
    V = rng.standard_normal((F, C)).astype(np.float32)
    onnx_files = {"trunk": make_trunk(src / "trunk.onnx", W), "head": make_head(src / "head.onnx", V)}
    libs = {}
    for batch in (None, 2):
        for role, path in onnx_files.items():
            lib = src / f"{role}-{batch}.so"
            libs[role, batch] = (lib, _compile(path, role, batch if role == "trunk" else (batch and 3 * batch), lib))
    return onnx_files, libs


def _tvm_bundle(tmp_path, graphs, batch):
    onnx_files, libs = graphs
    (tl, to), (hl, ho) = libs["trunk", batch], libs["head", batch]
    m = make_manifest(backend="tvm", trunk=GraphSpec("trunk.so", ("signal",), ("features",), options=to),
                      head=GraphSpec("head.so", ("features", "mask_0"), ("logits",), options=ho))
    return write_bundle(tmp_path / f"tvm-{batch}", m, {"trunk.so": tl, "head.so": hl}).root


def _ort_bundle(tmp_path, graphs):
    onnx_files, _ = graphs
    return write_bundle(tmp_path / "ort", make_manifest(), {"trunk.onnx": onnx_files["trunk"],
                                                           "head.onnx": onnx_files["head"]}).root


def test_registered(_tvm_registered):
    assert EXECUTORS["tvm"] is _tvm_registered.load_tvm


@pytest.mark.parametrize("batch", [None, 2], ids=["dynamic-batch", "fixed-batch"])
def test_runtime_matches_onnxruntime(tmp_path, graphs, batch, windows):
    """Same seed, same noise: TVM and ONNX Runtime bundles give the same uncertainty."""
    rt_tvm = UncertaintyRuntime(_tvm_bundle(tmp_path, graphs, batch), seed=3)
    rt_ort = UncertaintyRuntime(_ort_bundle(tmp_path, graphs), seed=3)
    for x, s in ((windows, 8), (windows[:1], 5), (windows[:3], 1)):   # odd sizes: chunks + padding
        a, b = rt_tvm.predict(x, samples=s), rt_ort.predict(x, samples=s)
        np.testing.assert_allclose(a.samples, b.samples, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a.epistemic, b.epistemic, rtol=1e-4, atol=1e-6)
        assert (a.prediction == b.prediction).all()
    np.testing.assert_allclose(rt_tvm.deterministic(windows).probs, rt_ort.deterministic(windows).probs,
                               rtol=1e-5, atol=1e-6)


def test_fixed_batch_chunks_and_pads(graphs):
    _, libs = graphs
    lib, opts = libs["trunk", 2]
    g = load_graph("tvm", lib, None, opts)
    assert g.batch == 2 and g.input_shapes["signal"] == (None, L)
    x = np.random.default_rng(0).standard_normal((5, L)).astype(np.float32)
    dyn = load_graph("tvm", libs["trunk", None][0], 1, libs["trunk", None][1])
    np.testing.assert_allclose(g.run({"signal": x})["features"], dyn.run({"signal": x})["features"], rtol=1e-6)
    assert g.run({"signal": x})["features"].shape == (5, F)


def test_wrong_library_is_caught(tmp_path, graphs, windows):
    """A head compiled from other weights must not agree: the comparison can fail."""
    onnx_files, libs = graphs
    other = make_head(tmp_path / "other.onnx", np.ones((F, C), np.float32))
    lib = tmp_path / "other.so"
    opts = _compile(other, "head", None, lib)
    feats = np.random.default_rng(0).standard_normal((4, F)).astype(np.float32)
    feeds = {"features": feats, "mask_0": np.ones((4, F), np.float32)}
    good = load_graph("tvm", libs["head", None][0], None, libs["head", None][1]).run(feeds)["logits"]
    bad = load_graph("tvm", lib, None, opts).run(feeds)["logits"]
    assert np.max(np.abs(good - bad)) > 1e-2


@pytest.mark.parametrize("options,match", [
    ({"outputs": ["features"]}, "needs option 'inputs'"),
    ({"inputs": ["signal"], "outputs": ["features"], "colour": 1}, "unknown graph options"),
    ({"inputs": ["signal"], "outputs": ["features"], "device": "tpu"}, "'device' must be"),
    ({"inputs": ["signal"], "outputs": ["features"], "batch": 0}, "'batch' must be"),
])
def test_bad_options(graphs, options, match):
    lib = graphs[1]["trunk", None][0]
    with pytest.raises(BackendError, match=match):
        load_graph("tvm", lib, None, options)


def test_missing_or_corrupt_library(tmp_path):
    bad = tmp_path / "bad.so"
    bad.write_bytes(b"not a library")
    with pytest.raises(BackendError, match="could not load graph 'bad.so'"):
        load_graph("tvm", bad, None, {"inputs": ["signal"], "outputs": ["features"]})


def test_cuda_graph_without_gpu_is_a_clear_error(graphs):
    if tvm.cuda(0).exist:
        pytest.skip("a CUDA device is present")
    lib, opts = graphs[1]["trunk", None]
    with pytest.raises(BackendError, match="no CUDA device|CUDA kernel binary"):
        load_graph("tvm", lib, None, {**opts, "device": "cuda"})


def test_missing_input_is_reported(graphs):
    lib, opts = graphs[1]["head", None]
    g = load_graph("tvm", lib, None, opts)
    with pytest.raises(BackendError, match="missing \\['mask_0'\\]"):
        g.run({"features": np.zeros((1, F), np.float32)})
    assert dataclasses.is_dataclass(GraphSpec)
