"""``edgeuq compress`` (a chain of registered steps) / ``edgeuq distill`` / ``edgeuq prune`` /
``edgeuq search`` (+ ``search-table``): the compression stages."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Optional

from ..cli_args import add_data_arguments, add_progress_argument

__all__ = ["register"]


def _splits(a: argparse.Namespace, recipe):
    """Time-disjoint train/val/test windows from ``--data`` or the recipe's synthetic data
    (the same loader as ``edgeuq train``)."""
    from ..cli_args import load_training_splits

    return load_training_splits(a, recipe)


def _one_step(ck, name: str, options: dict, data, out: Path, key: str, progress: bool):
    """``ck`` through a one-step chain (``run_chain``: cached by the parent, options and data ``key``),
    its checkpoint in ``out/checkpoint`` and its companions beside it: the commands' own layout."""
    from .chain import ChainStep, run_chain
    from .steps import get_step, step_options

    st = ChainStep(name, step_options(get_step(name), options))
    res = run_chain(ck, (st,), data, out, key, progress=progress, log=print, folders=("checkpoint",))
    rec = res.records[0]
    if rec["cached"]:
        print(f"{name}: reused the stored result in {res.checkpoint.directory} (same input, options and data)")
    return res.checkpoint, rec


def _distill_data(teacher, splits, progress: bool):
    """Every training and validation window, labelled by ``teacher`` (the transfer set's originals)."""
    from .steps import StepData

    return StepData(x=splits.train.x, y=splits.train.y, x_val=splits.val.x, y_val=splits.val.y,
                    teacher=teacher.label, features=teacher.features,
                    teacher_info={"teacher": teacher.source, "teacher_digest": teacher.digest},
                    progress=progress, log=print)


def _distill_options(epochs: int, seed: int, **extra) -> dict:
    """The ``distill`` step's options as `edgeuq distill` has always run it: the distillation
    optimiser defaults (DISTILL_TRAIN), a transfer set of perturbed copies and synthetic windows
    (TransferConfig's defaults), labelled with S = 32, kept next to the checkpoint."""
    from .transfer import TransferConfig

    t = TransferConfig()
    return {"epochs": epochs, "seed": seed, "copies": t.copies, "kinds": list(t.kinds), "snr_db": list(t.snr_db),
            "clip_level": list(t.clip_level), "synthetic_fraction": t.synthetic_fraction,
            "teacher_samples": t.teacher_samples, "keep_transfer": True, **extra}


def _cmd_distill(a: argparse.Namespace) -> int:
    """A one-step chain (``distill``) from the student recipe's freshly initialised model, saved
    first as ``out/init`` (the chain's input)."""
    import torch

    from ..catalog import get_recipe
    from ..models import ModelConfig, build_model
    from ..training import save_checkpoint
    from .chain import data_key
    from .stages import load_teacher

    rec = get_recipe(a.student_recipe)
    teacher = load_teacher(a.teacher)
    splits = _splits(a, rec)
    cfg = ModelConfig.from_dict(rec.model, input_length=splits.window, num_classes=len(splits.class_names))
    if teacher.num_classes != cfg.num_classes:
        raise ValueError(f"teacher has {teacher.num_classes} classes, student config {cfg.num_classes}")
    out = Path(a.out)
    torch.manual_seed(a.seed)
    init = save_checkpoint(build_model(cfg), out / "init", splits.class_names, splits.fs, "zscore",
                           metrics={"initialised": {"seed": a.seed}})
    data = _distill_data(teacher, splits, not a.no_progress)
    options = _distill_options(a.epochs, a.seed, loss=a.loss, temperature=a.temperature, uq_weight=a.uq_weight,
                               student_samples=a.student_samples, feature_weight=a.feature_weight,
                               feature_loss=a.feature_loss, copies=a.copies, teacher_samples=a.teacher_samples)
    print(f"distill: teacher = {teacher.source}; {len(splits.train)} training windows + perturbed copies, S = "
          f"{a.teacher_samples}")
    ck, rec_ = _one_step(init, "distill", options, data, out, data_key(data, teacher.digest), not a.no_progress)
    d = rec_["info"]
    print(f"student checkpoint: {ck.directory} (sha256 {ck.sha256[:12]}…, best epoch {d['best_epoch']}, "
          f"val loss {d['best_val_loss']:.4f}); transfer set: {out / 'transfer'}")
    return 0


