"""The stochastic MLP head as the FPGA sees it.

``head.onnx`` (features, noise_1, ..., noise_k -> logits) is read back into a
:class:`HeadSpec`: its Linear layers (weights from the ONNX initializers), which
layer's input each noise tensor multiplies, and the activation between layers.
The spec is checked numerically against ONNX Runtime before anything is built
from it, so a head this module misreads fails here, loudly.

On the FPGA the head has **one** AXI-stream input per row, the concatenation
``[features | noise_1 | ... | noise_k]``, and one output, the logits. The
hardware model (:func:`build_hardware_module`, a PyTorch module hls4ml converts)
splits that vector with constant 0/1 selector Dense layers (multiplications by
constant 0 and 1 are removed by HLS) and multiplies the masks in with hls4ml
``Merge(multiply)`` layers.

GELU: hls4ml 1.3 has no GELU for the Vivado backends. The hardware uses
``gelu(z) ~= z * sigmoid(1.702 z)`` (per-channel scale + sigmoid table + multiply);
its worst-case deviation from exact GELU is about 0.02 and the lowering measures the
end-to-end effect against the float head. ReLU heads convert exactly.

:func:`quantized_reference` emulates the same layers in numpy with the
fixed-point types of :class:`HeadTypes` (see :mod:`.fixed`).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .fixed import FixedType, parse_fixed, quantize

__all__ = [
    "HeadStructureError", "DenseLayer", "HeadSpec", "HeadTypes", "GELU_SIGMOID_SCALE",
    "read_head_spec", "float_forward", "quantized_reference", "build_hardware_module",
    "pack_rows", "resolve_types", "verify_spec", "LAYER_PLAN_KEYS",
]

GELU_SIGMOID_SCALE = 1.702
ACTIVATIONS = ("gelu", "relu")


class HeadStructureError(ValueError):
    """head.onnx is not an MLP head this lowering can build for an FPGA."""


@dataclass(frozen=True)
class DenseLayer:
    name: str
    weight: np.ndarray  # (out, in), PyTorch layout
    bias: np.ndarray    # (out,)

    @property
    def n_in(self) -> int:
        return int(self.weight.shape[1])

    @property
    def n_out(self) -> int:
        return int(self.weight.shape[0])


@dataclass(frozen=True)
class HeadSpec:
    """features (d,) -> [mask] -> Dense -> act -> [mask] -> Dense ... -> logits."""

    feature_name: str
    logits_name: str
    layers: Tuple[DenseLayer, ...]
    masks: Tuple[Tuple[str, int], ...]  # (noise input name, index of the Dense whose input it multiplies)
    activation: str
    #: width of the features input when the head reads only its leading ``layers[0].n_in`` columns (a
    #: text trunk's [classifier features | density features]; the head graph slices them); 0: the same
    feature_width: int = 0

    @property
    def feature_size(self) -> int:
        """Width of the features input (what travels on the stream)."""
        return self.feature_width or self.layers[0].n_in

    @property
    def feature_columns(self) -> int:
        """The leading feature columns the head reads."""
        return self.layers[0].n_in

    @property
    def num_classes(self) -> int:
        return self.layers[-1].n_out

    @property
    def input_names(self) -> Tuple[str, ...]:
        return (self.feature_name,) + tuple(n for n, _ in self.masks)

    def input_sizes(self) -> Tuple[int, ...]:
        return (self.feature_size,) + tuple(self.layers[k].n_in for _, k in self.masks)

    @property
    def stream_width(self) -> int:
        return sum(self.input_sizes())


def _ident(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_]", "_", name)
    return s if s and not s[0].isdigit() else f"n_{s}"


# ----------------------------------------------------------------------------- reading ONNX


def read_head_spec(head_path: Path, feature_name: str, noise_names: Sequence[str], logits_name: str) -> HeadSpec:
    """Parse ``head.onnx`` into a :class:`HeadSpec` (structure only; call :func:`verify_spec`)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(head_path))
    g = model.graph
    inits = {i.name: numpy_helper.to_array(i).astype(np.float32) for i in g.initializer}
    consts: Dict[str, np.ndarray] = {}
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    consts[n.output[0]] = numpy_helper.to_array(a.t)
    consumers: Dict[str, List] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    shape = [d.dim_value for d in next(i for i in g.input if i.name == feature_name).type.tensor_type.shape.dim]
    if len(shape) != 2:
        raise HeadStructureError(
            f"{head_path.name}: input {feature_name!r} has rank {len(shape)}; the FPGA lowering supports a head-only "
            "stochastic split whose features are the pooled vector (batch, d). This export's head contains encoder "
            "blocks (features are tokens): set ModelConfig(stochastic_blocks=()) to put only the head on the FPGA")

    dense: List[Tuple[object, DenseLayer]] = []
    read_columns = 0  # a leading Slice of the features: the head reads columns [0, read_columns)
    for n in g.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type == "Slice":
            read_columns = _leading_columns(n, feature_name, {**inits, **consts}, head_path.name)
        elif n.op_type == "Gemm":
            if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0 or attrs.get("transA", 0):
                raise HeadStructureError(f"{head_path.name}: Gemm {n.name!r} with alpha/beta/transA is not supported")
            w = inits.get(n.input[1])
            if w is None:
                raise HeadStructureError(f"{head_path.name}: Gemm {n.name!r} weight {n.input[1]!r} is not a constant")
            w = w if attrs.get("transB", 0) else w.T
            b = inits.get(n.input[2]) if len(n.input) > 2 else None
            b = np.zeros(w.shape[0], np.float32) if b is None else b
            dense.append((n, DenseLayer(_layer_name(n.input[1], len(dense)), w, b)))
        elif n.op_type == "MatMul" and n.input[1] in inits:
            w = inits[n.input[1]].T
            add = [c for c in consumers.get(n.output[0], []) if c.op_type == "Add"]
            b = next((inits[i] for c in add for i in c.input if i in inits), np.zeros(w.shape[0], np.float32))
            dense.append((n, DenseLayer(_layer_name(n.input[1], len(dense)), w, b)))
        elif n.op_type not in ("Mul", "Add", "Div", "Erf", "Constant", "Relu", "Identity"):
            raise HeadStructureError(f"{head_path.name}: operator {n.op_type} ({n.name!r}) is not part of an MLP "
                                     "head the FPGA lowering supports (Gemm/MatMul, Mul by noise, GELU or ReLU)")
    if len(dense) < 1:
        raise HeadStructureError(f"{head_path.name}: no Linear (Gemm/MatMul) layer found")
    names = [d.name for _, d in dense]
    if len(set(names)) != len(names):
        dense = [(n, DenseLayer(f"fc{k + 1}", d.weight, d.bias)) for k, (n, d) in enumerate(dense)]
    ops = {n.op_type for n in g.node}
    activation = "gelu" if "Erf" in ops else "relu" if "Relu" in ops else None
    if activation is None and len(dense) > 1:
        raise HeadStructureError(f"{head_path.name}: no GELU (Erf) or ReLU between the Linear layers")

    dense_nodes = [n for n, _ in dense]
    masks = []
    for name in noise_names:
        muls = [c for c in consumers.get(name, []) if c.op_type == "Mul"]
        if len(muls) != 1:
            raise HeadStructureError(f"{head_path.name}: noise input {name!r} must feed exactly one Mul "
                                     f"(found {[c.op_type for c in consumers.get(name, [])]})")
        k = _first_dense_downstream(muls[0], consumers, dense_nodes)
        if k is None:
            raise HeadStructureError(f"{head_path.name}: noise input {name!r} reaches no Linear layer")
        masks.append((name, k))
    masks.sort(key=lambda m: (m[1], list(noise_names).index(m[0])))
    if [m[0] for m in masks] != list(noise_names):
        raise HeadStructureError(f"{head_path.name}: noise inputs {list(noise_names)} are not in layer order "
                                 f"({[m[0] for m in masks]}); the stream layout follows the graph inputs")
    width = int(shape[1])
    if read_columns and dense[0][1].n_in != min(read_columns, width):
        raise HeadStructureError(f"{head_path.name}: the head slices {read_columns} feature columns but its first "
                                 f"Linear layer takes {dense[0][1].n_in}")
    if not read_columns and width and width != dense[0][1].n_in:
        raise HeadStructureError(f"{head_path.name}: features of width {width}, first Linear layer takes "
                                 f"{dense[0][1].n_in}")
    return HeadSpec(feature_name, logits_name, tuple(d for _, d in dense), tuple(masks), activation or "relu",
                    feature_width=width if read_columns and width != dense[0][1].n_in else 0)


