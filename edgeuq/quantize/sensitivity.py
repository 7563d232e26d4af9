"""Predicted loss increase Ω_l(b) of putting layer l at precision b — one table per method.

    fisher  (FIT)   Ω_l(b) = Tr(F_w,l)·E[δw_l²](b) + Tr(F_a,l)·E[δa_l²](b)
    hawq            Ω_l(b) = Tr(H_l)/n_l · ‖Q_b(W_l) − W_l‖²          (Hutchinson trace, weights only)
    range           Ω_l(b) = n_l·E[δw²](b)/E[w²] + m_l·E[δa²](b)/E[a²]
                    (noise relative to each tensor's magnitude, no curvature)
    random          Ω_l(b) = r_l · 4^(−bits(b)),  r_l log-normal        (a random ranking of layers)

E[δ²](b) are the noise models of :mod:`.precision` from each tensor's actual
ranges; Tr(F) comes from a FisherReport (true or empirical), Tr(H) from
:func:`edgeuq.fisher.hutchinson_trace`. All tables are monotone in the bit width,
so the allocation only decides *where* the bits go.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence

import numpy as np
import onnx

from ..fisher import FisherReport
from .layers import QuantLayer, weight_array
from .precision import BITS, activation_noise, weight_error, weight_noise

__all__ = ["SENSITIVITY_METHODS", "fisher_sensitivity", "hawq_sensitivity", "range_sensitivity",
           "random_sensitivity", "Sensitivity"]

Sensitivity = Dict[str, Dict[str, float]]  # layer -> precision -> Ω
SENSITIVITY_METHODS = ("fisher", "hawq", "range", "random")


def _weights(graphs: Mapping[str, onnx.ModelProto], layers: Sequence[QuantLayer]) -> Dict[str, np.ndarray]:
    return {lay.name: weight_array(graphs[lay.graph], lay) for lay in layers}


def _check_report(report: FisherReport, layers: Sequence[QuantLayer]) -> None:
    have = set(report.layer_names())
    missing = [lay.name for lay in layers if lay.name not in have]
    if missing:
        raise ValueError(f"the Fisher report has no entry for layers {missing}: was it estimated on this model? "
                         f"(report layers: {sorted(have)})")


def fisher_sensitivity(report: FisherReport, graphs: Mapping[str, onnx.ModelProto], layers: Sequence[QuantLayer],
                       block: int = 32) -> Sensitivity:
    _check_report(report, layers)
    w = _weights(graphs, layers)
    out: Sensitivity = {}
    for lay in layers:
        lf = report.layer(lay.name)
        stats = lf.activation.to_dict()
        out[lay.name] = {p: lf.weight_trace * weight_noise(w[lay.name], p, block)
                         + lf.activation.trace * activation_noise(stats, p) for p in lay.options}
    return out


def hawq_sensitivity(hessian_traces: Mapping[str, float], graphs: Mapping[str, onnx.ModelProto],
                     layers: Sequence[QuantLayer], block: int = 32) -> Sensitivity:
    """``hessian_traces``: layer name (or ``<layer>.weight``) -> Tr(H) of its weight."""
    w = _weights(graphs, layers)
    out: Sensitivity = {}
    for lay in layers:
        tr = hessian_traces.get(lay.name, hessian_traces.get(f"{lay.name}.weight"))
        if tr is None:
            raise ValueError(f"no Hessian trace for layer {lay.name!r}")
        # Tr(H)/n · ‖Q(W) − W‖² = Tr(H) · (mean squared error per weight); a negative trace
        # estimate (a non-convex point) counts as 0
        out[lay.name] = {p: max(float(tr), 0.0) * weight_error(w[lay.name], p, block) for p in lay.options}
    return out


def range_sensitivity(report: Optional[FisherReport], graphs: Mapping[str, onnx.ModelProto],
                      layers: Sequence[QuantLayer], block: int = 32) -> Sensitivity:
    """Curvature-free: quantization noise relative to each tensor's mean square (activations from the
    report's recorded ranges when a report is given, else weights only)."""
    w = _weights(graphs, layers)
    out: Sensitivity = {}
    for lay in layers:
        wl = w[lay.name]
        ms = float(np.mean(wl.astype(np.float64) ** 2)) or 1.0
        act = report.layer(lay.name).activation if report is not None else None
        table = {}
        for p in lay.options:
            v = wl.size * weight_noise(wl, p, block) / ms
            if act is not None and act.mean_square > 0:
                v += act.numel * activation_noise(act.to_dict(), p) / act.mean_square
            table[p] = v
        out[lay.name] = table
    return out


def random_sensitivity(layers: Sequence[QuantLayer], seed: int = 0) -> Sensitivity:
    rng = np.random.default_rng(seed)
    out: Sensitivity = {}
    for lay in layers:
        r = float(np.exp(rng.normal(0.0, 2.0)))
        out[lay.name] = {p: r * 4.0 ** (-BITS[p]) if p != "fp32" else 0.0 for p in lay.options}
    return out
