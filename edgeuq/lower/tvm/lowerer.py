"""TVM lowering (Relax): OnnxArtifact + cpu/CUDA ComputeTarget -> one library per graph.

The :class:`TvmLowerer` is registered as ``"tvm"``; its options are :class:`TvmOptions`. Per graph
(trunk, head) it imports the ONNX graph (``relax.frontend.onnx``), compiles it for
the target and exports ``<graph>.so`` with the target's cross compiler; CUDA
kernels are compiled offline into ``<graph>.<arch>.cubin`` (:mod:`.cuda`).

Batch: an untuned library keeps the ONNX graphs' symbolic batch axis (any batch).
Tuning needs static shapes, so a tuned library (``tune_trials > 0``, or a tuning
database that already holds records for these graphs) is compiled for a fixed
batch: the trunk for ``batch`` windows (default 1, one window at a time), the head
for ``samples * batch`` rows. The ``tvm`` executor chunks and zero-pads other
batch sizes (see ``edgeuq_runtime.executors.tvm``).

Shape buckets (``head_buckets``, default S = 1, 4, 8, 16, 32): a tuned head library
also holds one function per bucket whose heavy kernels (matmul) the databases cover,
so a call with few samples runs in the smallest bucket that holds it instead of
being padded to ``samples`` rows. Buckets without tuning records are left out (default
schedules can be slower than padding to a tuned bucket); the metadata lists each
candidate's coverage.

A tuning database for the demo architecture ships with the package per x86 target
(:func:`.tune.shipped_dir`); with ``tune_trials=0`` it is applied when its tasks match
these graphs (the evidence's tuning state then says ``tuned (shipped database)``), and
the libraries are compiled for the fixed batch it was tuned for. ``shipped_database=False``
ignores it (a plain untuned build).

Tuning runs only where the code runs (this host's own CPU); for cross and CUDA
targets it needs the device (a MetaSchedule RPC runner), so they are compiled
with the default schedules (CUDA: dlight GPU rules) and say so.

Checks (``check="auto"``): a native target runs both libraries here through the
runtime's own executor and compares them with ONNX Runtime on the same inputs and
noise (and times them); cross targets are run under qemu when the toolchain cache
holds what that needs (:mod:`.qemu`); otherwise the artifact is labelled
"compile only".
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from ..base import (CompiledArtifact, CompiledGraph, CompileSettings, CpuRequirement, Lowerer, options_from_kwargs,
                    register_lowerer)
from .build import ROLES, GraphBuild, build_graph, has_records, overall_state, tuned_buckets
from .check import CHECK_MODES, check_artifact
from ...hostcpu import check_vendor_name, cpu_vendor
from .targets import compiler_versions, host_target, is_native, required_flags, tuning_dir, tvm_target
from .tune import shipped_dir

__all__ = ["TvmLowerer", "TvmOptions", "compile_tvm"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TvmOptions:
    """Options of the TVM lowering.

    ``tune_trials`` (0: no new tuning; reuse the target's database when it holds records
    for these graphs), ``tuning_root`` (folder of per-target databases, default
    ``<toolchains>/tuning``), ``samples`` (MC samples S the head is tuned for), ``batch``
    (trunk rows of a tuned library), ``graphs`` (roles to compile; the other graph is
    passed through as ONNX for onnxruntime), ``check`` (``"auto"``, ``"none"`` or
    ``"require"``), ``atol``, ``threads`` (for the latency check), ``progress`` (a
    ``str -> None`` callable), ``shipped_database`` (apply the package's tuning database
    for the target when its tasks match the graphs; default True).
    """

    tune_trials: int = 0
    tuning_root: Optional[Path] = None
    samples: int = 16
    batch: int = 1
    graphs: Tuple[str, ...] = ROLES
    check: str = "auto"
    atol: Optional[float] = None
    threads: Optional[int] = None
    progress: Optional[Callable[[str], None]] = None
    shipped_database: bool = True
    head_buckets: Tuple[int, ...] = (1, 4, 8, 16, 32)
    #: Higher x86-64 ISA targets (e.g. ``("x86-64-avx512", "x86-64-avx2")``) compiled as well and carried as
    #: per-ISA ``variants`` of each graph: the ``tvm`` executor runs the best one the host's CPU flags allow
    #: and the target's own library (e.g. generic ``x86-64``) only on CPUs without any of them.
    isa_variants: Tuple[str, ...] = ()
    #: ``(tracker HOST:PORT, key)``: MetaSchedule measures candidates on the tracker's boards (RPCRunner)
    tune_rpc: Optional[Tuple[str, str]] = None
    #: Which CPU vendor's retuned copy of the shipped database to prefer (``tuning/<target>@<vendor>``,
    #: e.g. ``intel``) where the package ships one: ``"auto"`` the vendor of this host's CPU when the
    #: target's code runs on it natively and nothing is tuned on remote boards (the x86 host board),
    #: no vendor otherwise; ``""`` the target's own database only; or a vendor name (compiling here
    #: for another machine whose vendor you know).
    tuning_vendor: str = "auto"

    def __post_init__(self) -> None:
        graphs = tuple(self.graphs or ROLES)
        if not graphs or not set(graphs) <= set(ROLES):
            raise ValueError(f"graphs must be a non-empty subset of {ROLES}, got {self.graphs!r}")
        object.__setattr__(self, "graphs", graphs)
        object.__setattr__(self, "samples", int(self.samples or 16))
        object.__setattr__(self, "batch", int(self.batch or 1))
        object.__setattr__(self, "tune_trials", int(self.tune_trials or 0))
        buckets = tuple(self.head_buckets or ())
        if not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in buckets):
            raise ValueError(f"head_buckets must be integers >= 1 (MC samples), got {self.head_buckets!r}")
        object.__setattr__(self, "head_buckets", tuple(sorted(set(buckets))))
        variants = tuple(self.isa_variants or ())
        if not all(isinstance(v, str) and v for v in variants) or len(set(variants)) != len(variants):
            raise ValueError(f"isa_variants must be distinct target names, got {self.isa_variants!r}")
        object.__setattr__(self, "isa_variants", variants)
        if self.check not in CHECK_MODES:
            raise ValueError(f"check must be one of {CHECK_MODES}, got {self.check!r}")
        if not isinstance(self.tuning_vendor, str):
            raise ValueError(f"tuning_vendor must be 'auto', '' or a vendor name, got {self.tuning_vendor!r}")
        if self.tuning_vendor not in ("auto", ""):
            check_vendor_name(self.tuning_vendor)    # a bad name is refused here, not at compile time


@register_lowerer("tvm")
class TvmLowerer(Lowerer):
    """cpu and CUDA targets through TVM Relax (see the module docstring)."""

    Options = TvmOptions
    isa_dispatch = True

    def options_for(self, settings: CompileSettings, roles: Sequence[str]) -> TvmOptions:
        return TvmOptions(graphs=tuple(roles), tune_trials=settings.tune_trials, samples=settings.samples,
                          tuning_root=settings.tuning_root, progress=settings.progress,
                          tune_rpc=settings.tune_rpc, isa_variants=tuple(settings.isa_variants),
                          tuning_vendor="auto" if settings.cpu_vendor is None else settings.cpu_vendor)

    def check_isa_variants(self, target: Any, variants: Sequence[str]) -> None:
        _variant_targets(target, variants)

    def cpu_requirement(self, target: Any) -> CpuRequirement:
        """A TVM library is machine code for the target's CPU (a CUDA target's: its host CPU): that
        architecture, with every flag of the target's ISA level (``[tvm] mcpu``)."""
        return CpuRequirement((host_target(target) or target).arch, required_flags(target))

    def lower(self, art: Any, target: Any, workdir: Path, options: TvmOptions) -> CompiledArtifact:
        if target.kind not in ("cpu", "gpu") or not target.tvm:
            raise ValueError(f"target {target.name!r} is a {target.kind} target: TVM compiles cpu and CUDA "
                             "targets (FPGA targets are lowered by hls4ml)")
        _variant_targets(target, options.isa_variants)    # a bad list is refused before anything compiles
        say = options.progress or (lambda msg: log.info(msg))
        workdir = Path(workdir).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        samples, trials = options.samples, options.tune_trials
        notes = []
        runnable_here = is_native(target) and target.kind == "cpu"
        if trials and not runnable_here:
            notes.append(f"tuning skipped: {target.name} code does not run on this host (needs a MetaSchedule "
                         "RPC runner on the device); default schedules used")
            say(notes[-1])
            trials = 0
        vendor = database_vendor(target, options)
        shipped = shipped_dir(target.name, vendor) if options.shipped_database else None
        builds: Dict[str, GraphBuild] = {}
        for role in options.graphs:
            builds[role] = _build_role(role, art, target, workdir, options, trials, say)
        variants = _isa_variants(art, target, workdir, builds, options, say)
        if variants:
            notes.append("per-ISA libraries " + ", ".join(v["target"] for v in variants) + " travel with the "
                         f"{target.name} ones; the tvm executor runs the best one the host's CPU flags allow "
                         "(the check below ran the one this host chose; the others are compile-only here)")
        evidence = check_artifact(art, target, builds, mode=options.check, samples=samples, atol=options.atol,
                                  threads=options.threads, progress=say)
        graphs = {role: (CompiledGraph(file=b.library, executor="tvm", options=b.options) if b is not None else
                         CompiledGraph(file=Path(art.trunk_path if role == "trunk" else art.head_path),
                                       executor="onnxruntime"))
                  for role, b in ((r, builds.get(r)) for r in ROLES)}
        extra = {b.cuda["file"]: b.library.parent / b.cuda["file"] for b in builds.values() if b.cuda}
        extra.update({v["file"]: workdir / v["file"] for v in variants})
        cuda_versions = ({"cuda": sorted({b.cuda["compiler"] for b in builds.values() if b.cuda})}
                         if any(b.cuda for b in builds.values()) else {})
        metadata = {
            "lowerer": "tvm", "target": target.name, "tvm_target": str(tvm_target(target)),
            "compilers": compiler_versions(target, cuda_versions),
            "graphs": {r: {"batch": b.batch, "tuning": b.tuning, "cuda": b.cuda, "seconds": round(b.seconds, 2),
                           "bytes": b.library.stat().st_size,
                           **({"buckets": list(b.buckets) or [b.batch],
                               "bucket_coverage": {str(k): v for k, v in b.bucket_coverage.items()}}
                              if b.batch is not None and r == "head" else {})}
                       for r, b in builds.items()},
            "tuning": overall_state(builds), "notes": notes,
            **({"isa_variants": variants} if variants else {}),
            "shipped_database": _shipped_record(target.name, shipped, options.shipped_database, vendor),
        }
        return CompiledArtifact(target=target.name, trunk=graphs["trunk"], head=graphs["head"], evidence=evidence,
                                extra_files=extra, metadata=metadata)