def _leading_columns(node, feature_name: str, constants: Mapping[str, np.ndarray], graph: str) -> int:
    """``k`` for a Slice that keeps the leading ``k`` columns of the features input (``features[:, :k]``,
    a text trunk's classifier columns ahead of its density columns); any other Slice is refused."""
    args = [constants.get(i) if i else None for i in node.input[1:]]
    starts, ends, axes, steps = (list(args) + [None] * 4)[:4]
    ok = (node.input[0] == feature_name and starts is not None and ends is not None
          and np.asarray(starts).tolist() == [0] and (axes is None or np.asarray(axes).tolist() in ([1], [-1]))
          and (steps is None or np.asarray(steps).tolist() == [1]) and np.asarray(ends).size == 1
          and int(np.asarray(ends).reshape(-1)[0]) > 0)
    if not ok:
        raise HeadStructureError(f"{graph}: Slice {node.name!r} is not features[:, :k] of the input {feature_name!r} "
                                 "(the only slice an FPGA head reads: the leading classifier columns)")
    return int(np.asarray(ends).reshape(-1)[0])


def _layer_name(weight_name: str, index: int) -> str:
    parts = [p for p in weight_name.split(".") if p]
    if len(parts) >= 2 and parts[-1] == "weight" and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", parts[-2]):
        return parts[-2]
    return f"fc{index + 1}"


