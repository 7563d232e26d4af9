"""Per-layer costs at each precision, measured on the real graphs.

* **bytes**: the model is built once per precision with every layer at it (where
  the layer supports it), and each initializer's serialized bytes are charged
  to the layer that consumes it (weights, scales, zero points, biases,
  activation scales) — what the quantized file really stores. Bytes no layer
  owns (norms, positions, ...) are ``fixed_bytes``.
* **latency**: the same per-precision models run under ONNX Runtime's per-node
  profiler (one thread, the runtime's workload: trunk on one window, head on S
  rows); the median time of each node of the *optimized* graph is charged to its
  layer (by node name, or for quantize/dequantize/cast nodes by the layer they
  feed). Unattributed time is ``fixed_ms``.

Results are cached as JSON keyed by the graphs' hashes and the settings.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import onnx
from tqdm.auto import tqdm

from edgeuq_runtime.atomic import atomic_write
from edgeuq_runtime.noise import sample_noise

from ..export import OnnxArtifact
from ..hostcpu import host_ort_session
from ..profile import measure
from .layers import QuantLayer, attribute_initializers, node_layer_name
from .onnx_apply import CalibrationSet, apply_assignment, load_graphs
from .precision import PRECISIONS, QuantSettings

__all__ = ["LayerCosts", "measure_costs", "uniform_assignment", "profile_layers"]

COSTS_FORMAT = 1


@dataclass(frozen=True)
class LayerCosts:
    bytes: Mapping[str, Mapping[str, int]]                 # layer -> precision -> bytes
    fixed_bytes: int
    latency_ms: Mapping[str, Mapping[str, float]] = field(default_factory=dict)  # layer -> precision -> ms
    fixed_ms: float = 0.0
    samples: int = 0                                        # head rows the latency refers to (S, one window)

    @property
    def has_latency(self) -> bool:
        return bool(self.latency_ms)

    def total_bytes(self, assignment: Mapping[str, str]) -> int:
        return self.fixed_bytes + sum(self.bytes[n][assignment.get(n, "fp32")] for n in self.bytes)

    def total_ms(self, assignment: Mapping[str, str]) -> float:
        if not self.has_latency:
            raise ValueError("these costs were measured without latency profiling")
        return self.fixed_ms + sum(self.latency_ms[n][assignment.get(n, "fp32")] for n in self.latency_ms)

    def to_json(self) -> dict:
        return {"format": COSTS_FORMAT, "bytes": {k: dict(v) for k, v in self.bytes.items()},
                "fixed_bytes": self.fixed_bytes, "latency_ms": {k: dict(v) for k, v in self.latency_ms.items()},
                "fixed_ms": self.fixed_ms, "samples": self.samples}

    @classmethod
    def from_json(cls, d: Mapping) -> "LayerCosts":
        return cls({k: {p: int(b) for p, b in v.items()} for k, v in d["bytes"].items()}, int(d["fixed_bytes"]),
                   {k: {p: float(t) for p, t in v.items()} for k, v in d["latency_ms"].items()},
                   float(d["fixed_ms"]), int(d["samples"]))


def uniform_assignment(layers: Sequence[QuantLayer], precision: str, fallback: str = "fp32") -> Dict[str, str]:
    """Every layer at ``precision`` where it supports it, else ``fallback``."""
    return {lay.name: precision if precision in lay.options else fallback for lay in layers}


def _optimized_session(path: Path, opt_path: Path, threads: int, profile_prefix: Optional[str]):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3  # saving the optimized graph warns that it is hardware specific: known, wanted
    so.optimized_model_filepath = str(opt_path)
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


_TRANSPARENT = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "Cast", "Transpose", "Reshape"}


def _node_owners(model: onnx.ModelProto, names: set) -> Dict[str, Optional[str]]:
    consumers: Dict[str, List[onnx.NodeProto]] = defaultdict(list)
    for node in model.graph.node:
        for i in node.input:
            consumers[i].append(node)

    def owner(node: onnx.NodeProto, depth: int) -> Optional[str]:
        ln = node_layer_name(node.name)
        if ln in names:
            return ln
        if node.op_type in _TRANSPARENT and depth < 6:
            for o in node.output:
                for c in consumers.get(o, []):
                    found = owner(c, depth + 1)
                    if found:
                        return found
        return None

    return {n.name: owner(n, 0) for n in model.graph.node}


def profile_layers(path: Path, feeds: Mapping[str, np.ndarray], layer_names: Sequence[str], threads: int = 1,
                   repeats: int = 30, warmup: int = 3) -> Tuple[Dict[str, float], float]:
    """Median kernel time (ms) per layer of one graph run on ``feeds``, and the unattributed rest."""
    with tempfile.TemporaryDirectory(prefix="edgeuq-prof-") as tmp:
        opt = Path(tmp) / "optimized.onnx"
        sess = _optimized_session(path, opt, threads, str(Path(tmp) / "profile"))
        # the project's one harness drives the runs; ORT's profiler attributes each run's time to nodes
        measure(lambda: sess.run(None, dict(feeds)), warmup=warmup, repeats=repeats)
        events = json.loads(Path(sess.end_profiling()).read_text())
        owners = _node_owners(onnx.load(str(opt)), set(layer_names))
    per_node: Dict[str, List[float]] = defaultdict(list)
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            per_node[e["name"][: -len("_kernel_time")]].append(e["dur"] / 1000.0)
    layer_ms = {n: 0.0 for n in layer_names}
    rest = 0.0
    for node, durs in per_node.items():
        med = float(np.median(durs[warmup:] if len(durs) > warmup else durs))
        ln = owners.get(node)
        if ln is None:
            rest += med
        else:
            layer_ms[ln] += med
    return layer_ms, rest


def _cache_key(art: OnnxArtifact, layers: Sequence[QuantLayer], settings: QuantSettings, latency: bool,
               samples: int, threads: int, repeats: int) -> str:
    import onnxruntime as ort

    blob = json.dumps({"sha": dict(art.sha256), "layers": [lay.to_dict() for lay in layers],
                       "settings": settings.to_dict(), "latency": latency, "samples": samples, "threads": threads,
                       "repeats": repeats, "ort": ort.__version__, "format": COSTS_FORMAT}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def measure_costs(
    art: OnnxArtifact,
    layers: Sequence[QuantLayer],
    calib: CalibrationSet,
    latency: bool = False,
    samples: int = 16,
    threads: int = 1,
    repeats: int = 30,
    settings: QuantSettings = QuantSettings(),
    cache_dir: Optional[Path] = None,
    progress: bool = True,
) -> LayerCosts:
    """Bytes (always) and latency (``latency=True``) of every layer at every precision it supports."""
    key = _cache_key(art, layers, settings, latency, samples, threads, repeats)
    cache = Path(cache_dir) / f"layer-costs-{key}.json" if cache_dir is not None else None
    if cache is not None and cache.is_file():
        try:
            return LayerCosts.from_json(json.loads(cache.read_text()))
        except (ValueError, KeyError, TypeError):  # a damaged cache entry is recomputed, never trusted
            pass
    names = [lay.name for lay in layers]
    nbytes: Dict[str, Dict[str, int]] = {n: {} for n in names}
    nms: Dict[str, Dict[str, float]] = {n: {} for n in names}
    fixed_bytes, fixed_ms = None, 0.0
    small = CalibrationSet(np.asarray(calib.windows[:16]), calib.seed)
    rng = np.random.default_rng(0)
    x = np.asarray(calib.windows[:1], dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="edgeuq-costs-") as tmp:
        for p in tqdm(PRECISIONS, desc="layer costs", disable=not progress, leave=False):
            assign = uniform_assignment(layers, p)
            qart = art if p == "fp32" else apply_assignment(art, layers, assign, small, Path(tmp) / p, settings)
            graphs = load_graphs(qart)
            rest = 0
            for g, model in graphs.items():
                per, r = attribute_initializers(model, names)
                rest += r
                for lay in layers:
                    if lay.graph == g and assign[lay.name] == p:
                        nbytes[lay.name][p] = per[lay.name]
            if p == "fp32":
                fixed_bytes = rest
            if latency:
                trunk = host_ort_session(qart.trunk_path)
                feats = trunk.run([qart.feature_name], {qart.input_name: x})[0]
                tiled = np.tile(feats, (samples,) + (1,) * (feats.ndim - 1))
                head_feeds = {qart.feature_name: tiled, **sample_noise(qart.noise, samples, rng)}
                t_ms, t_rest = profile_layers(qart.trunk_path, {qart.input_name: x}, names, threads, repeats)
                h_ms, h_rest = profile_layers(qart.head_path, head_feeds, names, threads, repeats)
                for lay in layers:
                    if assign[lay.name] == p:
                        nms[lay.name][p] = (t_ms if lay.graph == "trunk" else h_ms)[lay.name]
                if p == "fp32":
                    fixed_ms = t_rest + h_rest
    costs = LayerCosts(nbytes, int(fixed_bytes or 0), nms if latency else {}, fixed_ms, samples if latency else 0)
    if cache is not None:
        atomic_write(cache, json.dumps(costs.to_json(), indent=2, sort_keys=True))
    return costs
