"""The ``onnxruntime`` lowerer: no lowering, the exported ONNX graphs run as they are.

This is the smallest complete lowerer; copy it to add one: a frozen ``Options``
dataclass, ``options_for`` (from the board/recipe/CLI settings), ``lower`` returning a
:class:`~edgeuq.lower.base.CompiledArtifact` with its :class:`~edgeuq.lower.base.Evidence`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .base import CompiledArtifact, CompiledGraph, CompileSettings, Evidence, Lowerer, register_lowerer

__all__ = ["OnnxRuntimeLowerer", "OnnxRuntimeOptions"]


@dataclass(frozen=True)
class OnnxRuntimeOptions:
    """No options: the graphs pass through unchanged."""


@register_lowerer("onnxruntime")
class OnnxRuntimeLowerer(Lowerer):
    """No lowering: the ONNX graphs themselves, for the onnxruntime executor."""

    Options = OnnxRuntimeOptions

    def options_for(self, settings: CompileSettings, roles: Sequence[str]) -> OnnxRuntimeOptions:
        return OnnxRuntimeOptions()

    def lower(self, art: Any, target: Any, workdir: Path, options: OnnxRuntimeOptions) -> CompiledArtifact:
        evidence = Evidence(how="native", reason="no lowering: the exported ONNX graphs run as they are, "
                                                 "already verified against PyTorch at export")
        return CompiledArtifact(target=target.name, trunk=CompiledGraph(Path(art.trunk_path), "onnxruntime"),
                                head=CompiledGraph(Path(art.head_path), "onnxruntime"), evidence=evidence,
                                metadata={"lowerer": "onnxruntime"})
