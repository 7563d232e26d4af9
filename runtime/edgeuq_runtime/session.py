"""Multi-sample uncertainty inference on a bundle: trunk once, head on S*B rows.

Row ``s * B + b`` of every head input is sample ``s`` of input ``b`` (s-major tiling,
``np.tile`` of the features along axis 0). A call's noise is the next S*B rows of the
runtime's noise stream (:mod:`edgeuq_runtime.noise`: a fixed number of raw words per row,
drawn from one numpy Generator's bit generator), in row order, and the head runs on at most
``max_batch`` rows per run (whole samples, or one sample's rows in chunks): noise memory is
bounded by ``max_batch`` and the result never depends on it.
Not thread-safe: give each thread its own runtime (or pass ``seed`` per call).
"""
from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .bundle import MANIFEST_FILE, Bundle, PathLike, load_bundle
from .errors import BackendError, BundleError, InputError, ManifestError
from .executors import MAX_THREADS, GraphRunner, files_opened, load_graph
from .manifest import MAX_SAMPLES, GraphSpec, Manifest
from .noise import mean_noise, prepare_noise, sample_noise_rows, words_per_row
from .placement import check_placement
from .front_end import apply_front_end, front_end_of
from .preprocess import input_quality, normalize, validate_signal, validate_tokens
from .tokenizer import WordTokenizer
from .uncertainty import UncertaintyResult, decompose, softmax

__all__ = ["UncertaintyRuntime", "MAX_SAMPLES", "MAX_THREADS", "MAX_BATCH", "DEFAULT_MAX_BATCH"]

#: Largest ``max_batch`` (rows per graph run), and the default: it bounds a call's peak memory
#: (e.g. about 0.2 GB instead of 0.6 GB for a 256 x 16 call on a CWRU attention model;
#: bench/runtime_memory.py) at no cost in throughput for the models edgeuq builds.
MAX_BATCH = 1 << 20
DEFAULT_MAX_BATCH = 1024


#: A call that drew at least this many bytes of raw noise hands the C heap's free memory back to
#: the OS when it ends (glibc ``malloc_trim``). Why: after freeing a large buffer glibc raises its
#: mmap threshold (up to 32 MiB), so the next chunks' buffers come from the heap and stay mapped
#: when freed; one 256 x 16 call on the demo bundle kept 120 MiB of RSS that way, 16 MiB with the
#: trim (bench/runtime_memory.py). Small (latency-bound) calls never trim.
TRIM_NOISE_BYTES = 8 << 20
_TRIM: List[Any] = []


def _malloc_trim() -> bool:
    """glibc's ``malloc_trim(0)`` where the C library has it (a no-op elsewhere): True if it ran."""
    if not _TRIM:
        fn = None
        if sys.platform.startswith("linux"):
            try:
                fn = getattr(ctypes.CDLL(None), "malloc_trim", None)
            except OSError:  # no C library handle: nothing to trim with
                fn = None
            if fn is not None:
                fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
        _TRIM.append(fn)
    fn = _TRIM[0]
    if fn is None:
        return False
    fn(0)
    return True


def _positive_int(name: str, value: Any, maximum: Optional[int] = None, hint: str = "") -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name} must be an integer >= 1, got {str(value)[:60]}")
    if maximum is not None and value > maximum:
        raise InputError(f"{name} must be an integer >= 1 and <= {maximum}, got {str(value)[:60]}{hint}")
    return int(value)


def _check_threads(threads: Any) -> Optional[int]:
    if threads is None:
        return None
    return _positive_int("threads", threads, MAX_THREADS, " (threads for the backend's thread pool)")


def _make_rng(seed: Any) -> np.random.Generator:
    if isinstance(seed, int) and not isinstance(seed, bool) and seed.bit_length() > 256:
        raise InputError(f"seed must be None or a non-negative integer below 2**256, got an integer of "
                         f"{seed.bit_length()} bits")
    try:
        return np.random.default_rng(seed)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InputError(f"seed must be None or a non-negative integer, got {str(seed)[:60]} ({exc})") from None


