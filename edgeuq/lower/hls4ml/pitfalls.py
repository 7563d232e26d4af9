"""Guards against hls4ml 1.3's silent pitfalls, and the recorded attempt at the trunk.

Measured on hls4ml 1.3.0 (see shared notes); each is silent, i.e. the model converts,
compiles and runs with wrong numbers:

* **Linear weight layout.** With ``ChannelsLastConversion='off'`` PyTorch ``Linear``
  weights are not transposed into hls4ml's (n_in, n_out) layout; a square layer then
  computes ``W.T @ x``. :func:`check_dense_layout` compares every Dense layer's weights
  with the PyTorch module's.
* **Softmax over a 2-D tile** normalises over all elements, not per row.
  :func:`check_softmax` refuses a Softmax whose input has more than one non-batch axis.
* **LayerNorm saturation.** The 1/sqrt(variance) table saturates for variance > 1
  (error ~2.7 at unit-variance input). :func:`check_layernorm` refuses LayerNorm layers.

The FPGA head (Dense, masks, GELU approximation) needs none of the three, and the
lowering runs all three guards on it anyway, so a future change that brings one in
fails at lowering time. The numerical comparison against the float and quantized
references (in :mod:`.hls4ml`) is the second line of defence.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterable, Mapping

import numpy as np

__all__ = ["FpgaPitfallError", "check_dense_layout", "check_softmax", "check_layernorm", "check_all",
           "attempt_trunk"]


class FpgaPitfallError(RuntimeError):
    """A converted hls4ml model would hit one of hls4ml's silent numerical pitfalls."""


def _layers(hls_model) -> Iterable:
    return list(hls_model.get_layers())


def check_dense_layout(hls_model, torch_weights: Mapping[str, np.ndarray]) -> None:
    """Every Dense layer named in ``torch_weights`` (PyTorch (out, in) layout) must hold the
    transposed matrix, hls4ml's (n_in, n_out)."""
    found: Dict[str, np.ndarray] = {}
    for layer in _layers(hls_model):
        if layer.class_name == "Dense" and layer.name in torch_weights:
            data = np.asarray(layer.get_weights("weight").data)
            # the Resource strategy transposes on purpose (dense_resource wants (n_out, n_in)); undo that
            found[layer.name] = data.T if layer.get_attr("_weights_transposed", False) is True else data
    missing = sorted(set(torch_weights) - set(found))
    if missing:
        raise FpgaPitfallError(f"Dense layers {missing} are missing from the hls4ml model "
                               f"(it has {[l.name for l in _layers(hls_model)]})")
    for name, w in torch_weights.items():
        hw = found[name].reshape(w.shape[1], w.shape[0]) if found[name].size == w.size else found[name]
        if hw.shape == (w.shape[1], w.shape[0]) and np.array_equal(hw, w.T):
            continue
        transposed = w.shape[0] == w.shape[1] and np.array_equal(found[name].reshape(w.shape), w)
        raise FpgaPitfallError(
            f"hls4ml Dense layer {name!r} does not hold the PyTorch weights in (n_in, n_out) layout"
            + (" — they are untransposed, the ChannelsLastConversion='off' pitfall (the layer would compute W.T @ x)"
               if transposed else f" (shape {found[name].shape}, expected {(w.shape[1], w.shape[0])})"))


def check_softmax(hls_model) -> None:
    for layer in _layers(hls_model):
        if layer.class_name.startswith("Softmax") or layer.get_attr("activation") == "softmax":
            var = layer.get_input_variable()
            shape = list(var.shape) if var is not None else []
            if len(shape) > 1:
                raise FpgaPitfallError(
                    f"Softmax layer {layer.name!r} has input shape {shape}: hls4ml 1.3 normalises a 2-D tile over all "
                    "of its elements instead of per row (attention scores would be wrong). Keep softmax off the "
                    "FPGA (the runtime applies it to the logits) or flatten to one row per call")


def check_layernorm(hls_model) -> None:
    for layer in _layers(hls_model):
        if "LayerNorm" in layer.class_name:
            raise FpgaPitfallError(
                f"LayerNorm layer {layer.name!r}: hls4ml 1.3's 1/sqrt(variance) table saturates for variance > 1 "
                "(measured error ~2.7 at unit-variance input). Keep LayerNorm on the CPU (in the trunk)")


def check_all(hls_model, torch_weights: Mapping[str, np.ndarray]) -> None:
    check_dense_layout(hls_model, torch_weights)
    check_softmax(hls_model)
    check_layernorm(hls_model)


# ONNX plumbing operators that carry no computation hls4ml would need to implement.
_PLUMBING = {"Constant", "Identity", "Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Reshape", "Cast"}


def attempt_trunk(trunk_path: Path, workdir: Path) -> dict:
    """Try the trunk (conv embedding + attention blocks) through hls4ml's ONNX frontend and
    record what happens. It does not convert correctly with hls4ml 1.3; this returns the
    reasons instead of pretending otherwise (nothing is compiled)."""
    import onnx
    import hls4ml

    model = onnx.load(str(trunk_path))
    ops = sorted({n.op_type for n in model.graph.node})
    supported = set(hls4ml.converters.get_supported_onnx_layers())
    unsupported = sorted(set(ops) - supported - _PLUMBING)
    result = {"converted": False, "frontend": "onnx", "hls4ml": hls4ml.__version__, "operators": ops,
              "unsupported_operators": unsupported}
    reasons = []
    if unsupported:
        reasons.append(f"hls4ml {hls4ml.__version__} has no ONNX handler for {unsupported}")
    if "LayerNormalization" in ops:
        reasons.append("LayerNormalization: no ONNX handler, and the PyTorch handler's 1/sqrt(var) table saturates "
                       "for variance > 1")
    if "Softmax" in ops and "MatMul" in ops:
        reasons.append("attention: Softmax over (T, T) score tiles normalises over the whole tile in hls4ml, and "
                       "activation x activation MatMul/Transpose need the einsum rewrite with fixes")
    if "Erf" in ops:
        reasons.append("GELU (Erf) has no hls4ml implementation")
    try:
        cfg = hls4ml.utils.config_from_onnx_model(model, granularity="name", backend="Vivado")
        hls_model = hls4ml.converters.convert_from_onnx_model(
            model, hls_config=cfg, output_dir=str(Path(workdir) / "trunk_attempt"), backend="Vivado")
        check_softmax(hls_model)
        check_layernorm(hls_model)
        result["parsed"] = True
    except Exception as exc:  # hls4ml raises plain Exception/RuntimeError on unsupported graphs
        result["parsed"] = False
        result["converter_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
    if not reasons and result.get("parsed"):
        reasons.append("converted without a detected pitfall, but no numerical check of the trunk exists yet")
    result["reason"] = "; ".join(reasons) or result.get("converter_error", "unknown")
    return result
