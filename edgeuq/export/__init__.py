"""ONNX export: noise as graph inputs, trunk/head split."""
from .onnx_export import (
    FEATURE_NAME, INPUT_NAME, LOGITS_NAME, OnnxArtifact, export_onnx, load_onnx_artifact,
    max_abs_difference, run_onnx,
)

__all__ = [
    "OnnxArtifact", "export_onnx", "load_onnx_artifact", "max_abs_difference", "run_onnx",
    "INPUT_NAME", "FEATURE_NAME", "LOGITS_NAME",
]