def _cmd_prune(a: argparse.Namespace) -> int:
    """A one-step chain (``prune``) on the calibration windows; with ``--distill-epochs`` a second
    one (``distill`` from the unpruned model, on every training window) in ``out/distilled``."""
    import numpy as np

    from ..catalog import get_recipe
    from ..training import load_checkpoint
    from .chain import data_key
    from .steps import StepData

    ck = load_checkpoint(Path(a.checkpoint))
    splits = _splits(a, get_recipe(a.recipe))
    rng = np.random.default_rng(a.seed)
    idx = np.sort(rng.choice(len(splits.train), size=min(a.calibration, len(splits.train)), replace=False))
    data = StepData(x=splits.train.x[idx], y=splits.train.y[idx], progress=not a.no_progress, log=print)
    fisher_digest = ""
    if a.fisher:
        from ..fisher.report import load_fisher_report

        fisher_digest = load_fisher_report(Path(a.fisher)).digest
    options = {"target_flops": a.target_flops, "target_ms": a.target_ms, "labels": a.labels,
               "rearrange": not a.no_rearrange, "tune": not a.no_tune, "seed": a.seed, "fisher": a.fisher,
               "keep_layers": a.keep_layers}
    out = Path(a.out)
    pruned_ck, rec = _one_step(ck, "prune", options, data, out, data_key(data, fisher_digest), not a.no_progress)
    print(f"pruned checkpoint: {pruned_ck.directory} (sha256 {pruned_ck.sha256[:12]}…); plan: {out / 'plan'}")
    if a.distill_epochs:
        from .stages import load_teacher

        teacher = load_teacher(ck.directory)
        ddata = _distill_data(teacher, splits, not a.no_progress)
        dck, _ = _one_step(pruned_ck, "distill", _distill_options(a.distill_epochs, a.seed), ddata,
                           out / "distilled", data_key(ddata, teacher.digest), not a.no_progress)
        print(f"distilled from the unpruned model: {dck.directory} (sha256 {dck.sha256[:12]}…)")
    return 0


def _option(text: str) -> tuple:
    """``STEP.KEY=VALUE`` -> (step, key, value); VALUE is read as a TOML value (``0.5``, ``true``,
    ``["blocks."]``), else kept as a string (``kl+uq``)."""
    import tomllib

    target, sep, raw = text.partition("=")
    step, dot, key = target.strip().partition(".")
    if not sep or not dot or not step or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: expected STEP.OPTION=VALUE, e.g. prune.target_flops=0.5")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return step, key, value


def _cmd_compress(a: argparse.Namespace) -> int:
    import json

    import numpy as np

    from edgeuq_runtime.atomic import atomic_write

    from ..catalog import get_recipe
    from ..training import load_checkpoint
    from .chain import chain_from_table, chain_table, data_key, run_chain
    from .stages import load_teacher
    from .steps import StepData

    rec = get_recipe(a.recipe)
    names = None if a.steps is None else [n.strip() for n in a.steps.split(",") if n.strip()]
    chain = chain_from_table(chain_table(rec.compress, names, a.option or ()),
                             where=f"compress (recipe {rec.name}{' + --steps/--option' if names or a.option else ''})")
    if not chain:
        print(f"edgeuq compress: no steps: recipe {rec.name} declares no [[compress.steps]] and no --steps was given",
              file=sys.stderr)
        return 2
    ck = load_checkpoint(Path(a.checkpoint))
    teacher = load_teacher(Path(a.teacher) if a.teacher else ck.directory)
    splits = _splits(a, rec)
    rng = np.random.default_rng(a.seed)
    tr, va = splits.train, splits.val
    idx = np.sort(rng.choice(len(tr), size=min(a.calibration, len(tr)), replace=False))
    data = StepData(x=tr.x[idx], y=tr.y[idx], x_val=va.x, y_val=va.y, teacher=teacher.label,
                    progress=not a.no_progress, log=print)
    print(f"compress: {ck.directory} through {' -> '.join(s.name for s in chain)} "
          f"({len(idx)} calibration windows, {len(va)} validation; teacher {teacher.source})")
    res = run_chain(ck, chain, data, Path(a.out), data_key(data, teacher.digest), progress=not a.no_progress,
                    log=print)
    from ..report import format_table

    print(format_table(["#", "step", "seconds", "cached", "checkpoint"],
                       [[r["index"], r["step"], f"{r['seconds']:.2f}", "yes" if r["cached"] else "no", r["checkpoint"]]
                        for r in res.records]))
    summary = {"input": str(ck.directory), "input_digest": ck.digest, "teacher": teacher.source,
               "steps": list(res.records), "output": str(res.checkpoint.directory),
               "output_digest": res.checkpoint.digest}
    atomic_write(Path(a.out) / "chain.json", json.dumps(summary, indent=2, sort_keys=True, default=str))
    print(f"compressed checkpoint: {res.checkpoint.directory} (sha256 {res.checkpoint.sha256[:12]}…); "
          f"steps: {Path(a.out) / 'chain.json'}")
    return 0


