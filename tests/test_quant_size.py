"""The size levers of a quantized bundle: the int8 conv stem as it lands in the exported graph
(operators, per-channel scales that would expose a wrong scale), the bit allocation over every
layer including the stem against brute-force enumeration, float biases for int8 layers, and short
tensor names (same computation, fewer bytes)."""
from __future__ import annotations

import itertools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper

from edgeuq.models import ModelConfig, SignalTransformer
from edgeuq.quantize import Budget, QuantSettings, apply_assignment, load_graphs, plan_for, prepare_model, sensitivity_for
from edgeuq.quantize.compact import compact_tensor_names, name_bytes

from edgeuq.training import save_checkpoint
from edgeuq_runtime.preprocess import normalize

TINY = ModelConfig(input_length=128, num_classes=3, patch=16, d_model=16, heads=2, depth=1, ffn=16,
                   stochastic_blocks=(), stochastic_head=True)
STEM = ("embed.c1", "embed.c2", "embed.c3")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("qsize")
    torch.manual_seed(0)
    model = SignalTransformer(TINY).eval()
    ck = save_checkpoint(model, root / "ck", ("a", "b", "c"), 1000.0)
    rng = np.random.default_rng(0)
    t = np.arange(128) / 128.0
    x = (np.sin(2 * np.pi * rng.uniform(2, 20, (64, 1)) * t) + 0.3 * rng.standard_normal((64, 128))).astype(np.float32)
    prep = prepare_model(ck, x, root / "work", progress=False, samples=4, settings=QuantSettings(calibration_windows=32))
    return {"root": root, "x": x, "prep": prep}


def _trunk_features(path, x) -> np.ndarray:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: normalize(x, "zscore")})[0]


def _stem_only(prep, root, name, settings=QuantSettings()):
    return apply_assignment(prep.art, prep.layers, {n: "int8" for n in STEM}, prep.calib, root / name, settings)


def test_the_stem_is_int8_per_channel_in_the_exported_graph(tiny):
    prep = tiny["prep"]
    art = _stem_only(prep, tiny["root"], "stem")
    g = load_graphs(art)["trunk"].graph
    fp32 = {t.name: numpy_helper.to_array(t) for t in load_graphs(prep.art)["trunk"].graph.initializer}
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    for layer in STEM:
        conv = next(n for n in g.node if n.name == "/" + layer.replace(".", "/") + "/Conv")
        assert conv.op_type == "Conv"
        dq = producer[conv.input[1]]  # the weight comes out of a DequantizeLinear of an int8 tensor
        assert dq.op_type == "DequantizeLinear"
        q = inits[dq.input[0]]
        w = fp32[f"model.{layer}.weight"]
        assert q.data_type == onnx.TensorProto.INT8 and tuple(q.dims) == w.shape
        scale = numpy_helper.to_array(inits[dq.input[1]])
        assert scale.shape == (w.shape[0],)  # per output channel
        assert {a.name: helper.get_attribute_value(a) for a in dq.attribute}.get("axis", 1) == 0
        # the input activation is quantized too (QDQ on the Conv's input)
        assert producer[conv.input[0]].op_type == "DequantizeLinear"
        # float bias (QuantSettings.quantize_bias=False): a float32 initializer straight into the Conv
        assert inits[conv.input[2]].data_type == onnx.TensorProto.FLOAT
        # no float copy of the weight is left in the file
        assert not any(t.data_type == onnx.TensorProto.FLOAT and tuple(t.dims) == w.shape for t in g.initializer)


