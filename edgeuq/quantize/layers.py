"""Quantizable layers of an exported model and how ONNX nodes map back to them.

The exporter names every node after the module that produced it
(``/blocks.0/attn/qkv/MatMul`` comes from module ``blocks.0.attn.qkv``), so a
layer is found by its node's name: the node path minus its last component,
dots for slashes. A quantizable layer is a ``MatMul``/``Gemm``/``Conv`` node
whose weight is an initializer; attention's activation-by-activation MatMuls
are not layers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np
import onnx
from onnx import numpy_helper

from .precision import options_for

__all__ = ["QuantLayer", "discover_layers", "node_layer_name", "attribute_initializers", "tensor_bytes",
           "LAYER_OPS", "weight_array", "bias_array"]

LAYER_OPS = ("MatMul", "Gemm", "Conv")
GRAPHS = ("trunk", "head")


@dataclass(frozen=True)
class QuantLayer:
    """One quantizable layer of the exported trunk or head graph."""

    name: str                       # module name, e.g. "blocks.0.fc1" (= FisherReport layer name)
    graph: str                      # "trunk" | "head"
    node: str                       # ONNX node name in the fp32 export
    op_type: str                    # MatMul | Gemm | Conv
    weight: str                     # initializer name of the weight
    weight_shape: Tuple[int, ...]   # ONNX layout (MatMul: (K, N); Gemm: as stored; Conv: (O, I, k))
    options: Tuple[str, ...]        # precisions the ONNX Runtime path supports for it

    @property
    def numel(self) -> int:
        return int(np.prod(self.weight_shape))

    def to_dict(self) -> dict:
        return {"name": self.name, "graph": self.graph, "node": self.node, "op_type": self.op_type,
                "weight": self.weight, "weight_shape": list(self.weight_shape), "options": list(self.options)}


def node_layer_name(node_name: str) -> Optional[str]:
    """``/blocks.0/attn/qkv/MatMul`` -> ``blocks.0.attn.qkv``; None for unnamed/top-level nodes."""
    parts = [p for p in node_name.split("/") if p]
    if len(parts) < 2:
        return None
    return ".".join(parts[:-1])


def _gemm_trans_b(node: onnx.NodeProto) -> bool:
    return any(a.name == "transB" and a.i == 1 for a in node.attribute)


def weight_array(model: onnx.ModelProto, layer: "QuantLayer") -> np.ndarray:
    """The layer's fp32 weight in a canonical layout: (out_channels, reduce...) —
    Conv (O, I, k), Linear (N, K) whatever the ONNX layout."""
    inits = {t.name: t for t in model.graph.initializer}
    w = numpy_helper.to_array(inits[layer.weight]).astype(np.float32)
    if layer.op_type == "MatMul":
        return w.T
    if layer.op_type == "Gemm":
        node = next(n for n in model.graph.node if n.name == layer.node)
        return w if _gemm_trans_b(node) else w.T
    return w


def bias_array(model: onnx.ModelProto, layer: "QuantLayer") -> Optional[np.ndarray]:
    """The layer's bias: Gemm/Conv input 2, or the initializer added to a MatMul's output."""
    inits = {t.name: t for t in model.graph.initializer}
    node = next(n for n in model.graph.node if n.name == layer.node)
    if layer.op_type in ("Gemm", "Conv"):
        if len(node.input) > 2 and node.input[2] in inits:
            return numpy_helper.to_array(inits[node.input[2]]).astype(np.float32)
        return None
    for n in model.graph.node:
        if n.op_type == "Add" and node.output[0] in n.input:
            other = [i for i in n.input if i != node.output[0]]
            if other and other[0] in inits:
                return numpy_helper.to_array(inits[other[0]]).astype(np.float32)
    return None


def discover_layers(graphs: Mapping[str, onnx.ModelProto]) -> Tuple[QuantLayer, ...]:
    """Quantizable layers of ``{"trunk": model, "head": model}``, in graph order."""
    out: List[QuantLayer] = []
    seen: Dict[str, str] = {}
    for g in GRAPHS:
        model = graphs[g]
        inits = {t.name: t for t in model.graph.initializer}
        for node in model.graph.node:
            if node.op_type not in LAYER_OPS or len(node.input) < 2 or node.input[1] not in inits:
                continue
            name = node_layer_name(node.name)
            if name is None:
                continue
            if name in seen:
                raise ValueError(f"layer {name!r} appears twice ({seen[name]} and {node.name}); "
                                 "cannot map nodes to layers")
            seen[name] = node.name
            w = inits[node.input[1]]
            shape = tuple(int(d) for d in w.dims)
            if node.op_type == "Gemm" and any(a.name == "transA" and a.i == 1 for a in node.attribute):
                continue  # not a plain x·Wᵀ layer
            out.append(QuantLayer(name, g, node.name, node.op_type, node.input[1], shape,
                                  options_for(node.op_type, shape)))
    if not out:
        raise ValueError("no quantizable layer (MatMul/Gemm/Conv with an initializer weight) in the graphs")
    return tuple(out)


def tensor_bytes(t: onnx.TensorProto) -> int:
    """Serialized payload bytes of an initializer."""
    if t.HasField("raw_data"):
        return len(t.raw_data)
    return int(numpy_helper.to_array(t).nbytes)


_TRANSPARENT = {"QuantizeLinear", "DequantizeLinear", "Cast", "Transpose", "Reshape", "Identity"}


def attribute_initializers(model: onnx.ModelProto, layer_names: Iterable[str]) -> Tuple[Dict[str, int], int]:
    """Bytes of every initializer (and Constant node payload) per layer: an
    initializer belongs to the layer of the first node reached by following
    its consumers through quantize/dequantize/cast nodes. Returns
    ({layer: bytes}, unattributed bytes)."""
    names = set(layer_names)
    consumers: Dict[str, List[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)

    def owner(tensor: str, depth: int = 0) -> Optional[str]:
        for node in consumers.get(tensor, []):
            ln = node_layer_name(node.name)
            if ln in names:
                return ln
            if node.op_type in _TRANSPARENT and depth < 6:
                for o in node.output:
                    found = owner(o, depth + 1)
                    if found:
                        return found
        return None

    per: Dict[str, int] = {n: 0 for n in names}
    rest = 0
    for t in model.graph.initializer:
        ln = owner(t.name)
        if ln is None:
            rest += tensor_bytes(t)
        else:
            per[ln] += tensor_bytes(t)
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.type == onnx.AttributeProto.TENSOR:
                    ln = owner(node.output[0])
                    if ln is None:
                        rest += tensor_bytes(a.t)
                    else:
                        per[ln] += tensor_bytes(a.t)
    return per, rest
