"""Board orchestrator: OnnxArtifact + Board -> one bundle with everything the board's runtime needs.

For each graph (trunk, head) the board descriptor names a target, a lowerer
and a runtime executor (``[graphs.trunk]``, ``[graphs.head]``). Graphs that
share a (lowerer, target) are lowered together by that registered
:class:`~edgeuq.lower.base.Lowerer`, with its own options built from the
:class:`~edgeuq.lower.base.CompileSettings`; each graph then comes from its own
lowering. This module names no lowerer and no executor. The bundle's manifest records per graph the
executor, its loader options, the target, and each lowering's metadata and
:class:`~edgeuq.lower.base.Evidence`. Finally the result is compared with the board's
budgets: weight bytes measured from the graphs' weights; latency measured end to end
through ``UncertaintyRuntime`` only when every graph runs natively here, otherwise
"not measured" (never counted as met); estimates (e.g. FPGA resources) are labelled so.

A board may offer several placements per graph (``candidates`` in ``[graphs.<role>]``):
every candidate is lowered and checked, then timed where that is honest (this host only
when the board is this host, else over TVM RPC with ``remote``/``tracker``) and the fastest
kept per graph (:mod:`edgeuq.lower.placement`); the choice and its figures, or "not
measured" and why, go into the manifest's ``placement`` section and the report.
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

import numpy as np

from edgeuq_runtime.bundle import Bundle

from ..bundle.build import BundleGraph, write_artifact_bundle
from ..catalog import Board, DescriptorError, get_board, get_target
from ..profile import measure
from .base import CompiledArtifact, CompiledGraph, CompileSettings, Evidence, Lowerer, LoweringNotAvailable, \
    get_lowerer

__all__ = ["CompileResult", "compile_board", "LoweringNotAvailable", "budget_report", "weight_bytes",
           "measure_bundle_latency", "HeadNoiseError", "head_noise_problem"]


@dataclass(frozen=True)
class CompileResult:
    board: str
    bundle: Bundle
    report: Dict[str, Any]


def _lowerer(name: str, board: Board, roles: list) -> Lowerer:
    """The registered lowerer ``name``, or a LoweringNotAvailable naming the board and its graphs."""
    try:
        return get_lowerer(name)
    except LoweringNotAvailable as exc:
        raise LoweringNotAvailable(f"board {board.name!r} needs lowerer {name!r} for graphs {roles}, "
                                   f"but {exc}") from exc


def compile_board(board: Any, art: Any, out_dir: Path, *, tune_trials: int = 0, samples: Optional[int] = None,
                  tuning_root: Optional[Path] = None, model_name: str = "edgeuq-model", model_version: str = "0.1.0",
                  workdir: Optional[Path] = None, overwrite: bool = False,
                  progress: Optional[Callable[[str], None]] = None,
                  precision: Optional[Mapping[str, str]] = None, placement: str = "auto",
                  remote: Optional[str] = None, tracker: Optional[str] = None, key: Optional[str] = None,
                  measurer: Any = None, isa_variants: Optional[Sequence[str]] = None,
                  cpu_vendor: Optional[str] = None) -> CompileResult:
    """Lower ``art`` for every graph placement of ``board`` and write one bundle to ``out_dir``.

    ``precision`` (``{layer: "ap_fixed<W,I>"}``, e.g. from
    :func:`edgeuq.quantize.plan_to_hls4ml_precision`) is handed to every lowering
    through :class:`CompileSettings`; lowerers that quantize (the FPGA head) use it.

    ``placement``: ``"auto"`` lowers and measures the board's candidate placements and keeps
    the fastest per graph (where measurable: see the module docstring); ``"default"`` builds
    only the board's default placements. ``remote``/``tracker``+``key``: a TVM RPC server on
    the board to time candidates there. ``measurer``: an :class:`edgeuq.lower.placement.Measurer`
    to use instead (tests inject one).

    ``isa_variants``: None (default) compiles the per-ISA libraries each placement declares
    (``isa_variants`` in the board, for run-time ISA dispatch); a list replaces them for every
    placement whose lowering ships per-ISA libraries (``Lowerer.isa_dispatch``); ``()`` builds none.

    ``cpu_vendor``: the board CPU's vendor, for tuning databases kept per vendor (TVM's
    ``tuning/<target>@<vendor>/``); ``""`` none; None (default): this host's where the code runs here.
    """
    from .placement import choose, graph_feeds, placement_record

    if placement not in ("auto", "default"):
        raise ValueError(f"placement must be 'auto' or 'default', got {placement!r}")
    board = board if isinstance(board, Board) else get_board(str(board))
    say = progress or (lambda msg: None)
    samples = int(samples or board.budgets.mc_samples)
    settings = CompileSettings(samples=samples, tune_trials=int(tune_trials or 0),
                               tuning_root=Path(tuning_root) if tuning_root is not None else None,
                               precision=dict(precision) if precision else None, progress=say,
                               tune_rpc=(tracker, key) if tracker is not None and int(tune_trials or 0) > 0 else None,
                               cpu_vendor=cpu_vendor)
    plan = {role: (p.options() if placement == "auto" else p.options()[:1]) for role, p in board.graphs.items()}
    choice = any(len(opts) > 1 for opts in plan.values())
    groups: Dict[tuple, list] = {}
    for role, opts in plan.items():
        for p in opts:
            roles = groups.setdefault((p.lowering, p.target), [])
            if role not in roles:
                roles.append(role)
    defaults = {(p.lowering, p.target) for _, p in board.graphs.items()}
    lowerers = {name: _lowerer(name, board, roles) for (name, _), roles in groups.items()}
    variants = _group_variants(board, plan, lowerers, isa_variants)
    refused = {}  # a head placement whose lowering cannot build the head's noise: the default fails now
    for (name, target_name), roles in groups.items():
        problem = head_noise_problem(lowerers[name], art.noise) if "head" in roles else None
        if problem:
            refused[name, target_name] = (f"board {board.name!r}, head graph on {target_name}: {problem} (move the "
                                          f"network onto a scheme whose head draws those: compression step 'rehead')")
            if (name, target_name) == board.graphs.head.key:
                raise HeadNoiseError(refused[name, target_name])
    tmp = None if workdir is not None else tempfile.TemporaryDirectory(prefix="edgeuq-compile-")
    work = Path(workdir) if workdir is not None else Path(tmp.name)
    try:
        lowered: Dict[str, CompiledArtifact] = {}
        failed: Dict[str, str] = {}
        for (name, target_name), roles in groups.items():
            target = get_target(target_name)
            say(f"[{board.name}] lowering {'+'.join(roles)} with {name} for {target_name}")
            lw = lowerers[name]
            try:
                if (name, target_name) in refused:
                    raise HeadNoiseError(refused[name, target_name])
                result = lw.lower(art, target, work / f"{name}-{target_name}",
                                  lw.options_for(replace(settings, isa_variants=variants[name, target_name]), roles))
            except Exception as exc:  # a candidate that fails is recorded; the board's default must build
                if (name, target_name) in defaults:
                    raise
                failed[f"{name}:{target_name}"] = f"{type(exc).__name__}: {exc}"[:500]
                say(f"[{board.name}] candidate {name}:{target_name} failed: {failed[f'{name}:{target_name}']}")
                continue
            for role in roles:
                expected = {p.executor for p in plan[role] if (p.lowering, p.target) == (name, target_name)}
                got = getattr(result, role).executor
                if got not in expected:
                    declared = " or ".join(map(repr, sorted(expected)))
                    raise ValueError(f"board {board.name!r}: lowering {name!r} produced the {role} graph for "
                                     f"executor {got!r}, but the board declares {declared}")
            lowered[f"{name}:{target_name}"] = result
        options = {role: [_option(p, i == 0, lowered, failed, role) for i, p in enumerate(opts)]
                   for role, opts in plan.items()}
        section = {}
        if choice:
            m = measurer or _measurer(board, remote, tracker, key)
            feeds = graph_feeds(art, samples)
            chosen = {}
            for role, opts in options.items():
                chosen[role] = choose(role, opts, m, feeds[role])
                say(f"[{board.name}] {role}: {chosen[role].executor} on {chosen[role].target} "
                    f"({chosen[role].chosen_by})")
            section = {"placement": placement_record(chosen, m, samples)}
            pick = {role: f"{g.lowering}:{g.target}" for role, g in chosen.items()}
        else:
            pick = {role: f"{opts[0].lowering}:{opts[0].target}" for role, opts in plan.items()}
        graphs: Dict[str, CompiledGraph] = {role: getattr(lowered[k], role) for role, k in pick.items()}
        used = {k: [r for r in ("trunk", "head") if pick[r] == k] for k in dict.fromkeys(pick.values())}
        extra: Dict[str, Path] = {}
        for k in used:
            extra.update(lowered[k].extra_files)
        bundle_graphs = {role: BundleGraph(g.bundle_file(role), g.file, g.executor, dict(g.options))
                         for role, g in graphs.items()}
        files = [g.file for g in bundle_graphs.values()]
        clash = set(files) & set(extra)
        if clash or len(set(files)) != 2:
            raise ValueError(f"bundle file names collide: {sorted(clash) or sorted(files)}")
        records = {k: _record_of_used_roles(lowered[k].to_json(), roles) for k, roles in used.items()}
        metadata = {"board": board.name,
                    "targets": {role: {"target": lowered[k].target, "lowering": k.split(":", 1)[0],
                                       "executor": graphs[role].executor} for role, k in pick.items()},
                    "lowering": records}
        if overwrite and Path(out_dir).exists():
            shutil.rmtree(out_dir)
        bundle = write_artifact_bundle(art, Path(out_dir), model_name, model_version, samples, graphs=bundle_graphs,
                                       extra_files=extra, metadata=metadata,
                                       backend=graphs["trunk"].executor if len({g.executor for g in graphs.values()}) == 1
                                       else board.executor,
                                       sections=section)
        say(f"[{board.name}] bundle {out_dir}: {len(bundle.manifest.files)} files")
        report = budget_report(board, art, bundle, {k: lowered[k].evidence for k in used}, samples)
        if section:
            report["placement"] = section["placement"].to_json()
    finally:
        if tmp is not None:
            tmp.cleanup()
    return CompileResult(board=board.name, bundle=bundle, report=report)


class HeadNoiseError(ValueError):
    """The head graph draws a noise kind the board's head lowering cannot build (``Lowerer.noise_kinds``)."""


