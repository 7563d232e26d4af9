"""Multi-sample uncertainty inference on a bundle: trunk once, head on S*B rows.

Row ``s * B + b`` of every head input is sample ``s`` of input ``b`` (s-major tiling,
``np.tile`` of the features along axis 0). All noise for a call is drawn up front
from one numpy Generator, so chunking the head never changes the result.
Not thread-safe: give each thread its own runtime (or pass ``seed`` per call).
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from .bundle import MANIFEST_FILE, Bundle, PathLike, load_bundle
from .errors import BackendError, InputError, ManifestError
from .executors import GraphRunner, load_graph
from .manifest import GraphSpec, Manifest
from .noise import mean_noise, sample_noise
from .preprocess import normalize, validate_tokens, validate_windows
from .tokenizer import WordTokenizer
from .uncertainty import UncertaintyResult, decompose, softmax

__all__ = ["UncertaintyRuntime"]


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _make_rng(seed: Any) -> np.random.Generator:
    try:
        return np.random.default_rng(seed)
    except (TypeError, ValueError) as exc:
        raise InputError(f"seed must be None or a non-negative integer, got {seed!r} ({exc})") from None


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


class UncertaintyRuntime:
    """Load a bundle once; :meth:`predict` returns prediction plus uncertainty.

    ``seed`` seeds the session's generator, which advances between calls; a
    per-call ``seed`` overrides it for that call only. ``max_batch`` caps the rows
    fed to the head in one run (larger S*B runs in chunks, same result).
    """

    def __init__(self, bundle_dir: PathLike, threads: Optional[int] = None, seed: Any = None,
                 verify: bool = True, max_batch: int = 4096) -> None:
        self._max_batch = _positive_int("max_batch", max_batch)
        self._tokenizer: Optional[WordTokenizer] = None
        self._rng = _make_rng(seed)
        self._bundle: Bundle = load_bundle(bundle_dir, verify=verify)
        m = self._bundle.manifest
        self._trunk = load_graph(m.trunk.backend or m.backend, self._bundle.path(m.trunk.file), threads,
                                 m.trunk.options)
        self._head = load_graph(m.head.backend or m.backend, self._bundle.path(m.head.file), threads,
                                m.head.options)
        _check_graph("trunk", m.trunk, self._trunk)
        _check_graph("head", m.head, self._head)
        _check_shape("trunk", self._trunk, m.input.name, (m.input.length,), "input.length")
        for spec in m.noise:
            _check_shape("head", self._head, spec.name, spec.shape, f"noise {spec.name!r} shape")

    # -- properties ---------------------------------------------------------------------
    @property
    def bundle(self) -> Bundle:
        return self._bundle

    @property
    def manifest(self) -> Manifest:
        return self._bundle.manifest

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
            tok = WordTokenizer.load(self._bundle.path(spec.tokenizer))
            if tok.vocab_size != spec.vocab_size or tok.max_length != spec.length:
                raise ManifestError(f"tokenizer {spec.tokenizer!r} has vocab {tok.vocab_size} and max_length "
                                    f"{tok.max_length}, but {MANIFEST_FILE} input declares vocab_size "
                                    f"{spec.vocab_size} and length {spec.length}")
            self._tokenizer = tok
        return self._tokenizer

    def tokenize(self, texts: Sequence[str]) -> np.ndarray:
        """Token ids (B, input.length) of ``texts`` with the bundle's tokenizer."""
        return self.tokenizer.encode_batch(texts)

    def _validate(self, x: Any) -> np.ndarray:
        spec = self.manifest.input
        if spec.is_tokens:
            return validate_tokens(x, spec.length, int(spec.vocab_size))
        return normalize(validate_windows(x, spec.length), spec.normalization)

    def trunk_features(self, x: Any) -> np.ndarray:
        """Validate, normalise and run the trunk once: features of shape (B, ...).

        Signal bundles take float windows (B, length); token bundles take integer
        ids (B, length) in [0, vocab_size) (see :meth:`tokenize`)."""
        m = self.manifest
        windows = self._validate(x)
        features = self._trunk.run({m.input.name: windows})[m.feature_name]
        if features.ndim < 1 or features.shape[0] != windows.shape[0]:
            raise BackendError(f"trunk graph {m.trunk.file!r} returned {m.feature_name!r} of shape "
                               f"{features.shape} for a batch of {windows.shape[0]}")
        return features

    def head_logits(self, features: np.ndarray, noise: Mapping[str, np.ndarray]) -> np.ndarray:
        """Run the head once on ``features`` (N, ...) and noise (N, *shape): logits (N, C)."""
        m = self.manifest
        features = np.ascontiguousarray(features, dtype=np.float32)
        n = features.shape[0] if features.ndim else 0
        expected = [s.name for s in m.noise]
        if sorted(noise) != sorted(expected):
            raise InputError(f"noise inputs must be exactly {expected}, got {sorted(noise)}")
        feeds: Dict[str, np.ndarray] = {m.feature_name: features}
        for spec in m.noise:
            arr = np.ascontiguousarray(noise[spec.name], dtype=np.float32)
            if arr.shape != (n,) + spec.shape:
                raise InputError(f"noise {spec.name!r} must have shape {(n,) + spec.shape}, got {arr.shape}")
            feeds[spec.name] = arr
        logits = self._head.run(feeds)[m.logits_name]
        if logits.shape != (n, m.num_classes):
            raise BackendError(f"head graph {m.head.file!r} returned {m.logits_name!r} of shape {logits.shape}, "
                               f"expected {(n, m.num_classes)}")
        return logits

    def _head_tiled(self, features: np.ndarray, noise: Mapping[str, np.ndarray], samples: int) -> np.ndarray:
        b = features.shape[0]
        total = samples * b
        if total <= self._max_batch:
            return self.head_logits(np.tile(features, (samples,) + (1,) * (features.ndim - 1)), noise)
        # Whole samples per chunk when they fit; else plain row chunks. Row r is input r % B.
        step = (self._max_batch // b) * b if b <= self._max_batch else self._max_batch
        parts = []
        for r0 in range(0, total, step):
            r1 = min(r0 + step, total)
            rows = np.arange(r0, r1) % b
            parts.append(self.head_logits(features[rows], {k: v[r0:r1] for k, v in noise.items()}))
        return np.concatenate(parts, axis=0)

    def _decompose(self, logits: np.ndarray, samples: int, batch: int) -> UncertaintyResult:
        if not np.all(np.isfinite(logits)):
            raise BackendError(f"head graph {self.manifest.head.file!r} produced non-finite logits")
        probs = softmax(logits.astype(np.float64).reshape(samples, batch, -1), axis=-1)
        return decompose(probs, self.class_names)

    # -- public inference -------------------------------------------------------------------
    def predict(self, x: Any, samples: Optional[int] = None, seed: Any = None) -> UncertaintyResult:
        """S stochastic passes of the head over one trunk pass; ``samples`` defaults to the manifest's."""
        s = self.default_samples if samples is None else _positive_int("samples", samples)
        rng = self._rng if seed is None else _make_rng(seed)
        features = self.trunk_features(x)
        b = features.shape[0]
        noise = sample_noise(self.manifest.noise, s * b, rng)
        return self._decompose(self._head_tiled(features, noise, s), s, b)

    def predict_text(self, texts: Sequence[str], samples: Optional[int] = None, seed: Any = None) -> UncertaintyResult:
        """Tokenize ``texts`` with the bundled tokenizer, then :meth:`predict`."""
        return self.predict(self.tokenize(texts), samples=samples, seed=seed)

    def deterministic(self, x: Any) -> UncertaintyResult:
        """One pass with every noise input at its mean (dropout off): S = 1, epistemic = 0."""
        features = self.trunk_features(x)
        b = features.shape[0]
        return self._decompose(self._head_tiled(features, mean_noise(self.manifest.noise, b), 1), 1, b)

    def __repr__(self) -> str:
        m = self.manifest
        return (f"UncertaintyRuntime({str(self._bundle.root)!r}, model={m.model_name!r} v{m.model_version}, "
                f"classes={len(m.class_names)}, default_samples={m.default_samples}, backend={m.backend!r})")