def _sampling_args(samples: Any, rng: Any, features: Any) -> Tuple[int, np.ndarray]:
    """Checked ``samples`` and ``rng`` of a sampling call, and ``features`` as float32 (B >= 1, ...)."""
    s = _positive_int("samples", samples, MAX_SAMPLES, " (the most samples one call may draw)")
    if not isinstance(rng, np.random.Generator):
        raise InputError(f"rng must be a numpy Generator (np.random.default_rng(seed)), got {type(rng).__name__}")
    features = np.ascontiguousarray(features, dtype=np.float32)
    if features.ndim < 1 or features.shape[0] < 1:
        raise InputError(f"features must have shape (B, ...) with B >= 1, got {features.shape}")
    return s, features


def _check_graph(role: str, spec: GraphSpec, runner: GraphRunner) -> None:
    ins, outs = tuple(runner.input_names), tuple(runner.output_names)
    if set(ins) != set(spec.inputs) or set(outs) != set(spec.outputs):
        raise ManifestError(
            f"{role} graph {spec.file!r} has inputs {list(ins)} and outputs {list(outs)}, but {MANIFEST_FILE} "
            f"declares graphs.{role}.inputs {list(spec.inputs)} and graphs.{role}.outputs {list(spec.outputs)}"
        )


def _check_shape(role: str, runner: GraphRunner, name: str, tail: Tuple[int, ...], field: str) -> None:
    """Compare the graph's declared (batch, *tail) shape of ``name`` where it is static."""
    declared = getattr(runner, "input_shapes", {}).get(name)
    if not declared:
        return  # unknown rank: nothing to compare
    if len(declared) != 1 + len(tail) or any(d is not None and d != t for d, t in zip(declared[1:], tail)):
        raise ManifestError(f"{role} graph input {name!r} has shape {list(declared)} (None = dynamic), but "
                            f"{MANIFEST_FILE} {field} implies [batch, {', '.join(map(str, tail))}]")


def _inside(root: Path, path: Path, what: str) -> str:
    """``path`` (absolute, or relative to the working directory like ``root``) as a
    bundle-relative name, or BundleError."""
    base = os.path.abspath(root)
    full = os.path.abspath(os.fspath(path))
    rel = os.path.relpath(full, base)
    if rel == os.curdir or rel.split(os.sep)[0] == os.pardir or os.path.isabs(rel):
        raise BundleError(f"{what} {os.fspath(path)!r} lies outside the bundle {str(root)!r}; every file the "
                          "runtime opens must be inside the bundle and listed in its manifest")
    return rel.replace(os.sep, "/")


