"""Graph executors: a tiny registry mapping a backend name to a graph loader.

A loader takes ``(path, threads, options)`` and returns a :class:`GraphRunner`. Backends
register themselves eagerly by name, but import their heavy dependency (e.g.
``onnxruntime``) lazily inside the loader, so ``import edgeuq_runtime`` stays cheap
and works on devices that only have another backend installed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Protocol, Sequence, TypeVar, Union, runtime_checkable

import numpy as np

from ..errors import BackendError

__all__ = ["GraphRunner", "GraphLoader", "EXECUTORS", "register_executor", "load_graph"]


@runtime_checkable
class GraphRunner(Protocol):
    """A loaded graph: named inputs in, named outputs out (numpy arrays)."""

    @property
    def input_names(self) -> Sequence[str]: ...

    @property
    def output_names(self) -> Sequence[str]: ...

    def run(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]: ...


GraphLoader = Callable[[Path, Optional[int], Mapping[str, Any]], GraphRunner]
EXECUTORS: Dict[str, GraphLoader] = {}
_L = TypeVar("_L", bound=GraphLoader)


def register_executor(name: str) -> Callable[[_L], _L]:
    """Decorator: register ``loader(path, threads, options) -> GraphRunner`` under ``name``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"executor name must be a non-empty string, got {name!r}")

    def decorate(loader: _L) -> _L:
        EXECUTORS[name] = loader
        return loader

    return decorate


def load_graph(backend: str, path: Union[str, Path], threads: Optional[int] = None,
               options: Optional[Mapping[str, Any]] = None) -> GraphRunner:
    """Load the graph at ``path`` with the executor registered as ``backend``;
    ``options`` (from the manifest's graph entry) go to the loader unchanged."""
    try:
        loader = EXECUTORS[backend]
    except KeyError:
        raise BackendError(f"unknown backend {backend!r}; known backends: {sorted(EXECUTORS)}") from None
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise BackendError(f"threads must be None or an integer >= 1, got {threads!r}")
    return loader(Path(path), threads, dict(options or {}))


from . import onnxruntime as _onnxruntime  # noqa: E402,F401  (registers "onnxruntime"; imports nothing heavy)
from . import pynq as _pynq  # noqa: E402,F401  (registers "pynq"; pynq itself is imported only by its loader)
from . import tvm as _tvm  # noqa: E402,F401  (registers "tvm"; tvm itself is imported only by its loader)
