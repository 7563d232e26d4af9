"""Apply a per-layer precision assignment to the exported trunk/head graphs.

Per graph, in this order:

1. int8: ONNX Runtime static quantization in QDQ format on the chosen nodes only
   (``nodes_to_quantize``), weights per output channel (int8, symmetric, in the
   7-bit range ``reduce_range``: on x86 CPUs without VNNI — AVX2, AVX-512 before
   Cascade Lake — ONNX Runtime's u8 x s8 kernels add pairs of products in int16
   (``vpmaddubsw``), which saturates with full-range weights: the tests' tiny model
   was 0.067 of logit (21 % of its largest logit) off fp32 under an AVX2 CPU model
   (qemu-x86_64 -cpu EPYC-Rome); with 7-bit weights it is within the test's 10 %
   bound there, and 1.4 % off natively with AVX-512 VNNI), the
   input activation per tensor (uint8) calibrated with min/max on real windows —
   the trunk on calibration windows, the head on the (already quantized) trunk's
   features with noise drawn by the runtime's own samplers. Layer outputs are
   not quantized (``OpTypesToExcludeOutputQuantization``), which is what the
   sensitivity model assumes.
2. int4: weight-only ``com.microsoft.MatMulNBits`` (symmetric blocks along K,
   see :func:`pack_int4`) on the chosen MatMuls; a chosen ``Gemm`` is first
   rewritten as MatMul + Add. (ONNX Runtime's own MatMulNBitsQuantizer needs the
   ``onnx_ir`` package, which is not a dependency; the packing is a few lines.)
3. fp16: weight (and Gemm/Conv bias) stored as fp16, the node runs in fp16
   between two Casts.
4. names (``QuantSettings.compact_names``): every tensor but the graph inputs and
   outputs gets a short id (:mod:`edgeuq.quantize.compact`); node names stay.

int8 biases stay float32 unless ``QuantSettings.quantize_bias`` (ONNX Runtime's
QDQ int32 bias is stored with a per-channel scale and zero point: three times the
float bias, for no speed-up, since layer outputs are not quantized).

Graph inputs and outputs stay float32 and keep their names, so the bundle
manifest and the runtime are unchanged.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeuq_runtime.noise import sample_noise
from edgeuq_runtime.preprocess import normalize

from ..artifact import ArtifactWriter
from ..export import OnnxArtifact
from ..hostcpu import host_ort_session
from .compact import compact_tensor_names
from .layers import QuantLayer
from .precision import PRECISIONS, QuantSettings

__all__ = ["CalibrationSet", "apply_assignment", "load_graphs", "check_assignment", "pack_int4"]



@dataclass(frozen=True, eq=False)
class CalibrationSet:
    """Windows (as the runtime receives them; normalised here like the runtime does)."""

    windows: np.ndarray
    seed: int = 0

    def __post_init__(self) -> None:
        if len(self.windows) == 0:
            raise ValueError("calibration set is empty")


def load_graphs(art: OnnxArtifact) -> Dict[str, onnx.ModelProto]:
    return {"trunk": onnx.load(str(art.trunk_path)), "head": onnx.load(str(art.head_path))}


def check_assignment(layers: Sequence[QuantLayer], assignment: Mapping[str, str]) -> None:
    names = {lay.name for lay in layers}
    unknown = sorted(set(assignment) - names)
    if unknown:
        raise ValueError(f"assignment names unknown layers {unknown}; layers: {sorted(names)}")
    for lay in layers:
        p = assignment.get(lay.name, "fp32")
        if p not in PRECISIONS:
            raise ValueError(f"layer {lay.name!r}: unknown precision {p!r}; known: {PRECISIONS}")
        if p not in lay.options:
            raise ValueError(f"layer {lay.name!r} ({lay.op_type}) cannot be {p} on ONNX Runtime; "
                             f"options: {lay.options}")


# ---------------------------------------------------------------- calibration feeds


def _input_batches(art: OnnxArtifact, calib: CalibrationSet, settings: QuantSettings, batch: int = 32):
    x = np.asarray(calib.windows[: settings.calibration_windows])
    if getattr(art, "input_dtype", "float32") == "float32":
        x = normalize(x.astype(np.float32), art.normalization)
    return [x[i : i + batch] for i in range(0, len(x), batch)]


def _head_feeds(art: OnnxArtifact, trunk_path: Path, calib: CalibrationSet, settings: QuantSettings) -> List[dict]:
    sess = host_ort_session(trunk_path)
    rng = np.random.default_rng(calib.seed)
    feeds = []
    s = settings.head_calibration_samples
    for xb in _input_batches(art, calib, settings):
        f = sess.run([art.feature_name], {art.input_name: xb})[0]
        tiled = np.tile(f, (s,) + (1,) * (f.ndim - 1))
        feeds.append({art.feature_name: tiled, **sample_noise(art.noise, len(tiled), rng)})
    return feeds


class _Reader:
    """onnxruntime CalibrationDataReader over a list of feed dicts."""

    def __init__(self, feeds: List[dict]) -> None:
        self._feeds = feeds
        self._it: Iterator[dict] = iter(feeds)

    def get_next(self) -> Optional[dict]:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._feeds)


# ---------------------------------------------------------------- graph passes


_CALIBRATOR_LOCK = threading.Lock()


@contextlib.contextmanager
def _calibrator_sized_to_host_threads() -> Iterator[int]:
    """ONNX Runtime's static-quantization calibrator builds its own session with a default
    ``SessionOptions`` (a pool of every core, spinning between runs), and ``quantize_static``
    has no option to size it. Within this block its session is made as ORT makes it (graph
    optimizations off, the calibrator's providers) but with the intra-op pool of
    :func:`edgeuq.hostcpu.host_threads` (a search worker's share of the cores), like every other
    host-side session (:func:`edgeuq.hostcpu.host_ort_session`). Yields the thread count (0: ORT's
    default, when torch sets none)."""
    import onnxruntime as ort
    from onnxruntime.quantization.calibrate import CalibraterBase

    from ..hostcpu import host_threads

    n = host_threads()

    def create_inference_session(self) -> None:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        if n > 0:
            so.intra_op_num_threads = n
            so.inter_op_num_threads = 1
        self.infer_session = ort.InferenceSession(self.augmented_model_path, sess_options=so,
                                                  providers=self.execution_providers)

    with _CALIBRATOR_LOCK:  # one class attribute: one quantization at a time per process
        original = CalibraterBase.__dict__["create_inference_session"]
        CalibraterBase.create_inference_session = create_inference_session
        try:
            yield n
        finally:
            CalibraterBase.create_inference_session = original


def _int8(src: Path, dst: Path, nodes: List[str], feeds: List[dict], quantize_bias: bool = False) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import CalibrationDataReader

    reader = type("Reader", (_Reader, CalibrationDataReader), {})(feeds)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs pre-processing advice at WARNING on the root logger
    try:
        with _calibrator_sized_to_host_threads():
            quantize_static(
                str(src), str(dst), reader, quant_format=QuantFormat.QDQ,
                op_types_to_quantize=["MatMul", "Gemm", "Conv"], per_channel=True, reduce_range=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_quantize=nodes,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm", "Conv"],
                               "QuantizeBias": bool(quantize_bias)},
            )
    finally:
        root.setLevel(level)


def _init_map(model: onnx.ModelProto) -> Dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def _gemm_to_matmul(model: onnx.ModelProto, node_name: str) -> None:
    """Gemm(x, W, b, transB) -> MatMul(x, W') + Add(b) with W' = (K, N); names kept in the layer's scope."""
    g = model.graph
    idx = next(i for i, n in enumerate(g.node) if n.name == node_name)
    node = g.node[idx]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
        raise ValueError(f"{node_name}: only plain Gemm (alpha=beta=1, no transA) can become MatMul")
    inits = _init_map(model)
    w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
    if attrs.get("transB", 0):
        w = w.T
    scope = node_name.rsplit("/", 1)[0]
    wname = node.input[1] + "_KxN"
    g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w), wname))
    out = node.output[0]
    new = []
    if len(node.input) > 2 and node.input[2]:
        mm_out = f"{scope}/MatMul_output_0"
        new.append(helper.make_node("MatMul", [node.input[0], wname], [mm_out], name=f"{scope}/MatMul"))
        new.append(helper.make_node("Add", [mm_out, node.input[2]], [out], name=f"{scope}/Add"))
    else:
        new.append(helper.make_node("MatMul", [node.input[0], wname], [out], name=f"{scope}/MatMul"))
    del g.node[idx]
    for k, n in enumerate(new):
        g.node.insert(idx + k, n)
    _drop_unused_initializers(model)


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def pack_int4(w_kn: np.ndarray, block: int):
    """Symmetric blockwise int4 of a (K, N) MatMul weight in MatMulNBits layout.

    Per column n and block of ``block`` rows along K: scale = m / −8 with m the
    block's element of largest magnitude (so m maps exactly to −8 and the 16
    levels −8..7 are all used); q = clip(round(w / scale), −8, 7) stored as
    q + 8 (the op's default zero point), two per byte, low nibble first.
    Returns (packed uint8 (N, blocks, block/2), scales float32 (N*blocks,),
    dequantized (K, N) float32).
    """
    k, n = w_kn.shape
    nb = -(-k // block)
    wt = np.zeros((n, nb * block), dtype=np.float32)
    wt[:, :k] = w_kn.T
    blocks = wt.reshape(n, nb, block)
    idx = np.abs(blocks).argmax(axis=2)
    m = np.take_along_axis(blocks, idx[..., None], axis=2)[..., 0]
    scale = (m / -8.0).astype(np.float32)
    safe = np.where(scale == 0, 1.0, scale)[..., None]
    q = np.clip(np.rint(blocks / safe), -8, 7).astype(np.int16)
    u = (q + 8).astype(np.uint8)
    packed = (u[..., 0::2] & 0x0F) | ((u[..., 1::2] & 0x0F) << 4)
    deq = (q * scale[..., None]).reshape(n, nb * block)[:, :k].T
    return packed.astype(np.uint8), scale.reshape(-1), np.ascontiguousarray(deq, dtype=np.float32)


def _int4(model: onnx.ModelProto, nodes: List[str], block: int) -> onnx.ModelProto:
    """Replace each chosen MatMul (Gemm first becomes MatMul + Add) by a com.microsoft MatMulNBits."""
    for name in list(nodes):
        node = next(n for n in model.graph.node if n.name == name)
        if node.op_type == "Gemm":
            _gemm_to_matmul(model, name)
            nodes[nodes.index(name)] = name.rsplit("/", 1)[0] + "/MatMul"
    g = model.graph
    inits = _init_map(model)
    for name in nodes:
        idx = next(i for i, n in enumerate(g.node) if n.name == name)
        node = g.node[idx]
        if node.op_type != "MatMul" or node.input[1] not in inits:
            raise ValueError(f"{name}: int4 needs a MatMul with an initializer weight, got {node.op_type}")
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        if w.ndim != 2:
            raise ValueError(f"{name}: int4 needs a 2-D weight, got shape {w.shape}")
        k, n = w.shape
        packed, scales, _ = pack_int4(w, block)
        base = node.input[1]
        g.initializer.append(numpy_helper.from_array(packed, base + "_Q4"))
        g.initializer.append(numpy_helper.from_array(scales, base + "_Q4_scales"))
        new = helper.make_node("MatMulNBits", [node.input[0], base + "_Q4", base + "_Q4_scales"], list(node.output),
                               name=name + "_Q4", domain="com.microsoft", K=k, N=n, bits=4, block_size=block)
        del g.node[idx]
        g.node.insert(idx, new)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    _drop_unused_initializers(model)
    return model


def _fp16(model: onnx.ModelProto, nodes: List[str]) -> None:
    g = model.graph
    inits = _init_map(model)
    for name in nodes:
        idx = next(i for i, n in enumerate(g.node) if n.name == name)
        node = g.node[idx]
        for pos in (1, 2):
            if pos < len(node.input) and node.input[pos] in inits:
                src = inits[node.input[pos]]
                half = numpy_helper.from_array(numpy_helper.to_array(src).astype(np.float16), src.name + "_fp16")
                g.initializer.append(half)
                node.input[pos] = half.name
        x_in, y_out = node.input[0], node.output[0]
        cast_in = helper.make_node("Cast", [x_in], [f"{name}_in_fp16"], name=f"{name}_CastIn", to=TensorProto.FLOAT16)
        node.input[0] = f"{name}_in_fp16"
        node.output[0] = f"{name}_out_fp16"
        cast_out = helper.make_node("Cast", [node.output[0]], [y_out], name=f"{name}_CastOut", to=TensorProto.FLOAT)
        g.node.insert(idx, cast_in)
        g.node.insert(idx + 2, cast_out)
    _drop_unused_initializers(model)


def _quantize_graph(src: Path, dst: Path, layers: Sequence[QuantLayer], assignment: Mapping[str, str],
                    feeds_fn, settings: QuantSettings, tmp: Path) -> None:
    by = {p: [lay.node for lay in layers if assignment.get(lay.name, "fp32") == p] for p in PRECISIONS}
    current = src
    if by["int8"]:
        q8 = tmp / f"{dst.stem}.int8.onnx"
        _int8(current, q8, by["int8"], feeds_fn(), settings.quantize_bias)
        current = q8
    model = onnx.load(str(current))
    if by["int4"]:
        model = _int4(model, list(by["int4"]), settings.int4_block)
    if by["fp16"]:
        _fp16(model, by["fp16"])
    for t in list(model.graph.value_info):  # stale types after the passes: let ORT infer them
        model.graph.value_info.remove(t)
    if settings.compact_names:
        compact_tensor_names(model)
    onnx.save(model, str(dst))


def apply_assignment(
    art: OnnxArtifact,
    layers: Sequence[QuantLayer],
    assignment: Mapping[str, str],
    calib: CalibrationSet,
    out_dir: Path,
    settings: QuantSettings = QuantSettings(),
) -> OnnxArtifact:
    """Write quantized ``trunk.onnx``/``head.onnx`` (+ ``export.json``) to ``out_dir`` atomically;
    the result is an :class:`OnnxArtifact` recording ``art.digest`` as its input."""
    check_assignment(layers, assignment)
    out_dir = Path(out_dir)
    with ArtifactWriter(out_dir) as w, tempfile.TemporaryDirectory(prefix="edgeuq-quant-") as tmpd:
        tmp = Path(tmpd)
        trunk_layers = [lay for lay in layers if lay.graph == "trunk"]
        head_layers = [lay for lay in layers if lay.graph == "head"]
        trunk_out = w.path / art.trunk_file
        _quantize_graph(art.trunk_path, trunk_out, trunk_layers, assignment,
                        lambda: [{art.input_name: xb} for xb in _input_batches(art, calib, settings)], settings, tmp)
        _quantize_graph(art.head_path, w.path / art.head_file, head_layers, assignment,
                        lambda: _head_feeds(art, trunk_out, calib, settings), settings, tmp)
        for f in art.payload_files():
            if f not in (art.trunk_file, art.head_file):
                shutil.copyfile(art.file_path(f), w.path / f)
        return w.commit(dataclasses.replace(art, directory=w.path, inputs=art.digest))
