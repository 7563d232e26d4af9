"""The same QuantPlan as hls4ml fixed-point precisions (the FPGA path).

Each layer gets ``ap_fixed<W,I>`` (hls4ml's FPGA head uses it for the weight
and the bias): W = the plan's bit width (int4 -> 4, int8 -> 8, fp16 -> 16,
fp32 -> 32) and I = integer bits including the sign, just enough for the
layer's largest |weight| or |bias| (I = ⌊log2 max⌋ + 2, clamped to [1, W]).
``modes=True`` appends ``AP_RND_CONV,AP_SAT`` (round to nearest, saturate).
``result`` is the classifier output (logits): its range is the
largest |logit| seen on the calibration set, doubled for headroom, with at
least 16 bits and 10 fractional bits (narrow result types wrap in hls4ml's C
simulation).

The FPGA engineer's head-MLP model names its layers ``fc1`` and ``fc2``;
``scope="head"`` (default) returns exactly those keys (+ ``result``) for the
plan's ``head.fc1`` / ``head.fc2``. ``scope="all"`` returns every layer under
its full module name.
"""
from __future__ import annotations

import math
from typing import Dict

from .plan import LayerChoice, QuantPlan
from .precision import BITS

__all__ = ["plan_to_hls4ml_precision", "ap_fixed_for"]

HEAD_PREFIX = "head."
RESULT_MIN_WIDTH = 16
RESULT_FRACTION_BITS = 10


MODES = ",AP_RND_CONV,AP_SAT"


def ap_fixed_for(width: int, absmax: float, modes: bool = False) -> str:
    """Smallest-integer-part ``ap_fixed<width, I>`` that holds ±absmax."""
    if width < 2:
        raise ValueError(f"width must be >= 2, got {width}")
    integer = 1 if absmax <= 0 else math.floor(math.log2(absmax)) + 2
    integer = max(1, min(width, integer))
    return f"ap_fixed<{width},{integer}{MODES if modes else ''}>"


def _result(choice: LayerChoice, modes: bool) -> str:
    if choice.out_absmax is None:
        raise ValueError(f"plan has no output range for {choice.name!r}: build it from a Fisher report")
    span = 2.0 * float(choice.out_absmax)
    integer = max(1, math.floor(math.log2(span)) + 2) if span > 0 else 1
    return f"ap_fixed<{max(RESULT_MIN_WIDTH, integer + RESULT_FRACTION_BITS)},{integer}{MODES if modes else ''}>"


def plan_to_hls4ml_precision(plan: QuantPlan, scope: str = "head", include_result: bool = True,
                             modes: bool = False) -> Dict[str, str]:
    """``{layer_name: "ap_fixed<W,I>"}`` for hls4ml (see the module docstring)."""
    if scope not in ("head", "all"):
        raise ValueError(f"scope must be 'head' or 'all', got {scope!r}")
    chosen = [c for c in plan.layers if scope == "all" or c.name.startswith(HEAD_PREFIX)]
    if not chosen:
        raise ValueError(f"plan has no layers under {HEAD_PREFIX!r}; layers: {[c.name for c in plan.layers]}")
    out: Dict[str, str] = {}
    for c in chosen:
        key = c.name[len(HEAD_PREFIX):] if scope == "head" else c.name
        out[key] = ap_fixed_for(BITS[c.precision], max(c.weight_absmax, c.bias_absmax), modes)
    if include_result:
        last = chosen[-1]
        if scope == "all":
            last = next((c for c in reversed(plan.layers) if c.graph == "head"), chosen[-1])
        if last.out_absmax is not None:
            out["result"] = _result(last, modes)
    return out
