"""The ``tvm`` lowerer (Relax): cpu and CUDA targets -> one library per graph.

Modules: ``lowerer`` (the registered :class:`TvmLowerer` and its :class:`TvmOptions`),
``build`` (ONNX import, compile/tune, export), ``targets`` (TVM targets and cross
compilers from the target descriptors), ``tune`` (MetaSchedule), ``cuda`` (cubins),
``check`` (the evidence: native run / qemu / compile-only), ``numerics`` (reference
feeds and errors), ``qemu`` (user-mode emulation), ``armv7`` (the cross-built C++ VM
driver, sources in ``edgeuq/lower/toolchain/native``).
"""
from __future__ import annotations

from .build import GraphBuild, graph_io
from .lowerer import TvmLowerer, TvmOptions, compile_tvm
from .numerics import TvmNumericsError

__all__ = ["TvmLowerer", "TvmOptions", "compile_tvm", "GraphBuild", "graph_io", "TvmNumericsError"]
