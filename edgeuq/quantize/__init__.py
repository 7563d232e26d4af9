"""Fisher-guided mixed-precision quantization.

* :mod:`.precision`   fp32 / fp16 / int8 / int4 (weight-only), noise models E[δ²] from real ranges
* :mod:`.layers`      quantizable layers of the exported graphs, node -> layer mapping, byte attribution
* :mod:`.costs`       per-layer bytes and profiled latency at each precision (cached)
* :mod:`.sensitivity` Ω_l(b) tables: Fisher (FIT), HAWQ (Hessian trace), range heuristic, random
* :mod:`.solver`      exact multiple-choice knapsack (Pareto DP)
* :mod:`.plan`        QuantPlan artifact and :func:`allocate`
* :mod:`.onnx_apply`  QDQ int8 (calibrated), MatMulNBits int4, fp16 on the ONNX graphs
* :mod:`.dynamic`     uniform int8 trunk weights by ONNX Runtime dynamic quantisation (no calibration)
* :mod:`.hls4ml`      the plan as hls4ml ``ap_fixed`` precisions
* :mod:`.pipeline`    checkpoint + FisherReport + budget -> quantized runtime bundle
"""
from .costs import LayerCosts, measure_costs, uniform_assignment
from .dynamic import DYNAMIC_INT8, dynamic_int8_graph, dynamic_int8_trunk
from .hls4ml import plan_to_hls4ml_precision
from .layers import QuantLayer, discover_layers
from .onnx_apply import CalibrationSet, apply_assignment, load_graphs
from .pipeline import (
    HLS4ML_FILE, PLAN_FILE, PreparedModel, QuantizeResult, build_quantized, plan_for, plan_from_assignment,
    prepare_model, quantize_checkpoint, sensitivity_for,
)
from .plan import Budget, LayerChoice, QuantPlan, allocate, load_quant_plan, make_plan
from .precision import BITS, PRECISIONS, QuantSettings
from .sensitivity import fisher_sensitivity, hawq_sensitivity, random_sensitivity, range_sensitivity
from .solver import BudgetError, Solution, solve_mckp

__all__ = [
    "PRECISIONS", "BITS", "QuantSettings", "QuantLayer", "discover_layers", "LayerCosts", "measure_costs",
    "uniform_assignment", "fisher_sensitivity", "hawq_sensitivity", "range_sensitivity", "random_sensitivity",
    "solve_mckp", "Solution", "BudgetError", "Budget", "LayerChoice", "QuantPlan", "allocate", "load_quant_plan",
    "CalibrationSet", "apply_assignment", "load_graphs", "plan_to_hls4ml_precision", "PreparedModel",
    "prepare_model", "sensitivity_for", "plan_for", "plan_from_assignment", "make_plan", "build_quantized",
    "QuantizeResult", "quantize_checkpoint", "PLAN_FILE", "HLS4ML_FILE", "DYNAMIC_INT8", "dynamic_int8_graph",
    "dynamic_int8_trunk",
]
