"""Compression frontier: teachers vs distilled / pruned students, all through the device runtime.

One run, one thread, same data for every model:

  data     CWRU 12 kHz drive end (``--cwru PATH``) or the synthetic bearing generator (default).
           OOD = every record of the largest fault size (an unseen fault severity); the rest:
           loads 0-2 hp split time-disjoint 70/15/15 (train / val / in-domain test), the highest
           load's records = cross-load test (same classes, unseen operating condition).
  teachers ``--teachers`` variants of the UQ benchmark (default mc_dropout and hsa), trained
           (or loaded from ``OUT/models`` when the cache key matches) by its own trainer.
  students distilled from ``--distill-teacher`` into the ``--student-recipe`` architecture
           (head-only MC dropout) with each loss of ``--losses`` (``ce`` = labels only, the
           baseline trained identically); ``pruned``: Kwon et al. pruning of the ``--prune-teacher``
           at ``--prune-flops`` of its block MACs (retraining-free), and the same followed by a
           short distillation from the unpruned model.

Every model is exported, bundled and run by ``edgeuq_runtime.UncertaintyRuntime(threads=1)``:
accuracy and ECE (in-domain test), cross-load accuracy, OOD AUROC of mutual information
(and of total entropy), Spearman correlation of MI with the distillation teacher's MI,
S-sample latency of one window and its ratio to one deterministic pass of the same bundle,
the distillation teacher's S-sample call over this model's (same runtime, same S), both ratios
paired per round with 95 % bootstrap intervals (every call timed in the same rounds, random order
per round), the teacher's naive PyTorch MC loop (S full forwards; milliseconds only -- a ratio of it
to a student would mix distillation, trunk-once and engine effects), and the ONNX bytes and their
ratio to the fp32 teacher. Writes ``OUT/compress_frontier.json`` and prints a
markdown table; ``--tables-json results/compress_frontier.json`` also writes the table for
``scripts/render_tables.py`` (docs/compress.md), and ``--from-json OUT/compress_frontier.json``
re-renders an earlier run's table without running anything.

    python bench/compress_frontier.py [--cwru ../shared/data/cwru] [--out bench_out/compress]
                                      [--tables-json results/compress_frontier.json]
    python bench/compress_frontier.py --from-json OUT/compress_frontier.json \\
        --tables-json results/compress_frontier.json   (its own command and provenance)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from edgeuq.benchmark.schemes import trained_checkpoint
from edgeuq.benchmark.settings import BenchmarkSettings
from edgeuq.benchmark.tasks import Task
from edgeuq.bundle import build_bundle
from edgeuq.catalog import get_recipe
from edgeuq.compress.data import compress_data
from edgeuq.compress.distill import DistillConfig
from edgeuq.compress.prune import PruneConfig, prune, save_prune_plan
from edgeuq.compress.stages import distill_stage, label_transfer, load_teacher
from edgeuq.compress.transfer import TransferConfig
from edgeuq.evaluate import run_runtime
from edgeuq.export import export_onnx
from edgeuq.models import ModelConfig
from edgeuq.profile import measure_stages, paired_ratio
from edgeuq.report import format_table
from edgeuq.training import save_checkpoint
from edgeuq.uq import auroc, expected_calibration_error
from edgeuq_runtime import UncertaintyRuntime
from edgeuq_runtime.atomic import atomic_write


def _records(cwru: Path | None, duration: float):
    if cwru is not None:
        from edgeuq.data import load_cwru

        return load_cwru(cwru), f"CWRU 12k drive end ({cwru})"
    from edgeuq.data import SyntheticBearingConfig, synthetic_records

    cfg = SyntheticBearingConfig(fs=12000.0, duration_s=duration)
    return synthetic_records(cfg), f"synthetic bearing generator ({duration:g} s per record)"


def make_data(records, window: int, hop: int):
    d = compress_data(records, window, hop)
    return d.splits, d.cross_load, d.ood, d.description


def _graph_bytes(root: Path) -> int:
    return int(sum(p.stat().st_size for p in Path(root).rglob("*.onnx")))


def evaluate(name, ck, out: Path, splits, cross, ood, samples, repeats, teacher_mi=None, bundle_root=None):
    """Metrics of one model through the device runtime (its fp32 bundle, or ``bundle_root``)."""
    if bundle_root is None:
        art = export_onnx(ck, out / "onnx")
        bundle_root = build_bundle(art, out / "bundle", name.replace(" ", "-"), "0", default_samples=samples,
                                   overwrite=True).root
    rt = UncertaintyRuntime(bundle_root, threads=1, seed=0)
    res = {s: run_runtime(rt, d.x, samples, seed=0) for s, d in (("test", splits.test), ("cross", cross), ("ood", ood))}
    row = {
        "name": name, "checkpoint": str(ck.directory), "bundle": str(bundle_root), "config": ck.config.to_dict(),
        "accuracy": float(np.mean(res["test"].prediction == splits.test.y)),
        "ece": float(expected_calibration_error(res["test"].probs, splits.test.y)),
        "cross_load_accuracy": float(np.mean(res["cross"].prediction == cross.y)),
        "ood_auroc_mi": float(auroc(res["test"].epistemic, res["ood"].epistemic)),
        "ood_auroc_total": float(auroc(res["test"].total, res["ood"].total)),
        "mean_mi_test": float(res["test"].epistemic.mean()), "mean_mi_ood": float(res["ood"].epistemic.mean()),
        "bytes": _graph_bytes(bundle_root),
    }
    mi = np.concatenate([res[k].epistemic for k in ("test", "cross", "ood")])
    if teacher_mi is not None:
        from scipy.stats import spearmanr

        row["mi_spearman_vs_teacher"] = float(spearmanr(mi, teacher_mi).statistic)
    RUNTIMES[name] = rt
    return row, mi


#: name -> the runtime of each evaluated bundle; timed together at the end (interleaved).
RUNTIMES: dict = {}


def time_all(rows, x1: np.ndarray, samples: int, repeats: int, naive: dict, reference: str = "") -> None:
    """Every bundle's deterministic pass and S-sample call, and each teacher's naive PyTorch
    loop, timed round by round (one call of each per round, in a seeded random order per round),
    so that neither the load of a shared machine nor the position in a round favours one of them.
    Per row: medians, ``mc_over_det`` = the paired median of per-round S-sample / deterministic
    ratios (same bundle) with its 95 % bootstrap interval, and -- when ``reference`` names a row --
    ``reference_over_mc`` = that row's S-sample call / this row's (same runtime, same S: the
    effect of distillation / pruning alone), paired likewise."""
    stages = {}
    for r in rows:
        rt = RUNTIMES[r["name"]]
        stages[r["name"] + " | det"] = (lambda rt=rt: rt.deterministic(x1))
        stages[r["name"] + " | mc"] = (lambda rt=rt: rt.predict(x1, samples=samples))
    stages.update({f"naive {k}": fn for k, fn in naive.items()})
    stats = measure_stages(stages, warmup=5, repeats=repeats)
    ref = stats.get(reference + " | mc") if reference else None
    for r in rows:
        det, mc = stats[r["name"] + " | det"], stats[r["name"] + " | mc"]
        pr = paired_ratio(mc, det)
        r.update(det_ms=det.median_ms, mc_ms=mc.median_ms, mc_over_det=pr.median,
                 mc_over_det_ci=[pr.ci_low, pr.ci_high], det_p90_ms=det.p90_ms, mc_p90_ms=mc.p90_ms)
        if ref is not None:
            rr = paired_ratio(ref, mc)
            r.update(reference_over_mc=rr.median, reference_over_mc_ci=[rr.ci_low, rr.ci_high])
    for k in naive:
        naive[k] = stats[f"naive {k}"].median_ms


def quantized_bundle(ck, calib: np.ndarray, out: Path, fraction: float, samples: int) -> Path:
    """The exact knapsack of edgeuq.quantize (range sensitivity) under ``fraction`` of the fp32 bytes."""
    from edgeuq.quantize import Budget, build_quantized, plan_for, prepare_model, sensitivity_for

    prep = prepare_model(ck, calib, out / "work", progress=False, samples=samples)
    costs = prep.costs
    smallest = costs.fixed_bytes + sum(min(costs.bytes[lay.name][p] for p in lay.options) for lay in prep.layers)
    budget = max(fraction * costs.total_bytes({}), smallest)  # a too-small fraction -> the smallest plan
    plan = plan_for(prep, sensitivity_for("range", prep), Budget("bytes", budget), "range")
    return build_quantized(prep, plan, out / "bundle", name="student-quantized", samples=samples).bundle.root


def naive_mc_loop(ck, x1: np.ndarray, samples: int):
    """The textbook MC loop in PyTorch: S full forwards with the stochastic layers sampling."""
    model = ck.load_model()
    model.set_sampling(True)
    x = torch.from_numpy(x1)

    @torch.no_grad()
    def run():
        return [torch.softmax(model(x), -1) for _ in range(samples)]

    return run


def _paired(row: dict, key: str) -> str:
    """``1.23x [1.10, 1.31]`` for a paired ratio; older runs without an interval: ``1.23x (unpaired)``;
    absent: ``-``."""
    if key not in row:
        return "-"
    ci = row.get(key + "_ci")
    return f"{row[key]:.2f}x [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f"{row[key]:.2f}x (unpaired)"


def retained_auroc(row: dict, teacher_row: dict) -> dict:
    """Student AUROC / teacher AUROC per should-flag shift and score (this bench has one shift, the
    unseen-fault OOD set; 1.0 = the teacher's separation kept)."""
    return {f"ood ({score})": float(row[f"ood_auroc_{key}"] / teacher_row[f"ood_auroc_{key}"])
            for score, key in (("MI", "mi"), ("H", "total"))}


def _retained_cell(r: dict) -> str:
    ret = r.get("retained_auroc")  # absent in runs before it was recorded
    return f"{ret['ood (MI)']:.3f} / {ret['ood (H)']:.3f}" if ret else "-"


def frontier_table(summary: dict):
    """(headers, rows) of the frontier table from a run's ``compress_frontier.json`` (what the run prints)."""
    rows = summary["rows"]
    distill_teacher = summary.get("distill_teacher") or next(
        (r["distill_teacher"] for r in rows if r.get("distill_teacher")), None)  # older runs: only on student rows
    if distill_teacher is None:
        raise ValueError("compress_frontier.json names no distillation teacher (no 'distill_teacher')")
    samples = summary["samples"]
    headers = ["model", "acc", "ECE", "cross-load acc", "OOD AUROC (MI)", "OOD AUROC (H)",
               "retained AUROC (MI / H)", "MI ρ vs teacher", f"S={samples} ms", "det ms", "S/det [95 % CI]",
               f"{distill_teacher} S / S [95 % CI]", "bytes", "teacher/bytes"]
    table = [[r["name"], f"{r['accuracy']:.4f}", f"{r['ece']:.4f}", f"{r['cross_load_accuracy']:.4f}",
              f"{r['ood_auroc_mi']:.3f}", f"{r['ood_auroc_total']:.3f}", _retained_cell(r),
              f"{r['mi_spearman_vs_teacher']:.3f}" if "mi_spearman_vs_teacher" in r else "-",
              f"{r['mc_ms']:.3f}", f"{r['det_ms']:.3f}", _paired(r, "mc_over_det"), _paired(r, "reference_over_mc"),
              f"{r['bytes']:,}", f"{r['bytes_ratio']:.1f}x"] for r in rows]
    return headers, table


def write_tables_json(summary: dict, path: Path) -> Path:
    """The frontier table in scripts/render_tables.py's format (``results/compress_frontier.json``),
    with the command and provenance the run recorded."""
    from edgeuq.provenance import write_results

    if "command" not in summary or "provenance" not in summary:
        raise SystemExit("the run JSON has no command/provenance record (written by an older version): rerun")
    headers, rows = frontier_table(summary)
    write_results(path, {"headers": headers, "rows": rows}, summary["command"], summary["provenance"])
    print(f"tables: {path}")
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cwru", type=Path, help="CWRU folder (MANIFEST.csv + 12k_DE/); synthetic data without it")
    ap.add_argument("--out", type=Path, default=Path("bench_out/compress_frontier"))
    ap.add_argument("--teachers", nargs="+", default=["mc_dropout", "hsa"])
    ap.add_argument("--distill-teacher", default="mc_dropout")
    ap.add_argument("--prune-teacher", default="mc_dropout")
    ap.add_argument("--student-recipe", default="cwru-student")
    ap.add_argument("--losses", nargs="+", default=["ce", "kl", "kl+uq"])
    ap.add_argument("--prune-flops", type=float, nargs="*", default=[0.5, 0.25])
    ap.add_argument("--quantize-loss", default="kl+uq", help="the student that is also quantized")
    ap.add_argument("--quantize-fractions", type=float, nargs="*", default=[0.3],
                    help="bytes budgets (fraction of the fp32 graphs) for the exact knapsack")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--distill-epochs", type=int, default=15)
    ap.add_argument("--uq-weight", type=float, default=DistillConfig().uq_weight,
                    help="weight of the MI / expected-entropy matching term of the kl+uq loss")
    ap.add_argument("--teacher-samples", type=int, default=32)
    ap.add_argument("--feature-weight", type=float, default=0.0,
                    help="feature distillation weight of the students (0: output losses only)")
    ap.add_argument("--synthetic-duration", type=float, default=10.0)
    ap.add_argument("--quick", action="store_true", help="tiny budgets (smoke run, numbers not meaningful)")
    ap.add_argument("--tables-json", help="also write the table for scripts/render_tables.py "
                                          "(e.g. results/compress_frontier.json)")
    ap.add_argument("--from-json", type=Path, metavar="RUN_JSON",
                    help="run nothing: print (and with --tables-json write) the table of an earlier run's "
                         "compress_frontier.json")
    a = ap.parse_args(argv)
    if a.from_json is not None:
        return _from_json(a)
    from edgeuq.provenance import command_line, finish, start

    prov = start("quick" if a.quick else "full", 1)
    command = command_line("bench/compress_frontier.py", argv)

    torch.set_num_threads(1)
    t_start = time.perf_counter()
    s = BenchmarkSettings()
    if a.quick:
        s = replace(s, bearing_train={**s.bearing_train, "epochs": 1}, variants={
            k: v for k, v in s.variants.items()})
        a.distill_epochs, a.repeats, a.teacher_samples = 1, 5, 8
    records, source = _records(a.cwru, 2.0 if a.quick else a.synthetic_duration)
    splits, cross, ood, desc = make_data(records, s.window, s.train_hop)
    print(f"data: {source}; {desc}")
    print(f"windows: train {len(splits.train)}, val {len(splits.val)}, test {len(splits.test)}, "
          f"cross-load {len(cross)}, OOD {len(ood)}")
    task = Task("compress_frontier", splits.class_names, (splits.train.x, splits.train.y),
                (splits.val.x, splits.val.y), (splits.test.x, splits.test.y), splits.fs, "zscore",
                f"{source}; {desc}")
    out = a.out
    teachers = {v: trained_checkpoint(v, task, s, out / "models", log=print) for v in a.teachers}

    rows, naive = [], {}
    x1 = splits.test.x[:1]
    teacher_mi = None
    for v, ck in teachers.items():
        row, mi = evaluate(f"teacher {v}", ck, out / "eval" / v, splits, cross, ood, a.samples, a.repeats)
        naive[v] = naive_mc_loop(ck, x1, a.samples)
        if v == a.distill_teacher:
            teacher_mi = mi
        rows.append(row)
        print(f"evaluated {row['name']}")

    # ---- distilled students
    rec = get_recipe(a.student_recipe)
    student_cfg = ModelConfig.from_dict(rec.model, input_length=splits.window, num_classes=len(splits.class_names))
    teacher = load_teacher(teachers[a.distill_teacher].directory)
    tcfg = TransferConfig(copies=1, teacher_samples=a.teacher_samples, seed=0)
    t0 = time.perf_counter()
    labelled = label_transfer(teacher, splits, tcfg)
    label_s = time.perf_counter() - t0
    print(f"transfer set labelled by {teacher.source}: {len(labelled[0])} + {len(labelled[1])} windows, "
          f"S={tcfg.teacher_samples}, {label_s:.0f} s")
    for loss in a.losses:
        t0 = time.perf_counter()
        ck = distill_stage(teacher, student_cfg, splits, out / "students" / loss.replace("+", "_"), tcfg,
                           DistillConfig(loss=loss, epochs=a.distill_epochs, uq_weight=a.uq_weight,
                                         feature_weight=a.feature_weight), progress=False,
                           log=print,
                           labelled=labelled)
        row, _ = evaluate(f"student {loss} <- {a.distill_teacher}", ck, out / "eval" / f"student_{loss}", splits,
                          cross, ood, a.samples, a.repeats, teacher_mi)
        row["train_s"] = time.perf_counter() - t0
        row["distill_teacher"] = a.distill_teacher
        row["uq_weight"] = a.uq_weight
        rows.append(row)
        print(f"evaluated {row['name']}")
        if loss == a.quantize_loss:
            for frac in a.quantize_fractions:
                qroot = quantized_bundle(ck, splits.train.x[:128], out / "quant" / f"{loss}_{frac:g}", frac, a.samples)
                row, _ = evaluate(f"student {loss} quantized ({frac:g} of fp32 bytes)", ck, out / "eval" / "q", splits,
                                  cross, ood, a.samples, a.repeats, teacher_mi, bundle_root=qroot)
                rows.append(row)
                print(f"evaluated {row['name']}")

    # ---- pruned teacher (retraining-free), and pruned + short distillation from the unpruned model
    pck = teachers[a.prune_teacher]
    base = pck.load_model()
    rng = np.random.default_rng(0)
    idx = np.sort(rng.choice(len(splits.train), size=min(512, len(splits.train)), replace=False))
    for ratio in a.prune_flops:
        tag = f"pruned{int(round(ratio * 100))}"
        try:
            res = prune(base, splits.train.x[idx], splits.train.y[idx], PruneConfig(target_flops=ratio), log=print)
        except ValueError as exc:
            print(f"pruning {a.prune_teacher} skipped: {exc}")
            continue
        plan = save_prune_plan(res, out / "pruned" / tag / "plan", inputs=pck.sha256)
        ck = save_checkpoint(res.model, out / "pruned" / tag / "checkpoint", pck.class_names, pck.sample_rate_hz,
                             metrics={"prune": dict(res.info), "prune_plan_digest": plan.digest})
        row, _ = evaluate(f"{a.prune_teacher} pruned to {ratio:g} block MACs", ck, out / "eval" / tag, splits, cross,
                          ood, a.samples, a.repeats)
        row["prune"] = dict(res.info)
        rows.append(row)
        print(f"evaluated {row['name']}")
        dck = distill_stage(load_teacher(pck.directory), res.model.cfg, splits, out / "pruned" / tag / "distilled",
                            tcfg, DistillConfig(epochs=max(1, a.distill_epochs // 3)), progress=False, log=print,
                            init=res.model)
        row, _ = evaluate(f"{a.prune_teacher} pruned {ratio:g} + distilled", dck, out / "eval" / f"{tag}_distilled",
                          splits, cross, ood, a.samples, a.repeats)
        rows.append(row)
        print(f"evaluated {row['name']}")

    print(f"timing {len(rows)} bundles and {len(naive)} naive loops, interleaved, {a.repeats} rounds")
    time_all(rows, x1, a.samples, a.repeats, naive, reference=f"teacher {a.distill_teacher}")
    for r in rows:
        if r["name"].startswith("teacher "):
            r["teacher_naive_mc_ms"] = naive[r["name"][len("teacher "):]]
    fp32_teacher_bytes = rows[0]["bytes"] if a.distill_teacher not in teachers else \
        next(r["bytes"] for r in rows if r["name"] == f"teacher {a.distill_teacher}")
    teacher_row = next((r for r in rows if r["name"] == f"teacher {a.distill_teacher}"), None)
    for r in rows:  # (no "naive loop / S" ratio: it would mix distillation, trunk-once and engine effects;
        #              bench/mc_overhead.py reports each of them separately)
        r["bytes_ratio"] = fp32_teacher_bytes / r["bytes"]
        if teacher_row is not None and not r["name"].startswith("teacher "):
            r["retained_auroc"] = retained_auroc(r, teacher_row)
    summary = {"load_average": os.getloadavg(), "data": f"{source}; {desc}", "samples": a.samples, "threads": 1, "repeats": a.repeats,
               "teacher_naive_mc_ms": naive, "distill_teacher": a.distill_teacher, "rows": rows, "quick": a.quick,
               "elapsed_s": time.perf_counter() - t_start, "command": command,
               "provenance": finish(prov, note="quick smoke run: tiny budgets" if a.quick else None)}
    atomic_write(out / "compress_frontier.json", json.dumps(summary, indent=2, sort_keys=True, default=str))
    print(f"\n{source}; {desc}")
    print(f"one window, 1 thread, medians of {a.repeats} interleaved rounds (load average at the end: "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores); all metrics through edgeuq_runtime (ONNX Runtime)\n")
    print(format_table(*frontier_table(summary), markdown=True))
    print(f"\nJSON: {out / 'compress_frontier.json'}")
    if a.tables_json:
        write_tables_json(summary, Path(a.tables_json))
    return 0


def _from_json(a) -> int:
    """Re-render an earlier run's table without rerunning anything."""
    summary = json.loads(a.from_json.read_text())
    print(format_table(*frontier_table(summary), markdown=True))
    if a.tables_json:
        write_tables_json(summary, Path(a.tables_json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