class UncertaintyRuntime:
    """Load a bundle once; :meth:`predict` returns prediction plus uncertainty.

    ``seed`` seeds the session's generator, which advances between calls; a
    per-call ``seed`` overrides it for that call only. ``max_batch`` caps the rows
    fed to a graph in one run (larger inputs and S*B run in chunks, same result);
    it bounds the memory a call takes. ``threads`` (1..MAX_THREADS) sizes the
    backends' thread pools.

    Loading checks the bundle against its artifacts: graph input/output names,
    static input shapes, and one run of the trunk and head on a neutral window (a
    zero signal, or unknown-token ids) whose logits must have one entry per class.
    """

    def __init__(self, bundle_dir: PathLike, threads: Optional[int] = None, seed: Any = None,
                 verify: bool = True, max_batch: int = DEFAULT_MAX_BATCH) -> None:
        self._max_batch = _positive_int("max_batch", max_batch, MAX_BATCH)
        threads = _check_threads(threads)
        self._tokenizer: Optional[WordTokenizer] = None
        self._rng = _make_rng(seed)
        self._bundle: Bundle = load_bundle(bundle_dir, verify=verify)
        m = self._bundle.manifest
        check_placement(m)  # graphs run on the executors the bundle's placement section chose
        self._front_end = front_end_of(m)  # optional order tracking (the "preprocessing" section)
        if self._front_end is not None:
            self._front_end.check_rate(m.input.sample_rate_hz)
        self._trunk = self._load_graph("trunk", m.trunk, threads)
        self._head = self._load_graph("head", m.head, threads)
        _check_graph("trunk", m.trunk, self._trunk)
        _check_graph("head", m.head, self._head)
        _check_shape("trunk", self._trunk, m.input.name, (m.input.length,), "input.length")
        for spec in m.noise:
            _check_shape("head", self._head, spec.name, spec.shape, f"noise {spec.name!r} shape")
        prepare_noise(m.noise)   # build the normal table now, not in the first predict call
        self._check_logits_static()
        self._check_by_running()

    # -- loading ----------------------------------------------------------------------------
    def _load_graph(self, role: str, spec: GraphSpec, threads: Optional[int]) -> GraphRunner:
        m, bundle = self._bundle.manifest, self._bundle
        backend = spec.backend or m.backend
        path = bundle.listed_path(spec.file, f"{role} graph file")
        for extra in files_opened(backend, path, spec.options):
            name = _inside(bundle.root, extra, f"file opened by the {backend!r} executor for the {role} graph:")
            bundle.listed_path(name, f"file opened by the {backend!r} executor for the {role} graph:")
        return load_graph(backend, path, threads, spec.options)

    def _check_logits_static(self) -> None:
        m = self.manifest
        declared = getattr(self._head, "output_shapes", {}).get(m.logits_name)
        if declared and (len(declared) != 2 or declared[-1] not in (None, m.num_classes)):
            raise ManifestError(f"head graph {m.head.file!r} declares {m.logits_name!r} of shape {list(declared)} "
                                f"(None = dynamic), but {MANIFEST_FILE} classes lists {m.num_classes} names")

    def _check_by_running(self) -> None:
        """One row through both graphs: the logits must have one entry per class."""
        m = self.manifest
        spec = m.input
        x = np.ones((1, spec.length), np.int64) if spec.is_tokens else np.zeros((1, spec.length), np.float32)
        try:
            features = self._run_trunk(x if spec.is_tokens else normalize(x, spec.normalization))
            logits = self._run_head(features, mean_noise(m.noise, 1), check=False)
        except BackendError as exc:
            raise BackendError(f"load-time check run of bundle {str(self._bundle.root)!r} failed: {exc}") from None
        if logits.shape != (1, m.num_classes):
            raise ManifestError(f"head graph {m.head.file!r} returns {m.logits_name!r} of shape "
                                f"{list(logits.shape)} for one row, but {MANIFEST_FILE} classes lists "
                                f"{m.num_classes} names ({list(m.class_names)[:8]})")

    # -- properties ---------------------------------------------------------------------
    @property
    def bundle(self) -> Bundle:
        return self._bundle

    @property
    def graph_runners(self) -> Dict[str, GraphRunner]:
        """The loaded graphs, ``{"trunk": runner, "head": runner}``: the executor objects in use."""
        return {"trunk": self._trunk, "head": self._head}

    @property
    def manifest(self) -> Manifest:
        return self._bundle.manifest

    @property
    def bundle_digest(self) -> Optional[str]:
        """sha256 of the bundle's manifest.json bytes: the identity of what this runtime runs; None
        when loaded with ``verify=False`` (files unverified: no identity is claimed)."""
        return self._bundle.digest

    @property
    def class_names(self) -> Tuple[str, ...]:
        return self.manifest.class_names

    @property
    def input_length(self) -> int:
        return self.manifest.input.length

    @property
    def default_samples(self) -> int:
        return self.manifest.default_samples

    @property
    def max_batch(self) -> int:
        return self._max_batch

    # -- stages ---------------------------------------------------------------------------
    @property
    def tokenizer(self) -> WordTokenizer:
        """The bundle's tokenizer (token-input bundles that ship one; loaded once)."""
        spec = self.manifest.input
        if spec.tokenizer is None:
            raise InputError(f"bundle {self.manifest.model_name!r} has no tokenizer (input dtype {spec.dtype}); "
                             "pass numeric input to predict()")
        if self._tokenizer is None:
            tok = WordTokenizer.load(self._bundle.listed_path(spec.tokenizer, "tokenizer file"))
            if tok.vocab_size != spec.vocab_size or tok.max_length != spec.length:
                raise ManifestError(f"tokenizer {spec.tokenizer!r} has vocab {tok.vocab_size} and max_length "
                                    f"{tok.max_length}, but {MANIFEST_FILE} input declares vocab_size "
                                    f"{spec.vocab_size} and length {spec.length}")
            self._tokenizer = tok
        return self._tokenizer

    def tokenize(self, texts: Sequence[str]) -> np.ndarray:
        """Token ids (B, input.length) of ``texts`` with the bundle's tokenizer."""
        return self.tokenizer.encode_batch(texts)

    def _prepare(self, x: Any, rpm: Any = None) -> Tuple[np.ndarray, Optional[Tuple[str, ...]]]:
        """Validated, front-ended (order tracking, when the bundle has one; ``rpm``: the shaft
        speed, else estimated), normalised graph input (B, length) and the input-quality flags."""
        spec = self.manifest.input
        if spec.is_tokens:
            if rpm is not None:
                raise InputError("rpm applies to signal bundles with an order-tracking front end, not token input")
            return validate_tokens(x, spec.length, int(spec.vocab_size)), None
        windows = validate_signal(x, spec.length)
        flags = input_quality(windows)
        shaped = apply_front_end(self._front_end, windows, spec.sample_rate_hz, rpm)
        return normalize(shaped, spec.normalization), flags

    def _run_trunk(self, windows: np.ndarray) -> np.ndarray:
        m = self.manifest
        parts = []
        for r0 in range(0, windows.shape[0], self._max_batch):
            chunk = windows[r0:r0 + self._max_batch]
            out = self._trunk.run({m.input.name: chunk})
            if m.feature_name not in out:
                raise BackendError(f"trunk graph {m.trunk.file!r} returned no {m.feature_name!r}")
            features = np.asarray(out[m.feature_name])
            if features.ndim < 1 or features.shape[0] != chunk.shape[0]:
                raise BackendError(f"trunk graph {m.trunk.file!r} returned {m.feature_name!r} of shape "
                                   f"{features.shape} for a batch of {chunk.shape[0]}")
            parts.append(features)
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)

    def trunk_features(self, x: Any, rpm: Any = None) -> np.ndarray:
        """Validate, normalise and run the trunk once: features of shape (B, ...).

        Signal bundles take float windows (B, length); token bundles take integer
        ids (B, length) in [0, vocab_size) (see :meth:`tokenize`). The trunk runs on
        at most ``max_batch`` rows at a time."""
        return self._run_trunk(self._prepare(x, rpm)[0])

    def stream_features(self, windows: np.ndarray) -> np.ndarray:
        """Trunk features (B, ...) of windows a stream has checked already: a C-contiguous float32
        array (B, input.length) of finite samples (the streaming :class:`~edgeuq_runtime.stream.Diagnoser`
        flags non-finite windows and never passes them). Skips the per-call validation and the
        input-quality flags of :meth:`trunk_features` (the stream has its own); the front end,
        normalisation and trunk are the same, so the features equal ``trunk_features(windows)``.
        Only the dtype, shape and contiguity are checked here (O(1)), not the values."""
        spec = self.manifest.input
        if spec.is_tokens:
            raise InputError("stream_features takes signal windows; this bundle takes token ids")
        if not isinstance(windows, np.ndarray) or windows.dtype != np.float32 or windows.ndim != 2 \
                or windows.shape[1] != spec.length or windows.shape[0] < 1 or not windows.flags.c_contiguous:
            raise InputError(f"stream_features needs a C-contiguous float32 array (B >= 1, {spec.length}), got "
                             f"{getattr(windows, 'dtype', type(windows).__name__)} {getattr(windows, 'shape', '')}")
        shaped = apply_front_end(self._front_end, windows, spec.sample_rate_hz, None)
        return self._run_trunk(normalize(shaped, spec.normalization))

    def _run_head(self, features: np.ndarray, noise: Mapping[str, np.ndarray], check: bool = True) -> np.ndarray:
        m = self.manifest
        n = features.shape[0]
        feeds: Dict[str, np.ndarray] = {m.feature_name: features}
        feeds.update(noise)
        out = self._head.run(feeds)
        if m.logits_name not in out:
            raise BackendError(f"head graph {m.head.file!r} returned no {m.logits_name!r}")
        logits = np.asarray(out[m.logits_name])
        if check and logits.shape != (n, m.num_classes):
            raise BackendError(f"head graph {m.head.file!r} returned {m.logits_name!r} of shape {logits.shape}, "
                               f"expected {(n, m.num_classes)}")
        return logits

    def head_logits(self, features: np.ndarray, noise: Mapping[str, np.ndarray]) -> np.ndarray:
        """Run the head once on ``features`` (N, ...) and noise (N, *shape): logits (N, C)."""
        m = self.manifest
        features = np.ascontiguousarray(features, dtype=np.float32)
        n = features.shape[0] if features.ndim else 0
        if n < 1:
            raise InputError(f"features must have shape (N, ...) with N >= 1, got {features.shape}")
        expected = [s.name for s in m.noise]
        if not isinstance(noise, Mapping) or sorted(noise) != sorted(expected):
            raise InputError(f"noise inputs must be exactly {expected}, got "
                             f"{sorted(noise) if isinstance(noise, Mapping) else type(noise).__name__}")
        feeds: Dict[str, np.ndarray] = {}
        for spec in m.noise:
            arr = np.ascontiguousarray(noise[spec.name], dtype=np.float32)
            if arr.shape != (n,) + spec.shape:
                raise InputError(f"noise {spec.name!r} must have shape {(n,) + spec.shape}, got {arr.shape}")
            feeds[spec.name] = arr
        return self._run_head(features, feeds)

    def sample_logits(self, features: np.ndarray, samples: int, rng: np.random.Generator) -> np.ndarray:
        """Logits of ``samples`` stochastic head passes over ``features`` (B, ...): shape (S, B, C).

        Noise is the next S*B rows of ``rng``'s noise stream (:func:`~edgeuq_runtime.noise.sample_noise_rows`),
        row ``s * B + b`` in order, and the head runs on whole samples, at most ``max_batch`` rows
        per run (one sample's rows in chunks when B is larger, drawing just those rows). So the
        noise takes memory bounded by ``max_batch``, the result never depends on it, and
        calling this with k1 and then k2 samples from the same generator draws exactly the
        k1 + k2 samples one call would (adaptive sampling)."""
        s, features = _sampling_args(samples, rng, features)
        m = self.manifest
        b, c = features.shape[0], m.num_classes
        out = np.empty((s, b, c), dtype=np.float32)
        if b <= self._max_batch:
            per_chunk = self._max_batch // b
            for s0 in range(0, s, per_chunk):
                n = min(per_chunk, s - s0)
                noise = sample_noise_rows(m.noise, n * b, rng)
                tiled = features if n == 1 else np.tile(features, (n,) + (1,) * (features.ndim - 1))
                out[s0:s0 + n] = self._run_head(tiled, noise).reshape(n, b, c)
                del noise, tiled
        else:  # one sample's rows in chunks: the next rows of the same stream (noise.py), O(max_batch)
            for si in range(s):
                for r0 in range(0, b, self._max_batch):
                    r1 = min(r0 + self._max_batch, b)
                    out[si, r0:r1] = self._run_head(features[r0:r1], sample_noise_rows(m.noise, r1 - r0, rng))
        if s * b * words_per_row(m.noise) * 8 >= TRIM_NOISE_BYTES:
            _malloc_trim()
        return out

    def sample_logits_per_input(self, features: np.ndarray, samples: int, rng: np.random.Generator) -> np.ndarray:
        """Logits (S, B, C) equal to ``B`` calls of :meth:`sample_logits` on ``features[b:b+1]`` in
        order, from the same ``rng``: input ``b`` takes noise rows ``b * S .. (b + 1) * S - 1`` of
        the stream (input-major, unlike :meth:`sample_logits`' sample-major rows). The head runs on
        whole inputs' rows, at most ``max_batch`` rows per run (a stream's micro-batch of windows
        in one call, deciding exactly what one window at a time decides)."""
        s, features = _sampling_args(samples, rng, features)
        m = self.manifest
        b, c = features.shape[0], m.num_classes
        per_run = self._max_batch // s
        if per_run < 1:  # one input's samples exceed max_batch: the sample-major path, input by input
            return np.concatenate([self.sample_logits(features[i:i + 1], s, rng) for i in range(b)], axis=1)
        out = np.empty((b, s, c), dtype=np.float32)
        for b0 in range(0, b, per_run):
            n = min(per_run, b - b0)
            noise = sample_noise_rows(m.noise, n * s, rng)
            rows = np.repeat(features[b0:b0 + n], s, axis=0)
            out[b0:b0 + n] = self._run_head(rows, noise).reshape(n, s, c)
            del noise, rows
        if s * b * words_per_row(m.noise) * 8 >= TRIM_NOISE_BYTES:
            _malloc_trim()
        return out.transpose(1, 0, 2)

    def _decompose(self, logits: np.ndarray, flags: Optional[Tuple[str, ...]]) -> UncertaintyResult:
        if not np.all(np.isfinite(logits)):
            rows = sorted({int(r) for r in np.argwhere(~np.isfinite(logits))[:, 1]})
            raise BackendError(f"head graph {self.manifest.head.file!r} produced non-finite logits for input rows "
                               f"{rows[:10]}")
        probs = softmax(logits.astype(np.float64), axis=-1)
        return decompose(probs, self.class_names, input_flags=flags, bundle_digest=self.bundle_digest)

    # -- public inference -------------------------------------------------------------------
    def predict(self, x: Any, samples: Optional[int] = None, seed: Any = None, rpm: Any = None) -> UncertaintyResult:
        """S stochastic passes of the head over one trunk pass; ``samples`` defaults to the manifest's
        (at most MAX_SAMPLES). Rows whose window is flat or clipped carry an input flag
        (``result.input_flags``) and are not diagnosed. ``rpm`` (scalar or per row): the shaft speed
        for a bundle with an order-tracking front end (None: estimated from each window)."""
        s = self.default_samples if samples is None else \
            _positive_int("samples", samples, MAX_SAMPLES, " (the most samples one call may draw)")
        rng = self._rng if seed is None else _make_rng(seed)
        windows, flags = self._prepare(x, rpm)
        features = self._run_trunk(windows)
        return self._decompose(self.sample_logits(features, s, rng), flags)

    def predict_text(self, texts: Sequence[str], samples: Optional[int] = None, seed: Any = None) -> UncertaintyResult:
        """Tokenize ``texts`` with the bundled tokenizer, then :meth:`predict`."""
        return self.predict(self.tokenize(texts), samples=samples, seed=seed)

    def deterministic(self, x: Any, rpm: Any = None) -> UncertaintyResult:
        """One pass with every noise input at its mean (dropout off): S = 1, epistemic = 0."""
        windows, flags = self._prepare(x, rpm)
        features = self._run_trunk(windows)
        b = features.shape[0]
        logits = np.empty((1, b, self.manifest.num_classes), dtype=np.float32)
        for r0 in range(0, b, self._max_batch):
            r1 = min(r0 + self._max_batch, b)
            logits[0, r0:r1] = self._run_head(np.ascontiguousarray(features[r0:r1], dtype=np.float32),
                                              mean_noise(self.manifest.noise, r1 - r0))
        return self._decompose(logits, flags)

    def __repr__(self) -> str:
        m = self.manifest
        return (f"UncertaintyRuntime({str(self._bundle.root)!r}, model={m.model_name!r} v{m.model_version}, "
                f"classes={len(m.class_names)}, default_samples={m.default_samples}, backend={m.backend!r}, "
                f"digest={(self.bundle_digest or '')[:12]})")
