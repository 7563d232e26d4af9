"""QuantPlan: the artifact of the allocation stage (one JSON file, hashed).

``allocate`` solves, exactly,

    min_b Σ_l Ω_l(b_l)   s.t.   model bytes (or predicted latency) ≤ budget

with :func:`.solver.solve_mckp`, and records every layer's choice with its
predicted sensitivity at every option, its cost, and the ranges a fixed-point
back end needs. A budget below the smallest achievable model raises
:class:`~.solver.BudgetError` naming that size.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import onnx

from ..artifact import Artifact, ArtifactWriter
from .costs import LayerCosts
from .layers import QuantLayer, bias_array, weight_array
from .precision import QuantSettings
from .sensitivity import Sensitivity
from .solver import BudgetError, solve_mckp

__all__ = ["Budget", "LayerChoice", "QuantPlan", "allocate", "make_plan", "load_quant_plan", "PLAN_FORMAT",
           "BudgetError"]

BUDGET_KINDS = ("bytes", "ms")


@dataclass(frozen=True)
class Budget:
    kind: str     # "bytes" (model bytes) | "ms" (predicted latency of one window with S samples)
    value: float

    def __post_init__(self) -> None:
        if self.kind not in BUDGET_KINDS:
            raise ValueError(f"budget kind must be one of {BUDGET_KINDS}, got {self.kind!r}")
        if not self.value > 0:
            raise ValueError(f"budget must be positive, got {self.value}")

    def describe(self) -> str:
        return f"{int(self.value)} bytes" if self.kind == "bytes" else f"{self.value:g} ms"


@dataclass(frozen=True)
class LayerChoice:
    name: str
    graph: str
    node: str
    op_type: str
    precision: str
    bytes: int
    sensitivity: float                      # predicted loss increase at the chosen precision
    sensitivities: Mapping[str, float]      # ... at every option
    bytes_by_precision: Mapping[str, int]
    latency_ms: Optional[float] = None
    weight_absmax: float = 0.0
    bias_absmax: float = 0.0
    act_min: Optional[float] = None
    act_max: Optional[float] = None
    out_absmax: Optional[float] = None

    def to_dict(self) -> dict:
        return {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in vars(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LayerChoice":
        return cls(**{**d, "sensitivities": dict(d["sensitivities"]),
                      "bytes_by_precision": dict(d["bytes_by_precision"])})


@dataclass(frozen=True)
class QuantPlan(Artifact):
    """One JSON file (``quant_plan.json``, the envelope; no payload files)."""

    KIND: ClassVar[str] = "quant_plan"
    FORMAT_VERSION: ClassVar[int] = 2
    META_FILE: ClassVar[str] = "quant_plan.json"

    method: str
    budget: Budget
    layers: Tuple[LayerChoice, ...]
    total_bytes: int
    fp32_bytes: int
    min_bytes: int
    fixed_bytes: int
    predicted_loss: float
    predicted_ms: Optional[float] = None
    settings: Mapping[str, Any] = field(default_factory=dict)
    provenance: Mapping[str, Any] = field(default_factory=dict)   # fisher / checkpoint hashes, ...
    meta_file: str = field(default="quant_plan.json", compare=False)

    @property
    def path(self) -> Optional[Path]:  # type: ignore[override]
        """The plan's JSON file, once saved."""
        return None if self.directory is None else Path(self.directory) / self.meta_file

    @property
    def sha256(self) -> str:
        """The plan's digest; empty before saving."""
        return self.digest

    def assignment(self) -> Dict[str, str]:
        return {c.name: c.precision for c in self.layers}

    @property
    def compression(self) -> float:
        return self.fp32_bytes / self.total_bytes

    def to_meta(self) -> dict:
        return {
            "method": self.method,
            "budget": {"kind": self.budget.kind, "value": self.budget.value},
            "layers": [c.to_dict() for c in self.layers], "total_bytes": self.total_bytes,
            "fp32_bytes": self.fp32_bytes, "min_bytes": self.min_bytes, "fixed_bytes": self.fixed_bytes,
            "predicted_loss": self.predicted_loss, "predicted_ms": self.predicted_ms,
            "settings": dict(self.settings), "provenance": dict(self.provenance),
        }

    def to_json(self) -> dict:
        return self.to_meta()

    @classmethod
    def from_meta(cls, d: Mapping[str, Any], **base: Any) -> "QuantPlan":
        return cls(
            method=d["method"], budget=Budget(d["budget"]["kind"], float(d["budget"]["value"])),
            layers=tuple(LayerChoice.from_dict(c) for c in d["layers"]), total_bytes=int(d["total_bytes"]),
            fp32_bytes=int(d["fp32_bytes"]), min_bytes=int(d["min_bytes"]), fixed_bytes=int(d["fixed_bytes"]),
            predicted_loss=float(d["predicted_loss"]), predicted_ms=d.get("predicted_ms"),
            settings=d.get("settings", {}), provenance=d.get("provenance", {}), **base,
        )

    def save(self, path: Path, inputs: str = "") -> "QuantPlan":
        """Write the plan atomically to ``path`` (a ``.json`` file, or a folder: ``quant_plan.json``
        in it); return it as loaded back."""
        path = Path(path)
        directory, name = (path.parent, path.name) if path.suffix == ".json" else (path, self.META_FILE)
        with ArtifactWriter(directory) as w:
            saved = w.commit(replace(self, inputs=inputs or self.inputs), meta_file=name)
        return replace(saved, meta_file=name)