def head_noise_problem(lowerer: Lowerer, noise: Sequence[Any]) -> Optional[str]:
    """Why ``lowerer`` cannot build a head graph whose noise inputs are ``noise`` (NoiseSpecs), or None
    when it can (its ``noise_kinds`` capability is None, or holds every kind the head draws)."""
    accepted = lowerer.noise_kinds
    kinds = sorted({s.kind for s in noise})
    extra = [k for k in kinds if accepted is not None and k not in accepted]
    if not extra:
        return None
    return f"the {lowerer.name} lowering builds heads with noise {sorted(accepted)} only, not {extra}"


def _record_of_used_roles(record: Dict[str, Any], roles: Sequence[str]) -> Dict[str, Any]:
    """A lowering's record in the bundle: the roles the placement took from it, and only their ISA
    variants (a lowering compiles every role; placement may take one role from another executor)."""
    out = {**record, "roles": list(roles)}
    if isinstance(out.get("isa_variants"), list):
        out["isa_variants"] = [v for v in out["isa_variants"] if v.get("role") in roles]
    return out


def _group_variants(board: Board, plan: Mapping[str, Sequence[Any]], lowerers: Mapping[str, Lowerer],
                    override: Optional[Sequence[str]]) -> Dict[tuple, tuple]:
    """``{(lowering, target): ISA variants to compile}``: each placement's declared ``isa_variants``
    (one list per (lowering, target): the catalog checks that), or ``override`` for every placement whose
    lowering ships per-ISA libraries. Checked by the lowering before anything is compiled; an error names
    the board file's field, or ``--isa-variants``."""
    out: Dict[tuple, tuple] = {}
    for role, opts in plan.items():
        for i, p in enumerate(opts):
            lw = lowerers[p.lowering]
            names = tuple(p.isa_variants) if override is None else tuple(override) if lw.isa_dispatch else ()
            if p.key in out:
                continue
            try:
                lw.check_isa_variants(get_target(p.target), names)
            except ValueError as exc:
                if override is None:
                    field = f"graphs.{role}" + ("" if i == 0 else ".candidates") + ".isa_variants"
                    raise DescriptorError(board.source, f"{p.lowering} on {p.target}: {exc}", field) from exc
                raise ValueError(f"--isa-variants (board {board.name!r}, {role} graph: {p.lowering} on {p.target}): "
                                 f"{exc}") from exc
            out[p.key] = names
    return out


