"""A catalog recipe with and without ``ModelConfig.stochastic_tokens``: accuracy, ECE and OOD AUROC.

``stochastic_tokens`` is a model change (the trunk average-pools its tokens before the first
stochastic block, so the part that runs S times, and the noise it draws, shrink with the tokens).
This bench trains each recipe twice with the recipe's own ``[model]``, ``[train]`` and ``[uq]``
settings (same seed), once with the recipe's ``stochastic_tokens`` forced to 0 (all tokens) and once
per value given with ``--tokens``, on real CWRU 12 kHz drive-end data split as the benchmark's
``cwru_unseen_fault`` task (records of fault size 0.021 in held out as the OOD set; the rest
time-disjoint 70/15/15), and scores both through the device runtime at the recipe's S: test
accuracy, ECE, NLL, and the OOD AUROC of mutual information and total entropy (unseen fault size
positive), plus the accuracy on the unseen size's fault type. One seed: a difference of a point or
two is within seed-to-seed spread (not measured here).

    python bench/recipe_stochastic_tokens.py --cwru ../shared/data/cwru --work runs/bench/recipe_st \\
        --recipes cwru-variational cwru-mc-dropout --tokens 8 4 [--seeds 0 1] [--quick] [--json results/recipe_stochastic_tokens.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, List


def _task(cwru: Path, settings):
    from edgeuq.benchmark.tasks import Task
    from edgeuq.data import BEARING_CLASSES, load_cwru, split_in_domain, window_records

    records = load_cwru(cwru)
    size = settings.unseen_fault_size
    held = [r for r in records if abs(float(r.meta["severity"]) - size) < 1e-6]
    kept = [r for r in records if abs(float(r.meta["severity"]) - size) >= 1e-6]
    sp = split_in_domain(kept, settings.window, settings.train_hop, class_names=BEARING_CLASSES)
    ood = window_records(held, settings.window, settings.eval_hop, class_names=BEARING_CLASSES, allow_unknown=True)
    name = f"fault size {size:g} in"
    task = Task("cwru_unseen_fault", sp.class_names, (sp.train.x, sp.train.y), (sp.val.x, sp.val.y),
                (sp.test.x, sp.test.y), sp.fs, "zscore",
                f"CWRU without fault size {size:g} in ({len(kept)} records), time-disjoint 70/15/15; "
                f"OOD: {len(held)} records of that size", ood={name: ood.x}, ood_labels={name: ood.y})
    return sp, task


def cache_key(cfg, tcfg, uq, task) -> str:
    """What a cached checkpoint must have been trained with to be reused: configs, [uq], data."""
    return json.dumps({"model": cfg.to_dict(), "train": tcfg.to_dict(), "uq": dict(uq),
                       "data": task.description, "sizes": task.sizes()}, sort_keys=True, default=str)


def run_one(recipe: str, tokens: int, sp, task, work: Path, epochs, samples, seed=None) -> Dict:
    from edgeuq.benchmark.runner import evaluate_variant
    from edgeuq.benchmark.settings import BenchmarkSettings
    from edgeuq.catalog import get_recipe
    from edgeuq.models import ModelConfig
    from edgeuq.pipeline import train_stage
    from edgeuq.training import TrainConfig, load_checkpoint

    rec = get_recipe(recipe)
    cfg = ModelConfig.from_dict({**rec.model, "stochastic_tokens": tokens}, input_length=sp.train.window,
                                num_classes=len(sp.class_names))
    s = samples or int(rec.uq.get("samples", 32))
    train = dict(rec.train) if seed is None else {**rec.train, "seed": seed}
    default_seed = int(rec.train.get("seed", 0))
    out = work / (f"{recipe}-st{tokens}" if seed in (None, default_seed) else f"{recipe}-st{tokens}-seed{seed}")
    ck_dir = out / "checkpoint"
    t0 = time.perf_counter()
    tcfg = TrainConfig.from_dict(train, epochs=epochs)
    key = cache_key(cfg, tcfg, rec.uq, task)
    timing, key_file = out / "train_s.txt", out / "key.json"
    if (ck_dir / "checkpoint.json").exists() and timing.exists() and key_file.exists() \
            and key_file.read_text() == key:  # trained by an earlier run of this bench, same settings and data
        ck = load_checkpoint(ck_dir)
        train_s = float(timing.read_text())
    else:
        ck = train_stage(sp, cfg, tcfg, ck_dir, uq=rec.uq, progress=False)
        train_s = time.perf_counter() - t0
        timing.write_text(f"{train_s:.3f}")
        key_file.write_text(key)
    settings = BenchmarkSettings(samples=s)
    r = evaluate_variant(task, f"{recipe}-st{tokens}", ck, out / "eval", settings, False, False)
    ood = next(iter(r.ood.values()))
    return {"recipe": recipe, "stochastic_tokens": tokens, "seed": tcfg.seed, "samples": s, "train_s": train_s,
            "noise_elements_per_row": sum(int(__import__("math").prod(n.shape)) for n in _noise(out / "eval")),
            "test": dict(r.test), "ood": dict(ood)}


def _noise(folder: Path):
    from edgeuq_runtime import UncertaintyRuntime

    return UncertaintyRuntime(folder / "bundle", threads=1, seed=0).manifest.noise


def write_table(path: str, description: str, results: List[Dict], command: str, prov: Dict) -> None:
    """The results JSON (table + raw results + provenance) that scripts/render_tables.py renders."""
    from edgeuq.provenance import write_results
    from edgeuq.report import results_table

    headers = ["recipe", "stochastic_tokens", "seed", "noise elements / row", "test accuracy", "ECE", "NLL",
               "OOD AUROC, MI", "OOD AUROC, total entropy", "unseen-size accuracy"]
    rows = [[r["recipe"], str(r["stochastic_tokens"] or "0 (all tokens)"), str(r["seed"]), str(r["noise_elements_per_row"]),
             f"{r['test']['accuracy']:.4f}", f"{r['test']['ece']:.4f}", f"{r['test']['nll']:.4f}",
             f"{r['ood']['auroc_mi']:.3f}", f"{r['ood']['auroc_total']:.3f}",
             f"{r['ood']['accuracy']:.4f}" if "accuracy" in r["ood"] else "n/a"] for r in results]
    seeds = sorted({r["seed"] for r in results})
    note = (f"{description}; each recipe trained with its own [model]/[train]/[uq] settings, stochastic_tokens "
            "(and the training seed where --seeds is given) the only difference; scored through the device "
            f"runtime at the recipe's S; seeds {seeds}"
            + (" (one seed: seed-to-seed spread not measured)" if len(seeds) == 1 else ""))
    write_results(path, results_table(headers, rows, note=note, results=results), command, prov)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cwru", required=True, help="CWRU folder (MANIFEST.csv + 12k_DE/)")
    ap.add_argument("--work", default="runs/bench/recipe_st")
    ap.add_argument("--recipes", nargs="+", default=["cwru-variational", "cwru-mc-dropout"])
    ap.add_argument("--tokens", type=int, nargs="+", default=[8], help="stochastic_tokens of the 'with' models")
    ap.add_argument("--seeds", type=int, nargs="+", default=None,
                    help="training seeds (default: the recipe's); every model is trained once per seed")
    ap.add_argument("--quick", action="store_true", help="2 epochs, S = 8 (a smoke run)")
    ap.add_argument("--json")
    a = ap.parse_args()
    cwru = Path(a.cwru)
    if not (cwru / "MANIFEST.csv").exists():
        print(f"CWRU data not found at {cwru}: not measured", file=sys.stderr)
        raise SystemExit(0 if os.environ.get("CI") != "true" else 1)
    import torch

    from edgeuq.benchmark.settings import BenchmarkSettings
    from edgeuq.provenance import command_line, start

    torch.set_num_threads(1)
    prov = start("quick" if a.quick else "full", 1)
    command = command_line("bench/recipe_stochastic_tokens.py")
    work = Path(a.work) / ("quick" if a.quick else "full")
    sp, task = _task(cwru, BenchmarkSettings())
    print(f"{task.description}: {task.sizes()}")
    results: List[Dict] = []
    for recipe in a.recipes:
        for seed, tokens in ((sd, t) for sd in (a.seeds or [None]) for t in (0, *a.tokens)):
            r = run_one(recipe, tokens, sp, task, work, 2 if a.quick else None, 8 if a.quick else None, seed)
            results.append(r)
            print(f"{recipe} stochastic_tokens={tokens} seed {r['seed']}: acc {r['test']['accuracy']:.4f} ece {r['test']['ece']:.4f} "
                  f"nll {r['test']['nll']:.4f}; OOD AUROC MI {r['ood']['auroc_mi']:.3f} total "
                  f"{r['ood']['auroc_total']:.3f}; noise elements/row {r['noise_elements_per_row']}; "
                  f"trained in {r['train_s']:.0f} s", flush=True)
    print(f"load average {os.getloadavg()}")
    if a.json:
        write_table(a.json, task.description, results, command, prov)
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
