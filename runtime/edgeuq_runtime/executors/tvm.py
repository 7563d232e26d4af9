"""The ``tvm`` executor: a Relax VM over a library exported by TVM (``*.so``).

``tvm`` is imported only when a graph is loaded (the ``apache-tvm`` wheel, or a
TVM runtime built for the board). The manifest's graph ``options`` say how to
call the library, because a compiled library carries no tensor names:

``inputs`` / ``outputs``
    tensor names in the order of the function's parameters / results (required).
    The library itself records its parameter names: where the VM exposes them they
    are the graph's input names and ``inputs`` must agree with them exactly;
``shapes`` / ``dtypes``
    per-input shape without the batch axis (a list of integers), and dtype
    (default float32);
``batch``
    ``null`` (the library takes any batch: symbolic shapes) or an integer: the
    library was compiled (and tuned) for exactly that many rows. Larger feeds run
    in chunks of ``batch`` rows and the last chunk is zero-padded; the padded rows
    are dropped from the outputs, so results never depend on the chunking;
``buckets``
    optional: a strictly ascending list of row counts (shape buckets) whose largest is
    ``batch``. The library then holds one function per bucket, ``<entry>_b<rows>``
    (e.g. ``main_b1``, ``main_b4``, ``main_b16``), each compiled (and tuned) for exactly
    that many rows. A feed of n rows runs in the smallest bucket >= n, zero-padded only up
    to it; above the largest bucket it runs in chunks of ``batch`` rows and the rest in
    the smallest bucket that holds it. So a small S pays for its own rows, not for the
    largest batch;
``device``
    ``"cpu"`` (default) or ``"cuda"``;
``cuda_kernels``
    ``{source sha256: file}``: precompiled kernel binaries, a path relative to the
    library's folder (they must be listed in the bundle's ``files``).
    TVM keeps CUDA kernels as source and compiles them when the library loads;
    this executor answers that request with the shipped cubin, so the board
    needs no CUDA compiler. A source without a binary is an error;
``entry``
    the VM function to call (default ``"main"``);
``variants``
    optional: the same graph compiled for higher x86-64 ISA levels, best first, each
    ``{"file": ..., "target": ..., "requires": [cpu flags], "batch": ..., "buckets": ...}``
    (``file`` relative to the library's folder and listed in the bundle's ``files``;
    ``batch``/``buckets`` as above, for that library). At load the executor runs the first
    variant whose ``requires`` flags the host has (/proc/cpuinfo, capped by ``EDGEUQ_HOST_ISA``,
    :mod:`edgeuq_runtime.hostcpu`), else the graph's own library, which should need no more
    than the lowest ISA the bundle supports: a run-time dispatch like ONNX Runtime's, so a
    bundle built once runs AVX-512 code on AVX-512 hosts and SSE code only where nothing better
    runs. Which library was chosen, and why, is in :attr:`TvmGraph.evidence` (``library``).

``threads`` sizes TVM's CPU thread pool (one pool per process: the last loader wins).
"""
from __future__ import annotations

import hashlib
import importlib
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from ..batching import run_planned
from ..errors import BackendError
from . import COMPILED_LIBRARY, register_executor, register_executor_files

__all__ = ["TvmGraph", "load_tvm", "OPTION_KEYS", "CallPlan", "call_plan", "choose_library"]

OPTION_KEYS = frozenset({"inputs", "outputs", "shapes", "dtypes", "batch", "buckets", "device", "cuda_kernels",
                         "entry", "variants"})
VARIANT_KEYS = frozenset({"file", "target", "requires", "batch", "buckets"})
_CUDA_BINARIES: Dict[str, bytes] = {}  # source sha256 -> cubin, served to TVM's compile hook
_MAX_STAGING = 64                      # staging buffers kept per graph (per input and shape)


def _import_tvm() -> Any:
    try:
        return importlib.import_module("tvm")
    except ImportError as exc:
        raise BackendError(
            f"backend 'tvm' needs the TVM runtime ({exc}); install it with: "
            "pip install apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post1"
        ) from None


def _serve_cuda_binary(code: str, *_: Any) -> bytes:
    key = hashlib.sha256(code.encode("utf-8")).hexdigest()
    try:
        return _CUDA_BINARIES[key]
    except KeyError:
        raise BackendError(f"no precompiled CUDA kernels for source {key[:12]}... in the bundle "
                           f"(known: {[k[:12] for k in _CUDA_BINARIES]}); recompile the bundle for this GPU") from None