def _build_role(role: str, art: Any, target: Any, workdir: Path, options: TvmOptions, trials: int,
                say: Callable[[str], None]) -> GraphBuild:
    """One graph compiled for ``target`` in ``workdir``: fixed batch (and head shape buckets) where
    tuning records cover it, else dynamic batch."""
    samples, trunk_batch = options.samples, options.batch
    db_dir = tuning_dir(target.name, options.tuning_root)
    shipped = shipped_dir(target.name, database_vendor(target, options)) if options.shipped_database else None
    onnx_path = Path(art.trunk_path if role == "trunk" else art.head_path)
    batch: Optional[int] = trunk_batch if role == "trunk" else samples * trunk_batch
    if trials == 0 and not has_records(onnx_path, target, db_dir, batch, shipped):
        batch = None
    buckets, coverage = (), {}
    if role == "head" and batch is not None and options.head_buckets:
        buckets, coverage = tuned_buckets(onnx_path, target, db_dir,
                                          [b * trunk_batch for b in options.head_buckets], batch, shipped)
        say(f"head ({target.name}): shape buckets {list(buckets)} rows (heavy tasks with tuning records per "
            "candidate: " + ", ".join(f"{r} rows {c}" for r, c in coverage.items()) + ")")
        batch = buckets[-1]
    build = build_graph(role, onnx_path, target, workdir, batch, trials, db_dir, say, shipped, buckets,
                        rpc=options.tune_rpc)
    return GraphBuild(**{**build.__dict__, "bucket_coverage": coverage})


