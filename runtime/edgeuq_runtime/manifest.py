"""The bundle manifest (``manifest.json``): what the graphs are and how to feed them.

A bundle is a directory holding two ONNX graphs and this manifest:

* the **trunk** maps the normalised input window to features; it is deterministic
  and runs once per batch;
* the **head** maps ``(features, *noise inputs)`` to logits; it runs on ``S * B`` rows,
  row ``s * B + b`` being sample ``s`` of input ``b`` (s-major tiling).

Every validation problem raises :class:`ManifestError` whose message starts with the
dotted JSON name of the field (``input.length``, ``graphs.head.inputs``, ...).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import numpy as np

from . import _checks as c
from .errors import ManifestError
from .noise import NoiseSpec, noise_specs_from_json
from .preprocess import NORMALIZATIONS

__all__ = ["MANIFEST_VERSION", "SUPPORTED_VERSIONS", "FORMAT", "InputSpec", "GraphSpec", "Manifest",
           "MAX_SAMPLES", "MAX_MANIFEST_BYTES", "MAX_JSON_DEPTH", "MAX_INPUT_LENGTH", "register_manifest_section",
           "MANIFEST_SECTIONS", "parse_json_strict", "refused_in_tree"]

MANIFEST_VERSION = 1
SUPPORTED_VERSIONS = frozenset({1})
FORMAT = "edgeuq-bundle"
SUPPORTED_DTYPES = ("float32", "int64")
_TOP_KEYS = {"format", "manifest_version", "model", "input", "classes", "default_samples", "noise",
             "graphs", "backend", "files", "metadata"}

#: Most samples S one call may draw (``default_samples`` and ``predict(samples=...)``).
MAX_SAMPLES = 4096
#: Largest manifest.json accepted, in bytes, and deepest JSON nesting.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_JSON_DEPTH = 32
#: Longest input window (samples or tokens).
MAX_INPUT_LENGTH = 1 << 24
_MAX_DIGITS = 19  # integers beyond int64 are refused while parsing, before Python builds them


# -- optional manifest sections --------------------------------------------------------------------
#: key -> (parse(json_value, where) -> object, to_json(object) -> json_value)
MANIFEST_SECTIONS: Dict[str, Tuple[Callable[[Any, str], Any], Callable[[Any], Any]]] = {}


def register_manifest_section(key: str, parse: Callable[[Any, str], Any], to_json: Callable[[Any], Any]) -> None:
    """Allow the optional top-level manifest key ``key``: ``parse(value, key)`` turns its JSON
    value into an object kept in :attr:`Manifest.sections` (raising :class:`ManifestError`
    naming the field on bad input) and ``to_json(obj)`` writes it back. A key whose parser
    is not registered is refused as unknown. Re-registering a key replaces its parser."""
    if not isinstance(key, str) or not key or key in _TOP_KEYS:
        raise ValueError(f"manifest section key must be a new non-empty string (not one of {sorted(_TOP_KEYS)}), "
                         f"got {key!r}")
    if not callable(parse) or not callable(to_json):
        raise TypeError("register_manifest_section needs callables parse(value, where) and to_json(obj)")
    MANIFEST_SECTIONS[key] = (parse, to_json)


def _parse_section(key: str, value: Any) -> Any:
    parse, _ = MANIFEST_SECTIONS[key]
    try:
        return parse(value, key)
    except ManifestError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, OverflowError, RecursionError) as exc:
        raise c.fail(key, f"malformed section ({type(exc).__name__}: {exc})") from None


# -- strict JSON ---------------------------------------------------------------------------------------
def _json_depth(text: str) -> int:
    """Deepest bracket nesting of JSON ``text``, brackets inside strings ignored. Vectorised,
    linear time and no recursion, so it is safe on hostile input before ``json.loads`` recurses
    (for invalid JSON it is exact up to the first error, where the parser stops anyway)."""
    arr = np.frombuffer(text.encode("utf-8", "surrogatepass"), dtype=np.uint8)
    n = arr.size
    if not n:
        return 0
    back = arr == ord("\\")
    quotes = np.flatnonzero(arr == ord('"'))
    inside = np.zeros(n, dtype=bool)
    if quotes.size:
        last_plain = np.maximum.accumulate(np.where(back, -1, np.arange(n)))
        prev = quotes - 1
        run = np.where(prev >= 0, prev - last_plain[np.maximum(prev, 0)], 0)  # backslashes just before
        real = quotes[run % 2 == 0]                                             # unescaped quotes
        toggles = np.zeros(n, dtype=np.int8)
        toggles[real] = 1
        inside = (np.cumsum(toggles, dtype=np.int64) % 2) == 1
    step = ((arr == ord("[")) | (arr == ord("{"))).astype(np.int64) - ((arr == ord("]")) | (arr == ord("}")))
    step[inside] = 0
    return int(max(0, np.cumsum(step).max()))


class _Refused:
    """Placeholder the JSON hooks return for a value the manifest refuses (an integer beyond int64,
    a float that overflows, NaN/Infinity): the parsed tree is then walked to name its field."""

    __slots__ = ("problem",)

    def __init__(self, problem: str) -> None:
        self.problem = problem


def _parse_int(s: str) -> Any:
    digits = s.lstrip("-")
    if len(digits) > _MAX_DIGITS:  # refused before Python builds the integer
        return _Refused(f"holds an integer of {len(digits)} digits (at most {_MAX_DIGITS} allowed)")
    return int(s)


def _parse_float(s: str) -> Any:
    value = float(s)
    if not math.isfinite(value):
        return _Refused(f"holds a number {s[:40]!r} that overflows a float")
    return value


def _parse_constant(s: str) -> Any:
    return _Refused(f"holds {s}, which is not JSON (NaN and Infinity are refused)")


_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _child(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    if _PLAIN_KEY.match(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{ascii(key)}]"


def _valid_text(value: str) -> bool:
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def refused_in_tree(value: Any, path: str = "") -> Optional[Tuple[str, str]]:
    """First ``(field path, problem)`` in a parsed JSON tree, in document order: a refused
    number, or a string (value or key) that is not valid Unicode text (a lone surrogate such
    as ``"\\ud800"`` cannot be encoded, printed or written back). None when all is well."""
    stack = [(value, path)]
    while stack:
        v, p = stack.pop()
        if isinstance(v, _Refused):
            return p or "(top level)", v.problem
        if isinstance(v, str):
            if not _valid_text(v):
                return p or "(top level)", f"holds {ascii(v)[:80]}, which is not valid Unicode text (lone surrogate)"
        elif isinstance(v, dict):
            items = []
            for k, x in v.items():
                if isinstance(k, str) and not _valid_text(k):
                    return _child(p, k), "key is not valid Unicode text (lone surrogate)"
                items.append((x, _child(p, k)))
            stack.extend(reversed(items))
        elif isinstance(v, list):
            stack.extend(reversed([(x, _child(p, i)) for i, x in enumerate(v)]))
    return None


def _no_duplicates(pairs: Any) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ManifestError(f"manifest repeats the key {k[:80]!r} in one object")
        out[k] = v
    return out


def parse_json_strict(text: str, what: str = "manifest", max_bytes: int = MAX_MANIFEST_BYTES,
                      max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` for untrusted bundle files: size and nesting capped, integers beyond
    int64, NaN/Infinity, floats that overflow, strings that are not valid Unicode (lone
    surrogates) and repeated keys refused. Every failure is a ManifestError; a refused value
    is named by its field path (``what: graphs.head.inputs[2].shape[0]: ...``)."""
    if not isinstance(text, str):
        raise ManifestError(f"{what} must be text, got {type(text).__name__}")
    if len(text) > max_bytes:
        raise ManifestError(f"{what} is larger than {max_bytes} bytes ({len(text)} characters)")
    depth = _json_depth(text)
    if depth > max_depth:
        raise ManifestError(f"{what} nests JSON {depth} levels deep (at most {max_depth} allowed)")
    try:
        tree = json.loads(text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant,
                          object_pairs_hook=_no_duplicates)
    except ManifestError as exc:
        raise ManifestError(f"{what}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{what} is not valid JSON: {exc}") from None
    except (ValueError, RecursionError) as exc:  # e.g. residual limits
        raise ManifestError(f"{what} is not valid JSON: {type(exc).__name__}: {exc}") from None
    bad = refused_in_tree(tree)
    if bad is not None:
        raise ManifestError(f"{what}: {bad[0]}: {bad[1]}")
    return tree


