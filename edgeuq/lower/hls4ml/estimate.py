"""Resource and latency **estimate** for the FPGA head, without Vivado.

Nothing here comes from synthesis: Vivado is not available where edgeuq lowers,
and hls4ml 1.3 gives no resource figures without it. The numbers are an analytic
model of the hls4ml io_parallel design (one multiplier per non-zero weight and
element-wise product, divided by the reuse factor; adder trees; one table per
sigmoid lane; a fixed allowance for the AXI DMA and AXI-stream wrapper) and are
labelled ``"estimate"`` everywhere they appear. Synthesise the HLS project in the
bundle for real figures (``report_utilization`` in design.tcl writes util.rpt).
"""
from __future__ import annotations

import math
from typing import Dict, Mapping, Optional

import numpy as np

from .fixed import quantize
from .head import HeadSpec, HeadTypes

__all__ = ["PART_RESOURCES", "part_resources", "estimate", "choose_reuse_factors", "DMA_CALL_OVERHEAD_US"]

# Public datasheet totals per device (DSP slices, LUTs, flip-flops, 18 Kb block RAMs).
PART_RESOURCES: Dict[str, Dict[str, int]] = {
    "xc7z010": {"dsp": 80, "lut": 17600, "ff": 35200, "bram_18k": 120},
    "xc7z020": {"dsp": 220, "lut": 53200, "ff": 106400, "bram_18k": 280},
    "xczu3eg": {"dsp": 360, "lut": 70560, "ff": 141120, "bram_18k": 432},
    "xczu7ev": {"dsp": 1728, "lut": 230400, "ff": 460800, "bram_18k": 624},
    "xczu9eg": {"dsp": 2520, "lut": 274080, "ff": 548160, "bram_18k": 1824},
    "xck26": {"dsp": 1248, "lut": 117120, "ff": 234240, "bram_18k": 288},
}
# The AXI DMA (simple mode) plus the AXI-stream wrapper and interconnect, roughly.
_INFRA = {"dsp": 0, "lut": 2500, "ff": 3500, "bram_18k": 4}
# Assumed host-side cost of one transfer/wait pair through pynq's Python DMA driver.
DMA_CALL_OVERHEAD_US = 50.0
DSP_BUDGET = 0.75  # "auto" reuse keeps the estimated DSPs under this share of the part


def part_resources(part: Optional[str]) -> Optional[Dict[str, int]]:
    if not part:
        return None
    p = part.lower()
    for prefix in sorted(PART_RESOURCES, key=len, reverse=True):
        if p.startswith(prefix):
            return dict(PART_RESOURCES[prefix])
    return None


def _dsp_per_mult(a: int, b: int, part: Optional[str]) -> int:
    """DSP slices for an a x b bit multiply; narrow ones go to LUTs (0 DSP)."""
    lo, hi = sorted((a, b))
    if lo <= 10:
        return 0
    wide = 27 if (part or "").lower().startswith(("xczu", "xck")) else 25
    return math.ceil(hi / wide) * math.ceil(lo / 18)


def _nonzero(spec: HeadSpec, types: HeadTypes) -> Dict[str, int]:
    return {l.name: int(np.count_nonzero(quantize(l.weight, types.dense[l.name]["weight"]))) for l in spec.layers}


def _divisors(n: int):
    return [r for r in range(1, n + 1) if n % r == 0]


def choose_reuse_factors(spec: HeadSpec, types: HeadTypes, part: Optional[str], reuse) -> Dict[str, int]:
    """Per-Dense reuse factors: an int for all layers, or ``"auto"`` (fit the part's DSPs)."""
    if reuse != "auto":
        if isinstance(reuse, bool) or not isinstance(reuse, int) or reuse < 1:
            raise ValueError(f"reuse_factor must be an integer >= 1 or 'auto', got {reuse!r}")
        return {l.name: reuse for l in spec.layers}
    avail = part_resources(part)
    rf = {l.name: 1 for l in spec.layers}
    if avail is None:
        return rf
    budget = DSP_BUDGET * avail["dsp"]
    for _ in range(256):
        est = estimate(spec, types, part, 100.0, rf)
        if est["resources"]["dsp"] <= budget or est["notes"]:
            break  # fits, or the fully parallel element-wise part alone does not: reuse cannot help
        # grow the reuse factor of the layer with the most DSPs to its next divisor of n_in
        costs = {l.name: _layer_dsp(l, types, part, rf[l.name], _nonzero(spec, types)[l.name]) for l in spec.layers}
        name = max(costs, key=costs.get)
        layer = next(l for l in spec.layers if l.name == name)
        bigger = [r for r in _divisors(layer.n_in) if r > rf[name]]
        if not bigger:
            break
        rf[name] = bigger[0]
    return rf


