"""Bundle stage: OnnxArtifact -> a verified bundle directory the runtime loads."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

from edgeuq_runtime.bundle import Bundle, load_bundle, write_bundle
from edgeuq_runtime.manifest import GraphSpec, InputSpec, Manifest

from .. import __version__
from ..export import OnnxArtifact

__all__ = ["build_bundle"]


def build_bundle(
    art: OnnxArtifact,
    out_dir: Path,
    model_name: str,
    model_version: str,
    default_samples: int = 16,
    metadata: Optional[Mapping[str, Any]] = None,
    overwrite: bool = False,
) -> Bundle:
    """Copy the trunk and head graphs (and, for a token model, the tokenizer
    vocabulary) into ``out_dir`` with a hashed manifest, then load the result
    back with full verification.

    Signal models declare float32 input with their normalization; token models
    declare ``int64`` input, ``vocab_size``, no normalization, and ship the
    tokenizer JSON so the device turns text into the host's exact token ids.
    """
    tokens = art.input_dtype != "float32"
    sources = {"trunk.onnx": art.trunk_path, "head.onnx": art.head_path}
    if tokens and art.tokenizer_path is not None:
        sources[art.tokenizer_file] = art.tokenizer_path
    manifest = Manifest(
        model_name=model_name,
        model_version=model_version,
        input=InputSpec(
            name=art.input_name, length=art.input_length, sample_rate_hz=art.sample_rate_hz,
            dtype=art.input_dtype, normalization="none" if tokens else art.normalization,
            vocab_size=art.vocab_size if tokens else None, tokenizer=art.tokenizer_file if tokens else None,
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
