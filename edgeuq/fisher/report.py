"""FisherReport: the artifact of the Fisher stage (``fisher.json`` + ``fisher.npz``).

``fisher.json`` holds the per-layer summary (weight and activation traces,
activation ranges), settings and provenance, and the sha256 of ``fisher.npz``;
``fisher.npz`` holds the arrays: the per-parameter diagonal (``diag/<param>``),
structure scores (``struct/<name>``) and K-FAC factors (``kfac/<layer>/A|G``).
It is an :class:`edgeuq.artifact.Artifact`: loading verifies both files, and
``FisherReport.sha256`` (= ``digest``) covers both.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Dict, Mapping, Optional, Tuple

import numpy as np

from ..artifact import Artifact, ArtifactWriter
from .activations import ActivationStats
from .config import FisherConfig
from .kfac import KFACFactors

__all__ = ["LayerFisher", "StructureScores", "FisherReport", "load_fisher_report", "REPORT_FORMAT"]


_JSON = "fisher.json"
_NPZ = "fisher.npz"


@dataclass(frozen=True)
class LayerFisher:
    """One quantizable layer: Tr(F) of its weight and of its input activation."""

    name: str
    kind: str                     # "linear" | "conv1d"
    weight_shape: Tuple[int, ...]
    weight_trace: float
    bias_trace: float
    activation: ActivationStats
    hessian_trace: Optional[float] = None

    @property
    def weight_numel(self) -> int:
        return int(np.prod(self.weight_shape))

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "weight_shape": list(self.weight_shape),
                "weight_trace": self.weight_trace, "bias_trace": self.bias_trace,
                "activation": self.activation.to_dict(), "hessian_trace": self.hessian_trace}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LayerFisher":
        return cls(d["name"], d["kind"], tuple(d["weight_shape"]), float(d["weight_trace"]), float(d["bias_trace"]),
                   ActivationStats(**d["activation"]), d.get("hessian_trace"))


@dataclass(frozen=True, eq=False)
class StructureScores:
    name: str
    kind: str      # "head" | "neuron" | "channel"
    module: str
    scores: np.ndarray


@dataclass(frozen=True, eq=False)
class FisherReport(Artifact):
    KIND: ClassVar[str] = "fisher_report"
    FORMAT_VERSION: ClassVar[int] = 3  # 3: config.per_sample replaces config.backend
    META_FILE: ClassVar[str] = _JSON

    layers: Tuple[LayerFisher, ...]
    config: FisherConfig
    n_samples: int
    param_traces: Mapping[str, float]
    diag: Mapping[str, np.ndarray] = field(default_factory=dict)
    structures: Mapping[str, StructureScores] = field(default_factory=dict)
    kfac: Mapping[str, KFACFactors] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)   # checkpoint sha256, data description, timings

    @property
    def sha256(self) -> str:
        """The report's digest (covers ``fisher.json`` and ``fisher.npz``); empty before saving."""
        return self.digest

    @property
    def labels(self) -> str:
        return self.config.labels

    def layer(self, name: str) -> LayerFisher:
        for lf in self.layers:
            if lf.name == name:
                return lf
        raise KeyError(f"no layer {name!r} in the Fisher report; layers: {[lf.name for lf in self.layers]}")

    def layer_names(self) -> Tuple[str, ...]:
        return tuple(lf.name for lf in self.layers)

    # ------------------------------------------------------------------ io
    def _arrays(self) -> Dict[str, np.ndarray]:
        arrays = {f"diag/{k}": np.asarray(v) for k, v in self.diag.items()}
        arrays.update({f"struct/{k}": np.asarray(s.scores) for k, s in self.structures.items()})
        for k, f in self.kfac.items():
            arrays[f"kfac/{k}/A"] = f.A
            arrays[f"kfac/{k}/G"] = f.G
        return arrays

    def payload_files(self) -> Tuple[str, ...]:
        return (_NPZ,)

    def to_meta(self) -> dict:
        return {
            "labels": self.labels,
            "config": self.config.to_dict(),
            "n_samples": self.n_samples,
            "layers": [lf.to_dict() for lf in self.layers],
            "param_traces": dict(self.param_traces),
            "structures": {k: {"kind": s.kind, "module": s.module, "groups": int(len(s.scores))}
                           for k, s in self.structures.items()},
            "kfac": {k: {"include_bias": f.include_bias} for k, f in self.kfac.items()},
            "meta": dict(self.meta),
            "arrays": _NPZ,
        }

    @classmethod
    def from_meta(cls, d: Mapping[str, Any], **base: Any) -> "FisherReport":
        with np.load(Path(base["directory"]) / d["arrays"]) as z:
            arrays = {k: z[k] for k in z.files}
        diag = {k[5:]: v for k, v in arrays.items() if k.startswith("diag/")}
        structures = {k: StructureScores(k, s["kind"], s["module"], arrays[f"struct/{k}"])
                      for k, s in d["structures"].items()}
        kfac = {k: KFACFactors(arrays[f"kfac/{k}/A"], arrays[f"kfac/{k}/G"], bool(v["include_bias"]))
                for k, v in d["kfac"].items()}
        return cls(
            layers=tuple(LayerFisher.from_dict(x) for x in d["layers"]),
            config=FisherConfig.from_dict(d["config"]),
            n_samples=int(d["n_samples"]),
            param_traces={k: float(v) for k, v in d["param_traces"].items()},
            diag=diag, structures=structures, kfac=kfac, meta=d.get("meta", {}), **base,
        )

    def save(self, directory: Path, inputs: str = "") -> "FisherReport":
        """Write ``fisher.npz`` and ``fisher.json`` atomically; return the saved, verified report."""
        with ArtifactWriter(Path(directory)) as w:
            np.savez(w.path / _NPZ, **self._arrays())
            return w.commit(replace(self, inputs=inputs or self.inputs))


def load_fisher_report(directory: Path) -> FisherReport:
    """Load and verify a FisherReport directory (raises ArtifactError naming the problem)."""
    return FisherReport.load(Path(directory))


REPORT_FORMAT = FisherReport.FORMAT_VERSION