def _isa_variants(art: Any, target: Any, workdir: Path, builds: Dict[str, GraphBuild], options: TvmOptions,
                  say: Callable[[str], None]) -> list:
    """Compile every graph again for each of ``options.isa_variants`` (higher x86-64 ISA levels) as
    ``<role>.<variant>.so`` next to the graph's library, and list them, best first, in the graph's
    executor options (``variants``: file, target, the CPU flags it needs, batch, buckets). Variants
    are not tuned here: they use their shipped/user databases (``tune_trials`` tunes the base target)."""
    import shutil

    if not options.isa_variants:
        return []
    variants = []
    for name, vt, flags in _variant_targets(target, options.isa_variants):
        vdir = workdir / f"isa-{name}"
        vdir.mkdir(parents=True, exist_ok=True)
        for role, base in builds.items():
            vb = _build_role(role, art, vt, vdir, options, 0, say)
            file = f"{role}.{name}.so"
            shutil.copyfile(vb.library, workdir / file)   # the executor resolves it next to the graph's library
            entry = {"file": file, "target": name, "requires": sorted(flags), "batch": vb.batch,
                     **({"buckets": list(vb.buckets)} if vb.buckets else {})}
            base.options.setdefault("variants", []).append(entry)
            variants.append({**entry, "role": role, "tuning": vb.tuning.get("state"),
                             "bytes": (workdir / file).stat().st_size})
    return variants