def load_quant_plan(path: Path) -> QuantPlan:
    """Load and verify a plan (its ``.json`` file or a folder holding ``quant_plan.json``)."""
    env = QuantPlan.envelope_path(Path(path))
    return replace(QuantPlan.load(env), meta_file=env.name)


PLAN_FORMAT = QuantPlan.FORMAT_VERSION


def allocate(
    layers: Sequence[QuantLayer],
    sensitivity: Sensitivity,
    costs: LayerCosts,
    budget: Budget,
    method: str = "fisher",
    graphs: Optional[Mapping[str, onnx.ModelProto]] = None,
    activations: Optional[Mapping[str, Any]] = None,
    settings: QuantSettings = QuantSettings(),
    provenance: Optional[Mapping[str, Any]] = None,
) -> QuantPlan:
    """Exact bit allocation under ``budget``. ``graphs`` (fp32) and ``activations``
    ({layer: ActivationStats}) only fill in the ranges recorded in the plan."""
    missing = [lay.name for lay in layers if lay.name not in sensitivity or lay.name not in costs.bytes]
    if missing:
        raise ValueError(f"no sensitivity or cost for layers {missing}")
    if budget.kind == "ms" and not costs.has_latency:
        raise ValueError("a latency budget needs costs measured with latency=True (profiling)")
    table = costs.latency_ms if budget.kind == "ms" else costs.bytes
    fixed = costs.fixed_ms if budget.kind == "ms" else costs.fixed_bytes
    unit = " ms" if budget.kind == "ms" else " bytes"
    losses = [{p: sensitivity[lay.name][p] for p in lay.options if p in table[lay.name]} for lay in layers]
    cost_tables = [{p: table[lay.name][p] for p in losses[i]} for i, lay in enumerate(layers)]
    sol = solve_mckp(losses, cost_tables, budget.value, fixed_cost=fixed, unit=unit)
    assignment = dict(zip([lay.name for lay in layers], sol.choices))
    return make_plan(layers, assignment, sensitivity, costs, budget, method, graphs, activations, settings, provenance)


def make_plan(
    layers: Sequence[QuantLayer],
    assignment: Mapping[str, str],
    sensitivity: Sensitivity,
    costs: LayerCosts,
    budget: Optional[Budget] = None,
    method: str = "manual",
    graphs: Optional[Mapping[str, onnx.ModelProto]] = None,
    activations: Optional[Mapping[str, Any]] = None,
    settings: QuantSettings = QuantSettings(),
    provenance: Optional[Mapping[str, Any]] = None,
) -> QuantPlan:
    """A QuantPlan for a given assignment (e.g. a uniform baseline); ``budget`` defaults to its own size."""
    for lay in layers:
        p = assignment.get(lay.name)
        if p not in lay.options or p not in costs.bytes[lay.name]:
            raise ValueError(f"layer {lay.name!r}: precision {p!r} is not one of its options {lay.options}")
    total = int(costs.total_bytes(assignment))
    budget = budget or Budget("bytes", float(total))
    min_bytes = costs.fixed_bytes + sum(min(costs.bytes[lay.name][p] for p in lay.options) for lay in layers)
    choices = []
    for lay in layers:
        p = assignment[lay.name]
        act = (activations or {}).get(lay.name)
        wabs = babs = 0.0
        if graphs is not None:
            wabs = float(np.abs(weight_array(graphs[lay.graph], lay)).max())
            bias = bias_array(graphs[lay.graph], lay)
            babs = float(np.abs(bias).max()) if bias is not None and bias.size else 0.0
        choices.append(LayerChoice(
            name=lay.name, graph=lay.graph, node=lay.node, op_type=lay.op_type, precision=p,
            bytes=int(costs.bytes[lay.name][p]), sensitivity=float(sensitivity[lay.name][p]),
            sensitivities={k: float(v) for k, v in sensitivity[lay.name].items()},
            bytes_by_precision={k: int(v) for k, v in costs.bytes[lay.name].items()},
            latency_ms=costs.latency_ms[lay.name][p] if costs.has_latency else None, weight_absmax=wabs,
            bias_absmax=babs,
            act_min=None if act is None else float(act.min), act_max=None if act is None else float(act.max),
            out_absmax=None if act is None else float(act.out_absmax),
        ))
    return QuantPlan(
        method=method, budget=budget, layers=tuple(choices), total_bytes=total,
        fp32_bytes=int(costs.total_bytes({})), min_bytes=int(min_bytes), fixed_bytes=int(costs.fixed_bytes),
        predicted_loss=float(sum(c.sensitivity for c in choices)),
        predicted_ms=costs.total_ms(assignment) if costs.has_latency else None,
        settings=settings.to_dict(), provenance=dict(provenance or {}),
    )
