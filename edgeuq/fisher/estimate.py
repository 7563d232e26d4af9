"""The Fisher stage: model + calibration set -> FisherReport.

Two streamed passes over the calibration set: per-sample parameter gradients
(diagonal, per-layer traces) and one hooked pass for everything read off
intermediate tensors (activation traces and ranges, structure scores, K-FAC).
Optionally a third for Hutchinson Hessian traces (the HAWQ baseline).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np
from torch import nn

from .. import __version__
from ..profile.harness import StageTimer
from ._hooks import run_hooked_pass
from ._target import FisherTarget, layer_kind
from .activations import ActivationAccumulator
from .config import FisherConfig
from .diagonal import diagonal_fisher
from .hessian import hutchinson_trace
from .kfac import KFACAccumulator
from .report import FisherReport, LayerFisher, StructureScores
from .structure import StructureAccumulator, default_structures

__all__ = ["estimate_fisher"]


def estimate_fisher(
    model: nn.Module,
    x: np.ndarray,
    y: Optional[np.ndarray] = None,
    config: FisherConfig = FisherConfig(),
    structures: bool = True,
    kfac: bool = False,
    hessian_probes: int = 0,
    meta: Optional[Mapping[str, Any]] = None,
) -> FisherReport:
    """Estimate the Fisher of ``model`` on calibration windows ``x``.

    ``y`` is needed for ``config.labels == "empirical"`` and for Hessian traces
    (``hessian_probes`` > 0); the true Fisher (default) samples labels from the
    model. The report is in memory; call ``.save(dir)`` to write it.
    """
    target = FisherTarget(model)
    layers = target.layers()
    if not layers:
        raise ValueError("model has no Linear/Conv1d layer to estimate a Fisher for")
    timer = StageTimer()
    with timer.stage("diagonal_s"):
        diag = diagonal_fisher(model, x, y, config)

    with timer.stage("hooked_s"):
        act = ActivationAccumulator(list(layers))
        accs: list = [act]
        struct_specs = default_structures(model) if structures else []
        sacc = StructureAccumulator(struct_specs) if struct_specs else None
        if sacc is not None:
            accs.append(sacc)
        linear = [n for n, m in layers.items() if isinstance(m, nn.Linear)]
        kacc = KFACAccumulator(model, linear) if kfac and linear else None
        if kacc is not None:
            accs.append(kacc)
        n_terms = run_hooked_pass(model, x, y, config, accs, desc=f"activation/structure Fisher ({config.labels})")

    hess = {}
    if hessian_probes:
        with timer.stage("hessian_s"):
            hess = hutchinson_trace(model, x, y, config, probes=hessian_probes)

    stats = act.result(n_terms)
    traces = diag.param_traces()
    rows = tuple(
        LayerFisher(
            name=n, kind=layer_kind(m), weight_shape=tuple(m.weight.shape), weight_trace=traces[f"{n}.weight"],
            bias_trace=traces.get(f"{n}.bias", 0.0), activation=stats[n],
            hessian_trace=hess.get(f"{n}.weight"),
        )
        for n, m in layers.items()
    )
    struct = {}
    if sacc is not None:
        scores = sacc.result(n_terms)
        struct = {s.name: StructureScores(s.name, s.kind, s.module, scores[s.name]) for s in struct_specs}
    return FisherReport(
        layers=rows, config=config, n_samples=int(len(x)), param_traces=traces, diag=dict(diag.diag),
        structures=struct, kfac=kacc.result(n_terms) if kacc is not None else {},
        meta={"created_by": f"edgeuq {__version__}", "stochastic": target.stochastic,
              "noise_inputs": [s.name for s in target.noise_specs], "timings_s": dict(timer.seconds), **dict(meta or {})},
    )
