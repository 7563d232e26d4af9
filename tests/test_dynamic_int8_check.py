"""The lowerings' numeric check of a graph with dynamically quantised activations
(edgeuq.lower.tvm.numerics.judge; the int8 text trunk of edgeuq.quantize.dynamic): the float
tolerance + the rounding-flip allowance that ONNX Runtime measures on the graph itself. The
"compiled libraries" here are ONNX Runtime runs of edited graphs (a wrong int8 weight; activations
moved by float32-sized errors before rounding), compared element-wise with the unedited graph; the
old rule (float tolerance + max |int8 - fp32|) is computed here from its definition."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VOCAB, TOKENS = 40, 12


class _Trunk(torch.nn.Module):
    """embedding -> FFN with residual and LayerNorm -> Linear -> token mean: the int8 trunk's MatMuls in small."""

    def __init__(self, d: int = 32, f: int = 64) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(VOCAB, d)
        self.l1, self.l2, self.l3 = torch.nn.Linear(d, f), torch.nn.Linear(f, d), torch.nn.Linear(d, d)
        self.ln = torch.nn.LayerNorm(d)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids)
        h = self.ln(h + self.l2(torch.nn.functional.gelu(self.l1(h))))
        return self.l3(h).mean(1)


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    from edgeuq.quantize.dynamic import dynamic_int8_graph

    d = tmp_path_factory.mktemp("dyn-int8")
    torch.manual_seed(0)
    model = _Trunk().eval()
    ids = torch.randint(0, VOCAB, (3, TOKENS))
    torch.onnx.export(model, (ids,), str(d / "fp32.onnx"), input_names=["tokens"], output_names=["features"],
                      dynamic_axes={"tokens": {0: "b"}, "features": {0: "b"}}, opset_version=17, dynamo=False)
    dynamic_int8_graph(d / "fp32.onnx", d / "int8.onnx")
    feeds = {"tokens": np.random.default_rng(0).integers(0, VOCAB, (3, TOKENS)).astype(np.int64)}
    return d, feeds


def _run(model_or_path, feeds) -> dict:
    import onnxruntime as ort

    src = model_or_path.SerializeToString() if not isinstance(model_or_path, Path) else str(model_or_path)
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    return {"features": sess.run(["features"], feeds)[0]}


def _old_tolerance(fp32: dict, int8: dict) -> float:
    """The rule this check replaced: 1e-4 + 1e-4 max |fp32| + max |int8 - fp32| (ONNX Runtime)."""
    f, q = fp32["features"].astype(np.float64), int8["features"].astype(np.float64)
    return 1e-4 + 1e-4 * float(np.max(np.abs(f))) + float(np.max(np.abs(q - f)))


def test_a_wrong_int8_weight_that_the_old_tolerance_accepted_is_rejected(graphs):
    import onnx
    from onnx import numpy_helper

    from edgeuq.lower.tvm.numerics import judge

    d, feeds = graphs
    path = d / "int8.onnx"
    ref, fp32 = _run(path, feeds), _run(d / "fp32.onnx", feeds)
    model = onnx.load(str(path))
    # the first MatMul's int8 weights (the FFN's input layer): one entry off by 4 quantisation units, as a
    # lowering that misreads one weight would compute
    init = next(t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2)
    w = numpy_helper.to_array(init).copy()
    w.reshape(-1)[5] = np.int8(np.clip(int(w.reshape(-1)[5]) + (4 if w.reshape(-1)[5] < 0 else -4), -127, 127))
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    got = _run(model, feeds)
    err = float(np.max(np.abs(got["features"] - ref["features"])))
    old = _old_tolerance(fp32, ref)
    assert err <= old, (err, old)                                # the old rule let it through
    j = judge(path, feeds, got, ref)
    assert not j.ok and j.max_error == pytest.approx(err) and j.tolerance < err
    assert j.detail["flip_allowance"] >= 0 and j.tolerance == pytest.approx(
        j.detail["float_tolerance"] + j.detail["flip_allowance"])


def test_activations_moved_by_float32_sized_errors_before_rounding_are_accepted(graphs):
    """A correct library computes the activations with other float32 roundings (~2^-20 relative for
    these sums): its uint8 roundings differ from ONNX Runtime's where an activation sits on a boundary."""
    import onnx

    from edgeuq.lower.tvm.numerics import FLIP_NOISE, _with_activation_noise, judge

    d, feeds = graphs
    path = d / "int8.onnx"
    ref = _run(path, feeds)
    for seed in (101, 102, 103):
        moved = onnx.load_from_string(_with_activation_noise(onnx.load(str(path)), FLIP_NOISE / 16, seed))
        got = _run(moved, feeds)
        err = float(np.max(np.abs(got["features"] - ref["features"])))
        assert err > 0.0                                         # the library does differ
        j = judge(path, feeds, got, ref)
        assert j.ok, dict(j.detail)
        assert j.max_error == pytest.approx(err)
    assert judge(path, feeds, ref, ref).ok


def test_a_graph_without_dynamic_quantisation_gets_the_float_tolerance(graphs):
    from edgeuq.lower.tvm.numerics import flip_allowance, judge, tolerance

    d, feeds = graphs
    path = d / "fp32.onnx"
    ref = _run(path, feeds)
    assert flip_allowance(path, feeds, ref) is None
    tol = tolerance(ref, None)
    assert tol == pytest.approx(1e-4 + 1e-4 * float(np.max(np.abs(ref["features"]))))
    near = {"features": ref["features"] + np.float32(0.5 * tol)}
    far = {"features": ref["features"] + np.float32(2.0 * tol)}
    assert judge(path, feeds, near, ref).ok and not judge(path, feeds, far, ref).ok
    nan = {"features": np.where(np.arange(ref["features"].size).reshape(ref["features"].shape) == 0, np.nan,
                                ref["features"]).astype(np.float32)}
    assert not judge(path, feeds, nan, ref).ok
    assert not judge(d / "int8.onnx", feeds, nan, _run(d / "int8.onnx", feeds)).ok
