"""Short tensor names for a finished graph: the bytes a deployed ONNX file spends on names.

An exported graph names every intermediate tensor after its producer
(``/blocks.0/attn/qkv/MatMul_output_0``), every initializer after its parameter
(``model.embed.c3.weight_quantized``) and every quantizer tensor after both
(``/embed/act_1/Mul_1_output_0_zero_point``). Each name is stored once where it is
produced and again wherever it is consumed, so on a small model the names outweigh
the int8/int4 weights: the CWRU student's quantized trunk spent about 7.5 kB on
tensor names against 5.2 kB of weights.

:func:`compact_tensor_names` renames every tensor except the graph's inputs and
outputs (the bundle manifest's contract) to a short id (``t0``, ``t1``, ... in
base 36), in place. Node names are kept: they carry the layer names
(``/embed/c1/Conv`` -> ``embed.c1``) that per-layer bytes, profiles and
quantization plans are attributed by. The computation is unchanged (same nodes,
same initializers, only renamed); graphs with subgraphs (If/Loop/Scan) are
refused rather than half-renamed.
"""
from __future__ import annotations

from typing import Dict

import onnx

__all__ = ["compact_tensor_names", "name_bytes"]

_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def _short(i: int) -> str:
    s = ""
    while True:
        i, r = divmod(i, 36)
        s = _DIGITS[r] + s
        if i == 0:
            return "t" + s


def name_bytes(model: onnx.ModelProto) -> int:
    """UTF-8 bytes of the tensor names the graph stores (node inputs/outputs, initializers,
    graph inputs/outputs; one count per occurrence)."""
    g = model.graph
    names = [t.name for t in g.initializer] + [v.name for v in list(g.input) + list(g.output)]
    for n in g.node:
        names += list(n.input) + list(n.output)
    return sum(len(s.encode("utf-8")) for s in names)


def compact_tensor_names(model: onnx.ModelProto) -> Dict[str, str]:
    """Rename every tensor but the graph inputs and outputs to a short id, in place; returns
    {old name: new name}. Empty names (omitted optional inputs) stay empty."""
    g = model.graph
    for n in g.node:
        for a in n.attribute:
            if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                raise ValueError(f"node {n.name!r} ({n.op_type}) has a subgraph; compact_tensor_names "
                                 "handles flat graphs only")
    keep = {v.name for v in list(g.input) + list(g.output)}
    mapping: Dict[str, str] = {}
    taken = set(keep)
    counter = 0

    def new(name: str) -> str:
        nonlocal counter
        if not name or name in keep:
            return name
        if name not in mapping:
            while True:
                short = _short(counter)
                counter += 1
                if short not in taken:
                    break
            mapping[name] = short
            taken.add(short)
        return mapping[name]

    if len(g.sparse_initializer):
        raise ValueError("compact_tensor_names: sparse initializers are not supported")
    for t in g.initializer:
        t.name = new(t.name)
    for n in g.node:
        for i, name in enumerate(n.input):
            n.input[i] = new(name)
        for i, name in enumerate(n.output):
            n.output[i] = new(name)
    for v in list(g.value_info):
        if v.name in mapping:
            v.name = mapping[v.name]
    return mapping