def _records(a: argparse.Namespace, recipe):
    d = recipe.data
    if a.data:
        from ..cli_args import data_options
        from ..data.sources import load_records, resolve_data_source

        path = Path(a.data)
        native = resolve_data_source(path).native_rates  # e.g. CWRU keeps its rates, as in `edgeuq train`
        records, src = load_records(path, data_options(a), None if native else float(d["fs_hz"]))
        return records, f"{src.name} ({path})"
    from ..data import SyntheticBearingConfig, synthetic_records

    syn = dict(d.get("synthetic", {}))
    if "loads" in syn:
        syn["loads"] = tuple(float(v) for v in syn["loads"])
    return synthetic_records(SyntheticBearingConfig(fs=float(d["fs_hz"]), **syn)), f"synthetic ({recipe.name})"


class _AgentLatency:
    """The latency objective measured on a board by its timing agent (end to end, S samples):
    ``(ms, where it was measured)``."""

    def __init__(self, agent: str, token: str) -> None:
        self.agent, self.token = agent, token

    def __call__(self, bundle_dir: Any, samples: int, repeats: int):
        from ..profile.agent_client import agent_profile

        doc = agent_profile(self.agent, bundle_dir, token=self.token, samples=(int(samples),), warmup=3,
                            repeats=int(repeats))
        return (float(doc["end_to_end"][str(int(samples))]["median_ms"]),
                {"location": "agent", "agent": self.agent, "hostname": doc.get("environment", {}).get("hostname")})


class _PoolLatency:
    """The latency objective measured on a free agent of a tracker's pool, taken for this one
    measurement and given back (``edgeuq search --tracker T --tracker-key K``): a trial holds a board only
    while it is timed, so the workers share the boards whatever their numbers, and a board that
    dies costs the trial it was timing (run again, see :mod:`edgeuq.profile.agent_pool`)."""

    def __init__(self, pool: Any, log: Callable[[str], None] = print) -> None:
        self.pool, self.log = pool, log

    def __call__(self, bundle_dir: Any, samples: int, repeats: int):
        doc, board = self.pool.profile(bundle_dir, samples=(int(samples),), warmup=3, repeats=int(repeats),
                                       log=self.log)
        return float(doc["end_to_end"][str(int(samples))]["median_ms"]), board


def _agent_pool(a: argparse.Namespace):
    """``--tracker T --tracker-key K``: the pool of timing agents, else None (``--agent`` or this host)."""
    if a.tracker is None and a.tracker_key is None:
        return None
    if a.tracker is None or a.tracker_key is None:
        raise ValueError("--tracker and --tracker-key go together (the tracker and the board key of its timing agents)")
    if a.agent:
        raise ValueError("give --agent A1 A2 ... or --tracker T --tracker-key K, not both")
    from ..profile.agent_client import read_agent_token
    from ..profile.agent_pool import AgentPool

    return AgentPool(a.tracker, a.tracker_key, read_agent_token(Path(a.agent_token_file) if a.agent_token_file else None),
                     wait_s=float(a.board_wait))