def _variant_targets(target: Any, names: Sequence[str]) -> list:
    """``[(name, ComputeTarget, required flags)]`` of the ISA variants ``names`` of ``target``, best
    (most flags) first; ValueError unless each is a CPU target of the same machine needing more flags."""
    from ...catalog import get_target

    if target.kind != "cpu" and names:
        raise ValueError(f"isa_variants: {target.name!r} is a {target.kind} target; per-ISA libraries are "
                         "compiled for CPU targets only")
    base_flags = required_flags(target)
    chosen = []
    for name in names:
        vt = get_target(name)
        if vt.kind != "cpu" or vt.arch != target.arch or vt.cross_compiler != target.cross_compiler:
            raise ValueError(f"isa_variants: {name!r} ({vt.kind}, {vt.arch}) is not a CPU target of the same "
                             f"machine as {target.name!r} ({target.kind}, {target.arch})")
        flags = required_flags(vt)
        if not flags > base_flags:
            raise ValueError(f"isa_variants: {name!r} needs no CPU flags beyond {target.name!r}'s: a variant must be "
                             "a higher ISA level than the graph's own library (the fallback)")
        chosen.append((len(flags), name, vt, flags))
    return [(name, vt, flags) for _, name, vt, flags in sorted(chosen, key=lambda c: (-c[0], c[1]))]


def database_vendor(target: Any, options: TvmOptions) -> Optional[str]:
    """The CPU vendor whose retuned shipped database ``target`` prefers (``TvmOptions.tuning_vendor``):
    with ``"auto"``, this host's vendor when the target's code runs here natively and no remote
    board is tuned (what the code will run on is this CPU), else None."""
    if options.tuning_vendor != "auto":
        return options.tuning_vendor or None
    if target.kind != "cpu" or options.tune_rpc is not None or not is_native(target):
        return None
    return cpu_vendor()


def _shipped_record(target_name: str, shipped: Optional[Path], enabled: bool,
                    vendor: Optional[str] = None) -> Dict[str, Any]:
    """Which shipped tuning database the build consulted: its target (the ISA it was tuned for, which
    must be this target's), the CPU vendor it was retuned for (if any), when, where and how many
    trials; or why none."""
    if not enabled:
        return {"used": False, "why": "switched off (shipped_database=False)"}
    if shipped is None:
        return {"used": False, "why": f"the package ships no tuning database for {target_name}"}
    prov_file = Path(shipped) / "provenance.json"
    prov = json.loads(prov_file.read_text()) if prov_file.is_file() else {}
    if prov.get("target", target_name) != target_name:
        raise ValueError(f"shipped database {shipped} was tuned for {prov.get('target')!r}, not {target_name!r}")
    if prov.get("vendor") and prov["vendor"] != vendor:
        raise ValueError(f"shipped database {shipped} was retuned for {prov['vendor']!r} CPUs, not {vendor!r}")
    return {"used": True, "target": target_name, "folder": Path(shipped).name,
            "vendor": prov.get("vendor"), "vendor_wanted": vendor,
            **{k: prov[k] for k in ("tuned", "cpu", "records_measured", "tasks") if k in prov}}


def compile_tvm(art: Any, target: Any, workdir: Path, **options: Any) -> CompiledArtifact:
    """Keyword form of :meth:`TvmLowerer.lower` (options as in :class:`TvmOptions`)."""
    return TvmLowerer().lower(art, target, workdir, options_from_kwargs(TvmOptions, "tvm", options))
