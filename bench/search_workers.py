"""Trials per hour of `edgeuq search` with 1 vs 2 workers on one shared optuna storage, on this host.

    python bench/search_workers.py [--trials 30] [--pairs 2] [--storage journal|postgres]
                                   [--json results/search_workers.json]

Trains a tiny teacher (synthetic bearing recipe, seconds), then runs `edgeuq search --workers W`
for W in {1, 2}, the two runs of each pair in a seeded random order (so drift in a shared
machine hits both alike), each a fresh process on a fresh storage. Throughput is taken from the
study itself in the steady state: trials started once every worker was running trials,
divided by (last completion - that moment), so each worker's set-up (data, evaluator,
Fisher-guided seeds, which overlaps the other worker's first trials) is outside it; the wall time of the
whole command is reported too. The latency objective is measured on this host, so two workers
on a 2-core machine compete for the cores that also time them: the speed-up here is a lower
bound of what N boards give (there each worker times on its own board, and only the host-side
build of a trial's bundle shares the host: see the note in the JSON).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = """
name = "bench-search-teacher"
description = "tiny teacher for bench/search_workers.py"
task = "bearing"
boards = ["x86-host"]
[data]
source = "synthetic"
window = 1024
hop = 512
fs_hz = 12000
classes = ["normal", "inner_race", "outer_race", "ball"]
ood_kind = "compound"
shift_snr_db = 0.0
[data.synthetic]
duration_s = 1.0
loads = [0, 2]
seed = 3
[model]
patch = 64
d_model = 16
heads = 2
depth = 2
ffn = 32
dropout = 0.1
stochastic_blocks = [1]
stochastic_head = true
[train]
epochs = 1
batch_size = 32
lr = 3e-3
patience = 2
seed = 0
[uq]
samples = 8
[bundle]
model_name = "bench-search-teacher"
model_version = "0.0.1"
"""


def _edgeuq(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeuq.cli", *args], capture_output=True, text=True,
                          env=env, timeout=1800)


def _throughput(storage, name: str) -> dict:
    import optuna

    study = optuna.load_study(study_name=name, storage=storage)
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    workers = sorted({t.user_attrs.get("worker", "?") for t in done})
    # steady state: from the moment every worker runs trials (each worker's set-up, e.g. the
    # Fisher-guided seeds, overlaps the others' first trials otherwise) to the last completion
    t0 = max(min(t.datetime_start for t in done if t.user_attrs.get("worker", "?") == w) for w in workers)
    t1 = max(t.datetime_complete for t in done)
    counted = [t for t in done if t.datetime_start >= t0]
    span = (t1 - t0).total_seconds()
    return {"trials": len(counted), "trials_total": len(done), "span_s": span,
            "trials_per_hour": 3600.0 * len(counted) / span, "workers_seen": len(workers)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--storage", choices=("journal", "postgres"), default="journal")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per worker in both runs (default 1: the same work per trial either way)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)

    from edgeuq.compress.distributed import open_storage
    from edgeuq.provenance import command_line, finish, start

    prov = start("full", 1, packages=("torch", "numpy", "onnxruntime", "optuna"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "runtime"),
                                                       os.environ.get("PYTHONPATH", "")]))
    rows, runs = [], []
    with tempfile.TemporaryDirectory(prefix="edgeuq-bench-search-") as tmp:
        tmp = Path(tmp)
        (tmp / "teacher.toml").write_text(RECIPE)
        r = _edgeuq("train", "--recipe", str(tmp / "teacher.toml"), "--out", str(tmp / "teacher"), "--no-progress",
                    env=env)
        if r.returncode != 0:
            raise SystemExit(f"training the teacher failed: {r.stderr[-2000:]}")
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
                    study_name = "edgeuq-x86-host"
                    if pg is not None:  # one database: a fresh study per run
                        import optuna

                        try:
                            optuna.delete_study(study_name=study_name, storage=open_storage(spec))
                        except KeyError:
                            pass
                    t0 = time.perf_counter()
                    r = _edgeuq("search", "--board", "x86-host", "--teacher", str(tmp / "teacher"), "--recipe",
                                str(tmp / "teacher.toml"), "--out", str(tmp / name), "--trials", str(a.trials),
                                "--population", "4", "--repeats", "10", "--samples", "4", "8", "--workers", str(w),
                                "--threads-per-worker", str(a.threads),
                                "--storage", spec, env=env)
                    wall = time.perf_counter() - t0
                    if r.returncode not in (0, 1):  # 1: no trial within the board's budgets (still measured)
                        raise SystemExit(f"edgeuq search --workers {w} failed: {r.stderr[-3000:]}")
                    tp = _throughput(open_storage(spec), study_name)
                    runs.append({"pair": pair, "workers": w, "wall_s": round(wall, 1), **tp})
                    print(f"pair {pair} workers {w}: {tp['trials']} trials in {tp['span_s']:.1f} s "
                          f"({tp['trials_per_hour']:.0f}/h), command {wall:.1f} s", flush=True)
        finally:
            if pg is not None:
                pg.__exit__()
    ratios = []
    for pair in range(a.pairs):
        one = next(r for r in runs if r["pair"] == pair and r["workers"] == 1)
        two = next(r for r in runs if r["pair"] == pair and r["workers"] == 2)
        ratios.append(two["trials_per_hour"] / one["trials_per_hour"])
    for r in runs:
        rows.append([str(r["pair"]), str(r["workers"]), str(r["trials"]), f"{r['span_s']:.1f}",
                     f"{r['trials_per_hour']:.0f}", f"{r['wall_s']:.1f}"])
    ratios_sorted = sorted(ratios)
    median = ratios_sorted[len(ratios_sorted) // 2] if len(ratios) % 2 else \
        sum(ratios_sorted[len(ratios) // 2 - 1:len(ratios) // 2 + 1]) / 2
    prov = finish(prov, note=(f"{a.storage} storage; {a.threads} torch thread(s) per worker in both runs; "
                              "the workers sample different configurations (seed + worker index), so trials differ "
                              "in cost; latency objective measured on this host (ONNX Runtime, 1 "
                              "thread) while the other worker builds and times its own trial"))
    doc = {"headers": ["pair", "workers", "trials (steady state)", "span s", "trials per hour", "command wall s"],
           "rows": rows, "speedup_2_vs_1": ratios, "speedup_median": median,
           "note": (f"2 workers vs 1: {', '.join(f'{x:.2f}x' for x in ratios)} trials per hour (median {median:.2f}x) "
                    f"on {os.cpu_count()} cores shared with other jobs (load {prov['load_before']} before, "
                    f"{prov['load_after']} after). With N boards, each worker's latency objective is timed on its "
                    "own board (edgeuq search --agent A1 A2 ...), so only the host-side build of each trial "
                    "(prune, export, quantize, accuracy/OOD evaluation) shares the host: the speed-up is bounded by "
                    "min(N, host cores / cores per build), not by timing.")}
    print(json.dumps(doc, indent=2))
    if a.json:
        from edgeuq.provenance import write_results

        write_results(a.json, doc, command_line("bench/search_workers.py", argv), prov)
        print(f"results: {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