def _boards_used(records) -> dict:
    """Trials per board that timed them (``HOST:PORT`` of the agent, or the host's name)."""
    counts: dict = {}
    for r in records:
        w = r.latency_measured_on or {}
        name = w.get("agent") or (f"host {w['hostname']}" if w.get("hostname") else "not recorded")
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def _search_setup(a: argparse.Namespace, worker: Optional[int] = None, evaluator: bool = True):
    """Board, budgets, data, builder, space and seeds of a search (each worker builds its own).
    ``evaluator=False``: no trial evaluator (``builder`` builds it on first use) and no seeds: the
    coordinating process of ``--workers N`` only collects, so it spends nothing before spawning."""
    import types

    import numpy as np

    from ..catalog import get_board, get_recipe
    from ..schemes import get_scheme
    from ..training import load_checkpoint
    from .data import compress_data
    from .search import SearchBudgets, SearchSpace
    from .variants import VariantBuilder, fisher_guided_seeds

    board = get_board(a.board)
    budgets = SearchBudgets(board.budgets.latency_ms, board.budgets.weight_bytes, board.budgets.mc_samples)
    rec = get_recipe(a.recipe)
    ck = load_checkpoint(Path(a.teacher))
    records, source = _records(a, rec)
    data = compress_data(records, int(rec.data["window"]), int(rec.data["hop"]))
    if worker is None:
        print(f"data: {source}; {data.description}")
    out = Path(a.out)

    def make_builder():
        rng = np.random.default_rng(a.seed)
        tr = data.splits.train
        idx = np.sort(rng.choice(len(tr), size=min(a.calibration, len(tr)), replace=False))
        b = VariantBuilder(ck, (tr.x[idx], tr.y[idx]), (data.splits.test.x, data.splits.test.y), data.ood.x,
                           out / "trials", repeats=a.repeats, seed=a.seed)
        if pool is not None:  # every measurement on a free agent of the key, taken from the tracker
            b.latency_fn = _PoolLatency(pool, log=lambda m: print(f"[worker {worker or 0}] {m}", flush=True))
        elif a.agent:  # worker i times on agent i (one board per worker)
            from ..profile.agent_client import read_agent_token

            agent = a.agent[(worker or 0) % len(a.agent)]
            b.latency_fn = _AgentLatency(agent, read_agent_token(
                Path(a.agent_token_file) if a.agent_token_file else None))
        return b

    pool = _agent_pool(a)
    measured_on = "this host, edgeuq_runtime (ONNX Runtime), 1 thread"
    if pool is not None:
        measured_on = (f"measured on {pool.label} (pool {pool.pool_key}; edgeuq_runtime agents, end to end, "
                       "1 thread; each trial's board in its latency_measured_on)")
    elif a.agent:
        measured_on = ("on the boards' timing agents (edgeuq_runtime agent, end to end, 1 thread): "
                       + ", ".join(a.agent))
    mc_dropout = get_scheme(ck.config.scheme).relocatable_sites  # as VariantBuilder.mc_dropout
    space = SearchSpace(depth=ck.config.depth, keep_ratios=tuple(a.keep_ratios),
                        stochastic_from=tuple(range(ck.config.depth + 1)) if mc_dropout
                        else (ck.config.split_index,),
                        bytes_fractions=tuple(a.bytes_fractions), samples=tuple(a.samples))
    builder = make_builder() if evaluator else _LazyEvaluator(make_builder)
    seeds = fisher_guided_seeds(builder, space) if evaluator and not worker else []
    return types.SimpleNamespace(board=board, budgets=budgets, ck=ck, source=source, builder=builder, space=space,
                                 seeds=seeds, out=out, measured_on=measured_on, pool=pool)