def _only(where: str, data: Mapping[str, Any], allowed: set) -> None:
    extra = sorted(set(data) - allowed)
    if extra:
        raise c.fail(where or "manifest", f"unknown keys {extra}; allowed: {sorted(allowed)}")


@dataclass(frozen=True)
class InputSpec:
    """The model input: one window of ``length`` samples per batch row.

    ``dtype`` ``"float32"`` (signal windows, the default) or ``"int64"`` (token
    ids of a text model). Token input needs ``vocab_size`` (ids must lie in
    ``[0, vocab_size)``) and ``normalization = "none"``; ``tokenizer`` optionally
    names the bundle file holding the tokenizer JSON (it must then be listed in
    ``files``). For text, ``sample_rate_hz`` is 1 (one token per step).
    The two optional keys appear in the JSON only when set, so float manifests
    are unchanged.
    """

    length: int
    sample_rate_hz: float
    name: str = "signal"
    dtype: str = "float32"
    normalization: str = "zscore"
    vocab_size: Optional[int] = None
    tokenizer: Optional[str] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", c.text("input.name", self.name))
        object.__setattr__(self, "length", c.positive_int("input.length", self.length, MAX_INPUT_LENGTH))
        object.__setattr__(self, "sample_rate_hz", c.positive_float("input.sample_rate_hz", self.sample_rate_hz))
        if not isinstance(self.dtype, str) or self.dtype not in SUPPORTED_DTYPES:
            raise c.fail("input.dtype", f"must be one of {list(SUPPORTED_DTYPES)}, got {c._show(self.dtype)}")
        if not isinstance(self.normalization, str) or self.normalization not in NORMALIZATIONS:
            raise c.fail("input.normalization",
                         f"must be one of {sorted(NORMALIZATIONS)}, got {c._show(self.normalization)}")
        if self.dtype == "int64":
            object.__setattr__(self, "vocab_size", c.positive_int("input.vocab_size", self.vocab_size))
            if self.vocab_size < 2:
                raise c.fail("input.vocab_size", f"must be >= 2 for token input, got {self.vocab_size}")
            if self.normalization != "none":
                raise c.fail("input.normalization", f"must be 'none' for int64 token input, got {self.normalization!r}")
            if self.tokenizer is not None:
                object.__setattr__(self, "tokenizer", c.relpath("input.tokenizer", self.tokenizer))
        else:
            for key in ("vocab_size", "tokenizer"):
                if getattr(self, key) is not None:
                    raise c.fail(f"input.{key}", f"only applies to int64 token input, not dtype {self.dtype!r}")

    @property
    def is_tokens(self) -> bool:
        return self.dtype == "int64"

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"name": self.name, "length": self.length, "dtype": self.dtype,
                               "sample_rate_hz": self.sample_rate_hz, "normalization": self.normalization}
        if self.vocab_size is not None:
            out["vocab_size"] = self.vocab_size
        if self.tokenizer is not None:
            out["tokenizer"] = self.tokenizer
        return out

    @classmethod
    def from_json(cls, data: Any) -> "InputSpec":
        c.obj("input", data)
        _only("input", data, {"name", "length", "dtype", "sample_rate_hz", "normalization", "vocab_size",
                              "tokenizer"})
        return cls(length=c.key("input", data, "length"), sample_rate_hz=c.key("input", data, "sample_rate_hz"),
                   name=data.get("name", "signal"), dtype=data.get("dtype", "float32"),
                   normalization=data.get("normalization", "zscore"), vocab_size=data.get("vocab_size"),
                   tokenizer=data.get("tokenizer"))