def test_int8_weights_are_the_rounded_weights_at_the_right_scale(tiny):
    """Independent reference: per output channel, the dequantized weight is within half a step of
    fp32, and the step uses the 7-bit range (reduce_range) -- a scale 1.5x too large or too small
    fails one of the two."""
    prep = tiny["prep"]
    art = _stem_only(prep, tiny["root"], "stem-w")
    g = load_graphs(art)["trunk"].graph
    fp32 = {t.name: numpy_helper.to_array(t) for t in load_graphs(prep.art)["trunk"].graph.initializer}
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    for layer in STEM:
        conv = next(n for n in g.node if n.name == "/" + layer.replace(".", "/") + "/Conv")
        dq = producer[conv.input[1]]
        q, scale, zp = (inits[i] for i in dq.input)
        assert not np.any(zp)  # symmetric
        w = fp32[f"model.{layer}.weight"].astype(np.float64)
        s = scale.astype(np.float64).reshape(-1, 1, 1)
        deq = q.astype(np.float64) * s
        absmax = np.abs(w).reshape(len(w), -1).max(axis=1).reshape(-1, 1, 1)
        err = np.abs(deq - w)
        assert np.all(err <= 0.5 * s * (1 + 1e-6) + 1e-12), layer
        # 7-bit symmetric range: the largest weight maps to about +-63.5 steps
        ratio = (absmax / s).ravel()
        assert np.all((ratio >= 60) & (ratio <= 66)), (layer, ratio)


def test_int8_stem_stays_close_to_fp32_and_a_wrong_scale_does_not(tiny):
    prep, root, x = tiny["prep"], tiny["root"], tiny["x"][:16]
    ref = _trunk_features(prep.art.trunk_path, x)
    art = _stem_only(prep, root, "stem-run")
    got = _trunk_features(art.trunk_path, x)
    tol = 0.01 * np.abs(ref).max()
    err = np.abs(got - ref).max()
    assert err <= tol, (err, tol)
    # the same graph with one stem layer's weight scale off by 1.25x must fail the same check
    model = load_graphs(art)["trunk"]
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    conv = next(n for n in g.node if n.name == "/embed/c1/Conv")
    scale_name = producer[conv.input[1]].input[1]
    t = next(t for t in g.initializer if t.name == scale_name)
    t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * np.float32(1.25), scale_name))
    bad_path = root / "stem-bad.onnx"
    onnx.save(model, str(bad_path))
    bad = np.abs(_trunk_features(bad_path, x) - ref).max()
    print(f"int8 stem: max error {err:.4g}, with a 1.25x scale {bad:.4g}, bound {tol:.4g}")
    assert not bad <= tol, (bad, tol)


def test_the_knapsack_covers_every_layer_including_the_stem_and_matches_brute_force(tiny):
    prep = tiny["prep"]
    names = [lay.name for lay in prep.layers]
    assert names[:3] == list(STEM) and len(names) == 9
    for layer in STEM:
        b = prep.costs.bytes[layer]
        assert b["int8"] < b["fp16"] < b["fp32"]
    sens = sensitivity_for("range", prep)
    options = [lay.options for lay in prep.layers]
    # every assignment (3^3 stem x 4^6 others = 110,592), vectorised
    loss = np.zeros([len(o) for o in options])
    size = np.zeros_like(loss)
    for i, (lay, opts) in enumerate(zip(prep.layers, options)):
        shape = [1] * len(options)
        shape[i] = len(opts)
        loss = loss + np.array([sens[lay.name][p] for p in opts]).reshape(shape)
        size = size + np.array([prep.costs.bytes[lay.name][p] for p in opts], float).reshape(shape)
    size = size + prep.costs.fixed_bytes
    fp32 = prep.costs.total_bytes({})
    smallest = float(size.min())
    for frac in (None, 0.3, 0.45, 0.6):
        budget = smallest if frac is None else max(frac * fp32, smallest)
        plan = plan_for(prep, sens, Budget("bytes", budget), "range")
        feasible = size <= budget
        best = float(loss[feasible].min())
        assert plan.total_bytes <= budget
        assert abs(plan.predicted_loss - best) <= 1e-9 * max(1.0, best), (frac, plan.predicted_loss, best)
        if frac is None:  # the smallest model: the stem is int8 like everything else that can be
            assignment = plan.assignment()
            assert all(assignment[s] == "int8" for s in STEM), assignment
    # and the brute force itself agrees that no assignment with a float stem reaches the smallest size
    stem_int8 = [lay.options.index("int8") for lay in prep.layers[:3]]
    idx = np.unravel_index(np.argmin(size), size.shape)
    assert list(idx[:3]) == stem_int8