class _LazyEvaluator:
    """A trial evaluator built on its first trial (the coordinator of ``--workers N`` evaluates
    trials only when its workers left the study short of ``--trials``)."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make, self._evaluate = make, None

    def __call__(self, number: int, params):
        if self._evaluate is None:
            self._evaluate = self._make()
        return self._evaluate(number, params)


def _storage_spec(a: argparse.Namespace) -> str:
    if a.storage and a.journal:
        raise ValueError("give --storage or --journal, not both (--journal PATH is --storage journal:PATH)")
    if a.storage:
        return a.storage
    return f"journal:{Path(a.journal) if a.journal else Path(a.out) / 'search.journal'}"


def _threads_per_worker(a: argparse.Namespace) -> int:
    """Torch threads of each worker: ``--threads-per-worker``, else this host's cores split between
    the workers (torch would give each of them all the cores)."""
    import os

    if a.threads_per_worker is not None:
        if a.threads_per_worker < 1:
            raise ValueError(f"--threads-per-worker must be >= 1, got {a.threads_per_worker}")
        return int(a.threads_per_worker)
    return max(1, (os.cpu_count() or 1) // max(1, int(a.workers)))


#: thread-count variables of the BLAS / OpenMP pools a worker's numpy and torch may start
_BLAS_THREADS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _search_worker(a: argparse.Namespace, index: int) -> None:
    """One worker process of ``edgeuq search --workers N`` (spawned: it builds its own evaluator)."""
    import os

    import torch

    from .search import run_search_with_failures

    torch.set_num_threads(_threads_per_worker(a))
    s = _search_setup(a, worker=index)
    run_search_with_failures(s.space, s.builder, s.budgets, a.trials, _storage_spec(a), seed=a.seed + index,
                             population=a.population, enqueue=s.seeds, study_name=f"edgeuq-{s.board.name}",
                             log=lambda m: print(f"[worker {index}] {m}", flush=True))


def _cmd_search(a: argparse.Namespace) -> int:
    import platform
    import shutil
    import time

    from ..report import format_table
    from .distributed import run_workers, storage_label
    from .search import OBJECTIVES, choose_for_board, pareto_trials, run_search_with_failures, save_search_result

    from ..provenance import finish, start

    prov = start("quick" if a.quick else "full", 1)
    command = "edgeuq search " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else "edgeuq search ..."
    if a.quick:
        a.trials, a.population, a.repeats = min(a.trials, 6), min(a.population, 4), min(a.repeats, 10)
    if isinstance(a.workers, bool) or a.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {a.workers}")
    spec = _storage_spec(a)
    import torch

    threads = _threads_per_worker(a)
    torch.set_num_threads(threads)  # --workers 1: this process is the worker
    s = _search_setup(a, evaluator=a.workers == 1)
    if s.pool is not None:  # say at once where the latency goes, and whether any board is there
        st = s.pool.status()
        print(f"search: latency objective {s.measured_on}: the tracker lists {len(st['agents'])} agent(s) "
              f"({', '.join(st['agents']) or 'none yet'}), {st['free']} free")
    t0 = time.perf_counter()
    if a.workers > 1:
        print(f"search: {a.workers} workers on {storage_label(spec)}")
        # numpy's BLAS pool too keeps to each worker's share of the cores (its threads spin otherwise)
        codes = run_workers(a.workers, _search_worker, (a,), env={v: str(threads) for v in _BLAS_THREADS})
        if any(codes):
            print(f"WARNING: worker exit codes {codes} (a dead worker's running trial is retried by the others "
                  "with an RDB storage; with a journal it stays RUNNING)", file=sys.stderr)
    records_, failed = run_search_with_failures(  # with workers: only collects (the study holds the trials)
        s.space, s.builder, s.budgets, a.trials, spec, seed=a.seed, population=a.population, enqueue=s.seeds,
        study_name=f"edgeuq-{s.board.name}")
    wall = time.perf_counter() - t0
    board, budgets, ck, out = s.board, s.budgets, s.ck, s.out
    front = pareto_trials(records_)
    pick = choose_for_board(front)
    if s.pool is not None:
        title = (f"{board.name}: {len(records_)} trials, {len(failed)} failed; latency measured on {s.pool.label} "
                 "(timing agents, 1 thread)")
    else:
        where = "this host" if not a.agent else "the boards' timing agents"
        title = (f"{board.name}: {len(records_)} trials, {len(failed)} failed; latency measured on {where} "
                 f"({platform.machine() if not a.agent else ', '.join(a.agent)}, 1 thread)"
                 + ("" if a.agent else ", not on the board unless it is this machine"))
    res = save_search_result(out / "result", board.name, budgets, records_, front, pick,
                             {"checkpoint": str(ck.directory), "checkpoint_sha256": ck.sha256, "data": s.source,
                              "latency_measured_on": s.measured_on, "storage": storage_label(spec),
                              "workers": a.workers, "wall_s": round(wall, 1),
                              "boards": _boards_used(records_),
                              "command": command, "provenance": finish(prov, note=f"search result {out / 'result'}")},
                             title, failed=failed)
    trials = [r.to_dict() for r in records_]
    headers, rows = pareto_table(trials, [r.number for r in front])
    if failed:
        print(f"WARNING: {len(failed)} trial(s) failed (not counted; reasons in {res.directory / 'search.json'}):",
              file=sys.stderr)
        for f in failed:
            print(f"  trial {f.number} {dict(f.params)}: {f.error}", file=sys.stderr)
    print(f"\nPareto set ({len(front)} of {len(records_)} trials, {len(failed)} failed, "
          f"{sum(r.feasible for r in records_)} within "
          f"{board.name}'s budgets; objectives {[k for k, _ in OBJECTIVES]}):")
    print(format_table(headers, rows, markdown=True))
    print(f"latency objective: {s.measured_on}; trials per board: "
          + ", ".join(f"{k} {v}" for k, v in _boards_used(records_).items()))
    if a.tables_json:
        _write_search_tables(res.to_meta(), Path(a.tables_json))
    if pick is None:
        print(f"no trial meets {board.name}'s budgets; no bundle chosen")
        return 1
    dest = out / f"bundle-{board.name}"
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(pick.artifact, dest)
    print(f"\nchosen for {board.name}: trial {pick.number} -> {dest}; result {res.directory} "
          f"(plot {res.directory / 'pareto.png'})")
    return 0


def pareto_table(trials, pareto) -> tuple:
    """(headers, rows) of the Pareto set, fastest first, from the trial dicts of a ``compress_search`` result
    (``search.json`` meta ``trials`` / ``pareto``): what ``edgeuq search`` prints."""
    by_number = {int(t["number"]): t for t in trials}
    missing = [n for n in pareto if int(n) not in by_number]
    if missing:
        raise ValueError(f"Pareto trials {missing} are not among the result's trials")
    front = [by_number[int(n)] for n in pareto]
    depth = len([k for k in (front[0]["params"] if front else {}) if k.startswith("keep")])
    headers = ["trial", *[f"keep{i}" for i in range(depth)], "stochastic from", "bytes frac", "S",
               "latency ms", "accuracy", "OOD AUROC", "bytes"]
    rows = [[t["number"], *[t["params"][f"keep{i}"] for i in range(depth)], t["params"]["stochastic_from"],
             t["params"]["bytes_fraction"], t["params"]["samples"], f"{t['metrics']['latency_ms']:.3f}",
             f"{t['metrics']['accuracy']:.4f}", f"{t['metrics']['ood_auroc']:.3f}", f"{int(t['metrics']['bytes']):,}"]
            for t in sorted(front, key=lambda t: t["metrics"]["latency_ms"])]
    return headers, rows


def search_tables_json(meta) -> dict:
    """The Pareto table of a ``compress_search`` result in scripts/render_tables.py's format (without
    the command and provenance, which the result's ``info`` carries)."""
    headers, rows = pareto_table(meta["trials"], meta["pareto"])
    n, ok = len(meta["trials"]), sum(bool(t["feasible"]) for t in meta["trials"])
    failed = (f"{meta['failed_count']} failed (evaluation raised; reasons in search.json)"
              if "failed_count" in meta else "failed trials not recorded by this (older) result")
    from ..report import results_table

    pick = (f"board's pick: trial {meta['chosen']}." if meta.get("chosen") is not None
            else "no trial within the budgets, none picked.")
    return results_table(headers, rows, note=f"{n} trials, {failed}, {ok} within {meta['board']}'s budgets, "
                                             f"{len(meta['pareto'])} on the Pareto front; " + pick)


