"""The quantization stage end to end:

    Checkpoint ─export─► OnnxArtifact (fp32) ─discover─► layers ─measure─► LayerCosts
    FisherReport ─sensitivity─► Ω table ─allocate(budget)─► QuantPlan
    OnnxArtifact + QuantPlan ─apply (calibrated)─► OnnxArtifact (quantized) ─► Bundle

The bundle is an ordinary runtime bundle (same manifest contract, float32 graph
inputs/outputs, same noise inputs) that also carries ``quant_plan.json`` and
``hls4ml_precision.json`` as hashed files.
"""
from __future__ import annotations

import dataclasses
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Tuple

import numpy as np
import onnx

from edgeuq_runtime.bundle import Bundle

from ..bundle import build_bundle
from ..export import OnnxArtifact, export_onnx
from ..fisher import FisherReport
from ..training import Checkpoint
from .costs import LayerCosts, measure_costs
from .hls4ml import plan_to_hls4ml_precision
from .layers import QuantLayer, discover_layers
from .onnx_apply import CalibrationSet, apply_assignment, load_graphs
from .plan import Budget, QuantPlan, allocate, make_plan
from .precision import QuantSettings
from .sensitivity import (
    SENSITIVITY_METHODS, Sensitivity, fisher_sensitivity, hawq_sensitivity, range_sensitivity, random_sensitivity,
)

__all__ = ["PreparedModel", "prepare_model", "sensitivity_for", "plan_for", "plan_from_assignment",
           "build_quantized", "QuantizeResult",
           "quantize_checkpoint", "PLAN_FILE", "HLS4ML_FILE"]

PLAN_FILE = "quant_plan.json"
HLS4ML_FILE = "hls4ml_precision.json"


@dataclass(frozen=True, eq=False)
class PreparedModel:
    """Everything the allocation needs that does not depend on the budget."""

    checkpoint: Checkpoint
    art: OnnxArtifact
    graphs: Mapping[str, onnx.ModelProto]
    layers: Tuple[QuantLayer, ...]
    costs: LayerCosts
    calib: CalibrationSet
    settings: QuantSettings


def prepare_model(checkpoint: Checkpoint, calib_windows: np.ndarray, work_dir: Path, latency: bool = False,
                  samples: int = 16, settings: QuantSettings = QuantSettings(), seed: int = 0,
                  progress: bool = True, model=None) -> PreparedModel:
    """Export fp32 graphs to ``work_dir/fp32``, find the layers, measure their costs (cached in ``work_dir``)."""
    work_dir = Path(work_dir)
    art = export_onnx(checkpoint, work_dir / "fp32", model=model, verify=True)
    graphs = load_graphs(art)
    layers = discover_layers(graphs)
    calib = CalibrationSet(np.asarray(calib_windows), seed)
    costs = measure_costs(art, layers, calib, latency=latency, samples=samples, settings=settings,
                          cache_dir=work_dir / "cache", progress=progress)
    return PreparedModel(checkpoint, art, graphs, layers, costs, calib, settings)


def sensitivity_for(method: str, prep: PreparedModel, report: Optional[FisherReport] = None,
                    hessian_traces: Optional[Mapping[str, float]] = None, seed: int = 0) -> Sensitivity:
    block = prep.settings.int4_block
    if method == "fisher":
        if report is None:
            raise ValueError("method 'fisher' needs a FisherReport")
        return fisher_sensitivity(report, prep.graphs, prep.layers, block)
    if method == "hawq":
        if hessian_traces is None:
            raise ValueError("method 'hawq' needs Hessian traces (edgeuq.fisher.hutchinson_trace)")
        return hawq_sensitivity(hessian_traces, prep.graphs, prep.layers, block)
    if method == "range":
        return range_sensitivity(report, prep.graphs, prep.layers, block)
    if method == "random":
        return random_sensitivity(prep.layers, seed)
    raise ValueError(f"unknown method {method!r}; known: {SENSITIVITY_METHODS}")


