"""Bundles for any export, including text models (int64 token input + tokenizer file).

:func:`edgeuq.bundle.build_bundle` writes float-signal bundles; :func:`bundle_artifact`
does the same for every :class:`OnnxArtifact` and, for a token model, declares
``input.dtype = "int64"``, ``vocab_size``, ``normalization = "none"`` and ships the
tokenizer JSON (``input.tokenizer``, hashed in ``files``) so the device can turn
text into token ids with ``UncertaintyRuntime.tokenize``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

from edgeuq_runtime.bundle import Bundle, load_bundle, write_bundle
from edgeuq_runtime.manifest import GraphSpec, InputSpec, Manifest

from .. import __version__
from .onnx_export import OnnxArtifact

__all__ = ["bundle_artifact"]


def bundle_artifact(
    art: OnnxArtifact,
    out_dir: Path,
    model_name: str,
    model_version: str,
    default_samples: int = 16,
    metadata: Optional[Mapping[str, Any]] = None,
    overwrite: bool = False,
) -> Bundle:
    """Write and verify a bundle for ``art`` (signal or token input)."""
    if art.input_dtype == "float32":
        from ..bundle import build_bundle

        return build_bundle(art, out_dir, model_name, model_version, default_samples, metadata, overwrite)
    sources = {"trunk.onnx": art.trunk_path, "head.onnx": art.head_path}
    if art.tokenizer_path is not None:
        sources[art.tokenizer_file] = art.tokenizer_path
    manifest = Manifest(
        model_name=model_name,
        model_version=model_version,
        input=InputSpec(
            name=art.input_name, length=art.input_length, sample_rate_hz=art.sample_rate_hz,
            dtype=art.input_dtype, normalization="none", vocab_size=art.vocab_size, tokenizer=art.tokenizer_file,
        ),
        class_names=tuple(art.class_names),
        default_samples=int(default_samples),
        noise=tuple(art.noise),
        trunk=GraphSpec(file="trunk.onnx", inputs=(art.input_name,), outputs=(art.feature_name,)),
        head=GraphSpec(
            file="head.onnx", inputs=(art.feature_name, *[s.name for s in art.noise]), outputs=(art.logits_name,)
        ),
        feature_name=art.feature_name,
        logits_name=art.logits_name,
        backend="onnxruntime",
        metadata={"created_by": f"edgeuq {__version__}", "opset": art.opset, **dict(metadata or {})},
    )
    write_bundle(Path(out_dir), manifest, sources, overwrite=overwrite)
    return load_bundle(Path(out_dir), verify=True)