@dataclass(frozen=True)
class GraphSpec:
    """One graph file of the bundle and its input/output tensor names, in order.

    ``backend`` names the executor for this graph (default: the manifest's
    ``backend``), so a board can run the trunk on its CPU and the head elsewhere
    (GPU, FPGA). ``options`` are JSON values handed to that executor's loader
    (e.g. ``{"device": "cuda"}``).
    """

    file: str
    inputs: Tuple[str, ...]
    outputs: Tuple[str, ...]
    backend: Optional[str] = None
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "file", c.relpath("file", self.file))
        object.__setattr__(self, "inputs", c.names("inputs", self.inputs, min_len=1))
        object.__setattr__(self, "outputs", c.names("outputs", self.outputs, min_len=1))
        if self.backend is not None:
            c.text("backend", self.backend)
        if not isinstance(self.options, Mapping):
            raise c.fail("options", f"must be an object, got {c._show(self.options)}")
        try:  # JSON values only; a round trip validates and detaches the caller's objects
            options = json.loads(json.dumps(dict(self.options), allow_nan=False))
        except (TypeError, ValueError, RecursionError) as exc:
            raise c.fail("options", f"must be JSON-serialisable: {exc}") from None
        bad = refused_in_tree(options, "options")
        if bad is not None:
            raise c.fail(*bad)
        object.__setattr__(self, "options", options)

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"file": self.file, "inputs": list(self.inputs), "outputs": list(self.outputs)}
        if self.backend is not None:
            out["backend"] = self.backend
        if self.options:
            out["options"] = dict(self.options)
        return out

    @classmethod
    def from_json(cls, data: Any, where: str = "graph") -> "GraphSpec":
        """Parse one graph entry; ``where`` (e.g. ``graphs.trunk``) prefixes error messages."""
        c.obj(where, data)
        _only(where, data, {"file", "inputs", "outputs", "backend", "options"})
        args = {k: c.key(where, data, k) for k in ("file", "inputs", "outputs")}
        with c.prefixed(where):
            return cls(**args, backend=data.get("backend"), options=data.get("options", {}))