def _first_dense_downstream(node, consumers, dense_nodes) -> Optional[int]:
    seen, frontier = set(), [node]
    while frontier:
        nxt = []
        for n in frontier:
            for out in n.output:
                for c in consumers.get(out, []):
                    if any(c is d for d in dense_nodes):
                        return next(i for i, d in enumerate(dense_nodes) if d is c)
                    if id(c) not in seen:
                        seen.add(id(c))
                        nxt.append(c)
        frontier = nxt
    return None


# ----------------------------------------------------------------------------- float references


def _gelu(z: np.ndarray, approx: bool) -> np.ndarray:
    if approx:
        return z / (1.0 + np.exp(-GELU_SIGMOID_SCALE * z))
    erf = np.vectorize(math.erf, otypes=[np.float64])
    return 0.5 * z * (1.0 + erf(z / math.sqrt(2.0)))


def float_forward(spec: HeadSpec, feeds: Mapping[str, np.ndarray], gelu_approx: bool = False) -> np.ndarray:
    """Float64 forward pass of the head; ``gelu_approx`` uses the hardware's GELU approximation."""
    h = np.asarray(feeds[spec.feature_name], np.float64)[:, :spec.feature_columns]
    for k, layer in enumerate(spec.layers):
        for name, at in spec.masks:
            if at == k:
                h = h * np.asarray(feeds[name], np.float64)
        h = h @ layer.weight.astype(np.float64).T + layer.bias
        if k < len(spec.layers) - 1:
            h = _gelu(h, gelu_approx) if spec.activation == "gelu" else np.maximum(h, 0.0)
    return h


