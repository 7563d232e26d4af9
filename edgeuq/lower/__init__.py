"""Lowering: OnnxArtifact + ComputeTarget -> CompiledArtifact, one module per backend.

A backend module registers ``compile(art, target, workdir, **options)`` with
:func:`register_lowerer`; its device half is an executor in
``edgeuq_runtime.executors``. Registries are plain dicts (no directory scanning).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional

__all__ = ["CompiledGraph", "CompiledArtifact", "LOWERERS", "register_lowerer", "lower"]


@dataclass(frozen=True)
class CompiledGraph:
    """One compiled graph: the file the device loads, and how to load it."""

    file: Path                      # absolute path of the artifact on the host
    backend: str                    # executor name in edgeuq_runtime.executors
    options: Mapping[str, Any] = field(default_factory=dict)  # executor loader options (JSON values)


@dataclass(frozen=True)
class CompiledArtifact:
    """The trunk and head compiled for one target, plus extra files for the bundle."""

    target: str
    trunk: CompiledGraph
    head: CompiledGraph
    extra_files: Mapping[str, Path] = field(default_factory=dict)  # bundle-relative name -> host path
    metadata: Mapping[str, Any] = field(default_factory=dict)       # compiler versions, tuning, checks


Lowerer = Callable[..., CompiledArtifact]
LOWERERS: Dict[str, Lowerer] = {}


def register_lowerer(name: str) -> Callable[[Lowerer], Lowerer]:
    def deco(fn: Lowerer) -> Lowerer:
        LOWERERS[name] = fn
        return fn

    return deco


def lower(backend: str, art: Any, target: Any, workdir: Path, **options: Any) -> CompiledArtifact:
    try:
        fn = LOWERERS[backend]
    except KeyError:
        raise ValueError(f"unknown lowering backend {backend!r}; known: {sorted(LOWERERS)}") from None
    return fn(art, target, Path(workdir), **options)