def _option(p: Any, default: bool, lowered: Mapping[str, CompiledArtifact], failed: Mapping[str, str],
            role: str) -> Any:
    from .placement import Option

    k = f"{p.lowering}:{p.target}"
    if k in failed:
        return Option(p.executor, p.target, p.lowering, default, error=failed[k])
    ev = lowered[k].evidence
    return Option(p.executor, p.target, p.lowering, default, graph=getattr(lowered[k], role), check=ev.label,
                  native=ev.how == "native")


def _measurer(board: Board, remote: Optional[str], tracker: Optional[str], key: Optional[str]) -> Any:
    """Where the board's candidates can honestly be timed: on the board over TVM RPC, here when the
    board is this host, otherwise nowhere ("not measured", with the reason)."""
    from .placement import HostMeasurer, NotMeasured, RemoteMeasurer

    pol = board.placement
    if remote is not None or tracker is not None:
        from ..profile.tvm_rpc import connect

        session, where = connect(remote, tracker, key)
        return RemoteMeasurer(session, where, warmup=pol.warmup, repeats=pol.repeats)
    if pol.measure_on_host:
        return HostMeasurer(warmup=pol.warmup, repeats=pol.repeats)
    return NotMeasured(f"board {board.name!r} is not this host ([placement] measure_on_host = false) and no "
                       "--remote/--tracker was given to time it on the board", warmup=pol.warmup,
                       repeats=pol.repeats)


