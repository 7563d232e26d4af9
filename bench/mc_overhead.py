"""MC-sampling overhead, one effect per ratio, all paired in one run (one window, one thread).

For each S, every callable below is timed once per round, in a seeded random order per round
(``edgeuq.profile.measure_stages``); each ratio is computed per round and reported as the
median with a 95 % bootstrap interval (``edgeuq.profile.paired_ratio``):

  (i)   S samples / deterministic      runtime S-sample call / runtime deterministic call,
                                       same bundle (the teacher's; the student's too)
  (ii)  trunk once + batching          PyTorch naive MC loop (S full forwards) / PyTorch strong
                                       baseline (trunk once, S copies of the features through the
                                       head in one batched call), same model, same engine
  (iii) engine                         PyTorch strong baseline / runtime S-sample call: the same
                                       algorithm (trunk once, head on S rows), PyTorch vs
                                       edgeuq_runtime on ONNX Runtime
  (iv)  distillation                   teacher / student, both runtime S-sample calls at the same S

No ratio mixes two of these effects; a speed-up against the naive loop through the runtime is
the product (ii) x (iii), and with a student (ii) x (iii) x (iv), and is not published as one
number. Models: the ``--recipe`` (teacher) and ``--student-recipe`` architectures with
untrained weights (latency does not depend on weight values). ``--json`` writes the tables
and the run's provenance (command, commit, CPU and ISA flags, threads, load, date, quick/full)
for ``scripts/render_tables.py``.

    python bench/mc_overhead.py [--quick] [--samples 1 8 32] [--repeats 100] [--json results/mc_overhead.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

from edgeuq.bundle import build_bundle
from edgeuq.catalog import get_recipe
from edgeuq.export import export_onnx
from edgeuq.models import ModelConfig, SignalTransformer
from edgeuq.profile import measure_stages, paired_ratio
from edgeuq.provenance import command_line, describe, finish, start
from edgeuq.report import format_table, results_table
from edgeuq.training import save_checkpoint
from edgeuq_runtime import UncertaintyRuntime

QUICK = {"samples": [8, 32], "repeats": 30, "warmup": 3}
FULL = {"samples": [1, 8, 32], "repeats": 100, "warmup": 5}

#: (key, label, effect isolated, numerator stage, denominator stage); stage names per S below
RATIOS = (
    ("teacher_s_over_det", "teacher: runtime S-sample / runtime deterministic (same bundle)",
     "cost of S samples", "teacher rt S", "teacher rt det"),
    ("student_s_over_det", "student: runtime S-sample / runtime deterministic (same bundle)",
     "cost of S samples", "student rt S", "student rt det"),
    ("naive_over_strong", "teacher: PyTorch naive loop (S forwards) / PyTorch trunk once + S head rows batched",
     "trunk once + batching (same engine)", "teacher torch naive S", "teacher torch strong S"),
    ("strong_over_runtime", "teacher: PyTorch trunk once + S head rows batched / runtime S-sample",
     "engine: PyTorch vs runtime (same algorithm)", "teacher torch strong S", "teacher rt S"),
    ("teacher_over_student", "runtime S-sample: teacher / student (same runtime, same S)",
     "distillation (model size)", "teacher rt S", "student rt S"),
)


def _model(recipe: str, seed: int):
    rec = get_recipe(recipe)
    cfg = ModelConfig.from_dict(rec.model, input_length=int(rec.data["window"]), num_classes=len(rec.data["classes"]))
    torch.manual_seed(seed)
    return rec, cfg, SignalTransformer(cfg).eval()


def _runtime(rec, model, tmp: Path, name: str, samples: int) -> UncertaintyRuntime:
    ck = save_checkpoint(model, tmp / f"{name}-ck", tuple(rec.data["classes"]), float(rec.data["fs_hz"]))
    art = export_onnx(ck, tmp / f"{name}-onnx", model=model)
    bundle = build_bundle(art, tmp / f"{name}-bundle", f"bench-{name}", "0", default_samples=samples)
    return UncertaintyRuntime(bundle.root, threads=1, seed=0)


def _torch_callables(model, x: torch.Tensor, s: int) -> Dict[str, object]:
    @torch.no_grad()
    def naive():
        model.set_sampling(True)
        return torch.stack([torch.softmax(model(x), -1) for _ in range(s)])

    @torch.no_grad()
    def strong():
        model.set_sampling(True)
        f = model.trunk(x)
        return torch.softmax(model.head_forward(f.expand(s, *f.shape[1:]).contiguous()), -1)

    return {"naive": naive, "strong": strong}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help=f"few rounds, small S set: {QUICK} (about a minute)")
    ap.add_argument("--samples", type=int, nargs="+", help=f"S values (default {FULL['samples']})")
    ap.add_argument("--repeats", type=int, help=f"timed rounds per S (default {FULL['repeats']})")
    ap.add_argument("--warmup", type=int, help=f"untimed rounds per S (default {FULL['warmup']})")
    ap.add_argument("--recipe", default="cwru-mc-dropout", help="the teacher's architecture")
    ap.add_argument("--student-recipe", default="cwru-student", help="the student's architecture")
    ap.add_argument("--seed", type=int, default=0, help="round order, bootstrap, weights, input")
    ap.add_argument("--json", help="write the tables + provenance (e.g. results/mc_overhead.json)")
    a = ap.parse_args(argv)
    mode = QUICK if a.quick else FULL
    samples = a.samples or mode["samples"]
    repeats = a.repeats or mode["repeats"]
    warmup = mode["warmup"] if a.warmup is None else a.warmup
    if any(s < 1 for s in samples):
        ap.error(f"--samples must be >= 1, got {samples}")
    command = command_line("bench/mc_overhead.py", argv)
    prov = start("quick" if a.quick else "full", 1, repeats=repeats, warmup=warmup, samples=list(samples),
                 bootstrap="2000 resamples, 95 % percentile interval, seeded")

    torch.set_num_threads(1)
    t_rec, t_cfg, teacher = _model(a.recipe, a.seed)
    s_rec, s_cfg, student = _model(a.student_recipe, a.seed)
    if t_cfg.input_length != s_cfg.input_length:
        ap.error(f"teacher window {t_cfg.input_length} != student window {s_cfg.input_length}")
    x_np = np.random.default_rng(a.seed).standard_normal((1, t_cfg.input_length)).astype(np.float32)
    x = torch.from_numpy(x_np)

    ratios: Dict[str, Dict[str, dict]] = {k: {} for k, *_ in RATIOS}
    ms: Dict[str, Dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        t_rt = _runtime(t_rec, teacher, Path(tmp), "teacher", max(samples))
        s_rt = _runtime(s_rec, student, Path(tmp), "student", max(samples))
        for s in samples:
            tc = _torch_callables(teacher, x, s)
            stages = {
                "teacher rt det": lambda: t_rt.deterministic(x_np),
                "teacher rt S": lambda s=s: t_rt.predict(x_np, samples=s, seed=0),
                "student rt det": lambda: s_rt.deterministic(x_np),
                "student rt S": lambda s=s: s_rt.predict(x_np, samples=s, seed=0),
                "teacher torch naive S": tc["naive"],
                "teacher torch strong S": tc["strong"],
            }
            stats = measure_stages(stages, warmup=warmup, repeats=repeats, seed=a.seed + s)
            ms[str(s)] = {k: stats[k].median_ms for k in stages}
            for key, _, _, num, den in RATIOS:
                ratios[key][str(s)] = paired_ratio(stats[num], stats[den], seed=a.seed, names=(num, den)).to_dict()
        teacher.set_sampling(False)

    headers = ["ratio (paired per round; median [95 % CI])", "effect isolated"] + [f"S={s}" for s in samples]
    rows: List[list] = []
    for key, label, effect, _, _ in RATIOS:
        rows.append([label, effect] + [f"{r['median']:.2f}x [{r['ci_low']:.2f}, {r['ci_high']:.2f}]"
                                       for r in (ratios[key][str(s)] for s in samples)])
    stage_names = list(next(iter(ms.values())))
    ms_headers = ["callable (median ms, same rounds)"] + [f"S={s}" for s in samples]
    ms_rows = [[k] + [f"{ms[str(s)][k]:.3f}" for s in samples] for k in stage_names]

    prov = finish(prov)
    line = describe(prov)
    print(f"MC overhead, 1 window of {t_cfg.input_length} samples, 1 thread; teacher {a.recipe} "
          f"(d={t_cfg.d_model}, depth {t_cfg.depth}, stochastic blocks {list(t_cfg.stochastic_blocks)} + head), "
          f"student {a.student_recipe} (d={s_cfg.d_model}, depth {s_cfg.depth}, stochastic blocks "
          f"{list(s_cfg.stochastic_blocks)} + head); untrained weights; {repeats} rounds per S, random order per round")
    print(line + "\n")
    print(format_table(headers, rows))
    print()
    print(format_table(ms_headers, ms_rows))
    if a.json:
        doc = {"command": command, "provenance": prov,
               **results_table(headers, rows, note=(
                   "Each ratio isolates one effect; the speed-up of the runtime over the naive PyTorch loop is "
                   "the product of the trunk-once/batching and engine rows (times the distillation row for a "
                   "student) and is deliberately not published as one number.")),
               "tables": {"ratios": results_table(headers, rows), "ms": results_table(ms_headers, ms_rows)},
               "ratios": ratios, "median_ms": ms,
               "models": {"teacher": {"recipe": a.recipe, "config": t_cfg.to_dict()},
                          "student": {"recipe": a.student_recipe, "config": s_cfg.to_dict()},
                          "weights": "untrained (latency does not depend on weight values)"}}
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"\njson: {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
