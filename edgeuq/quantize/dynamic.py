"""int8 trunk weights by ONNX Runtime's dynamic quantisation: MatMul and Gather weights stored int8
(per tensor, symmetric), activations quantised per call (``DynamicQuantizeLinear`` + ``MatMulInteger``;
no calibration data). The head graph stays float32 (it is small, and an FPGA head is lowered to
fixed point by its own lowering). What the text student ships as its int8 variant
(``bench/text_student_int8.py`` on a bundle, :func:`edgeuq.text.boards.compile_text_student` on an
export where a board's weight budget needs it); TVM lowers the result like any other trunk.

The Fisher-guided per-layer plans (:mod:`.onnx_apply`, ``edgeuq quantize``) are the calibrated QDQ
path; this one is the uniform, calibration-free int8 of every MatMul and embedding table.
"""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from ..artifact import ArtifactWriter
from ..export import OnnxArtifact

__all__ = ["DYNAMIC_INT8", "dynamic_int8_graph", "dynamic_int8_trunk"]

#: how the weights were made, as bundles and result rows record it
DYNAMIC_INT8 = "int8 (onnxruntime quantize_dynamic: MatMul, Gather)"
_OPS = ["MatMul", "Gather"]


def dynamic_int8_graph(src: Path, dst: Path) -> None:
    """Write ``src`` (an ONNX graph) with int8 MatMul and Gather weights to ``dst``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=list(_OPS))


def dynamic_int8_trunk(art: OnnxArtifact, out_dir: Path) -> OnnxArtifact:
    """``art`` with its trunk graph's weights int8 (:func:`dynamic_int8_graph`), written atomically to
    ``out_dir``; the result records ``art.digest`` as its input."""
    with ArtifactWriter(Path(out_dir)) as w:
        dynamic_int8_graph(art.trunk_path, w.path / art.trunk_file)
        for f in art.payload_files():
            if f != art.trunk_file:
                shutil.copyfile(art.file_path(f), w.path / f)
        return w.commit(dataclasses.replace(art, directory=w.path, inputs=art.digest))
