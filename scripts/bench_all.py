#!/usr/bin/env python3
"""Regenerate every ``results/*.json`` from the command it names, then the tables in the docs.

    python scripts/bench_all.py --mode quick     # make bench-quick: smoke-sized runs (about an hour on 2 cores)
    python scripts/bench_all.py --mode full      # make bench: the reported runs (several hours on 2 cores)
    python scripts/bench_all.py --mode quick --only ota stream   # some of them

Each benchmark writes its own JSON with the provenance record of ``edgeuq.provenance``
(mode, date, commit, CPU and ISA, threads, load) and the command that reruns it; nothing here
writes a number. Logs go to ``runs/bench/logs/NAME.log``; a failed benchmark is reported and the
others still run (exit status 1 at the end). Run from the repository root with the project's venv
on PATH (the Makefile does).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
CWRU = "../shared/data/cwru"
TEXT = "../shared/data/text"


@dataclass(frozen=True)
class Bench:
    name: str
    command: str                      # run from the repository root; {quick} -> the mode's extra arguments
    quick: str = "--quick"            # extra arguments in quick mode ("" = none)
    full: str = ""                    # extra arguments in full mode
    writes: Sequence[str] = ()        # results files it (re)writes
    needs: Sequence[str] = ()         # benchmarks whose output it reads


BENCHES: List[Bench] = [
    Bench("backends", "python bench/backends.py {mode}", writes=("backends", "backends_kernels")),
    Bench("backends_isa_other", 'eval "$(python scripts/isa_env.py --other)" && python bench/backends.py --targets '
                                "x86-64 host --json results/backends_isa_other.json --kernels-json '' {mode}",
          full="--repeats 30", writes=("backends_isa_other",)),
    Bench("mc_overhead", "python bench/mc_overhead.py --json results/mc_overhead.json {mode}", writes=("mc_overhead",)),
    Bench("runtime_memory", "python bench/runtime_memory.py --json results/runtime_memory.json {mode}",
          writes=("runtime_memory",)),
    Bench("serve", "python bench/serve.py --json results/serve.json {mode}", writes=("serve",)),
    Bench("ota", "python bench/ota.py --tables-json results/ota.json {mode}", full="--repeats 5", writes=("ota",)),
    Bench("ota_stream_memory", "python bench/ota_stream_memory.py --json results/ota_stream_memory.json {mode}",
          writes=("ota_stream_memory",)),
    Bench("ota_goals", "python scripts/ota_goals.py --json results/ota_goals.json {mode}", quick="",
          writes=("ota_goals",)),
    Bench("stream", f"python bench/stream.py --cwru {CWRU} --work runs/bench/stream --alpha 0.01 "
                    "--json results/stream.json {mode}", full="--hours 1", writes=("stream",)),
    Bench("targets", "python scripts/target_table.py all {mode}", writes=("lowering", "lowering_evidence", "profiles")),
    Bench("benchmark_uq", f"python bench/uq_benchmark.py --cwru {CWRU} --text {TEXT} --out runs/bench/benchmark-uq "
                          "--no-progress --summary-json results/benchmark_uq.json {mode}", writes=("benchmark_uq",)),
    Bench("compress_frontier", f"python bench/compress_frontier.py --cwru {CWRU} --teachers mc_dropout hsa "
                               "--distill-teacher mc_dropout --prune-flops 0.5 0.25 --out runs/bench/compress_frontier "
                               "--tables-json results/compress_frontier.json {mode}", writes=("compress_frontier",)),
    Bench("compress_search", f"edgeuq search --board x86-host --teacher "
                             "runs/bench/compress_frontier/models/compress_frontier/mc_dropout/checkpoint "
                             f"--data {CWRU} --recipe cwru-mc-dropout --out runs/bench/search "
                             "--tables-json results/compress_search.json {mode}", full="--trials 24 --population 8",
          writes=("compress_search",), needs=("compress_frontier",)),
    Bench("compress_bytes", f"python bench/compress_frontier.py --cwru {CWRU} --teachers mc_dropout --losses kl+uq "
                            "--prune-flops --quantize-sensitivity fisher --quantize-target-ratio 6 "
                            "--size-reference shipped short-names --out runs/bench/compress_bytes "
                            "--bytes-json results/compress_bytes.json {mode}", writes=("compress_bytes",)),
    Bench("noise_share", "python bench/noise_share.py --recipes cwru-variational cwru-mc-dropout cwru-hsa cwru-laplace "
                         "cwru-ensemble cwru-student bearing-demo --json results/noise_share.json {mode}",
          writes=("noise_share",)),
    Bench("recipe_stochastic_tokens", f"python bench/recipe_stochastic_tokens.py --cwru {CWRU} --work runs/bench/recipe_st "
                                      "--recipes cwru-variational cwru-mc-dropout --tokens 8 4 --seeds 0 1 "
                                      "--json results/recipe_stochastic_tokens.json {mode}",
          writes=("recipe_stochastic_tokens",)),
    Bench("search_workers", "python bench/search_workers.py --seed 1 --json results/search_workers.json {mode}",
          quick="--trials 6 --pairs 1", full="", writes=("search_workers",)),
    Bench("tune_tracker_vs_host", "python bench/tune_tracker_vs_host.py --seed 0 "
                                  "--json results/tune_tracker_vs_host.json {mode}",
          quick="--repeats 60", full="", writes=("tune_tracker_vs_host",)),
    Bench("shifts", f"python bench/shifts.py --data {CWRU} --work runs/bench/shifts {{mode}}", writes=("shifts",)),
    Bench("order_front_end", f"python bench/order_front_end.py --cwru {CWRU} --work runs/bench/order_front_end "
                             "--json results/order_front_end.json {mode}", writes=("order_front_end",)),
    Bench("feature_students", f"python bench/feature_students.py --cwru {CWRU} --work runs/bench/feature_students "
                              "--feature-weights 0 0.3 1 --json results/feature_students.json {mode}",
          writes=("feature_students",)),
    Bench("quant_frontier", f"python bench/quant_frontier.py --data cwru --cwru {CWRU} --out runs/bench/quant_frontier "
                            "--tables-json results/quant_frontier.json {mode}", writes=("quant_frontier",)),
    Bench("text_teacher", "python bench/text_teacher.py --out runs/bench/text_teacher --student "
                          "--tables-json results/text_teacher.json {mode}",
          full="--train-layers 4 --epochs 2 --lr-encoder 8e-5 --student-phrases 60614 --student-epochs 4 "
               "--student-augment 1", writes=("text_teacher",)),
    Bench("text_ood", f"python bench/text_ood.py --data {TEXT} --out runs/bench/text_ood --json results/text_ood.json "
                      "{mode}", writes=("text_ood",)),
    Bench("text_teacher_full", f"python bench/text_teacher_full.py --data {TEXT} --out runs/bench/teacher-full "
                               "--json results/text_teacher_full.json {mode}", writes=("text_teacher_full",)),
    # the teacher's second epoch (its >= 90 % goal); the students below are cut from the one-epoch teacher above
    Bench("text_teacher_full_2ep", f"python bench/text_teacher_full.py --data {TEXT} --out runs/bench/teacher-full-2ep "
                                   "--json results/text_teacher_full_2ep.json {mode}",
          full="--epochs 2 --time-cap-min 62", writes=("text_teacher_full_2ep",)),
    # and one epoch at higher learning rates (picked by the phrases' validation accuracy, never by GLUE dev)
    Bench("text_teacher_full_lr1e4", f"python bench/text_teacher_full.py --data {TEXT} --out runs/bench/teacher-full-lr1e4 "
                                     "--json results/text_teacher_full_lr1e4.json {mode}",
          full="--epochs 1 --lr 1e-4 --time-cap-min 30", writes=("text_teacher_full_lr1e4",)),
    Bench("text_teacher_full_lr2e4", f"python bench/text_teacher_full.py --data {TEXT} --out runs/bench/teacher-full-lr2e4 "
                                     "--json results/text_teacher_full_lr2e4.json {mode}",
          full="--epochs 1 --lr 2e-4 --time-cap-min 30", writes=("text_teacher_full_lr2e4",)),
    # trained vs frozen embeddings, paired (the two arms side by side, one core each)
    Bench("text_teacher_embeddings", f"python bench/text_teacher_embeddings.py --data {TEXT} "
                                     "--json results/text_teacher_embeddings.json {mode}",
          writes=("text_teacher_embeddings",)),
    Bench("text_teacher_embeddings_seed1", f"python bench/text_teacher_embeddings.py --data {TEXT} --seed 1 "
                                           "--json results/text_teacher_embeddings_seed1.json {mode}",
          writes=("text_teacher_embeddings_seed1",)),
    Bench("text_student_cut", f"python bench/text_student_cut.py --data {TEXT} --teacher-dir "
                              "runs/bench/teacher-full --out runs/bench/text_student_cut "
                              "--json results/text_student_cut.json {mode}",
          quick="--transfer 2000 --epochs 1 --fit 500 --calib 300",
          # every SST-2 training phrase (60,614), two epochs; rank 112 keeps the larger vocabulary within 5M parameters
          full="--keep-layers 3 --target-flops 0.6 --rank 112 --transfer 0 --augment 0 --epochs 2 --val 500 "
               "--prune-rows 512 --posterior-rows 3000 --fit 2000 --calib 1000 --shift-rows 300",
          writes=("text_student_cut",), needs=("text_teacher_full",)),
    # the density-feature matching lever: the same student distilled without it (density_weight 0)
    Bench("text_student_cut_nodens", f"python bench/text_student_cut.py --data {TEXT} --teacher-dir "
                                     "runs/bench/teacher-full --out runs/bench/text_student_cut_nodens "
                                     "--json results/text_student_cut_nodens.json {mode}",
          quick="--transfer 2000 --epochs 1 --fit 500 --calib 300 --density-weight 0",
          full="--keep-layers 3 --target-flops 0.6 --rank 112 --transfer 0 --augment 0 --epochs 2 --val 500 "
               "--prune-rows 512 --posterior-rows 3000 --fit 2000 --calib 1000 --shift-rows 300 --density-weight 0",
          writes=("text_student_cut_nodens",), needs=("text_teacher_full",)),
    # the transfer-set lever: 40,000 phrases at rank 128
    Bench("text_student_cut_40k", f"python bench/text_student_cut.py --data {TEXT} --teacher-dir "
                                  "runs/bench/teacher-full --out runs/bench/text_student_cut_40k "
                                  "--json results/text_student_cut_40k.json {mode}",
          quick="--transfer 2000 --epochs 1 --fit 500 --calib 300",
          full="--keep-layers 3 --target-flops 0.6 --rank 128 --transfer 40000 --augment 0 --epochs 1 --val 500 "
               "--prune-rows 512 --posterior-rows 3000 --fit 2000 --calib 1000 --shift-rows 300 --density-weight 0",
          writes=("text_student_cut_40k",), needs=("text_teacher_full",)),
    # ablation: the same chain without its prune step (every teacher layer kept: what prune contributes)
    Bench("text_student_cut_top", f"python bench/text_student_cut.py --data {TEXT} --teacher-dir "
                                  "runs/bench/teacher-full --steps vocab,distill,posterior "
                                  "--out runs/bench/text_student_cut_noprune "
                                  "--json results/text_student_cut_top.json {mode}",
          quick="--transfer 2000 --epochs 1 --fit 500",
          full="--transfer 14000 --epochs 1 --posterior-rows 1500 --fit 2000",
          writes=("text_student_cut_top",), needs=("text_teacher_full",)),
    Bench("text_student_int8", "python bench/text_student_int8.py --data ../shared/data/text "
                               "--bundle runs/bench/text_student_cut/bundle "
                               "--rule-rows runs/bench/text_student_cut/device_rule_rows.json "
                               "--json results/text_student_int8.json", quick="",
          writes=("text_student_int8",), needs=("text_student_cut",)),
    # the student's density score against its fit (rows x ridge), picked on validation, TREC reported
    Bench("text_density_fit", "python bench/text_density_fit.py --data ../shared/data/text "
                              "--student runs/bench/text_student_cut --json results/text_density_fit.json {mode}",
          quick="--rows 500 1000 --ridges 1e-4 1e-2", writes=("text_density_fit",), needs=("text_student_cut",)),
    # the chain-built student compiled for the recipe's boards (head and weights chosen per board)
    Bench("text_student_boards", "python bench/text_student_boards.py --student runs/bench/text_student_cut "
                                 "--work runs/bench/text_student_boards --json results/text_student_boards.json "
                                 "{mode}", writes=("text_student_boards",), needs=("text_student_cut",)),
    Bench("demo", "edgeuq demo --out runs/demo --no-progress && python scripts/render_tables.py --update "
                  "demo=runs/demo/tables.json", quick="", writes=("demo",)),
    Bench("stream_student", "python bench/stream.py --bundle runs/demo/student/bundle --minutes 60 --deadlines-ms hop "
                            "1000 2000 --profile 2000 --work runs/bench/stream_student "
                            "--json results/stream_student.json {mode}", writes=("stream_student",), needs=("demo",)),
]


def command_for(b: Bench, mode: str) -> str:
    return b.command.format(mode=b.quick if mode == "quick" else b.full).strip()


def run(names: Sequence[str], mode: str, env: Optional[Dict[str, str]] = None) -> int:
    logs = ROOT / "runs" / "bench" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    status: Dict[str, str] = {}
    for b in [b for b in BENCHES if b.name in names]:
        missing = [n for n in b.needs if status.get(n, "ok") != "ok"]
        if missing:
            status[b.name] = f"skipped: needs {', '.join(missing)}, which failed"
            print(f"[bench] {b.name}: {status[b.name]}", flush=True)
            continue
        cmd = command_for(b, mode)
        log = logs / f"{b.name}.log"
        print(f"[bench] {time.strftime('%H:%M:%S')} {b.name}: {cmd}  (log {log.relative_to(ROOT)})", flush=True)
        t0 = time.perf_counter()
        with open(log, "w") as f:
            rc = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                                env=env).returncode
        took = time.perf_counter() - t0
        status[b.name] = "ok" if rc == 0 else f"FAILED (exit {rc}; see {log.relative_to(ROOT)})"
        print(f"[bench] {b.name}: {status[b.name]} in {took:.0f} s", flush=True)
    rc = subprocess.run([sys.executable, str(ROOT / "scripts" / "render_tables.py")], cwd=ROOT).returncode
    print("\n[bench] summary:")
    for name, st in status.items():
        print(f"  {name:22s} {st}")
    failed = [n for n, st in status.items() if st != "ok"]
    return 1 if failed or rc != 0 else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=("quick", "full"), required=True)
    ap.add_argument("--only", nargs="+", choices=[b.name for b in BENCHES], help="only these benchmarks")
    ap.add_argument("--list", action="store_true", help="print the commands and exit")
    a = ap.parse_args(argv)
    names = a.only or [b.name for b in BENCHES]
    if a.list:
        for b in BENCHES:
            if b.name in names:
                print(f"{b.name:22s} {command_for(b, a.mode)}")
        return 0
    env = dict(os.environ)
    venv_bin = Path(sys.executable).parent
    env["PATH"] = f"{venv_bin}{os.pathsep}{env.get('PATH', '')}"   # `python` / `edgeuq` = this interpreter's
    return run(names, a.mode, env)


if __name__ == "__main__":
    sys.exit(main())
