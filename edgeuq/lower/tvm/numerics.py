"""Reference numerics for TVM checks: the same inputs and noise for both graphs, ONNX Runtime's
outputs on them, the largest difference, and the rule it must meet (:func:`judge`).

The rule: every output element within the float tolerance (``atol``, default ``1e-4 + 1e-4 *
max |reference|``). A graph with dynamically quantised activations (``DynamicQuantizeLinear``:
:mod:`edgeuq.quantize.dynamic`'s int8 trunk) rounds each MatMul input to uint8 with a scale computed
per call; a compiled library whose float arithmetic differs from ONNX Runtime's in the last bits
flips the rounding of the activations that sit near a rounding boundary, and one flip moves a whole
row of the next MatMul's output by a quantisation step times a weight row: no fixed float tolerance
separates that from a bug. For such a graph the check measures what rounding flips do on its own
inputs: ONNX Runtime runs the graph :data:`FLIP_DRAWS` more times with every quantised activation
moved by a random relative error of at most :data:`FLIP_NOISE` (2^-16: above the float32 arithmetic
differences of two correct implementations, estimated at ~2^-20 = sqrt(K) 2^-24 for K ~ 1,500-term
sums in another order) before it is rounded;
the largest deviation of those runs from the reference is the flip allowance, and the compiled
library must stay within the float tolerance + that allowance. A lowering bug that moves the outputs
by more than such flips do fails (a small weight error in an early layer does: see
tests/test_dynamic_int8_check.py); a graph without dynamic quantisation gets the plain float rule."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import numpy as np

from edgeuq_runtime.noise import sample_noise

__all__ = ["TvmNumericsError", "reference_feeds", "ort_outputs", "max_error", "tolerance", "CHECK_BATCH",
           "CHECK_SAMPLES", "FLIP_NOISE", "FLIP_DRAWS", "Judgement", "judge", "flip_allowance",
           "quantised_activations"]

CHECK_BATCH = 3      # windows in the numerical check (exercises chunking and padding of fixed-batch libraries)
CHECK_SAMPLES = 4    # MC samples in the numerical check
#: graphs with dynamically quantised activations: relative error put on every quantised activation
#: (uniform in +-FLIP_NOISE) in each of FLIP_DRAWS ONNX Runtime runs that measure the rounding-flip allowance
FLIP_NOISE = 2.0 ** -16
FLIP_DRAWS = 3


class TvmNumericsError(RuntimeError):
    """A compiled library disagrees with ONNX Runtime beyond the tolerance."""


def reference_feeds(art: Any, seed: int = 0, batch: int = CHECK_BATCH, samples: int = CHECK_SAMPLES) -> Dict[str, Dict]:
    """Inputs for both graphs: windows (or token ids) for the trunk; ONNX Runtime's features
    tiled s-major plus sampled noise for the head (so head errors do not include trunk errors)."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(getattr(art, "input_dtype", "float32"))
    if dtype.kind in "iu":
        vocab = int(getattr(art, "vocab_size", None) or 2)
        x = rng.integers(0, vocab, size=(batch, art.input_length)).astype(dtype)
    else:
        x = rng.standard_normal((batch, art.input_length)).astype(np.float32)
    trunk = {art.input_name: x}
    feats = ort_outputs(Path(art.trunk_path), trunk)[art.feature_name]
    head = {art.feature_name: np.tile(feats, (samples,) + (1,) * (feats.ndim - 1)),
            **sample_noise(art.noise, samples * batch, rng)}
    return {"trunk": trunk, "head": head}


def ort_outputs(path: Path, feeds: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, dict(feeds))))


def max_error(got: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray]) -> float:
    """Largest |difference| over the outputs both dicts have (inf on a shape mismatch, NaN propagates)."""
    errs = []
    for k, r in ref.items():
        g = np.asarray(got[k])
        errs.append(float("inf") if g.shape != r.shape else float(np.max(np.abs(g - r))) if r.size else 0.0)
    return float("nan") if any(e != e for e in errs) else max(errs)