def test_compacted_names_compute_the_same_with_fewer_bytes(tiny):
    prep, root, x = tiny["prep"], tiny["root"], tiny["x"][:8]
    assign = {lay.name: ("int8" if lay.op_type == "Conv" else "int4") for lay in prep.layers}
    long = apply_assignment(prep.art, prep.layers, assign, prep.calib, root / "long",
                            QuantSettings(compact_names=False))
    short = apply_assignment(prep.art, prep.layers, assign, prep.calib, root / "short")
    gl, gs = load_graphs(long), load_graphs(short)
    for k in ("trunk", "head"):
        a, b = gl[k].graph, gs[k].graph
        assert [n.name for n in a.node] == [n.name for n in b.node]
        assert [n.op_type for n in a.node] == [n.op_type for n in b.node]
        assert [v.name for v in a.input] == [v.name for v in b.input]
        assert [v.name for v in a.output] == [v.name for v in b.output]
        assert name_bytes(gs[k]) < 0.5 * name_bytes(gl[k])
        assert gs[k].ByteSize() < gl[k].ByteSize()
    f_long, f_short = _trunk_features(long.trunk_path, x), _trunk_features(short.trunk_path, x)
    assert np.abs(f_long - f_short).max() <= 1e-5 * np.abs(f_long).max()


def test_compact_tensor_names_keeps_the_interface_and_avoids_collisions():
    w = numpy_helper.from_array(np.eye(2, dtype=np.float32), "a.long.weight.name")
    nodes = [helper.make_node("MatMul", ["t0", "a.long.weight.name"], ["/x/MatMul_output_0"], name="/x/MatMul"),
             helper.make_node("Relu", ["/x/MatMul_output_0"], ["y"], name="/x/Relu"),
             helper.make_node("Relu", ["/x/MatMul_output_0"], ["t1"], name="/x/Relu2")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("t0", onnx.TensorProto.FLOAT, [1, 2])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2]),
                           helper.make_tensor_value_info("t1", onnx.TensorProto.FLOAT, [1, 2])], [w])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    before = name_bytes(model)
    mapping = compact_tensor_names(model)
    onnx.checker.check_model(model)
    assert set(mapping) == {"a.long.weight.name", "/x/MatMul_output_0"}
    assert not set(mapping.values()) & {"t0", "t1", "y"}
    assert len(set(mapping.values())) == 2 and name_bytes(model) < before
    assert [n.name for n in model.graph.node] == ["/x/MatMul", "/x/Relu", "/x/Relu2"]
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = sess.run(["y"], {"t0": np.array([[1.0, -2.0]], np.float32)})[0]
    assert np.abs(out - np.array([[1.0, 0.0]])).max() <= 1e-6


def test_quant_settings_refuse_non_boolean_switches():
    with pytest.raises(ValueError, match="compact_names"):
        QuantSettings(compact_names="yes")
    with pytest.raises(ValueError, match="quantize_bias"):
        QuantSettings(quantize_bias=1)


def _compress_bench():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "compress_frontier.py"
    spec = importlib.util.spec_from_file_location("compress_frontier_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_bench_bytes_per_layer_add_up_and_the_size_goal_is_met(tiny):
    """bench/compress_frontier.py's bytes table: the parts add up to the files' bytes, each layer's
    bytes are the costs the knapsack was given (measured separately, per precision), and the
    whole-budget search lands at or under its byte goal."""
    bench = _compress_bench()
    prep, root = tiny["prep"], tiny["root"]
    names = [lay.name for lay in prep.layers]
    fp32_total = bench._graph_bytes(prep.art.directory)
    target = 0.6 * fp32_total
    qroot, plan, layer_names, builds = bench.quantized_to_size(prep.checkpoint, tiny["x"][:32], root / "to-size",
                                                                 target, 4, "range")
    assert layer_names == names and 1 <= builds <= 6
    b = bench.bytes_by_layer(qroot, names)
    assert b["total"] == bench._graph_bytes(qroot) <= target
    assert sum(b["layers"].values()) + b["other_initializers"] + b["graph_structure"] == b["total"]
    assignment = plan.assignment()
    for n in names:
        assert b["layers"][n] == prep.costs.bytes[n][assignment[n]], n
    assert 0 < b["tensor_name_bytes"] < b["graph_structure"]
    assert bench.compacted_teacher_bytes(prep.art.directory) < fp32_total
