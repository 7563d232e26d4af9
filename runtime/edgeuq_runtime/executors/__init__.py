"""Graph executors: a tiny registry mapping a backend name to a graph loader.

A loader takes ``(path, threads, options)`` and returns a :class:`GraphRunner`. Executors are
found two ways, and only these:

1. **package scan**: every public module of this package is imported when the package is (each
   registers itself with ``@register_executor("name")``), so a built-in executor is one file here;
2. **entry points** for third-party executors: the group ``edgeuq_runtime.executors``
   (``[project.entry-points."edgeuq_runtime.executors"] toy = "toy_pkg.executor"``), loaded the
   first time :func:`load_graph` meets an unknown name or :func:`known_executors` is asked. An
   entry point may name a module (its decorator registers) or a loader callable (registered
   under the entry point's name).

Executors import their heavy dependency (e.g. ``onnxruntime``) lazily inside the loader, so
``import edgeuq_runtime`` stays cheap and works on devices that only have another backend installed.
"""
from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Protocol, Sequence, Tuple, TypeVar, Union, runtime_checkable

import numpy as np

from ..errors import BackendError

__all__ = ["GraphRunner", "GraphLoader", "EXECUTORS", "register_executor", "load_graph", "EXECUTOR_FILES",
           "register_executor_files", "files_opened", "MAX_THREADS", "graph_evidence", "ENTRY_POINT_GROUP",
           "load_entry_points", "known_executors", "EXECUTOR_CAPABILITIES", "executor_capabilities",
           "COMPILED_LIBRARY"]

#: entry-point group of third-party executors
ENTRY_POINT_GROUP = "edgeuq_runtime.executors"

#: Largest ``threads`` a loader accepts (more would only oversubscribe the CPU; huge values
#: hang or crash thread pools).
MAX_THREADS = 256


@runtime_checkable
class GraphRunner(Protocol):
    """A loaded graph: named inputs in, named outputs out (numpy arrays)."""

    @property
    def input_names(self) -> Sequence[str]: ...

    @property
    def output_names(self) -> Sequence[str]: ...

    def run(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]: ...


def graph_evidence(runner: Any) -> Dict[str, str]:
    """What a loaded graph's executor did or could not do at load time (its optional ``evidence``
    mapping, e.g. ``{"input_order": "not checked: ..."}``); empty for executors that record none."""
    ev = getattr(runner, "evidence", None)
    return {str(k): str(v) for k, v in dict(ev).items()} if ev else {}


GraphLoader = Callable[[Path, Optional[int], Mapping[str, Any]], GraphRunner]
EXECUTORS: Dict[str, GraphLoader] = {}
_L = TypeVar("_L", bound=GraphLoader)
FilesFn = Callable[[Path, Mapping[str, Any]], Sequence[Path]]
#: backend -> files(graph_path, options): every file besides the graph that its loader opens.
#: UncertaintyRuntime requires each to be listed (hashed) in the manifest and inside the bundle.
EXECUTOR_FILES: Dict[str, FilesFn] = {}
_F = TypeVar("_F", bound=FilesFn)
#: backend -> what its loaded graphs can do beyond :class:`GraphRunner`, as the executor declares it
#: (``register_executor(name, capabilities=...)``); callers ask this instead of comparing names.
EXECUTOR_CAPABILITIES: Dict[str, frozenset] = {}
#: capability: the graph is a compiled TVM library whose runner has shape buckets (``buckets``,
#: ``bucket_for``) and whose kernels can be timed one by one (``edgeuq.profile.tvm_rpc.tvm_kernel_table``)
COMPILED_LIBRARY = "compiled_library"


def register_executor_files(name: str) -> Callable[[_F], _F]:
    """Decorator: register ``files(graph_path, options) -> [paths]`` for backend ``name``."""

    def decorate(fn: _F) -> _F:
        EXECUTOR_FILES[name] = fn
        return fn

    return decorate


def files_opened(backend: str, path: Union[str, Path], options: Optional[Mapping[str, Any]] = None) -> Tuple[Path, ...]:
    """The extra files the ``backend`` loader opens for the graph at ``path`` (may be empty)."""
    fn = EXECUTOR_FILES.get(backend)
    return tuple(Path(p) for p in fn(Path(path), dict(options or {}))) if fn is not None else ()


def register_executor(name: str, *, capabilities: Sequence[str] = ()) -> Callable[[_L], _L]:
    """Decorator: register ``loader(path, threads, options) -> GraphRunner`` under ``name``, with the
    ``capabilities`` its graphs have (e.g. :data:`COMPILED_LIBRARY`; see :func:`executor_capabilities`)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"executor name must be a non-empty string, got {name!r}")
    if isinstance(capabilities, str) or not all(isinstance(c, str) and c for c in capabilities):
        raise ValueError(f"executor {name!r}: capabilities must be a sequence of non-empty strings, "
                         f"got {capabilities!r}")

    def decorate(loader: _L) -> _L:
        EXECUTORS[name] = loader
        EXECUTOR_CAPABILITIES[name] = frozenset(capabilities)
        return loader

    return decorate


def load_graph(backend: str, path: Union[str, Path], threads: Optional[int] = None,
               options: Optional[Mapping[str, Any]] = None) -> GraphRunner:
    """Load the graph at ``path`` with the executor registered as ``backend``;
    ``options`` (from the manifest's graph entry) go to the loader unchanged."""
    if backend not in EXECUTORS:
        load_entry_points()
    try:
        loader = EXECUTORS[backend]
    except KeyError:
        raise BackendError(f"unknown backend {backend!r}; known backends: {sorted(EXECUTORS)}") from None
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
                                or threads > MAX_THREADS):
        raise BackendError(f"threads must be None or an integer >= 1 and <= {MAX_THREADS}, got {threads!r}")
    return loader(Path(path), threads, dict(options or {}))


def executor_capabilities(backend: str) -> frozenset:
    """The capabilities the executor registered as ``backend`` declared (empty when it declared none)."""
    if backend not in EXECUTORS:
        load_entry_points()
    if backend not in EXECUTORS:
        raise BackendError(f"unknown backend {backend!r}; known backends: {sorted(EXECUTORS)}")
    return EXECUTOR_CAPABILITIES.get(backend, frozenset())


_ENTRY_POINTS_LOADED = False


def load_entry_points() -> Tuple[str, ...]:
    """Import the ``edgeuq_runtime.executors`` entry points (once); returns their names."""
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return ()
    _ENTRY_POINTS_LOADED = True
    seen = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        seen.append(ep.name)
        obj = ep.load()
        if ep.name not in EXECUTORS and callable(obj) and not isinstance(obj, type(importlib)):
            register_executor(ep.name)(obj)
    return tuple(seen)


def known_executors() -> Tuple[str, ...]:
    """Every executor name: the built-ins (package scan) and the entry points."""
    load_entry_points()
    return tuple(sorted(EXECUTORS))


def _scan_builtins() -> None:
    """Import every public module of this package (each registers its executor)."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_scan_builtins()
