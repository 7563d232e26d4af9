"""Allocation into a QuantPlan artifact, and the plan as hls4ml precisions (no ONNX needed)."""
from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from edgeuq.artifact import ArtifactError
from edgeuq.quantize import Budget, BudgetError, LayerCosts, QuantLayer, allocate, load_quant_plan
from edgeuq.quantize import plan_to_hls4ml_precision
from edgeuq.quantize.hls4ml import ap_fixed_for
from edgeuq.quantize.precision import FP16_RELATIVE_VARIANCE, PRECISIONS, activation_noise

LIN = ("fp32", "fp16", "int8", "int4")


def layer(name: str, numel: int, graph: str = "head", options=LIN) -> QuantLayer:
    return QuantLayer(name, graph, f"/{name.replace('.', '/')}/MatMul", "MatMul", f"{name}.w", (numel, 1), options)


def costs_for(layers) -> LayerCosts:
    per = {"fp32": 4.0, "fp16": 2.0, "int8": 1.1, "int4": 0.6}
    return LayerCosts({lay.name: {p: int(per[p] * lay.numel) for p in lay.options} for lay in layers}, fixed_bytes=100)


def sens_for(layers, traces):
    noise = {"fp32": 0.0, "fp16": 1e-7, "int8": 1e-4, "int4": 3e-2}
    return {lay.name: {p: traces[lay.name] * noise[p] for p in lay.options} for lay in layers}


LAYERS = [layer("blocks.0.fc1", 1000, "trunk"), layer("blocks.0.fc2", 1000, "trunk"), layer("head.fc1", 400),
          layer("head.fc2", 40)]


def test_bits_go_where_the_fisher_is_large():
    costs = costs_for(LAYERS)
    budget = Budget("bytes", costs.total_bytes({n.name: "int8" for n in LAYERS}) + 500)
    a = allocate(LAYERS, sens_for(LAYERS, {"blocks.0.fc1": 1e4, "blocks.0.fc2": 1.0, "head.fc1": 1.0,
                                           "head.fc2": 1.0}), costs, budget)
    b = allocate(LAYERS, sens_for(LAYERS, {"blocks.0.fc1": 1.0, "blocks.0.fc2": 1e4, "head.fc1": 1.0,
                                           "head.fc2": 1.0}), costs, budget)
    bits = {"fp32": 32, "fp16": 16, "int8": 8, "int4": 4}
    assert bits[a.assignment()["blocks.0.fc1"]] > bits[a.assignment()["blocks.0.fc2"]]
    assert bits[b.assignment()["blocks.0.fc2"]] > bits[b.assignment()["blocks.0.fc1"]]
    for plan in (a, b):
        assert plan.total_bytes <= budget.value
        assert plan.total_bytes == costs.total_bytes(plan.assignment())
        assert plan.predicted_loss == pytest.approx(sum(c.sensitivity for c in plan.layers))


def test_tighter_budgets_never_predict_less_loss():
    costs = costs_for(LAYERS)
    sens = sens_for(LAYERS, {"blocks.0.fc1": 5.0, "blocks.0.fc2": 0.3, "head.fc1": 20.0, "head.fc2": 100.0})
    fp32 = costs.total_bytes({})
    losses = [allocate(LAYERS, sens, costs, Budget("bytes", f * fp32)).predicted_loss
              for f in (1.0, 0.6, 0.4, 0.3, 0.2)]
    assert losses[0] == 0.0
    assert all(x <= y + 1e-15 for x, y in zip(losses, losses[1:]))


def test_unmeetable_budget_names_the_smallest_size():
    costs = costs_for(LAYERS)
    smallest = costs.fixed_bytes + sum(min(costs.bytes[n.name].values()) for n in LAYERS)
    sens = sens_for(LAYERS, {n.name: 1.0 for n in LAYERS})
    with pytest.raises(BudgetError, match=f"smallest achievable is {smallest} bytes") as err:
        allocate(LAYERS, sens, costs, Budget("bytes", smallest - 1))
    assert err.value.smallest == smallest
    plan = allocate(LAYERS, sens, costs, Budget("bytes", smallest))
    assert plan.total_bytes == plan.min_bytes == smallest
    with pytest.raises(ValueError, match="latency=True"):
        allocate(LAYERS, sens, costs, Budget("ms", 1.0))
    with pytest.raises(ValueError, match="positive"):
        Budget("bytes", 0)


def test_latency_budget_uses_profiled_costs():
    costs = dataclasses.replace(costs_for(LAYERS), latency_ms={n.name: {"fp32": 1.0, "fp16": 1.2, "int8": 0.5,
                                                                       "int4": 0.7} for n in LAYERS}, fixed_ms=2.0)
    sens = sens_for(LAYERS, {n.name: 1.0 for n in LAYERS})
    plan = allocate(LAYERS, sens, costs, Budget("ms", 5.0))
    assert plan.predicted_ms <= 5.0
    assert sum(c.precision == "int8" for c in plan.layers) >= 2  # fp32 everywhere would take 6 ms
    with pytest.raises(BudgetError, match="smallest achievable is 4 ms"):
        allocate(LAYERS, sens, costs, Budget("ms", 3.9))


