"""Trials per hour of `edgeuq search` with 1 vs 2 workers on one shared optuna storage, on this host.

    python bench/search_workers.py [--trials 8] [--pairs 2] [--seed 1] [--storage journal|postgres]
                                   [--json results/search_workers.json]

What a trial is here: the real one. The teacher has the default recipe's architecture
(`bearing-demo`: conv stem, d_model 64, 3 blocks, MC dropout), trained for one epoch on an eighth
of its synthetic data (the cost of a trial does not depend on how well the teacher is trained), and
`edgeuq search --recipe bearing-demo` runs with the search's default settings (calibration 256,
30 timed repeats, S in 8/16/32, keep ratios and bytes fractions of the default space). Each trial
therefore does the work of a real search trial: Fisher-ranked pruning with least-squares mask
tuning, export to ONNX (or calibration and int8 quantization of the bytes budget), the bundle,
accuracy and OOD AUROC of MI through the device runtime on the default recipe's test and OOD
windows, and the S-sample latency timed through the runtime on this host.

Both runs of a pair evaluate the same configurations: the bench creates each run's study on a fresh
storage and enqueues one seeded list of configurations drawn from the default space (the search
then asks them in that order, whichever worker asks), so 1 and 2 workers do the same trials. The
runs of each pair go in a seeded random order (drift on a shared machine hits both alike).

Trials per hour are taken in the steady state, while every worker is evaluating: from the moment
the last worker starts its first trial to the moment the first worker finishes its last, each trial
counted by the fraction of it inside that window (set-up, the other workers' start and the last
lone trial are outside; the command's wall time, which includes them, is reported too). A second
ratio normalises by work: each trial weighs its duration in the 1-worker run of the pair (that run
evaluates one configuration more, so every configuration the 2-worker run counts has a weight).

The latency objective is timed on this host, so on a 2-core machine the two workers also compete
for the cores that time them; with boards (`--agent`), each worker's latency is timed on its own
board and only the host-side build shares the host.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "bearing-demo"          # the default recipe of `edgeuq search`
STUDY = "edgeuq-x86-host"        # the study `edgeuq search --board x86-host` uses


def _edgeuq(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeuq.cli", *args], capture_output=True, text=True,
                          env=env, timeout=1800)


def _teacher_recipe() -> str:
    """The default recipe with one training epoch on an eighth of its synthetic data (2 s records of one
    load; the same architecture)."""
    text = (ROOT / "compile" / f"{RECIPE}.toml").read_text()
    text = re.split(r"(?m)^\[\[compress\.", text)[0]   # the compression chain is not part of training
    subs = ((r'(?m)^name = "bearing-demo"', 'name = "bench-search-teacher"'),
            (r"(?m)^duration_s = [0-9.]+", "duration_s = 2.0"),
            (r"(?m)^loads = \[[0-9, ]+\]", "loads = [0]"),
            (r"(?m)^epochs = [0-9]+", "epochs = 1"))
    for pattern, repl in subs:
        text, n = re.subn(pattern, repl, text)
        if n != 1:
            raise SystemExit(f"compile/{RECIPE}.toml: expected one line matching {pattern!r}, found {n}")
    return text


def _configurations(n: int, seed: int, depth: int, stochastic: tuple) -> list:
    """``n`` configurations of the default search space (the `edgeuq search` defaults), seeded."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        p = {f"keep{i}": rng.choice([0.25, 0.5, 0.75, 1.0]) for i in range(depth)}
        p.update(stochastic_from=rng.choice(list(stochastic)), bytes_fraction=rng.choice([1.0, 0.5, 0.3]),
                 samples=rng.choice([8, 16, 32]))
        out.append(p)
    return out


def _prepare_study(storage, configs) -> None:
    import optuna

    from edgeuq.compress.search import OBJECTIVES

    study = optuna.create_study(study_name=STUDY, storage=storage,
                                directions=["minimize" if s == "min" else "maximize" for _, s in OBJECTIVES])
    for p in configs:
        study.enqueue_trial(dict(p))


def _key(params) -> str:
    return json.dumps({k: params[k] for k in sorted(params)}, sort_keys=True)


def _trials(storage) -> list:
    import optuna

    study = optuna.load_study(study_name=STUDY, storage=storage)
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return [{"key": _key(t.params), "worker": t.user_attrs.get("worker", "?"),
             "start": t.datetime_start.timestamp(), "end": t.datetime_complete.timestamp()} for t in done]


