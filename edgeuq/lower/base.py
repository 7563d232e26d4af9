"""The lowering plug-in point: a :class:`Lowerer` (one per way of lowering), its frozen options, one
evidence record. ("Backend" means the runtime executor only: a graph's ``executor``.)

A lowerer is a subpackage or module ``edgeuq.lower.<name>`` that defines a
:class:`Lowerer` subclass and registers it with ``@register_lowerer``; the
registry (an :class:`edgeuq.registry.Registry` with ``package="edgeuq.lower"``) imports
``edgeuq.lower.<name>`` the first time a board asks for ``lowering = "<name>"`` (heavy
lowerers stay unimported until used; no lowerer named anywhere else); a lowerer in another
distribution declares an ``edgeuq.lowerer`` entry point.
Copy ``edgeuq/lower/onnxruntime.py`` (the smallest lowerer) to add one.

Every lowering returns a :class:`CompiledArtifact` whose :class:`Evidence` says
how its numbers were checked (native / qemu / c-simulation / compile-only /
remote), against what, with which error and latency (None = not measured).
"""
from __future__ import annotations

import dataclasses
import math
import shutil
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, FrozenSet, Mapping, Optional, Sequence, Tuple, Type, TypeVar

from ..artifact import Artifact, ArtifactWriter
from ..registry import Registry

__all__ = [
    "CompiledGraph", "CompiledArtifact", "Evidence", "EVIDENCE_KINDS", "CompileSettings", "CpuRequirement", "Lowerer",
    "LOWERERS", "register_lowerer", "get_lowerer", "lower", "LoweringNotAvailable", "options_from_kwargs",
]

EVIDENCE_KINDS = ("native", "qemu", "c-simulation", "compile-only", "remote")


def _finite_or_none(x: Optional[float], what: str) -> Optional[float]:
    if x is None:
        return None
    x = float(x)
    if math.isnan(x):
        raise ValueError(f"evidence {what} is NaN: a check that produced NaN has not passed")
    return x