def _write_search_tables(meta, path: Path) -> Path:
    from ..provenance import write_results

    info = meta.get("info") or {}
    if "command" not in info or "provenance" not in info:
        raise SystemExit(f"{path}: the search result records no command/provenance (an older result): rerun the search")
    write_results(path, search_tables_json(meta), info["command"], info["provenance"])
    print(f"tables: {path}")
    return path


def _cmd_search_table(a: argparse.Namespace) -> int:
    import json

    from ..report import format_table

    path = Path(a.result)
    path = path / "search.json" if path.is_dir() else path
    if not path.is_file():
        print(f"edgeuq search-table: {path} not found (expected a search result folder or its search.json)",
              file=sys.stderr)
        return 2
    doc = json.loads(path.read_text())
    if doc.get("kind") != "compress_search":
        print(f"edgeuq search-table: {path} is a {doc.get('kind')!r} artifact, not a compress_search result",
              file=sys.stderr)
        return 2
    meta = doc["meta"]
    print(format_table(*pareto_table(meta["trials"], meta["pareto"]), markdown=True))
    if a.tables_json:
        _write_search_tables(meta, Path(a.tables_json))
    return 0


def _checkpoint_and_data(p: argparse.ArgumentParser, out_help: str, recipe_help: str, calibration_help: str) -> None:
    """``--checkpoint``, ``--out``, ``--recipe``, the data arguments and ``--calibration`` (512)."""
    p.add_argument("--checkpoint", required=True, help="checkpoint directory")
    p.add_argument("--out", required=True, help=out_help)
    p.add_argument("--recipe", default="bearing-demo", help=recipe_help)
    add_data_arguments(p)
    p.add_argument("--calibration", type=int, default=512, help=calibration_help)


