"""Host-side ONNX Runtime sessions keep to this process's thread share (torch's setting, which
`edgeuq search --workers N` gives each worker), so their pools do not spin on another worker's core."""
from __future__ import annotations

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


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