def _layer_dsp(layer, types: HeadTypes, part, rf: int, nonzero: int) -> int:
    t = types.dense[layer.name]
    return math.ceil(nonzero / rf) * _dsp_per_mult(t["weight"].width, types.data.width, part)


def estimate(spec: HeadSpec, types: HeadTypes, part: Optional[str], clock_mhz: float,
             reuse: Mapping[str, int]) -> dict:
    """Analytic resource/latency estimate of the hls4ml head (labelled ``"estimate"``)."""
    w = types.data.width
    nz = _nonzero(spec, types)
    dsp = lut = ff = bram = 0
    fixed_dsp = 0  # element-wise multipliers: fully parallel whatever the reuse factor
    cycles_core = 0
    for k, layer in enumerate(spec.layers):
        t = types.dense[layer.name]
        rf = int(reuse.get(layer.name, 1))
        mults = math.ceil(nz[layer.name] / rf)
        per = _dsp_per_mult(t["weight"].width, w, part)
        dsp += mults * per
        if per == 0:
            lut += mults * int(0.6 * t["weight"].width * w)
        adders = mults
        lut += adders * t["accum"].width
        ff += adders * t["accum"].width + layer.n_out * t["result"].width
        cycles_core += math.ceil(math.log2(max(layer.n_in, 2))) + 2 + (rf - 1)
        n_masks = sum(1 for _, at in spec.masks if at == k)
        if n_masks:
            fixed_dsp += n_masks * layer.n_in * _dsp_per_mult(w, w, part)
            ff += n_masks * layer.n_in * w
            cycles_core += 1
        if k < len(spec.layers) - 1 and spec.activation == "gelu":
            n = layer.n_out
            fixed_dsp += n * (_dsp_per_mult(types.scale.width, w, part) + _dsp_per_mult(w, w, part))
            bram += math.ceil(n / 2)  # one 1024-entry sigmoid table, two read ports per 18 Kb RAM
            lut += n * 40
            ff += 3 * n * w
            cycles_core += 4
    dsp += fixed_dsp + _INFRA["dsp"]
    lut += _INFRA["lut"]
    ff += _INFRA["ff"]
    bram += _INFRA["bram_18k"]
    n_in, n_out = spec.stream_width, spec.num_classes
    cycles_row = n_in + cycles_core + n_out  # wrapper reads one 32-bit word per cycle, then writes
    us_row = cycles_row / float(clock_mhz)
    avail = part_resources(part)
    res = {"dsp": int(dsp), "lut": int(lut), "ff": int(ff), "bram_18k": int(bram)}
    util = {k: round(res[k] / avail[k], 4) for k in res} if avail else None
    notes = []
    if avail and fixed_dsp > DSP_BUDGET * avail["dsp"]:
        notes.append(f"the element-wise mask and GELU multipliers alone need ~{fixed_dsp} DSPs (fully parallel, not "
                     f"reduced by the reuse factor) of {avail['dsp']}: use a smaller d_model or a larger part")
    return {
        "label": "estimate",
        "method": ("analytic model of the hls4ml io_parallel design (multipliers = non-zero weights / reuse factor, "
                   "adder trees, sigmoid tables, fixed DMA/wrapper allowance); NOT from Vivado synthesis"),
        "part": part,
        "clock_mhz": float(clock_mhz),
        "reuse_factor": dict(reuse),
        "resources": res,
        "available": avail,
        "utilization": util,
        "fits": None if avail is None else all(res[k] <= avail[k] for k in res),
        "notes": notes,
        "latency": {
            "cycles_per_row": int(cycles_row),
            "us_per_row": round(us_row, 4),
            "rows_per_s": round(1e6 / us_row, 1),
            "dma_call_overhead_us_assumed": DMA_CALL_OVERHEAD_US,
            "us_per_call": {str(n): round(DMA_CALL_OVERHEAD_US + n * us_row, 2) for n in (1, 16, 256)},
        },
    }