@dataclass(frozen=True)
class Evidence:
    """How a lowered artifact was checked, in one typed record (JSON in the manifest).

    * ``how``: one of :data:`EVIDENCE_KINDS`; ``compile-only`` means built, never run;
    * ``reference``: what the outputs were compared with ("" when nothing ran);
    * ``max_error``/``tolerance``: the largest absolute difference over all checked
      graphs, and the tolerance it passed (None when nothing ran);
    * ``latency_ms``: per-input latency measured on this host, or None (not measured:
      emulated, simulated or not run; never "met");
    * ``reason``: why the evidence is not stronger (e.g. the missing emulator);
    * ``estimates``: numbers that are *estimates*, not measurements, each a mapping
      with ``fits`` (bool) and ``how`` (e.g. an FPGA resource estimate);
    * ``detail``: lowerer-specific figures (per-graph errors, emulator, probe metrics).
    """

    how: str
    reference: str = ""
    max_error: Optional[float] = None
    tolerance: Optional[float] = None
    latency_ms: Optional[float] = None
    reason: str = ""
    estimates: Mapping[str, Any] = field(default_factory=dict)
    detail: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.how not in EVIDENCE_KINDS:
            raise ValueError(f"evidence kind must be one of {EVIDENCE_KINDS}, got {self.how!r}")
        object.__setattr__(self, "max_error", _finite_or_none(self.max_error, "max_error"))
        object.__setattr__(self, "tolerance", _finite_or_none(self.tolerance, "tolerance"))
        object.__setattr__(self, "latency_ms", _finite_or_none(self.latency_ms, "latency_ms"))
        if self.how == "compile-only" and (self.max_error is not None or self.latency_ms is not None):
            raise ValueError("compile-only evidence cannot carry an error or a latency: nothing ran")
        if self.max_error is not None and self.tolerance is not None and not self.max_error <= self.tolerance:
            raise ValueError(f"evidence max_error {self.max_error:.3g} exceeds its tolerance {self.tolerance:.3g}")

    @property
    def label(self) -> str:
        """Short human label: ``native``, ``qemu-aarch64``, ``c-simulation``, ``compile-only`` ..."""
        sub = self.detail.get("arch") if self.how == "qemu" else None
        return f"{self.how}-{sub}" if sub else self.how

    def to_json(self) -> Dict[str, Any]:
        return {"how": self.how, "label": self.label, "reference": self.reference, "max_error": self.max_error,
                "tolerance": self.tolerance, "latency_ms": self.latency_ms, "reason": self.reason,
                "estimates": dict(self.estimates), "detail": dict(self.detail)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Evidence":
        return cls(**{k: d[k] for k in ("how", "reference", "max_error", "tolerance", "latency_ms", "reason",
                                        "estimates", "detail") if k in d})

    def summary(self) -> str:
        """One line for tables: the error against the reference, or why nothing ran."""
        if self.max_error is not None:
            return f"max|err| {self.max_error:.2g} vs {self.reference}"
        return self.reason


@dataclass(frozen=True)
class CompiledGraph:
    """One compiled graph: the file the device loads, and how to load it."""

    file: Path                      # absolute path of the artifact on the host
    executor: str                   # executor name in edgeuq_runtime.executors (the manifest's graph `backend`)
    options: Mapping[str, Any] = field(default_factory=dict)  # executor loader options (JSON values)
    suffix: Optional[str] = None    # bundle file name after the role, e.g. ".fpga.json" (default: the file's suffix)

    def bundle_file(self, role: str) -> str:
        """The graph's file name in a bundle: ``<role><suffix>`` (``trunk.so``, ``head.onnx`` ...)."""
        return f"{role}{self.suffix if self.suffix is not None else self.file.suffix}"


def _graph_json(g: CompiledGraph, role: str) -> Dict[str, Any]:
    return {"file": g.bundle_file(role), "executor": g.executor, "options": dict(g.options), "suffix": g.suffix}


@dataclass(frozen=True)
class CompiledArtifact(Artifact):
    """The trunk and head compiled for one target, plus extra files for the bundle.

    Returned by a lowering with its files where the lowerer wrote them; :meth:`save` makes it a
    stored artifact (versioned, hashed, written atomically, verified by
    ``CompiledArtifact.load``) holding its own copies of the graphs and extra files.
    """

    KIND: ClassVar[str] = "compiled"
    FORMAT_VERSION: ClassVar[int] = 2  # 2: a graph's "executor" (was "backend")
    META_FILE: ClassVar[str] = "compiled.json"

    target: str
    trunk: CompiledGraph
    head: CompiledGraph
    evidence: Evidence
    extra_files: Mapping[str, Path] = field(default_factory=dict)  # bundle-relative name -> host path
    metadata: Mapping[str, Any] = field(default_factory=dict)       # compiler versions, tuning (JSON values)

    def to_json(self) -> Dict[str, Any]:
        """The manifest's record of this lowering: its metadata plus the evidence."""
        return {**dict(self.metadata), "evidence": self.evidence.to_json()}

    # -- the artifact base: a folder with the graphs, the extra files and compiled.json -----------
    def payload_files(self) -> Tuple[str, ...]:
        return (self.trunk.bundle_file("trunk"), self.head.bundle_file("head"), *sorted(self.extra_files))

    def to_meta(self) -> Dict[str, Any]:
        return {"target": self.target, "trunk": _graph_json(self.trunk, "trunk"),
                "head": _graph_json(self.head, "head"), "extra_files": sorted(self.extra_files),
                "evidence": self.evidence.to_json(), "metadata": dict(self.metadata)}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], **base: Any) -> "CompiledArtifact":
        root = Path(base["directory"])
        graphs = {role: CompiledGraph(file=root / meta[role]["file"], executor=meta[role]["executor"],
                                      options=dict(meta[role]["options"]), suffix=meta[role]["suffix"])
                  for role in ("trunk", "head")}
        return cls(target=meta["target"], trunk=graphs["trunk"], head=graphs["head"],
                   evidence=Evidence.from_json(meta["evidence"]),
                   extra_files={n: root / n for n in meta["extra_files"]}, metadata=dict(meta["metadata"]),
                   **base)

    def save(self, out_dir: Path, inputs: str = "") -> "CompiledArtifact":
        """Copy the graphs and extra files into ``out_dir`` and commit ``compiled.json`` atomically;
        returns the stored artifact (loaded back and verified). ``inputs``: digest of what it was
        made from (e.g. the OnnxArtifact's digest and the options), for caching by hash."""
        with ArtifactWriter(out_dir) as w:
            for role in ("trunk", "head"):
                g = getattr(self, role)
                shutil.copyfile(g.file, w.path / g.bundle_file(role))
            for name, src in self.extra_files.items():
                dest = w.path / name
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dest)
            return w.commit(dataclasses.replace(self, inputs=inputs))


@dataclass(frozen=True)
class CompileSettings:
    """What the board, the recipe and the ``edgeuq compile`` command line ask of every lowering;
    each :class:`Lowerer` turns it into its own options (:meth:`Lowerer.options_for`)."""

    samples: int = 16
    tune_trials: int = 0
    tuning_root: Optional[Path] = None
    precision: Optional[Mapping[str, str]] = None   # per-layer precisions from a quantization plan
    progress: Optional[Callable[[str], None]] = None
    #: tune on boards: ``(tracker HOST:PORT, key)`` of a TVM RPC tracker whose servers time the candidates
    tune_rpc: Optional[Tuple[str, str]] = None
    #: higher ISA levels of the target to compile as well, for run-time dispatch (the placement's
    #: ``isa_variants`` or ``edgeuq compile --isa-variants``); only a lowering with ``isa_dispatch`` takes them
    isa_variants: Tuple[str, ...] = ()
    #: the board CPU's vendor (``intel``, ``amd``, ...) where tuning data kept per vendor should follow
    #: it; ``""``: no vendor's; None (default): this host's when the code runs on this host
    cpu_vendor: Optional[str] = None


@dataclass(frozen=True)
class CpuRequirement:
    """The CPU a compiled graph needs on the board: its architecture (a target's ``arch``, e.g.
    ``x86_64``, ``aarch64``) and the CPU feature flags its machine code may use (``/proc/cpuinfo``
    names, e.g. ``avx512f``; empty: the architecture's baseline)."""

    arch: str
    flags: frozenset = frozenset()