def plan_for(prep: PreparedModel, sensitivity: Sensitivity, budget: Budget, method: str,
             report: Optional[FisherReport] = None, provenance: Optional[Mapping[str, Any]] = None) -> QuantPlan:
    acts = {lf.name: lf.activation for lf in report.layers} if report is not None else None
    prov = {"checkpoint_sha256": prep.checkpoint.sha256, **({"fisher_sha256": report.sha256,
            "fisher_labels": report.labels} if report is not None else {}), **dict(provenance or {})}
    return allocate(prep.layers, sensitivity, prep.costs, budget, method=method, graphs=prep.graphs,
                    activations=acts, settings=prep.settings, provenance=prov)


def plan_from_assignment(prep: PreparedModel, assignment: Mapping[str, str], sensitivity: Sensitivity,
                         method: str, report: Optional[FisherReport] = None) -> QuantPlan:
    """A plan for a fixed assignment (uniform int8, ...), its budget its own size."""
    acts = {lf.name: lf.activation for lf in report.layers} if report is not None else None
    return make_plan(prep.layers, assignment, sensitivity, prep.costs, None, method, prep.graphs, acts,
                     prep.settings, {"checkpoint_sha256": prep.checkpoint.sha256})


@dataclass(frozen=True, eq=False)
class QuantizeResult:
    plan: QuantPlan
    onnx: OnnxArtifact
    bundle: Bundle
    hls4ml_precision: Mapping[str, str]


def build_quantized(prep: PreparedModel, plan: QuantPlan, out_dir: Path, work_dir: Optional[Path] = None,
                    name: str = "edgeuq-model", version: str = "0.1.0", samples: int = 16,
                    metadata: Optional[Mapping[str, Any]] = None) -> QuantizeResult:
    """Apply ``plan`` (calibrated on ``prep.calib``) and write a runtime bundle to ``out_dir``."""
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="edgeuq-quantized-") as tmp:
        qdir = Path(work_dir) if work_dir is not None else Path(tmp) / "onnx"
        qart = apply_assignment(prep.art, prep.layers, plan.assignment(), prep.calib, qdir, prep.settings)
        plan = plan.save(Path(tmp) / PLAN_FILE)
        plan_path = plan.path
        try:
            hls = plan_to_hls4ml_precision(plan)
        except ValueError:  # a model without a head MLP: nothing to export for the FPGA path
            hls = {}
        hls_path = Path(tmp) / HLS4ML_FILE
        hls_path.write_text(json.dumps(hls, indent=2, sort_keys=True))
        meta = {"quantization": {"method": plan.method, "budget": plan.budget.describe(),
                                 "total_bytes": plan.total_bytes, "fp32_bytes": plan.fp32_bytes,
                                 "plan_sha256": plan.sha256, "precisions": plan.assignment()},
                **dict(metadata or {})}
        bundle = build_bundle(qart, out_dir, name, version, default_samples=samples, metadata=meta, overwrite=True,
                              extra_files={PLAN_FILE: plan_path, HLS4ML_FILE: hls_path})
    plan = dataclasses.replace(plan, directory=out_dir, meta_file=PLAN_FILE)
    if work_dir is None:  # the graphs now live in the bundle
        qart = dataclasses.replace(qart, directory=out_dir)
    return QuantizeResult(plan, qart, bundle, hls)


def quantize_checkpoint(
    checkpoint: Checkpoint,
    report: FisherReport,
    budget: Budget,
    out_dir: Path,
    calib_windows: np.ndarray,
    work_dir: Optional[Path] = None,
    samples: int = 16,
    name: str = "edgeuq-model",
    version: str = "0.1.0",
    settings: QuantSettings = QuantSettings(),
    progress: bool = True,
) -> QuantizeResult:
    """Fisher-guided quantization of a checkpoint into a bundle (what ``edgeuq quantize`` runs)."""
    recorded = report.meta.get("checkpoint_sha256")
    if recorded and recorded != checkpoint.sha256:
        raise ValueError(f"the Fisher report was estimated on checkpoint {recorded[:12]}…, not on "
                         f"{checkpoint.sha256[:12]}… ({checkpoint.directory})")
    work = Path(work_dir) if work_dir is not None else Path(out_dir).with_name(Path(out_dir).name + ".work")
    prep = prepare_model(checkpoint, calib_windows, work, latency=budget.kind == "ms", samples=samples,
                         settings=settings, progress=progress)
    plan = plan_for(prep, sensitivity_for("fisher", prep, report), budget, "fisher", report)
    return build_quantized(prep, plan, out_dir, name=name, version=version, samples=samples)
