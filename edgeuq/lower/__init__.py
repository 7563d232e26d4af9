"""Lowering: OnnxArtifact + ComputeTarget -> CompiledArtifact, one registered :class:`Lowerer` each.

Lowerers: ``tvm/`` (cpu and CUDA targets), ``hls4ml/`` (FPGA head), ``onnxruntime.py``
(no lowering). The plug-in point is :mod:`edgeuq.lower.base`; the toolchains they
need (cross compilers, qemu, the armv7 TVM driver's C++ sources) live in ``toolchain/``.
"""
from __future__ import annotations

from .base import (
    EVIDENCE_KINDS, LOWERERS, CompiledArtifact, CompiledGraph, CompileSettings, Evidence, Lowerer,
    LoweringNotAvailable, get_lowerer, lower, options_from_kwargs, register_lowerer,
)

__all__ = ["CompiledGraph", "CompiledArtifact", "Evidence", "EVIDENCE_KINDS", "CompileSettings", "Lowerer",
           "LOWERERS", "register_lowerer", "get_lowerer", "lower", "LoweringNotAvailable", "options_from_kwargs"]
