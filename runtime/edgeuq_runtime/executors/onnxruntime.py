"""The ``onnxruntime`` executor (CPUExecutionProvider).

``onnxruntime`` itself is imported only when a graph is loaded; a missing install
raises :class:`BackendError` with the pip command to fix it.
"""
from __future__ import annotations

import importlib
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import numpy as np

from ..errors import BackendError
from . import register_executor

__all__ = ["OrtGraph", "load_onnxruntime", "SHRINK_ROWS"]

#: Runs of at least this many rows shrink ONNX Runtime's CPU arena when they end
#: (bench/runtime_memory.py measures the effect).
SHRINK_ROWS = 256


def _import_ort() -> Any:
    try:
        return importlib.import_module("onnxruntime")
    except ImportError as exc:
        raise BackendError(
            f"backend 'onnxruntime' needs the onnxruntime package ({exc}); "
            "install it with: pip install 'edgeuq-runtime[onnxruntime]'"
        ) from None


class OrtGraph:
    """An ONNX graph loaded in an onnxruntime InferenceSession."""

    def __init__(self, session: Any, path: Path, shrink: Any = None, arena_shrink: Optional[str] = None) -> None:
        self._session = session
        self.path = path
        self._shrink = shrink
        #: Whether runs of >= SHRINK_ROWS rows hand the CPU arena back ("enabled ...") or why not
        #: ("unavailable: ..."); part of :attr:`evidence`.
        self.arena_shrink: str = arena_shrink or (
            f"enabled for runs of >= {SHRINK_ROWS} rows" if shrink is not None else "not requested")
        self._inputs = tuple(i.name for i in session.get_inputs())
        self._outputs = tuple(o.name for o in session.get_outputs())
        #: Declared input shapes; symbolic (dynamic) axes are None.
        self.input_shapes: Dict[str, Tuple[Optional[int], ...]] = {
            i.name: tuple(d if isinstance(d, int) else None for d in (i.shape or ()))
            for i in session.get_inputs()
        }
        #: Declared output shapes, likewise.
        self.output_shapes: Dict[str, Tuple[Optional[int], ...]] = {
            o.name: tuple(d if isinstance(d, int) else None for d in (o.shape or ()))
            for o in session.get_outputs()
        }

    @property
    def input_names(self) -> Tuple[str, ...]:
        return self._inputs

    @property
    def evidence(self) -> Dict[str, str]:
        """What this executor did or could not do when loading the graph (for info/evidence output)."""
        return {"arena_shrink": self.arena_shrink}

    @property
    def output_names(self) -> Tuple[str, ...]:
        return self._outputs

    def run(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        rows = next((len(v) for v in feeds.values() if getattr(v, "ndim", 0)), 0)
        try:
            # a large run hands its arena memory back when it ends, so one big call does not leave
            # the process holding its peak; small (latency-bound) runs keep the arena warm
            big = self._shrink is not None and rows >= SHRINK_ROWS
            values = self._session.run(None, feeds, self._shrink) if big else self._session.run(None, feeds)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise BackendError(f"graph {self.path.name!r} ({self.path}) failed to run: {exc}") from exc
        return dict(zip(self._outputs, values))

    def bind(self, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> Callable[[], None]:
        """A run of this graph on fixed buffers (ONNX Runtime IO binding), for a caller that runs the
        same shapes again and again (a stream's hop): each call of the returned function reads the
        current contents of ``inputs`` and writes every output into its array in ``outputs``, with
        no feed dictionary, output allocation or output-name lookup per run. The arrays must be
        C-contiguous and stay alive (the returned function holds them); an output's array must have
        the graph's output shape and dtype for these inputs, or the run raises BackendError."""
        names = set(self._inputs)
        if set(inputs) != names or set(outputs) - set(self._outputs) or not outputs:
            raise BackendError(f"graph {self.path.name!r}: bind needs exactly the inputs {sorted(names)} and some of "
                               f"the outputs {list(self._outputs)}, got {sorted(inputs)} and {sorted(outputs)}")
        held = {k: v for k, v in {**inputs, **outputs}.items()}
        for name, arr in held.items():
            if not isinstance(arr, np.ndarray) or not arr.flags.c_contiguous:
                raise BackendError(f"graph {self.path.name!r}: bind needs C-contiguous numpy arrays, {name!r} is not")
        binding = self._session.io_binding()
        for name, arr in inputs.items():
            binding.bind_cpu_input(name, arr)
        for name, arr in outputs.items():
            binding.bind_output(name, "cpu", 0, arr.dtype, list(arr.shape), arr.ctypes.data)
        session, path = self._session, self.path

        def run() -> None:
            try:
                session.run_with_iobinding(binding)
            except Exception as exc:  # onnxruntime raises its own exception types
                raise BackendError(f"graph {path.name!r} ({path}) failed to run: {exc}") from exc

        run.held = held  # type: ignore[attr-defined]  # the bound buffers live as long as the function
        return run

    def __repr__(self) -> str:
        return f"OrtGraph({str(self.path)!r}, inputs={list(self._inputs)}, outputs={list(self._outputs)})"


@register_executor("onnxruntime")
def load_onnxruntime(path: Path, threads: Optional[int] = None, options: Optional[Mapping[str, Any]] = None) -> OrtGraph:
    """Load ``path`` on the CPU provider with full graph optimisation (no options)."""
    if options:
        raise BackendError(f"backend 'onnxruntime' takes no graph options, got {dict(options)!r} for {path.name}")
    ort = _import_ort()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only; warnings would go to the device's stderr
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # InvalidProtobuf, NoSuchFile, Fail, ...
        raise BackendError(f"could not load graph {path.name!r} ({path}) with onnxruntime: {exc}") from exc
    shrink = ort.RunOptions()
    try:
        shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    except Exception as exc:  # noqa: BLE001 - an onnxruntime without the option: said and recorded, not hidden
        shrink = None
        why = (f"unavailable: this onnxruntime ({getattr(ort, '__version__', '?')}) refused run option "
               f"memory.enable_memory_arena_shrinkage ({type(exc).__name__}: {exc}); large runs keep their arena "
               f"memory until the session is closed")
        warnings.warn(f"graph {path.name!r}: arena shrinkage {why}", RuntimeWarning, stacklevel=2)
        return OrtGraph(session, path, None, arena_shrink=why)
    return OrtGraph(session, path, shrink)