O = TypeVar("O")


class Lowerer(ABC):
    """One lowerer. Subclasses set ``name`` and ``Options`` (a frozen dataclass) and
    implement :meth:`options_for` and :meth:`lower`."""

    name: ClassVar[str]
    Options: ClassVar[type]
    #: Capability: the lowering can ship per-ISA libraries of a graph that the executor picks from at run
    #: time (``CompileSettings.isa_variants``); it then implements :meth:`check_isa_variants`.
    isa_dispatch: ClassVar[bool] = False
    #: Capability: the noise kinds (``NoiseSpec.kind``) a head graph this lowering builds may take;
    #: None (the default): any, the graph runs as exported. An FPGA head that multiplies masks in
    #: hardware takes only those; :func:`edgeuq.lower.compile.compile_board` refuses a head graph with
    #: another kind before lowering, naming the kinds (a caller may first move the network onto a
    #: scheme whose head draws them: the compression step ``rehead``).
    noise_kinds: ClassVar[Optional[FrozenSet[str]]] = None

    def check_isa_variants(self, target: Any, variants: Sequence[str]) -> None:
        """Raise ValueError (saying why) unless every target in ``variants`` is a higher ISA level of
        ``target``'s CPU that this lowering can ship next to ``target``'s own library."""
        if variants:
            raise ValueError(f"the {self.name} lowering does not ship per-ISA libraries (no run-time ISA "
                             f"dispatch); it cannot take {list(variants)}")

    @abstractmethod
    def options_for(self, settings: CompileSettings, roles: Sequence[str]) -> Any:
        """This lowerer's options for lowering the graphs ``roles`` of a board."""

    @abstractmethod
    def lower(self, art: Any, target: Any, workdir: Path, options: Any) -> CompiledArtifact:
        """Lower ``art`` (an OnnxArtifact) for ``target`` into ``workdir``."""

    def cpu_requirement(self, target: Any) -> Optional[CpuRequirement]:
        """The board CPU a graph this lowering compiled for ``target`` needs (a capability the
        lowering declares; placement skips a candidate the board's CPU cannot run). None, the
        default: the graphs are not machine code for the target's ISA (an ONNX graph the executor
        dispatches per CPU, an FPGA design), so whatever runs the executor runs them."""
        return None


class LoweringNotAvailable(LookupError, ValueError):
    """A board names a lowerer that is not registered (or cannot be imported)."""


def _check_lowerer(name: str, lw: Any) -> None:
    cls = type(lw)
    if not isinstance(lw, Lowerer):
        raise TypeError(f"register_lowerer({name!r}) decorates a Lowerer subclass, got {lw!r}")
    if not (dataclasses.is_dataclass(cls.Options) and cls.Options.__dataclass_params__.frozen):
        raise TypeError(f"{cls.__name__}.Options must be a frozen dataclass")


#: name -> registered lowerer instance
LOWERERS: Registry[Lowerer] = Registry("lowerer", instantiate=True, check=_check_lowerer,
                                       error=LoweringNotAvailable, package=__package__,
                                       label="lowerer")
L = TypeVar("L", bound=Type[Lowerer])


def register_lowerer(name: str) -> Callable[[L], L]:
    """Class decorator: register one instance of a :class:`Lowerer` subclass under ``name``."""

    def deco(cls: L) -> L:
        if not (isinstance(cls, type) and issubclass(cls, Lowerer)):
            raise TypeError(f"register_lowerer({name!r}) decorates a Lowerer subclass, got {cls!r}")
        return LOWERERS.register(name)(cls)

    return deco


def get_lowerer(name: str) -> Lowerer:
    """The registered lowerer ``name``, importing ``edgeuq.lower.<name>`` on first use."""
    try:
        return LOWERERS.get(name)
    except LoweringNotAvailable:
        raise
    except ImportError as exc:
        raise LoweringNotAvailable(f"lowerer {name!r} could not be imported: {exc}") from exc


def options_from_kwargs(options_cls: Type[O], lowerer: str, kwargs: Mapping[str, Any]) -> O:
    """``options_cls(**kwargs)`` with a clear error naming unknown options."""
    known = {f.name for f in dataclasses.fields(options_cls)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise TypeError(f"unknown {lowerer} lowering options {unknown}; known: {sorted(known)}")
    return options_cls(**kwargs)


def lower(lowerer: str, art: Any, target: Any, workdir: Path, options: Any = None, **kwargs: Any) -> CompiledArtifact:
    """Lower with the lowerer ``lowerer``: ``options`` (its Options instance) or keyword options."""
    lw = get_lowerer(lowerer)
    if options is None:
        options = options_from_kwargs(lw.Options, lowerer, kwargs)
    elif kwargs:
        raise TypeError("pass either an options object or keyword options, not both")
    elif not isinstance(options, lw.Options):
        raise TypeError(f"{lowerer} lowering takes {lw.Options.__name__}, got {type(options).__name__}")
    return lw.lower(art, target, Path(workdir), options)