def _kernel_files(path: Path, kernels: Any) -> Dict[str, Path]:
    if not isinstance(kernels, Mapping) or not all(isinstance(k, str) and isinstance(v, str) and v
                                                   for k, v in kernels.items()):
        raise BackendError(f"backend 'tvm' option 'cuda_kernels' must map source sha256 -> file name (strings), "
                           f"got {str(kernels)[:200]} for graph {path.name!r}")
    return {k: path.parent / v for k, v in kernels.items()}


@register_executor_files("tvm")
def tvm_files(path: Path, options: Mapping[str, Any]) -> List[Path]:
    """The per-ISA variant libraries, and the CUDA kernel binaries a CUDA graph loads."""
    files = [path.parent / v["file"] for v in _variants(options.get("variants"), path)]
    if options.get("device", "cpu") != "cuda":
        return files
    return files + list(_kernel_files(path, options.get("cuda_kernels") or {}).values())


def _variants(value: Any, path: Path) -> List[Dict[str, Any]]:
    """The validated ``variants`` option (a list of per-ISA libraries, best first)."""
    if value is None:
        return []
    if not isinstance(value, (list, tuple)) or not value:
        raise BackendError(f"backend 'tvm' option 'variants' must be a non-empty list of objects for graph "
                           f"{path.name!r}, got {str(value)[:80]}")
    out = []
    for i, v in enumerate(value):
        where = f"option variants[{i}] of graph {path.name!r}"
        if not isinstance(v, Mapping) or set(v) - VARIANT_KEYS or not {"file", "requires"} <= set(v):
            raise BackendError(f"backend 'tvm' {where} must be an object with 'file' and 'requires' (and optional "
                               f"{sorted(VARIANT_KEYS - {'file', 'requires'})}), got {str(v)[:120]}")
        f, req = v["file"], v["requires"]
        if (not isinstance(f, str) or not f or Path(f).is_absolute() or ".." in Path(f).parts
                or f == path.name):
            raise BackendError(f"backend 'tvm' {where}: 'file' must be another library's name relative to the "
                               f"graph's folder, got {f!r}")
        if not isinstance(req, (list, tuple)) or not all(isinstance(r, str) and r for r in req):
            raise BackendError(f"backend 'tvm' {where}: 'requires' must be a list of CPU flag names, got {req!r}")
        out.append(dict(v))
    return out


def choose_library(path: Path, options: Mapping[str, Any],
                   flags: Optional[frozenset] = None) -> Tuple[Path, Dict[str, Any], str]:
    """The library this host runs for a graph with these ``options``: the first ``variants`` entry
    whose required CPU flags ``flags`` (default: the host's, :func:`edgeuq_runtime.hostcpu.cpu_flags`)
    holds, else the graph's own library. Returns its path, its options (the variant's ``batch`` and
    ``buckets`` in place of the graph's, ``variants`` dropped) and a sentence saying which ran and why."""
    variants = _variants(options.get("variants"), path)
    base = {k: v for k, v in options.items() if k != "variants"}
    if not variants:
        return path, base, f"{path.name} (the graph's only library)"
    if flags is None:
        from ..hostcpu import cpu_flags

        flags = cpu_flags()
    skipped = []
    for v in variants:
        missing = sorted(set(v["requires"]) - set(flags))
        label = f"{v['file']} ({v.get('target', 'variant')})"
        if not missing:
            opts = {**base, **{k: v[k] for k in ("batch", "buckets") if k in v}}
            if "buckets" not in v:
                opts.pop("buckets", None)
            return (path.parent / v["file"], opts,
                    f"{label}: the host has its flags" + (f"; skipped {'; '.join(skipped)}" if skipped else ""))
        skipped.append(f"{label}, host lacks {', '.join(missing[:4])}")
    return path, base, f"{path.name} (fallback): " + "; ".join(skipped)


def _register_cuda_kernels(path: Path, kernels: Mapping[str, str]) -> None:
    import tvm_ffi  # comes with the TVM runtime

    for key, f in _kernel_files(path, kernels).items():
        name = f.name
        if not f.is_file():
            raise BackendError(f"CUDA kernel binary {name!r} listed for graph {path.name!r} is missing ({f})")
        _CUDA_BINARIES[str(key)] = f.read_bytes()
    tvm_ffi.register_global_func("tvm_callback_cuda_compile", _serve_cuda_binary, override=True)


