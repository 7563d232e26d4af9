"""Quantized graphs on ONNX Runtime: what each precision does to the graph, that the
predicted model bytes are the real ones, and that the bundle runs unchanged in the
device runtime with the same uncertainty outputs."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edgeuq.export import run_onnx
from edgeuq.fisher import FisherConfig, estimate_fisher
from edgeuq.models import ModelConfig, SignalTransformer
from edgeuq.quantize import (
    HLS4ML_FILE, PLAN_FILE, Budget, BudgetError, QuantSettings, apply_assignment, build_quantized, load_graphs,
    load_quant_plan, plan_for, prepare_model, sensitivity_for, uniform_assignment,
)
from edgeuq.quantize.layers import attribute_initializers, tensor_bytes
from edgeuq.quantize.onnx_apply import pack_int4
from edgeuq.quantize.precision import weight_error, weight_noise
from edgeuq.training import save_checkpoint
from edgeuq_runtime import UncertaintyRuntime

TINY = ModelConfig(input_length=128, num_classes=3, patch=16, d_model=16, heads=2, depth=2, ffn=16,
                   stochastic_blocks=(1,))
EXPECTED_LAYERS = ["embed.c1", "embed.c2", "embed.c3"] + [
    f"blocks.{i}.{n}" for i in range(2) for n in ("attn.qkv", "attn.proj", "fc1", "fc2")] + ["head.fc1", "head.fc2"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("quant")
    torch.manual_seed(0)
    model = SignalTransformer(TINY).eval()
    ck = save_checkpoint(model, root / "ck", ("a", "b", "c"), 1000.0)
    x = np.random.default_rng(0).standard_normal((48, 128)).astype(np.float32)
    report = estimate_fisher(model, x, None, FisherConfig(progress=False, noise_samples=2),
                             meta={"checkpoint_sha256": ck.sha256})
    prep = prepare_model(ck, x, root / "work", latency=True, samples=4, progress=False,
                         settings=QuantSettings(calibration_windows=32))
    return {"root": root, "model": model, "ck": ck, "x": x, "report": report, "prep": prep}


def initializer_bytes(art) -> int:
    total = 0
    for m in load_graphs(art).values():
        total += sum(tensor_bytes(t) for t in m.graph.initializer)
        total += sum(tensor_bytes(a.t) for n in m.graph.node if n.op_type == "Constant" for a in n.attribute
                     if a.type == onnx.AttributeProto.TENSOR)
    return total


def mixed(prep, seed: int):
    rng = np.random.default_rng(seed)
    return {lay.name: str(rng.choice(lay.options)) for lay in prep.layers}


def test_layers_match_the_fisher_report(tiny):
    prep = tiny["prep"]
    assert [lay.name for lay in prep.layers] == EXPECTED_LAYERS == list(tiny["report"].layer_names())
    for lay in prep.layers:
        assert ("int4" in lay.options) == (lay.op_type != "Conv")
        assert lay.graph == ("head" if lay.name.startswith(("blocks.1", "head")) else "trunk")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_predicted_bytes_are_the_serialized_bytes(tiny, seed):
    prep = tiny["prep"]
    assign = mixed(prep, seed)
    art = apply_assignment(prep.art, prep.layers, assign, prep.calib, tiny["root"] / f"mixed{seed}")
    assert prep.costs.total_bytes(assign) == initializer_bytes(art)
    per = {}
    for g, m in load_graphs(art).items():
        p, _ = attribute_initializers(m, [lay.name for lay in prep.layers])
        per.update({lay.name: p[lay.name] for lay in prep.layers if lay.graph == g})
    for lay in prep.layers:
        assert per[lay.name] == prep.costs.bytes[lay.name][assign[lay.name]], lay.name
    fp32 = prep.costs.total_bytes({})
    assert fp32 == initializer_bytes(prep.art)
    # fewer bits, fewer bytes (scales and zero points included). int8 biases stay float32 by default
    # (QuantSettings.quantize_bias), so int8 is smaller than fp16 even on the tiny head.fc2 (48
    # weights), where an int32 QDQ bias with its own scale and zero point made int8 the larger one;
    # int4's per-block scales only pay off on larger layers
    for lay in prep.layers:
        b = prep.costs.bytes[lay.name]
        assert b["fp32"] > b["fp16"] > b["int8"], lay.name
        if lay.numel >= 256:
            assert "int4" not in b or b["int8"] > b["int4"], lay.name


def test_each_precision_shows_up_as_the_right_operators(tiny):
    prep = tiny["prep"]
    assign = {"embed.c1": "int8", "embed.c2": "fp16", "blocks.0.fc1": "int4", "blocks.1.attn.qkv": "int8",
              "head.fc1": "int4", "head.fc2": "fp16"}
    # (uncompacted names, to find the quantizer's tensors by name; test_quant_size checks compacted graphs)
    art = apply_assignment(prep.art, prep.layers, assign, prep.calib, tiny["root"] / "ops",
                           QuantSettings(compact_names=False))
    graphs = load_graphs(art)
    for m in graphs.values():  # the manifest contract: float32 in and out, same names
        io = list(m.graph.input) + list(m.graph.output)
        assert all(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for v in io)
    orig = load_graphs(prep.art)
    for g in graphs:
        assert [i.name for i in graphs[g].graph.input] == [i.name for i in orig[g].graph.input]
    nodes = {g: {n.name: n for n in m.graph.node} for g, m in graphs.items()}
    inits = {g: {t.name: t for t in m.graph.initializer} for g, m in graphs.items()}
    assert nodes["trunk"]["/blocks.0/fc1/MatMul_Q4"].op_type == "MatMulNBits"
    assert nodes["head"]["/head/fc1/MatMul_Q4"].op_type == "MatMulNBits"      # Gemm rewritten, then int4
    c1 = nodes["trunk"]["/embed/c1/Conv"]
    assert any(n.op_type == "DequantizeLinear" and n.output[0] == c1.input[1] for n in nodes["trunk"].values())
    assert inits["trunk"]["model.embed.c1.weight_quantized"].data_type == onnx.TensorProto.INT8
    assert inits["trunk"]["model.embed.c2.weight_fp16"].data_type == onnx.TensorProto.FLOAT16
    assert nodes["head"]["/head/fc2/Gemm_CastIn"].op_type == "Cast"
    assert not any(n.op_type == "QuantizeLinear" and "Conv_output" in n.name for n in nodes["trunk"].values())
    for g in graphs:  # ONNX Runtime loads and runs them
        ort.InferenceSession(str(getattr(art, f"{g}_path")), providers=["CPUExecutionProvider"])


def test_bad_assignments_are_refused(tiny):
    prep = tiny["prep"]
    with pytest.raises(ValueError, match="cannot be int4"):
        apply_assignment(prep.art, prep.layers, {"embed.c1": "int4"}, prep.calib, tiny["root"] / "bad")
    with pytest.raises(ValueError, match="unknown layers"):
        apply_assignment(prep.art, prep.layers, {"nope": "int8"}, prep.calib, tiny["root"] / "bad")


def test_quantized_bundle_runs_in_the_runtime_with_the_same_outputs(tiny):
    prep, root = tiny["prep"], tiny["root"]
    sens = sensitivity_for("fisher", prep, tiny["report"])
    budget = Budget("bytes", 0.5 * prep.costs.total_bytes({}))
    plan = plan_for(prep, sens, budget, "fisher", tiny["report"])
    res = build_quantized(prep, plan, root / "bundle", samples=4)
    assert plan.total_bytes <= budget.value
    files = set(res.bundle.manifest.files)
    assert {PLAN_FILE, HLS4ML_FILE, "trunk.onnx", "head.onnx"} <= files
    assert load_quant_plan(root / "bundle" / PLAN_FILE).assignment() == plan.assignment()
    assert json.loads((root / "bundle" / HLS4ML_FILE).read_text()) == dict(res.hls4ml_precision)
    ref = build_quantized(prep, plan_for(prep, sens, Budget("bytes", 1e9), "fisher", tiny["report"]),
                          root / "bundle_fp32", samples=4)
    x = tiny["x"][:6]
    r0 = UncertaintyRuntime(ref.bundle.root, seed=0).predict(x, samples=4, seed=3)
    r1 = UncertaintyRuntime(res.bundle.root, seed=0).predict(x, samples=4, seed=3)
    for name in ("probs", "prediction", "confidence", "total", "aleatoric", "epistemic", "samples"):
        assert getattr(r0, name).shape == getattr(r1, name).shape, name
    assert np.all(np.isfinite(r1.epistemic)) and np.all(r1.epistemic >= -1e-6)
    # "the same outputs": the runtime on the quantized bundle must give exactly what its quantized
    # graphs give when run directly (ONNX Runtime, dropout masks at their mean 1, z-score in float64)
    xn = (x - x.mean(1, keepdims=True, dtype=np.float64)) / x.std(1, keepdims=True, dtype=np.float64)
    for bundle_res in (res, ref):
        art = bundle_res.onnx
        logits = run_onnx(art, xn.astype(np.float32), {s.name: np.ones((6, *s.shape), np.float32)
                                                       for s in art.noise}, samples=1)
        want = np.exp(logits - logits.max(1, keepdims=True))
        want /= want.sum(1, keepdims=True)
        got = UncertaintyRuntime(bundle_res.bundle.root).deterministic(x).probs
        assert np.abs(got - want).max() < 1e-5
    # and the all-fp32 plan reproduces the PyTorch model (dropout off) -- so the quantized bundle
    # differs from the float model only by quantization, which stays small on this model
    with torch.no_grad():
        tprobs = torch.softmax(tiny["model"](torch.from_numpy(xn.astype(np.float32))), -1).numpy()
    assert np.abs(UncertaintyRuntime(ref.bundle.root).deterministic(x).probs - tprobs).max() < 1e-5
    assert np.abs(r0.probs - r1.probs).max() < 0.05


@pytest.mark.isa_kernels
def test_uniform_int8_and_fp16_stay_close_to_fp32(tiny):
    prep, root = tiny["prep"], tiny["root"]
    x = tiny["x"][:8]
    outs = {}
    for p in ("fp32", "fp16", "int8", "int4"):
        art = prep.art if p == "fp32" else apply_assignment(prep.art, prep.layers, uniform_assignment(prep.layers, p),
                                                            prep.calib, root / f"uniform-{p}")
        from edgeuq.export import run_onnx
        from edgeuq_runtime.noise import sample_noise

        noise = sample_noise(prep.art.noise, 8 * 2, np.random.default_rng(0))
        from edgeuq_runtime.preprocess import normalize

        outs[p] = run_onnx(art, normalize(x, "zscore"), noise, samples=2)
    scale = np.abs(outs["fp32"]).max()
    print({p: float(np.abs(outs[p] - outs["fp32"]).max() / scale) for p in outs})  # relative errors (pytest -s)
    # int8 keeps working on CPUs without VNNI (AVX2): weights in the 7-bit range (reduce_range) avoid the
    # int16 saturation of the u8 x s8 kernels there; CI runs this test under an AVX2 CPU model (qemu)
    assert np.abs(outs["fp16"] - outs["fp32"]).max() < 1e-2 * scale
    assert np.abs(outs["int8"] - outs["fp32"]).max() < 0.1 * scale
    assert np.abs(outs["int4"] - outs["fp32"]).max() < 0.5 * scale
    assert np.abs(outs["int8"] - outs["fp32"]).max() > np.abs(outs["fp16"] - outs["fp32"]).max()


def test_latency_costs_are_profiled_and_cached(tiny):
    prep = tiny["prep"]
    costs = prep.costs
    assert costs.has_latency and costs.samples == 4
    for lay in prep.layers:  # every option of every layer timed, each a finite kernel time
        assert set(costs.latency_ms[lay.name]) == set(lay.options)
        assert all(np.isfinite(v) and v >= 0 for v in costs.latency_ms[lay.name].values())
    # attribution found the layers' kernels: most fp32 layers own measurable time (ORT's profiler
    # counts whole microseconds, so a tiny kernel may read 0), and the total is positive
    timed = [n for n in costs.latency_ms if costs.latency_ms[n]["fp32"] > 0]
    assert len(timed) >= len(costs.latency_ms) // 2 and np.isfinite(costs.fixed_ms) and costs.fixed_ms >= 0
    # the plan's latency model is the sum of these: the all-fp32 prediction equals the parts
    assert costs.total_ms({}) == pytest.approx(costs.fixed_ms + sum(v["fp32"] for v in costs.latency_ms.values()))
    cached = list((tiny["root"] / "work" / "cache").glob("layer-costs-*.json"))
    assert len(cached) == 1
    again = prepare_model(tiny["ck"], tiny["x"], tiny["root"] / "work", latency=True, samples=4, progress=False,
                          settings=QuantSettings(calibration_windows=32))
    assert again.costs == costs
    plan = plan_for(prep, sensitivity_for("fisher", prep, tiny["report"]),
                    Budget("ms", 10 * costs.total_ms({})), "fisher", tiny["report"])
    assert plan.predicted_ms <= 10 * costs.total_ms({}) and plan.predicted_loss == 0.0
    with pytest.raises(BudgetError, match="smallest achievable"):
        plan_for(prep, sensitivity_for("fisher", prep, tiny["report"]), Budget("ms", 1e-6), "fisher")


def test_int4_packing_runs_on_onnx_runtime_as_the_reference_dequantization():
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    k, n = 40, 7  # K not a multiple of the block: padded
    w = rng.standard_normal((k, n)).astype(np.float32)
    packed, scales, deq = pack_int4(w, 32)
    node = helper.make_node("MatMulNBits", ["x", "B", "S"], ["y"], domain="com.microsoft", K=k, N=n, bits=4,
                            block_size=32)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [3, k])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [3, n])],
                              [numpy_helper.from_array(packed, "B"), numpy_helper.from_array(scales, "S")])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    x = rng.standard_normal((3, k)).astype(np.float32)
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(y, x @ deq, rtol=1e-4, atol=1e-4)
    assert np.abs(deq - w).max() <= np.abs(w).max() / 8 / 2 * 1.001 + 1e-6  # half a step at worst ...
    # ... and the realised error is what precision.weight_error simulates
    assert np.mean((deq - w) ** 2) == pytest.approx(weight_error(w.T, "int4", 32), rel=1e-5)


@pytest.mark.parametrize("precision", ["fp16", "int8", "int4"])
def test_range_noise_model_predicts_the_realised_error(precision):
    w = np.random.default_rng(1).standard_normal((64, 96))
    ratio = weight_error(w, precision) / weight_noise(w, precision)
    assert 0.7 < ratio < 1.3, ratio
