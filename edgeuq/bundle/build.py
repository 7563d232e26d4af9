"""Bundle stage: OnnxArtifact -> a verified bundle directory the runtime loads.

One writer for every path that makes a bundle (``edgeuq bundle``/the pipeline, ``edgeuq
compile``, ``edgeuq quantize``): :func:`manifest_for` builds the manifest from the
OnnxArtifact (so a token model always gets ``int64`` input, ``vocab_size`` and its
tokenizer, whichever executor runs its graphs), :func:`write_artifact_bundle` writes it
through the runtime's own ``write_bundle`` and loads the result back verified.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional

from edgeuq_runtime.bundle import Bundle, load_bundle, write_bundle
from edgeuq_runtime.manifest import GraphSpec, InputSpec, Manifest

from .. import __version__

if TYPE_CHECKING:  # the writer needs only the artifact's fields, not torch (which edgeuq.export imports)
    from ..export import OnnxArtifact

__all__ = ["build_bundle", "write_artifact_bundle", "manifest_for", "BundleGraph"]


@dataclass(frozen=True)
class BundleGraph:
    """Where one graph comes from and how the device runs it: the bundle file name, the host
    file copied there, the executor (None: the manifest's ``backend``) and its loader options."""

    file: str
    source: Path
    backend: Optional[str] = None
    options: Mapping[str, Any] = field(default_factory=dict)


def _is_tokens(art: OnnxArtifact) -> bool:
    return art.input_dtype != "float32"


def default_graphs(art: OnnxArtifact) -> Dict[str, BundleGraph]:
    """The exported ONNX graphs as they are (``trunk.onnx``, ``head.onnx``)."""
    return {"trunk": BundleGraph("trunk.onnx", Path(art.trunk_path)),
            "head": BundleGraph("head.onnx", Path(art.head_path))}


def manifest_for(art: OnnxArtifact, model_name: str, model_version: str, default_samples: int = 16,
                 graphs: Optional[Mapping[str, BundleGraph]] = None, backend: str = "onnxruntime",
                 metadata: Optional[Mapping[str, Any]] = None,
                 sections: Optional[Mapping[str, Any]] = None) -> Manifest:
    """The manifest of ``art`` (``files`` are filled in by ``write_bundle``); ``sections``: optional
    registered manifest sections (e.g. ``placement``).

    Signal models declare float32 input with their normalization; token models
    declare ``int64`` input, ``vocab_size``, no normalization and the tokenizer file.
    """
    tokens = _is_tokens(art)
    graphs = dict(graphs or default_graphs(art))
    io = {"trunk": ((art.input_name,), (art.feature_name,)),
          "head": ((art.feature_name, *[s.name for s in art.noise]), (art.logits_name,))}
    specs = {role: GraphSpec(file=g.file, inputs=io[role][0], outputs=io[role][1], backend=g.backend,
                             options=dict(g.options)) for role, g in graphs.items()}
    return Manifest(
        model_name=model_name,
        model_version=model_version,
        input=InputSpec(
            name=art.input_name, length=art.input_length, sample_rate_hz=art.sample_rate_hz,
            dtype=art.input_dtype, normalization="none" if tokens else art.normalization,
            vocab_size=art.vocab_size if tokens else None,
            tokenizer=art.tokenizer_file if tokens and art.tokenizer_path is not None else None,
        ),
        class_names=tuple(art.class_names),
        default_samples=int(default_samples),
        noise=tuple(art.noise),
        trunk=specs["trunk"],
        head=specs["head"],
        feature_name=art.feature_name,
        logits_name=art.logits_name,
        backend=backend,
        metadata={"created_by": f"edgeuq {__version__}", "opset": art.opset,
                  # where the trunk's density features are (edgeuq calibrate's density pooling reads them)
                  **({} if art.density_columns is None else {"density_columns": list(art.density_columns)}),
                  **dict(metadata or {})},
        sections=dict(sections or {}),
    )


def write_artifact_bundle(art: OnnxArtifact, out_dir: Path, model_name: str, model_version: str,
                          default_samples: int = 16, graphs: Optional[Mapping[str, BundleGraph]] = None,
                          extra_files: Optional[Mapping[str, Path]] = None, backend: str = "onnxruntime",
                          metadata: Optional[Mapping[str, Any]] = None, overwrite: bool = False,
                          sections: Optional[Mapping[str, Any]] = None) -> Bundle:
    """Write ``art``'s bundle: its graphs (``graphs``, default the ONNX pair), the tokenizer of a
    token model, ``extra_files`` (bundle name -> host path), one hashed manifest; then load it
    back with full verification."""
    graphs = dict(graphs or default_graphs(art))
    manifest = manifest_for(art, model_name, model_version, default_samples, graphs, backend, metadata, sections)
    sources: Dict[str, Path] = {g.file: Path(g.source) for g in graphs.values()}
    if manifest.input.tokenizer is not None:
        sources[manifest.input.tokenizer] = Path(art.tokenizer_path)
    for name, path in dict(extra_files or {}).items():
        if name in sources:
            raise ValueError(f"bundle file names collide: {name!r} is both a graph/tokenizer and an extra file")
        sources[name] = Path(path)
    write_bundle(Path(out_dir), manifest, sources, overwrite=overwrite)
    return load_bundle(Path(out_dir), verify=True)


def build_bundle(
    art: OnnxArtifact,
    out_dir: Path,
    model_name: str,
    model_version: str,
    default_samples: int = 16,
    metadata: Optional[Mapping[str, Any]] = None,
    overwrite: bool = False,
    extra_files: Optional[Mapping[str, Path]] = None,
) -> Bundle:
    """The ONNX Runtime bundle of ``art`` (graphs copied as they are; see :func:`write_artifact_bundle`)."""
    return write_artifact_bundle(art, out_dir, model_name, model_version, default_samples,
                                 extra_files=extra_files, metadata=metadata, overwrite=overwrite)