def _check_version(fmt: Any, version: Any) -> None:
    if not isinstance(fmt, str) or fmt != FORMAT:
        raise c.fail("format", f"must be {FORMAT!r}, got {c._show(fmt)}: not an edgeuq bundle manifest")
    if type(version) is not int or version not in SUPPORTED_VERSIONS:
        raise c.fail("manifest_version", f"unsupported version {c._show(version)}; this runtime supports "
                     f"manifest_version {sorted(SUPPORTED_VERSIONS)} (upgrade edgeuq_runtime for newer bundles)")


@dataclass(frozen=True)
class Manifest:
    """Everything the runtime needs to know about a bundle.

    ``files`` maps bundle-relative paths to sha256 digests. A manifest built in code
    may leave it empty (a *draft*); :func:`edgeuq_runtime.bundle.write_bundle` fills it
    in. The JSON form always has it: :meth:`to_json` refuses a draft.
    """

    model_name: str
    model_version: str
    input: InputSpec
    class_names: Tuple[str, ...]
    default_samples: int
    noise: Tuple[NoiseSpec, ...]
    trunk: GraphSpec
    head: GraphSpec
    feature_name: str
    logits_name: str
    backend: str = "onnxruntime"
    files: Mapping[str, str] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    format: str = FORMAT
    manifest_version: int = MANIFEST_VERSION
    #: Optional sections registered with :func:`register_manifest_section` (key -> parsed object).
    sections: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_version(self.format, self.manifest_version)
        put = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        put("model_name", c.text("model.name", self.model_name))
        put("model_version", c.text("model.version", self.model_version))
        if not isinstance(self.input, InputSpec):
            raise c.fail("input", f"must be an InputSpec, got {type(self.input).__name__}")
        put("class_names", c.names("classes", self.class_names, min_len=2))
        put("default_samples", c.positive_int("default_samples", self.default_samples, MAX_SAMPLES))
        noise = tuple(self.noise) if isinstance(self.noise, (list, tuple)) else (None,)
        if not all(isinstance(n, NoiseSpec) for n in noise):
            raise c.fail("noise", f"must be a sequence of NoiseSpec, got {self.noise!r}")
        put("noise", noise)
        c.names("noise", [n.name for n in self.noise])
        for role in ("trunk", "head"):
            if not isinstance(getattr(self, role), GraphSpec):
                raise c.fail(f"graphs.{role}", f"must be a GraphSpec, got {type(getattr(self, role)).__name__}")
        put("feature_name", c.text("graphs.feature_name", self.feature_name))
        put("logits_name", c.text("graphs.logits_name", self.logits_name))
        put("backend", c.text("backend", self.backend))
        c.obj("files", self.files)
        files = {c.relpath(f"files[{c._show(k)}]", k): c.sha256_hex(f"files[{k!r}]", v)
                 for k, v in self.files.items()}
        if "manifest.json" in files:
            raise c.fail("files", "must not list 'manifest.json' (a file cannot hold its own hash)")
        put("files", dict(sorted(files.items())))
        c.obj("metadata", self.metadata)
        try:  # a JSON round trip both validates and detaches the caller's objects
            put("metadata", json.loads(json.dumps(dict(self.metadata), allow_nan=False)))
        except (TypeError, ValueError, RecursionError) as exc:
            raise c.fail("metadata", f"must be JSON-serialisable: {exc}") from None
        bad = refused_in_tree(self.metadata, "metadata")
        if bad is not None:
            raise c.fail(*bad)
        c.obj("sections", self.sections)
        for key in self.sections:
            if key not in MANIFEST_SECTIONS:
                raise c.fail(str(key), f"unknown manifest section; registered sections: {sorted(MANIFEST_SECTIONS)}")
        put("sections", dict(sorted(self.sections.items())))
        self._check_consistency()

    def _check_consistency(self) -> None:
        if self.trunk.inputs != (self.input.name,):
            raise c.fail("graphs.trunk.inputs", f"must be exactly [{self.input.name!r}] (input.name), "
                         f"got {list(self.trunk.inputs)}")
        if self.feature_name not in self.trunk.outputs:
            raise c.fail("graphs.trunk.outputs", f"must contain feature_name {self.feature_name!r}, "
                         f"got {list(self.trunk.outputs)}")
        expected = (self.feature_name,) + tuple(n.name for n in self.noise)
        if self.head.inputs != expected:
            raise c.fail("graphs.head.inputs", f"must be [feature_name, *noise names] = {list(expected)}, "
                         f"got {list(self.head.inputs)}")
        if self.logits_name not in self.head.outputs:
            raise c.fail("graphs.head.outputs", f"must contain logits_name {self.logits_name!r}, "
                         f"got {list(self.head.outputs)}")
        if self.files:
            for role in ("trunk", "head"):
                f = getattr(self, role).file
                if f not in self.files:
                    raise c.fail("files", f"graph file {f!r} (graphs.{role}.file) is not listed; "
                                 f"listed: {sorted(self.files)}")
            if self.input.tokenizer is not None and self.input.tokenizer not in self.files:
                raise c.fail("files", f"tokenizer file {self.input.tokenizer!r} (input.tokenizer) is not listed; "
                             f"listed: {sorted(self.files)}")

    @property
    def is_draft(self) -> bool:
        """True while ``files`` is empty (no hashes yet)."""
        return not self.files

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_json(self) -> Dict[str, Any]:
        """The JSON object of ``manifest.json`` (see :meth:`dumps` for the text)."""
        if self.is_draft:
            raise c.fail("files", "draft manifest has no file hashes; write it with write_bundle()")
        return {
            "format": self.format,
            "manifest_version": self.manifest_version,
            "model": {"name": self.model_name, "version": self.model_version},
            "input": self.input.to_json(),
            "classes": list(self.class_names),
            "default_samples": self.default_samples,
            "noise": [n.to_json() for n in self.noise],
            "graphs": {"trunk": self.trunk.to_json(), "head": self.head.to_json(),
                       "feature_name": self.feature_name, "logits_name": self.logits_name},
            "backend": self.backend,
            "files": dict(self.files),
            "metadata": json.loads(json.dumps(self.metadata)),
            **{key: MANIFEST_SECTIONS[key][1](value) for key, value in self.sections.items()},
        }

    def dumps(self) -> str:
        """Stable, human-readable text: sorted keys, indent 2, trailing newline."""
        return json.dumps(self.to_json(), indent=2, sort_keys=True, allow_nan=False) + "\n"

    @classmethod
    def loads(cls, text: str) -> "Manifest":
        """Parse manifest text strictly (see :func:`parse_json_strict`: size, depth, integer
        and NaN limits) and validate every field."""
        return cls.from_json(parse_json_strict(text, "manifest"))

    @classmethod
    def from_json(cls, data: Any) -> "Manifest":
        c.obj("manifest", data)
        _check_version(data.get("format"), data.get("manifest_version"))
        _only("", data, _TOP_KEYS | set(MANIFEST_SECTIONS))
        sections = {k: _parse_section(k, data[k]) for k in sorted(data) if k in MANIFEST_SECTIONS}
        model = c.obj("model", c.key("", data, "model"))
        _only("model", model, {"name", "version"})
        graphs = c.obj("graphs", c.key("", data, "graphs"))
        _only("graphs", graphs, {"trunk", "head", "feature_name", "logits_name"})
        noise = c.key("", data, "noise")
        if not isinstance(noise, list):
            raise c.fail("noise", f"must be a list, got {type(noise).__name__}")
        metadata = data.get("metadata", {})
        if not isinstance(metadata, dict):
            raise c.fail("metadata", f"must be a JSON object, got {type(metadata).__name__}")
        trunk = GraphSpec.from_json(c.key("graphs", graphs, "trunk"), "graphs.trunk")
        head = GraphSpec.from_json(c.key("graphs", graphs, "head"), "graphs.head")
        files = c.obj("files", c.key("", data, "files"))
        if not files:
            raise c.fail("files", "must list every bundle file with its sha256, got {}")
        return cls(
            model_name=c.key("model", model, "name"), model_version=c.key("model", model, "version"),
            input=InputSpec.from_json(c.key("", data, "input")), class_names=c.key("", data, "classes"),
            default_samples=c.key("", data, "default_samples"), noise=noise_specs_from_json(noise),
            trunk=trunk, head=head, feature_name=c.key("graphs", graphs, "feature_name"),
            logits_name=c.key("graphs", graphs, "logits_name"), backend=c.key("", data, "backend"),
            files=files, metadata=metadata,
            format=data["format"], manifest_version=data["manifest_version"], sections=sections,
        )