def weight_bytes(art: Any) -> int:
    """Bytes of the weights (ONNX initializers) of the trunk and head graphs together."""
    import onnx
    from onnx import numpy_helper

    total = 0
    for path in (art.trunk_path, art.head_path):
        total += sum(numpy_helper.to_array(t).nbytes for t in onnx.load(str(path)).graph.initializer)
    return int(total)


def _runs_here(evidence: Mapping[str, Evidence]) -> tuple:
    blocked = {k: ev.label for k, ev in evidence.items() if ev.how != "native"}
    return not blocked, blocked


def measure_bundle_latency(bundle: Bundle, samples: int, repeats: int = 20) -> float:
    """Median ms of ``UncertaintyRuntime.predict`` on one input with ``samples`` samples (this host)."""
    from edgeuq_runtime import UncertaintyRuntime

    rt = UncertaintyRuntime(bundle.root, seed=0, verify=False)
    spec = bundle.manifest.input
    rng = np.random.default_rng(0)
    if spec.dtype == "float32":
        x = rng.standard_normal((1, rt.input_length)).astype(np.float32)
    else:
        x = rng.integers(0, int(spec.vocab_size), size=(1, rt.input_length)).astype(spec.dtype)
    return measure(lambda: rt.predict(x, samples=samples), warmup=3, repeats=repeats, name="predict").median_ms


def overall_ok(report: Mapping[str, Any]) -> Optional[bool]:
    """False if any measured budget is missed; None if none is missed but one is not measured
    (never "met"); True only when every budget was measured and met. Estimates do not count
    as measurements."""
    oks = [v.get("ok") for k, v in report.items() if isinstance(v, dict) and k not in ("estimates", "placement")]
    if any(ok is False for ok in oks):
        return False
    return None if any(ok is None for ok in oks) else True


def budget_report(board: Board, art: Any, bundle: Bundle, evidence: Mapping[str, Evidence],
                  samples: int) -> Dict[str, Any]:
    """Compare the compiled bundle with ``board.budgets`` (measured where this host can)."""
    b = board.budgets
    weights = weight_bytes(art)
    files = sum(bundle.path(f).stat().st_size for f in bundle.manifest.files)
    runnable, blocked = _runs_here(evidence)
    report: Dict[str, Any] = {
        "board": board.name,
        "weight_bytes": {"measured": weights, "budget": b.weight_bytes, "ok": weights <= b.weight_bytes},
        "bundle_bytes": files,
        "mc_samples": {"used": samples, "budget": b.mc_samples, "ok": samples <= b.mc_samples},
    }
    if runnable:
        ms = measure_bundle_latency(bundle, samples)
        report["latency_ms"] = {"measured": round(ms, 3), "budget": b.latency_ms, "ok": ms <= b.latency_ms,
                                "how": f"this host, UncertaintyRuntime.predict of 1 window, S={samples}, median"}
    else:
        why = "; ".join(f"{k}: {m}" for k, m in blocked.items())
        report["latency_ms"] = {"measured": None, "budget": b.latency_ms, "ok": None,
                                "how": f"not measured: not runnable natively on this host ({why})"}
    estimates = {f"{k}:{name}": dict(v) for k, ev in evidence.items() for name, v in ev.estimates.items()}
    if estimates:
        report["estimates"] = estimates
    report["ok"] = overall_ok(report)
    return report