def tolerance(ref: Mapping[str, np.ndarray], atol: Optional[float]) -> float:
    if atol is not None:
        return float(atol)
    scale = max(float(np.max(np.abs(v))) for v in ref.values())
    return 1e-4 + 1e-4 * scale


def quantised_activations(model: Any) -> list:
    """The ``DynamicQuantizeLinear`` nodes of an ONNX model (activations quantised per call)."""
    return [n for n in model.graph.node if n.op_type == "DynamicQuantizeLinear"]


def _with_activation_noise(model: Any, noise: float, seed: int) -> bytes:
    """``model`` with every dynamically quantised activation x replaced by x * (1 + u), u uniform in
    [-noise, noise] (ONNX ``RandomUniformLike``, seeded per node), before it is rounded."""
    import onnx
    from onnx import helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = []
    for i, n in enumerate(out.graph.node):
        if n.op_type == "DynamicQuantizeLinear":
            x = n.input[0]
            u, one_u, moved = f"{x}__flip_u{i}", f"{x}__flip_1u{i}", f"{x}__flip_x{i}"
            one = f"{x}__flip_one{i}"
            nodes += [helper.make_node("RandomUniformLike", [x], [u], low=-noise, high=noise, seed=float(seed * 7919 + i),
                                       dtype=onnx.TensorProto.FLOAT),
                      helper.make_node("Constant", [], [one], value=helper.make_tensor(one, onnx.TensorProto.FLOAT,
                                                                                       [], [1.0])),
                      helper.make_node("Add", [u, one], [one_u]),
                      helper.make_node("Mul", [x, one_u], [moved])]
            n.input[0] = moved
        nodes.append(n)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out.SerializeToString()


def flip_allowance(path: Path, feeds: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray],
                   noise: float = FLIP_NOISE, draws: int = FLIP_DRAWS) -> Optional[float]:
    """The largest |output - ``ref``| of ONNX Runtime's runs of the graph at ``path`` on ``feeds`` with its
    dynamically quantised activations moved by a relative ``noise`` before rounding (module docstring);
    None when the graph quantises no activation."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    if not quantised_activations(model):
        return None
    worst = 0.0
    for k in range(draws):
        sess = ort.InferenceSession(_with_activation_noise(model, noise, k + 1), providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        worst = max(worst, max_error(dict(zip(names, sess.run(names, dict(feeds))))
                                     , {n: r for n, r in ref.items() if n in names}))
    return worst


@dataclass(frozen=True)
class Judgement:
    """What :func:`judge` found: ``max_error`` (max |compiled - reference|), ``tolerance`` (what the rule
    accepts), ``ok``, and the rule's figures (``detail``)."""

    ok: bool
    max_error: float
    tolerance: float
    detail: Mapping[str, Any]


def judge(path: Path, feeds: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray],
          ref: Mapping[str, np.ndarray], atol: Optional[float] = None) -> Judgement:
    """The compiled outputs ``got`` against ONNX Runtime's ``ref`` of the graph at ``path`` on ``feeds``
    (module docstring: the float tolerance, plus the rounding-flip allowance where the graph quantises
    its activations per call)."""
    err = max_error(got, ref)
    tol = tolerance(ref, atol)
    flips = flip_allowance(path, feeds, ref)
    if flips is None:
        return Judgement(err <= tol, err, tol, {"rule": "every element within the float tolerance",
                                                "float_tolerance": tol})
    limit = tol + flips
    return Judgement(err <= limit, err, limit, {
        "rule": (f"dynamically quantised activations: every element within the float tolerance + the rounding-flip "
                 f"allowance (max deviation of {FLIP_DRAWS} ONNX Runtime runs with the quantised activations moved "
                 f"by a relative {FLIP_NOISE:.2g} before rounding)"),
        "float_tolerance": tol, "flip_allowance": flips, "flip_noise": FLIP_NOISE, "flip_draws": FLIP_DRAWS})
