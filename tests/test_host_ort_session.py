"""Host-side ONNX Runtime sessions keep to this process's thread share (torch's setting, which
`edgeuq search --workers N` gives each worker), so their pools do not spin on another worker's core."""
from __future__ import annotations

import numpy as np
import pytest

from require_extras import require_extra  # noqa: E402

ort = require_extra("onnxruntime")
onnx = require_extra("onnx")


def _relu_model(path):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_host_sessions_take_the_workers_thread_share(tmp_path):
    import torch

    from edgeuq.hostcpu import host_ort_session, host_threads

    path = _relu_model(tmp_path / "relu.onnx")
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert host_threads() == 1
        sess = host_ort_session(path)
        assert sess.get_session_options().intra_op_num_threads == 1
        assert host_ort_session(path, threads=0).get_session_options().intra_op_num_threads == 0  # ORT's default
        x = np.array([[-1.0, 0.5, 2.0], [3.0, -4.0, 0.0]], np.float32)
        assert np.allclose(sess.run(None, {"x": x})[0], np.maximum(x, 0), rtol=0, atol=1e-7)
    finally:
        torch.set_num_threads(saved)


def _matmul_model(path, w):
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, w.shape[0]])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, w.shape[1]])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g", [x], [y],
                              initializer=[numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_the_int8_calibrator_session_takes_the_workers_thread_share(tmp_path, monkeypatch):
    """ORT's static-quantization calibrator builds its own session; inside edgeuq's int8 pass it
    keeps to the worker's threads (as the other host sessions), and the calibrated model is right."""
    import torch
    from onnxruntime.quantization.calibrate import CalibraterBase

    from edgeuq.quantize.onnx_apply import _int8

    rng = np.random.default_rng(0)
    w = rng.normal(size=(8, 6)).astype(np.float32)
    src = _matmul_model(tmp_path / "mm.onnx", w)
    feeds = [{"x": rng.normal(size=(4, 8)).astype(np.float32)} for _ in range(4)]
    made = []  # (model path, intra-op threads) of every ORT session built meanwhile

    class Spy(ort.InferenceSession):
        def __init__(self, path, sess_options=None, *args, **kwargs):
            made.append((str(path), None if sess_options is None else sess_options.intra_op_num_threads))
            super().__init__(path, sess_options, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", Spy)
    original = CalibraterBase.__dict__["create_inference_session"]
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        _int8(src, tmp_path / "mm.int8.onnx", ["mm"], feeds)
    finally:
        torch.set_num_threads(saved)
    calib = [t for p, t in made if p.endswith("augmented_model.onnx")]
    assert calib == [1], made  # ORT's own default would be 0 (a pool of every core)
    assert CalibraterBase.__dict__["create_inference_session"] is original  # restored after the pass
    q = ort.InferenceSession(str(tmp_path / "mm.int8.onnx"), providers=["CPUExecutionProvider"])
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(tmp_path / "mm.int8.onnx")).graph.node)
    x = feeds[0]["x"]
    ref = x @ w
    err = float(np.max(np.abs(q.run(None, {"x": x})[0] - ref)))
    assert err <= 0.05 * float(np.max(np.abs(ref))), err  # calibrated on these inputs: int8 stays close
