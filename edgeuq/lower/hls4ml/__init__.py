"""The ``hls4ml`` lowerer: the stochastic MLP head -> an AXI-stream IP for a Zynq FPGA.

Modules: ``lowerer`` (the registered :class:`Hls4mlLowerer` and :class:`Hls4mlOptions`),
``head`` (head.onnx -> MLP spec, hardware module, fixed-point reference), ``fixed``
(``ap_fixed`` arithmetic), ``estimate`` (analytic resource/latency estimate),
``pitfalls`` (guards against silent hls4ml conversion problems, the trunk attempt).
"""
from __future__ import annotations

from .lowerer import (
    DESCRIPTOR_FORMAT, DMA_PATH, FpgaNumericsError, FpgaTargetError, Hls4mlLowerer, Hls4mlOptions, compile_hls4ml,
)

__all__ = ["Hls4mlLowerer", "Hls4mlOptions", "compile_hls4ml", "FpgaTargetError", "FpgaNumericsError",
           "DESCRIPTOR_FORMAT", "DMA_PATH"]