def _window(trials) -> tuple:
    """(t0, t1): every worker evaluating -- the last worker's first start to the first worker's last end."""
    workers = sorted({t["worker"] for t in trials})
    t0 = max(min(t["start"] for t in trials if t["worker"] == w) for w in workers)
    t1 = min(max(t["end"] for t in trials if t["worker"] == w) for w in workers)
    return t0, t1, len(workers)


def _inside(t, t0, t1) -> float:
    """The fraction of trial ``t`` inside [t0, t1]."""
    d = t["end"] - t["start"]
    return max(0.0, min(t["end"], t1) - max(t["start"], t0)) / d if d > 0 else 0.0


def _throughput(trials, weight=None) -> dict:
    t0, t1, workers = _window(trials)
    span = t1 - t0
    if not span > 0:
        raise SystemExit(f"no steady-state window (span {span:.2f} s): too few trials for the workers")
    counted = sum(_inside(t, t0, t1) for t in trials)
    out = {"trials_total": len(trials), "trials_in_window": round(counted, 2), "span_s": round(span, 2),
           "trials_per_hour": 3600.0 * counted / span, "workers_seen": workers,
           "trial_s_median": round(sorted(t["end"] - t["start"] for t in trials)[len(trials) // 2], 2)}
    if weight is not None:  # seconds of 1-worker work done per second of wall time in the window
        missing = [t["key"] for t in trials if _inside(t, t0, t1) > 0 and t["key"] not in weight]
        if missing:
            raise SystemExit(f"configurations without a 1-worker duration: {missing}")
        out["work_rate"] = sum(_inside(t, t0, t1) * weight.get(t["key"], 0.0) for t in trials) / span
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=8, help="finished trials per run (the 1-worker run: one more)")
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--storage", choices=("journal", "postgres"), default="journal")
    ap.add_argument("--seed", type=int, default=1, help="seed of the configurations and of the run order")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per worker in both runs (default 1: the same work per trial either way)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    if a.trials < 4 or a.pairs < 1:
        raise SystemExit("--trials must be >= 4 and --pairs >= 1")

    from edgeuq.compress.distributed import open_storage
    from edgeuq.provenance import command_line, finish, start
    from edgeuq.report import results_table

    prov = start("full", 1, packages=("torch", "numpy", "onnxruntime", "optuna"))
    t_bench = time.perf_counter()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "runtime"),
                                                       os.environ.get("PYTHONPATH", "")]))
    runs = []
    with tempfile.TemporaryDirectory(prefix="edgeuq-bench-search-") as tmp:
        tmp = Path(tmp)
        (tmp / "teacher.toml").write_text(_teacher_recipe())
        t0 = time.perf_counter()
        r = _edgeuq("train", "--recipe", str(tmp / "teacher.toml"), "--out", str(tmp / "teacher"), "--no-progress",
                    env=env)
        if r.returncode != 0:
            raise SystemExit(f"training the teacher failed: {r.stderr[-2000:]}")
        teacher_s = time.perf_counter() - t0
        from edgeuq.schemes import get_scheme
        from edgeuq.training import load_checkpoint

        cfg = load_checkpoint(tmp / "teacher").config
        stochastic = tuple(range(cfg.depth + 1)) if get_scheme(cfg.scheme).relocatable_sites else (cfg.split_index,)
        configs = _configurations(a.trials + 2, a.seed, cfg.depth, stochastic)
        pg = None
        if a.storage == "postgres":
            sys.path.insert(0, str(ROOT / "tests"))
            from pg_cluster import PgCluster

            pg = PgCluster().__enter__()
        try:
            order = random.Random(a.seed)
            for pair in range(a.pairs):
                ws = [1, 2]
                order.shuffle(ws)
                for w in ws:
                    name = f"p{pair}-w{w}"
                    spec = f"journal:{tmp / name / 'search.journal'}" if pg is None else pg.url
                    if pg is not None:  # one database: a fresh study per run
                        import optuna

                        try:
                            optuna.delete_study(study_name=STUDY, storage=open_storage(spec))
                        except KeyError:
                            pass
                    _prepare_study(open_storage(spec), configs)
                    n = a.trials + (1 if w == 1 else 0)
                    t0, c0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
                    r = _edgeuq("search", "--board", "x86-host", "--teacher", str(tmp / "teacher"), "--recipe", RECIPE,
                                "--out", str(tmp / name), "--trials", str(n), "--workers", str(w),
                                "--threads-per-worker", str(a.threads), "--storage", spec, env=env)
                    wall, c1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
                    cpu = (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)  # the command and its workers
                    if r.returncode not in (0, 1):  # 1: no trial within the board's budgets (still measured)
                        raise SystemExit(f"edgeuq search --workers {w} failed: {r.stderr[-3000:]}")
                    runs.append({"pair": pair, "workers": w, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
                                 "trials": _trials(open_storage(spec))})
                    print(f"pair {pair} workers {w}: {len(runs[-1]['trials'])} trials, command {wall:.1f} s "
                          f"({cpu / wall:.2f} cores busy)", flush=True)
        finally:
            if pg is not None:
                pg.__exit__()
    rows, ratios, work_ratios, summary = [], [], [], []
    for pair in range(a.pairs):
        one = next(r for r in runs if r["pair"] == pair and r["workers"] == 1)
        two = next(r for r in runs if r["pair"] == pair and r["workers"] == 2)
        weight = {t["key"]: t["end"] - t["start"] for t in one["trials"]}
        tp1, tp2 = _throughput(one["trials"], weight), _throughput(two["trials"], weight)
        ratios.append(tp2["trials_per_hour"] / tp1["trials_per_hour"])
        work_ratios.append(tp2["work_rate"] / tp1["work_rate"])
        for r, tp in ((one, tp1), (two, tp2)):
            summary.append({"pair": pair, "workers": r["workers"], "wall_s": r["wall_s"], "cpu_s": r["cpu_s"],
                            "cores_busy": round(r["cpu_s"] / r["wall_s"], 2), **tp})
            rows.append([str(pair), str(r["workers"]), f"{tp['trials_total']}", f"{tp['trials_in_window']:.1f}",
                         f"{tp['span_s']:.1f}", f"{tp['trial_s_median']:.2f}", f"{tp['trials_per_hour']:.0f}",
                         f"{r['wall_s']:.1f}", f"{r['cpu_s'] / r['wall_s']:.2f}"])

    def median(xs):
        s = sorted(xs)
        return s[len(s) // 2] if len(s) % 2 else (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2

    bench_s = time.perf_counter() - t_bench
    prov = finish(prov, note=(f"{a.storage} storage; {a.threads} torch thread(s) per worker in both runs; "
                              f"teacher: {RECIPE} architecture, 1 epoch on an eighth of its synthetic data "
                              f"({teacher_s:.0f} s); search: --recipe {RECIPE} with the default search settings; "
                              f"the same {len(configs)} seeded configurations (seed {a.seed}) enqueued in both runs; "
                              "latency objective measured on this host (ONNX Runtime, 1 thread) while the other "
                              f"worker builds and times its own trial; bench wall {bench_s:.0f} s"))
    doc = results_table(["pair", "workers", "trials", "trials in window", "window s", "trial s (median)",
                       "trials per hour", "command wall s", "cores busy (command CPU / wall)"],
                        rows, **{"speedup_2_vs_1": ratios, "speedup_median": median(ratios),
           "work_speedup_2_vs_1": work_ratios, "work_speedup_median": median(work_ratios), "runs": summary,
           "configurations": configs, "bench_wall_s": round(bench_s, 1),
           "note": (f"2 workers vs 1: {', '.join(f'{x:.2f}x' for x in ratios)} trials per hour "
                    f"(median {median(ratios):.2f}x; by work {', '.join(f'{x:.2f}x' for x in work_ratios)}) on "
                    f"{os.cpu_count()} cores (load {prov['load_before']} before, {prov['load_after']} after; "
                    "on a machine loaded by other jobs the scheduler gives 2 workers about twice the share of 1, "
                    "so the ratio says little there). "
                    f"Real search trials: the {RECIPE} architecture and data with `edgeuq search`'s default "
                    "settings (prune + mask tuning, ONNX export or int8 quantization, bundle, accuracy and OOD "
                    "AUROC through the device runtime, S-sample latency timed here), the same seeded "
                    "configurations in both runs; steady state = while every worker evaluates. With N boards "
                    "(edgeuq search --agent A1 A2 ...), each worker's latency objective is timed on its own "
                    "board, so only the host-side build of each trial shares the host: the speed-up is bounded by "
                    "min(N, host cores / cores per build).")})
    print(json.dumps({k: v for k, v in doc.items() if k not in ("configurations",)}, indent=2))
    if a.json:
        from edgeuq.provenance import write_results

        write_results(a.json, doc, command_line("bench/search_workers.py", argv), prov)
        print(f"results: {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