def pack_rows(spec: HeadSpec, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
    """The AXI-stream layout: one float32 row ``[features | noise_1 | ...]`` per head row."""
    parts = [np.asarray(feeds[n], np.float32).reshape(len(feeds[spec.feature_name]), -1) for n in spec.input_names]
    return np.ascontiguousarray(np.concatenate(parts, axis=1))


# ----------------------------------------------------------------------------- fixed-point types

LAYER_PLAN_KEYS = ("weight", "bias", "accum", "result")
DEFAULT_DATA = "ap_fixed<16,6,AP_RND_CONV,AP_SAT>"
DEFAULT_WEIGHT = "ap_fixed<16,6,AP_RND_CONV,AP_SAT>"
DEFAULT_ACCUM = "ap_fixed<32,12>"
SCALE_TYPE = "ap_fixed<16,2,AP_RND_CONV,AP_SAT>"
SIGMOID_TABLE = "ap_fixed<18,2,AP_RND_CONV,AP_SAT>"
SIGMOID_TABLE_SIZE = 1024


@dataclass(frozen=True)
class HeadTypes:
    """Every fixed-point type of the hardware head, by role."""

    data: FixedType                       # stream input after the float cast, masks products, activations
    dense: Mapping[str, Mapping[str, FixedType]]  # layer -> weight/bias/accum/result
    scale: FixedType = parse_fixed(SCALE_TYPE)
    table: FixedType = parse_fixed(SIGMOID_TABLE)

    def to_json(self) -> dict:
        return {"data": self.data.hls(), "gelu_scale": self.scale.hls(), "sigmoid_table": self.table.hls(),
                "layers": {n: {r: t.hls() for r, t in roles.items()} for n, roles in self.dense.items()}}


def resolve_types(spec: HeadSpec, precision: Optional[Mapping[str, object]] = None,
                  data: str = DEFAULT_DATA, weight: str = DEFAULT_WEIGHT, accum: str = DEFAULT_ACCUM) -> HeadTypes:
    """Per-layer types from a quantization plan.

    ``precision`` maps a Linear layer name (``"fc1"``, ``"fc2"``) to a type string, which
    sets that layer's weight and bias types, or to a dict with any of
    ``weight``/``bias``/``accum``/``result``; the key ``"result"`` sets the logits type.
    Accumulators default to ``ap_fixed<32,12>``; everything else to
    ``ap_fixed<16,6>`` with rounding and saturation.
    """
    plan = dict(precision or {})
    names = [layer.name for layer in spec.layers]
    unknown = sorted(set(plan) - set(names) - {"result"})
    if unknown:
        raise ValueError(f"precision plan names unknown layers {unknown}; the head's layers are {names} "
                         "(plus 'result' for the logits)")
    data_t = parse_fixed(data, "data precision")
    dense: Dict[str, Dict[str, FixedType]] = {}
    for layer in spec.layers:
        roles = {"weight": parse_fixed(weight), "bias": parse_fixed(weight), "accum": parse_fixed(accum),
                 "result": data_t}
        entry = plan.get(layer.name)
        if isinstance(entry, str):
            t = parse_fixed(entry, f"precision[{layer.name!r}]")
            roles["weight"] = roles["bias"] = t
        elif isinstance(entry, Mapping):
            bad = sorted(set(entry) - set(LAYER_PLAN_KEYS))
            if bad:
                raise ValueError(f"precision[{layer.name!r}]: unknown roles {bad}; known: {list(LAYER_PLAN_KEYS)}")
            for role, text in entry.items():
                roles[role] = parse_fixed(text, f"precision[{layer.name!r}][{role!r}]")
        elif entry is not None:
            raise ValueError(f"precision[{layer.name!r}] must be a type string or a dict, got {entry!r}")
        dense[layer.name] = roles
    if "result" in plan:
        dense[names[-1]]["result"] = parse_fixed(plan["result"], "precision['result']")
    return HeadTypes(data=data_t, dense=dense)


def quantized_reference(spec: HeadSpec, types: HeadTypes, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
    """The head with every value, weight and intermediate result held in its fixed-point type
    (numpy emulation; the sigmoid is exact where the hardware uses a table)."""
    q = quantize
    x = q(pack_rows(spec, feeds).astype(np.float64), types.data)
    sizes = np.cumsum((0,) + spec.input_sizes())
    part = {name: x[:, sizes[i]:sizes[i + 1]] for i, name in enumerate(spec.input_names)}
    h = part[spec.feature_name][:, :spec.feature_columns]
    for k, layer in enumerate(spec.layers):
        t = types.dense[layer.name]
        for name, at in spec.masks:
            if at == k:
                h = q(h * part[name], types.data)
        acc = q(h @ q(layer.weight, t["weight"]).T + q(layer.bias, t["bias"]), t["accum"])
        h = q(acc, t["result"])
        if k < len(spec.layers) - 1:
            if spec.activation == "gelu":
                s = q(h * q(np.float64(GELU_SIGMOID_SCALE), types.scale), types.data)
                sig = q(1.0 / (1.0 + np.exp(-s)), types.data)
                h = q(h * sig, types.data)
            else:
                h = np.maximum(h, 0.0)
    return h


# ----------------------------------------------------------------------------- hardware model (PyTorch, for hls4ml)


def build_hardware_module(spec: HeadSpec):
    """A PyTorch module computing the head from the concatenated stream row; hls4ml converts it.

    Returns ``(module, layer_roles)``: ``layer_roles`` maps every hls4ml layer name the
    conversion must produce to its role (``input``, ``select``, ``dense``, ``mul``,
    ``scale``, ``sigmoid``, ``relu``), so the precision config can be filled in by role
    and a renamed layer fails loudly instead of silently keeping a default type.
    """
    import torch
    from torch import nn

    d_in = spec.stream_width
    sizes = np.cumsum((0,) + spec.input_sizes())
    roles: Dict[str, str] = {"x": "input"}
    mul_names = iter(["mul"] + [f"mul_{i}" for i in range(1, 64)])

    class HardwareHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self._plan: List[Tuple[str, str]] = []
            for i, name in enumerate(spec.input_names):
                # the features' selector keeps the columns the head reads (density columns pass by)
                width = spec.feature_columns if i == 0 else sizes[i + 1] - sizes[i]
                sel = nn.Linear(d_in, width, bias=False)
                with torch.no_grad():
                    w = torch.zeros(sel.weight.shape)
                    w[:, sizes[i]:sizes[i] + width] = torch.eye(width)
                    sel.weight.copy_(w)
                setattr(self, f"sel_{_ident(name)}", sel)
                roles[f"sel_{_ident(name)}"] = "select"
            for k, layer in enumerate(spec.layers):
                for name, at in spec.masks:
                    if at == k:
                        roles[next(mul_names)] = "mul"
                lin = nn.Linear(layer.n_in, layer.n_out)
                with torch.no_grad():
                    lin.weight.copy_(torch.from_numpy(layer.weight))
                    lin.bias.copy_(torch.from_numpy(layer.bias))
                setattr(self, layer.name, lin)
                roles[layer.name] = "dense"
                if k < len(spec.layers) - 1:
                    if spec.activation == "gelu":
                        bn = nn.BatchNorm1d(layer.n_out, eps=0.0)
                        with torch.no_grad():
                            bn.weight.fill_(GELU_SIGMOID_SCALE)
                            bn.bias.zero_()
                            bn.running_mean.zero_()
                            bn.running_var.fill_(1.0)
                        setattr(self, f"{layer.name}_gelu_scale", bn)
                        setattr(self, f"{layer.name}_gelu_sigmoid", nn.Sigmoid())
                        roles[f"{layer.name}_gelu_scale"] = "scale"
                        roles[f"{layer.name}_gelu_sigmoid"] = "sigmoid"
                        roles[next(mul_names)] = "mul"
                    else:
                        setattr(self, f"{layer.name}_relu", nn.ReLU())
                        roles[f"{layer.name}_relu"] = "relu"

        def forward(self, x):
            h = getattr(self, f"sel_{_ident(spec.feature_name)}")(x)
            for k, layer in enumerate(spec.layers):
                for name, at in spec.masks:
                    if at == k:
                        h = h * getattr(self, f"sel_{_ident(name)}")(x)
                h = getattr(self, layer.name)(h)
                if k < len(spec.layers) - 1:
                    if spec.activation == "gelu":
                        h = h * getattr(self, f"{layer.name}_gelu_sigmoid")(getattr(self, f"{layer.name}_gelu_scale")(h))
                    else:
                        h = getattr(self, f"{layer.name}_relu")(h)
            return h

    return HardwareHead().eval(), roles


def verify_spec(spec: HeadSpec, head_path: Path, rows: int = 64, seed: int = 0, atol: float = 1e-4) -> float:
    """Max |logit| difference between :func:`float_forward` and ONNX Runtime on ``head_path``;
    raises :class:`HeadStructureError` above ``atol`` (the head was misread)."""
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    feeds = {spec.feature_name: rng.standard_normal((rows, spec.feature_size)).astype(np.float32)}
    for (name, _), size in zip(spec.masks, spec.input_sizes()[1:]):
        feeds[name] = (rng.random((rows, size)) > 0.3).astype(np.float32) / 0.7
    sess = ort.InferenceSession(str(head_path), providers=["CPUExecutionProvider"])
    ref = sess.run([spec.logits_name], feeds)[0]
    err = float(np.max(np.abs(float_forward(spec, feeds) - ref)))
    if not err <= atol:
        raise HeadStructureError(f"{head_path.name}: the MLP read from the graph disagrees with ONNX Runtime "
                                 f"(max |logit diff| {err:.3g} > {atol:g}); this head's structure is not supported")
    return err
