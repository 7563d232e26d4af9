"""ONNX export: noise as graph inputs, trunk/head split."""
from .onnx_export import (
    FEATURE_NAME, INPUT_NAME, LOGITS_NAME, OnnxArtifact, export_onnx, load_onnx_artifact,
    max_abs_difference, run_onnx,
)
from .onnx_export import TOKEN_INPUT_NAME, TOKENIZER_FILE, example_input

__all__ = [
    "OnnxArtifact", "export_onnx", "load_onnx_artifact", "max_abs_difference", "run_onnx",
    "INPUT_NAME", "FEATURE_NAME", "LOGITS_NAME",
    "TOKEN_INPUT_NAME", "TOKENIZER_FILE", "example_input",
]