def _seed_and_progress(p: argparse.ArgumentParser, func) -> None:
    p.add_argument("--seed", type=int, default=0)
    add_progress_argument(p)
    p.set_defaults(func=func)


#: The choices of --loss (kept here so that building the parser imports no torch; a test checks them
#: against edgeuq.compress.distill.LOSSES / DEFAULT_LOSS).
LOSS_CHOICES = ("ce", "kl", "kl+uq")
DEFAULT_LOSS = "kl+uq"


def register(subparsers) -> None:
    p = subparsers.add_parser("compress", help="run a chain of registered compression steps (prune, lowrank, "
                                               "distill, ...) on a checkpoint; each step's output is a cached "
                                               "checkpoint")
    _checkpoint_and_data(p, "output folder: <i>-<step>/ (one checkpoint per step), chain.json",
                         "recipe of the data and of the chain ([[compress.steps]] name = ... + the step's options)",
                         "windows the steps read (random training subset)")
    p.add_argument("--steps", help="comma-separated steps in order, e.g. prune,lowrank,distill (replaces the "
                                   "recipe's chain; each step keeps the recipe's options for it, else its defaults)")
    p.add_argument("--option", action="append", type=_option, metavar="STEP.KEY=VALUE",
                   help="set a step option (repeatable), e.g. --option prune.target_flops=0.5")
    p.add_argument("--teacher", help="teacher of distillation steps: checkpoint or bundle (default: --checkpoint)")
    _seed_and_progress(p, _cmd_compress)

    p = subparsers.add_parser("distill", help="distil a teacher (checkpoint or bundle, any scheme) into a small "
                                              "student, keeping its uncertainty")
    p.add_argument("--teacher", required=True, help="teacher checkpoint directory or bundle directory")
    p.add_argument("--student-recipe", required=True, help="recipe whose [model] is the student (and [data])")
    p.add_argument("--out", required=True, help="output folder: checkpoint/ (student) and transfer/ (labelled set)")
    add_data_arguments(p)
    p.add_argument("--loss", default=DEFAULT_LOSS, choices=LOSS_CHOICES)
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--uq-weight", type=float, default=2.0, help="weight of the MI / expected-entropy matching")
    p.add_argument("--feature-weight", type=float, default=0.0,
                   help="weight of feature distillation (the teacher's pooled trunk features through a fitted "
                        "linear projection; 0: off)")
    p.add_argument("--feature-loss", default="mse", choices=("mse", "cosine"), help="feature distillation distance")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--copies", type=int, default=1, help="perturbed copies of each training window")
    p.add_argument("--teacher-samples", type=int, default=32, help="teacher samples per transfer window")
    p.add_argument("--student-samples", type=int, default=8, help="student head samples per window per step")
    _seed_and_progress(p, _cmd_distill)

    p = subparsers.add_parser("prune", help="Fisher-guided structured pruning of heads and FFN neurons "
                                            "(Kwon et al. 2022), physically removed")
    _checkpoint_and_data(p, "output folder: checkpoint/ (pruned), plan/ (masks, sizes)",
                         "recipe of the calibration data", "calibration windows (random training subset)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--target-flops", type=float, help="fraction of the encoder blocks' MACs to keep, e.g. 0.5")
    g.add_argument("--target-ms", type=float, help="deterministic-pass latency to reach on this host (PyTorch, "
                                                   "1 thread), found by bisection on the MACs budget")
    p.add_argument("--fisher", help="FisherReport directory (`edgeuq fisher`) whose structure scores rank the "
                                    "heads/neurons; default: computed here from mask gradients")
    p.add_argument("--labels", choices=("data", "model"), default="data",
                   help="Fisher with the data labels (Kwon et al.) or labels sampled from the model")
    p.add_argument("--no-rearrange", action="store_true")
    p.add_argument("--no-tune", action="store_true")
    p.add_argument("--keep-layers", type=int, default=None,
                   help="keep this many encoder blocks, chosen by the Fisher of whole-layer masks, before the "
                        "head/neuron search (--target-flops is then a fraction of the kept blocks' MACs)")
    p.add_argument("--distill-epochs", type=int, default=0, help="then distil from the unpruned model (0: no)")
    _seed_and_progress(p, _cmd_prune)

    p = subparsers.add_parser("search", help="NSGA-II search over pruning, stochastic part, bit allocation and S "
                                             "against measured latency, within a board's budgets")
    p.add_argument("--board", required=True, help="board whose budgets constrain the search")
    p.add_argument("--teacher", required=True, help="checkpoint to compress (MC dropout: the stochastic part varies too)")
    p.add_argument("--out", required=True, help="output folder: result/ (search.json, pareto.png), trials/, "
                                                "bundle-<board>/")
    p.add_argument("--recipe", default="bearing-demo", help="recipe of the data (window, hop, synthetic settings)")
    add_data_arguments(p)
    p.add_argument("--trials", type=int, default=24)
    p.add_argument("--population", type=int, default=8)
    p.add_argument("--journal", help="optuna journal file (default OUT/search.journal); rerun to resume")
    p.add_argument("--storage", default=None,
                   help="shared optuna storage: an RDB URL (postgresql+psycopg2://USER@HOST:PORT/DB; heartbeat, a dead "
                        "worker's trial is retried) or journal:PATH on a shared file system")
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes here sharing the storage (default 1; with --agent, worker i times on "
                        "agent i)")
    p.add_argument("--threads-per-worker", type=int, default=None,
                   help="torch threads of each worker (default: this host's cores // --workers)")
    p.add_argument("--agent", nargs="+", metavar="HOST:PORT", default=None,
                   help="measure the latency objective on boards' timing agents (python -m edgeuq_runtime agent) "
                        "instead of this host")
    p.add_argument("--agent-token-file", default=None, help="the agents' token file (default $EDGEUQ_AGENT_TOKEN)")
    p.add_argument("--tracker", metavar="HOST:PORT", default=None,
                   help="measure the latency objective on the timing agents of --tracker-key in this TVM RPC tracker's "
                        "pool: "
                        "each measurement takes a free agent and gives it back (agents: python -m edgeuq_runtime "
                        "agent --tracker T --key K)")
    p.add_argument("--tracker-key", metavar="KEY", default=None,
                   help="the board key of the agents (with --tracker; --key is the .mat variable name here)")
    p.add_argument("--board-wait", type=float, default=300.0,
                   help="seconds a measurement waits for a free board of --tracker-key before its trial fails (and is run "
                        "again); default 300")
    p.add_argument("--keep-ratios", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1.0])
    p.add_argument("--bytes-fractions", type=float, nargs="+", default=[1.0, 0.5, 0.3])
    p.add_argument("--samples", type=int, nargs="+", default=[8, 16, 32])
    p.add_argument("--calibration", type=int, default=256)
    p.add_argument("--repeats", type=int, default=30, help="timed repeats per latency measurement")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tables-json", help="also write the Pareto table for scripts/render_tables.py "
                                         "(e.g. results/compress_search.json)")
    p.add_argument("--quick", action="store_true", help="at most 6 trials, population 4, 10 repeats (the results "
                                                        "JSON says mode quick)")
    p.set_defaults(func=_cmd_search)

    p = subparsers.add_parser("search-table", help="print the Pareto table of a saved search result (and write it "
                                                   "for scripts/render_tables.py) without searching again")
    p.add_argument("result", help="search result folder (OUT/result) or its search.json")
    p.add_argument("--tables-json", help="write the table here (e.g. results/compress_search.json)")
    p.set_defaults(func=_cmd_search_table)