def _names(options: Mapping[str, Any], key: str, path: Path) -> Tuple[str, ...]:
    value = options.get(key)
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) and v for v in value):
        raise BackendError(f"backend 'tvm' needs option {key!r} (a list of tensor names) for graph {path.name!r}, "
                           f"got {value!r}")
    return tuple(value)


def _library_params(vm: Any, entry: str) -> Tuple[Optional[Tuple[str, ...]], str]:
    """Parameter names of ``entry`` as recorded in the compiled library (Relax VM), or None with
    the reason the VM cannot tell."""
    arity = getattr(vm, "_get_function_arity", None)
    name = getattr(vm, "_get_function_param_name", None)
    if arity is None or name is None:
        return None, "this TVM's VirtualMachine cannot report function parameter names"
    try:
        return tuple(str(name(entry, i)) for i in range(int(arity(entry)))), ""
    except Exception as exc:  # noqa: BLE001 - an older VM or a function it cannot describe: reported by the caller
        return None, f"the library could not describe function {entry!r} ({type(exc).__name__}: {exc})"


class TvmGraph:
    """A TVM library loaded in a Relax VM, called with named numpy arrays."""

    def __init__(self, vm: Any, tvm: Any, device: Any, path: Path, options: Mapping[str, Any],
                 library_choice: str = "") -> None:
        self._vm, self._tvm, self._device, self.path = vm, tvm, device, path
        #: Which library of the graph runs here and why (per-ISA ``variants``; see :func:`choose_library`).
        self.library_choice = library_choice or f"{path.name} (the graph's only library)"
        self._cpu = options.get("device", "cpu") == "cpu"
        #: aligned input buffers reused across calls (CPU), per (input, shape, dtype): one per shape bucket,
        #: so feeds that alternate buckets (adaptive S) do not reallocate; with the rows of each that may be
        #: non-zero (a padded call zeroes only the rows the last call wrote beyond its own)
        self._staging: Dict[Tuple[int, Tuple[int, ...], str], List[Any]] = {}
        self._functions_cache: Dict[str, Any] = {}      # VM function handles, looked up once
        self._plans: Dict[int, List[Tuple[str, int, int]]] = {}   # rows -> call plan (see _plan)
        self._inputs = _names(options, "inputs", path)
        self._outputs = _names(options, "outputs", path)
        entry = options.get("entry", "main")
        if not isinstance(entry, str) or not entry:
            raise BackendError(f"backend 'tvm' option 'entry' must be a function name, got {entry!r}")
        self._entry = entry
        batch = options.get("batch")
        if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= 1 << 20):
            raise BackendError(f"backend 'tvm' option 'batch' must be null or an integer >= 1 (<= 2**20), "
                               f"got {str(batch)[:40]}")
        self.batch: Optional[int] = batch
        #: Shape buckets (ascending rows) -> the library function compiled for them; () when the
        #: library has one function (``entry``) for ``batch`` rows or any batch.
        self.buckets: Tuple[int, ...] = _buckets(options.get("buckets"), batch, path)
        self._functions: Dict[int, str] = {b: f"{entry}_b{b}" for b in self.buckets}
        #: The parameter names recorded in the library itself (None where the VM cannot tell).
        self.library_inputs: Optional[Tuple[str, ...]] = None
        why = ""
        for rows, fn in self._functions.items():
            try:
                vm[fn]
            except Exception as exc:  # noqa: BLE001 - TVM's own error type: re-raised as ours
                raise BackendError(f"graph {path.name!r}: option 'buckets' names a {rows}-row bucket, but the "
                                   f"library has no function {fn!r} ({type(exc).__name__}: {str(exc)[:120]})") from None
        for fn in (list(self._functions.values()) or [entry]):
            names, why = _library_params(vm, fn)
            if names is not None and names != self._inputs:
                raise BackendError(f"graph {path.name!r}: the library's function {fn!r} takes parameters "
                                   f"{list(names)}, but option 'inputs' says {list(self._inputs)}")
            self.library_inputs = names
            if names is None:
                break
        #: "checked: ..." or "not checked: <why>" -- the input-order check's outcome (see :attr:`evidence`).
        self.input_order_check: str
        if self.library_inputs is None:
            self.input_order_check = (f"not checked: {why}; the input order {list(self._inputs)} is taken from "
                                      f"the manifest's options unverified")
            warnings.warn(f"graph {path.name!r}: input order {self.input_order_check}", RuntimeWarning, stacklevel=3)
        else:
            self.input_order_check = f"checked: the library's parameters are {list(self.library_inputs)}" + (
                f" (in each of its {len(self.buckets)} bucket functions)" if self.buckets else "")
        shapes = options.get("shapes") or {}
        dtypes = options.get("dtypes") or {}
        if not isinstance(shapes, Mapping) or not isinstance(dtypes, Mapping):
            raise BackendError(f"backend 'tvm' options 'shapes' and 'dtypes' must be objects keyed by input name "
                               f"for graph {path.name!r}")
        self._dtypes = {}
        for n in self._inputs:
            dt = dtypes.get(n, "float32")
            if dt not in ("float32", "float16", "float64", "int32", "int64"):
                raise BackendError(f"backend 'tvm' option dtypes[{n!r}] must be a numeric dtype name, got {dt!r}")
            self._dtypes[n] = np.dtype(dt)
        for n, shape in shapes.items():
            if (n not in self._inputs or not isinstance(shape, list)
                    or not all(type(d) is int and 1 <= d <= 2 ** 31 - 1 for d in shape)):
                raise BackendError(f"backend 'tvm' option shapes[{n!r}] must be a list of integers >= 1 for an input "
                                   f"in {list(self._inputs)}, got {str(shape)[:80]}")
        #: Declared input shapes (batch axis first; None = any batch).
        self.input_shapes: Dict[str, Tuple[Optional[int], ...]] = {
            n: (None, *shapes[n]) for n in self._inputs if n in shapes
        }

    @property
    def evidence(self) -> Dict[str, str]:
        """What this executor did or could not check when loading the graph (for info/evidence output)."""
        return {"input_order": self.input_order_check, "library": self.library_choice}

    @property
    def input_names(self) -> Tuple[str, ...]:
        return self._inputs

    @property
    def output_names(self) -> Tuple[str, ...]:
        return self._outputs

    def _buffer(self, i: int, shape: Tuple[int, ...], dtype: np.dtype) -> List[Any]:
        """The aligned staging buffer of input ``i`` for ``shape``: ``[array, rows that may be non-zero]``."""
        key = (i, tuple(shape), dtype.str)
        entry = self._staging.get(key)
        if entry is None:
            if len(self._staging) >= _MAX_STAGING:      # any-batch graphs see any shape: keep the cache bounded
                self._staging.clear()
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            raw = np.zeros(nbytes + 64, np.uint8)
            off = (-raw.ctypes.data) % 64
            entry = self._staging[key] = [raw[off:off + nbytes].view(dtype).reshape(shape), 0]
        return entry

    def _pad(self, i: int, chunk: np.ndarray, size: int) -> np.ndarray:
        """``chunk`` zero-padded to ``size`` rows, written straight into input ``i``'s aligned staging
        buffer for that shape (one copy, no temporary; :func:`run_planned`'s ``pad``)."""
        if not self._cpu:
            return np.concatenate([chunk, np.zeros((size - chunk.shape[0], *chunk.shape[1:]), chunk.dtype)])
        entry = self._buffer(i, (size, *chunk.shape[1:]), chunk.dtype)
        buf, dirty = entry
        rows = chunk.shape[0]
        buf[:rows] = chunk
        if dirty > rows:
            buf[rows:dirty] = 0
        entry[1] = rows
        return buf

    def _to_device(self, i: int, a: np.ndarray) -> Any:
        """A TVM tensor over ``a``. On the CPU without a copy into a fresh TVM allocation: TVM
        reads C-contiguous 64-byte-aligned numpy memory in place (DLPack); other arrays are first
        copied into an aligned staging buffer kept per input and shape (measured on the demo head's
        1.3 MB of inputs: 0.3 ms per call with fresh tensors, 0.09 ms staged, 2 us in place). The
        compiled kernels assume that alignment: a misaligned array passed in place crashes them."""
        if not self._cpu:
            return self._tvm.runtime.tensor(a, self._device)
        if not (a.flags.c_contiguous and a.flags.writeable and a.ctypes.data % 64 == 0):
            entry = self._buffer(i, a.shape, a.dtype)
            np.copyto(entry[0], a)
            entry[1] = a.shape[0] if a.ndim else 1
            a = entry[0]
        return self._tvm.runtime.from_dlpack(a)

    def bucket_for(self, rows: int) -> int:
        """The rows the library runs a feed of ``rows`` rows in (per call; larger feeds are chunked):
        the smallest bucket holding them, else ``batch`` (fixed batch), else ``rows`` (any batch)."""
        return _bucket_for(self.buckets, self.batch, rows)

    def _function(self, name: str) -> Any:
        fn = self._functions_cache.get(name)
        if fn is None:
            fn = self._functions_cache[name] = self._vm[name]
        return fn

    def _call(self, arrays: List[np.ndarray], fn: Optional[str] = None) -> List[np.ndarray]:
        args = [self._to_device(i, a) for i, a in enumerate(arrays)]
        out = self._function(fn or self._entry)(*args)
        outs = list(out) if isinstance(out, (list, tuple)) or type(out).__name__ == "Array" else [out]
        if len(outs) != len(self._outputs):
            raise BackendError(f"graph {self.path.name!r} returned {len(outs)} outputs, options name "
                               f"{len(self._outputs)}: {list(self._outputs)}")
        if not self._cpu:
            return [o.numpy() for o in outs]
        # a copy per output, as before (an output may be a library constant or alias an input buffer that
        # the next call overwrites), through DLPack: ~0.5 us instead of ~5.6 us for Tensor.numpy()
        return [np.from_dlpack(o).copy() for o in outs]

    def run(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        missing = [n for n in self._inputs if n not in feeds]
        if missing:
            raise BackendError(f"graph {self.path.name!r} needs inputs {list(self._inputs)}; missing {missing}")
        arrays = [np.ascontiguousarray(feeds[n], dtype=self._dtypes[n]) for n in self._inputs]
        rows = {a.shape[0] if a.ndim else -1 for a in arrays}
        if len(rows) != 1 or -1 in rows:
            raise BackendError(f"graph {self.path.name!r}: inputs must share one batch axis, got shapes "
                               f"{[a.shape for a in arrays]}")
        n = rows.pop()
        try:
            if self.batch is None:
                values = self._call(arrays)
            else:
                plan = self._plans.get(n)
                if plan is None:
                    if len(self._plans) >= _MAX_STAGING:
                        self._plans.clear()
                    plan = self._plans[n] = _plan(self.buckets, self.batch, self._entry, n)
                if len(plan) == 1 and plan[0][1] == n:      # one call of exactly n rows: nothing to cut or pad
                    values = self._call(arrays, plan[0][0])
                else:
                    values = run_planned(self._call, arrays, plan, self._pad)
        except BackendError:
            raise
        except Exception as exc:  # TVM raises its own error types
            raise BackendError(f"graph {self.path.name!r} ({self.path}) failed to run on TVM: {exc}") from exc
        return dict(zip(self._outputs, values))

    def __repr__(self) -> str:
        return (f"TvmGraph({str(self.path)!r}, inputs={list(self._inputs)}, outputs={list(self._outputs)}, "
                f"batch={self.batch}" + (f", buckets={list(self.buckets)})" if self.buckets else ")"))


def _bucket_for(buckets: Tuple[int, ...], batch: Optional[int], rows: int) -> int:
    if buckets:
        return next((b for b in buckets if b >= rows), buckets[-1])
    return batch if batch is not None else rows


def _plan(buckets: Tuple[int, ...], batch: Optional[int], entry: str, n: int) -> List[Tuple[str, int, int]]:
    if batch is None:
        return [(entry, n, n)]
    plan = []
    for r0 in range(0, n, batch):
        rows = min(batch, n - r0)
        size = _bucket_for(buckets, batch, rows)
        plan.append((f"{entry}_b{size}" if buckets else entry, size, rows))
    return plan


class CallPlan(list):
    """How the executor runs one feed: ``(function, rows per call incl. zero padding, real rows)`` per
    call, in order (a list of those tuples), plus which library of the graph runs them: ``library``
    (its file name, relative to the graph's folder: a per-ISA variant's file, or the graph's own),
    ``target`` (the variant's target, None for the graph's own library), that library's ``batch``
    (None: any batch) and ``buckets`` (``()``: none), and ``choice`` (the sentence
    :func:`choose_library` gives: which ran and why)."""

    def __init__(self, calls: List[Tuple[str, int, int]], library: str, target: Optional[str], choice: str,
                 batch: Optional[int] = None, buckets: Tuple[int, ...] = ()):
        super().__init__(calls)
        self.library, self.target, self.choice = library, target, choice
        self.batch, self.buckets = batch, tuple(buckets)


def call_plan(options: Mapping[str, Any], rows: int, *, path: Optional[Path] = None,
              flags: Optional[frozenset] = None) -> CallPlan:
    """How the executor runs a feed of ``rows`` rows of a library with these graph ``options``:
    one ``(function, rows per call incl. zero padding, real rows)`` per call, in order, for the
    library the executor picks (:func:`choose_library`: the first per-ISA ``variants`` entry whose
    CPU flags ``flags`` holds -- default: this host's, capped by ``EDGEUQ_HOST_ISA`` -- with *its*
    ``batch`` and ``buckets``; else the graph's own). The returned :class:`CallPlan` names that
    library. For tools that call a library without the executor (remote timing over RPC with the
    board's flags, profilers); ``path``: the graph's own library (for its name)."""
    path = Path(path) if path is not None else Path("graph.so")
    chosen, opts, why = choose_library(path, options, flags)
    target = next((v.get("target") for v in _variants(options.get("variants"), path)
                   if chosen.name == v["file"]), None)
    batch = None if opts.get("batch") is None else int(opts["batch"])
    buckets = tuple(int(b) for b in opts.get("buckets") or ())
    return CallPlan(_plan(buckets, batch, str(opts.get("entry", "main")), int(rows)), chosen.name, target, why,
                    batch, buckets)


def _buckets(value: Any, batch: Optional[int], path: Path) -> Tuple[int, ...]:
    """The validated ``buckets`` option (ascending row counts whose largest is ``batch``)."""
    if value is None:
        return ()
    if (not isinstance(value, (list, tuple)) or not value
            or not all(type(b) is int and 1 <= b <= 1 << 20 for b in value)
            or list(value) != sorted(set(value))):
        raise BackendError(f"backend 'tvm' option 'buckets' must be a strictly ascending list of integers >= 1 "
                           f"for graph {path.name!r}, got {str(value)[:80]}")
    if batch != value[-1]:
        raise BackendError(f"backend 'tvm' option 'buckets' {list(value)} needs 'batch' equal to its largest "
                           f"bucket ({value[-1]}), got {batch!r} for graph {path.name!r}")
    return tuple(value)


@register_executor("tvm", capabilities=(COMPILED_LIBRARY,))
def load_tvm(path: Path, threads: Optional[int] = None, options: Optional[Mapping[str, Any]] = None) -> TvmGraph:
    """Load the TVM library ``path`` into a Relax VM (see the module docstring for ``options``)."""
    options = dict(options or {})
    unknown = sorted(set(options) - OPTION_KEYS)
    if unknown:
        raise BackendError(f"backend 'tvm': unknown graph options {unknown} for {path.name}; "
                           f"known: {sorted(OPTION_KEYS)}")
    tvm = _import_tvm()
    kind = options.get("device", "cpu")
    if kind not in ("cpu", "cuda"):
        raise BackendError(f"backend 'tvm' option 'device' must be 'cpu' or 'cuda', got {kind!r}")
    if threads is not None:
        tvm.get_global_func("runtime.config_threadpool")(0, int(threads))
    if kind == "cuda":
        _register_cuda_kernels(path, options.get("cuda_kernels") or {})
    path, options, choice = choose_library(path, options)
    try:
        device = tvm.runtime.device(kind, 0)
        if kind == "cuda" and not device.exist:
            raise BackendError(f"graph {path.name!r} was compiled for CUDA, but no CUDA device is present")
        lib = tvm.runtime.load_module(str(path))
        vm = importlib.import_module("tvm.runtime.vm").VirtualMachine(lib, device)
    except BackendError:
        raise
    except Exception as exc:
        raise BackendError(f"could not load graph {path.name!r} ({path}) with TVM: {exc}") from exc
    return TvmGraph(vm, tvm, device, path, options, choice)
