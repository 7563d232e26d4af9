"""FisherReport: the artifact of the Fisher stage (``fisher.json`` + ``fisher.npz``).

``fisher.json`` holds the per-layer summary (weight and activation traces,
activation ranges), settings and provenance, and the sha256 of ``fisher.npz``;
``fisher.npz`` holds the arrays: the per-parameter diagonal (``diag/<param>``),
structure scores (``struct/<name>``) and K-FAC factors (``kfac/<layer>/A|G``).
Loading verifies the hash; ``FisherReport.sha256`` is the hash of
``fisher.json`` and so covers both files.
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from .activations import ActivationStats
from .config import FisherConfig
from .kfac import KFACFactors

__all__ = ["LayerFisher", "StructureScores", "FisherReport", "load_fisher_report", "REPORT_FORMAT"]

REPORT_FORMAT = 1
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
class FisherReport:
    layers: Tuple[LayerFisher, ...]
    config: FisherConfig
    n_samples: int
    param_traces: Mapping[str, float]
    diag: Mapping[str, np.ndarray] = field(default_factory=dict)
    structures: Mapping[str, StructureScores] = field(default_factory=dict)
    kfac: Mapping[str, KFACFactors] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)   # checkpoint sha256, data description, timings
    directory: Optional[Path] = None
    sha256: str = ""

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

    def to_json(self, npz_sha256: str) -> dict:
        return {
            "format": REPORT_FORMAT,
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
            "arrays_sha256": npz_sha256,
        }

    def save(self, directory: Path) -> "FisherReport":
        """Write ``fisher.npz`` then ``fisher.json`` (each atomically); return the saved report."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, **self._arrays())
        data = buf.getvalue()
        tmp = directory / (_NPZ + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(directory / _NPZ)
        text = json.dumps(self.to_json(hashlib.sha256(data).hexdigest()), indent=2, sort_keys=True)
        tmp = directory / (_JSON + ".tmp")
        tmp.write_text(text)
        tmp.replace(directory / _JSON)
        return load_fisher_report(directory)


def load_fisher_report(directory: Path) -> FisherReport:
    """Load and verify a FisherReport directory."""
    directory = Path(directory)
    jpath = directory / _JSON
    if not jpath.is_file():
        raise FileNotFoundError(f"no Fisher report at {directory}: {_JSON} missing")
    raw = jpath.read_bytes()
    try:
        d = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{jpath} is not valid JSON: {exc}") from exc
    if d.get("format") != REPORT_FORMAT:
        raise ValueError(f"{jpath}: unsupported Fisher report format {d.get('format')!r}")
    npath = directory / d["arrays"]
    if not npath.is_file():
        raise FileNotFoundError(f"Fisher report arrays missing: {npath}")
    data = npath.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != d["arrays_sha256"]:
        raise ValueError(f"{npath} does not match the sha256 recorded in {jpath}: {actual[:12]}… != "
                         f"{d['arrays_sha256'][:12]}…")
    with np.load(io.BytesIO(data)) as z:
        arrays = {k: z[k] for k in z.files}
    diag = {k[5:]: v for k, v in arrays.items() if k.startswith("diag/")}
    structures = {k: StructureScores(k, s["kind"], s["module"], arrays[f"struct/{k}"])
                  for k, s in d["structures"].items()}
    kfac = {k: KFACFactors(arrays[f"kfac/{k}/A"], arrays[f"kfac/{k}/G"], bool(v["include_bias"]))
            for k, v in d["kfac"].items()}
    return FisherReport(
        layers=tuple(LayerFisher.from_dict(x) for x in d["layers"]),
        config=FisherConfig.from_dict(d["config"]),
        n_samples=int(d["n_samples"]),
        param_traces={k: float(v) for k, v in d["param_traces"].items()},
        diag=diag, structures=structures, kfac=kfac, meta=d.get("meta", {}),
        directory=directory, sha256=hashlib.sha256(raw).hexdigest(),
    )