def test_plan_json_round_trip_and_hash(tmp_path):
    costs = costs_for(LAYERS)
    plan = allocate(LAYERS, sens_for(LAYERS, {n.name: 1.0 for n in LAYERS}), costs,
                    Budget("bytes", 0.5 * costs.total_bytes({})), provenance={"fisher_sha256": "abc"})
    saved = plan.save(tmp_path / "quant_plan.json")
    assert len(saved.sha256) == 64 and saved.path == tmp_path / "quant_plan.json"
    again = load_quant_plan(tmp_path)
    assert again.assignment() == plan.assignment() and again.layers == plan.layers
    assert again.provenance["fisher_sha256"] == "abc" and again.sha256 == saved.sha256
    assert {c.name for c in again.layers} == {n.name for n in LAYERS}
    for c in again.layers:
        assert set(c.sensitivities) == set(PRECISIONS) and c.sensitivity == c.sensitivities[c.precision]
    (tmp_path / "quant_plan.json").write_text('{"format": 99}')
    with pytest.raises(ArtifactError, match="kind None, expected 'quant_plan'"):
        load_quant_plan(tmp_path)


# ---------------------------------------------------------------- hls4ml


def _with_ranges(plan, **ranges):
    layers = tuple(dataclasses.replace(c, **ranges.get(c.name.replace(".", "_"), {})) for c in plan.layers)
    return dataclasses.replace(plan, layers=layers)


def test_hls4ml_precisions_follow_the_plan():
    costs = costs_for(LAYERS)
    plan = allocate(LAYERS, sens_for(LAYERS, {"blocks.0.fc1": 1.0, "blocks.0.fc2": 1.0, "head.fc1": 0.001,
                                              "head.fc2": 1e6}), costs, Budget("bytes", 0.3 * costs.total_bytes({})))
    plan = _with_ranges(plan, head_fc1={"weight_absmax": 0.7, "bias_absmax": 0.1},
                        head_fc2={"weight_absmax": 1.5, "bias_absmax": 3.2, "out_absmax": 9.0})
    p = plan_to_hls4ml_precision(plan)
    assert set(p) == {"fc1", "fc2", "result"}
    pattern = re.compile(r"^ap_fixed<(\d+),(-?\d+)>$")
    widths = {k: int(pattern.match(v).group(1)) for k, v in p.items()}
    bits = {"fp32": 32, "fp16": 16, "int8": 8, "int4": 4}
    a = plan.assignment()
    assert widths["fc1"] == bits[a["head.fc1"]] and widths["fc2"] == bits[a["head.fc2"]]
    assert widths["fc2"] > widths["fc1"]  # the sensitive layer kept more bits
    assert p["fc2"].endswith(",3>")  # max(|w|, |b|) = 3.2 needs sign + 2 integer bits
    assert p["fc1"].endswith(",1>")  # |w| < 1
    assert p["result"] == "ap_fixed<16,6>"  # logits up to 9, doubled: 18 -> 6 integer bits, 10 fraction bits
    assert set(plan_to_hls4ml_precision(plan, scope="all")) == {n.name for n in LAYERS} | {"result"}
    assert plan_to_hls4ml_precision(plan, modes=True)["fc1"].endswith(",AP_RND_CONV,AP_SAT>")


def test_ap_fixed_integer_bits_hold_the_range():
    for absmax in (0.01, 0.5, 0.99, 1.0, 1.5, 3.9, 4.0, 100.0):
        w, i = map(int, re.match(r"ap_fixed<(\d+),(\d+)>", ap_fixed_for(16, absmax)).groups())
        assert 2.0 ** (i - 1) > absmax or i == w, absmax          # representable
        assert i == 1 or 2.0 ** (i - 2) <= absmax, absmax          # and no bigger than needed
    assert ap_fixed_for(4, 1000.0) == "ap_fixed<4,4>"


def test_hls4ml_needs_head_layers():
    costs = costs_for(LAYERS[:2])
    plan = allocate(LAYERS[:2], sens_for(LAYERS[:2], {n.name: 1.0 for n in LAYERS[:2]}), costs, Budget("bytes", 1e9))
    with pytest.raises(ValueError, match="no layers under 'head.'"):
        plan_to_hls4ml_precision(plan)


def test_activation_noise_models():
    x = np.random.default_rng(0).standard_normal(200_000).astype(np.float32)
    realised = np.mean((x.astype(np.float16).astype(np.float64) - x) ** 2)
    predicted = activation_noise({"min": float(x.min()), "max": float(x.max()), "mean_square": float(np.mean(x**2))},
                                 "fp16")
    assert predicted == pytest.approx(float(np.mean(x**2)) * FP16_RELATIVE_VARIANCE)
    assert 0.8 < realised / predicted < 1.25
    lo, hi = float(x.min()), float(x.max())
    step = (hi - lo) / 255
    q = np.round((x - lo) / step) * step + lo
    assert np.mean((q - x) ** 2) == pytest.approx(activation_noise({"min": lo, "max": hi, "mean_square": 1.0}, "int8"),
                                                  rel=0.05)
    assert activation_noise({"min": -1, "max": 1, "mean_square": 1}, "int4") == 0.0  # weight-only
