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
ratio to the fp32 teacher. The ``--quantize-loss`` student is quantized twice with the same exact
knapsack over every layer (conv stem included): "before" with int32 QDQ biases and the exporter's
long tensor names, "after" with float biases and short names (today's defaults); both are evaluated
like every model, and a bytes-per-layer table (``--bytes-json``) shows where each bundle's bytes go.
Writes ``OUT/compress_frontier.json`` and prints a
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
from edgeuq.compress.distill import DISTILL_TRAIN, DistillConfig
from edgeuq.compress.prune import PruneConfig, prune, save_prune_plan
from edgeuq.compress.stages import distill_stage, label_transfer, load_teacher
from edgeuq.compress.transfer import TransferConfig
from edgeuq.evaluate import run_runtime
from edgeuq.export import export_onnx
from edgeuq.models import ModelConfig
from edgeuq.profile import measure_stages, paired_ratio
from edgeuq.report import format_table, results_table
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


#: Quantizer settings of the "before" rows: int32 QDQ biases (with per-channel scale and zero point)
#: and the exporter's long tensor names, i.e. what edgeuq.quantize wrote before float int8 biases and
#: compacted names became its defaults.
BEFORE_SETTINGS = {"quantize_bias": True, "compact_names": False}


def _prepared(ck, calib: np.ndarray, out: Path, samples: int, settings, method: str):
    """The prepared model (layers, measured costs) and the ``method`` sensitivity (``fisher``: the
    true Fisher of the student estimated on the calibration windows; ``range``: no curvature)."""
    from edgeuq.quantize import QuantSettings, prepare_model, sensitivity_for

    settings = settings or QuantSettings()
    prep = prepare_model(ck, calib, out / "work", progress=False, samples=samples, settings=settings)
    report = None
    if method == "fisher":
        from edgeuq.fisher import FisherConfig, estimate_fisher

        report = estimate_fisher(ck.load_model(), calib, None, FisherConfig(progress=False, noise_samples=2),
                                 structures=False, meta={"checkpoint_sha256": ck.sha256})
    return prep, sensitivity_for(method, prep, report), report


def quantized_bundle(ck, calib: np.ndarray, out: Path, fraction: float, samples: int, settings=None,
                     method: str = "range"):
    """The exact knapsack of edgeuq.quantize (``method`` sensitivity) over every layer (the conv stem
    included) under ``fraction`` of the fp32 initializer bytes. Returns (bundle root, plan, layer names)."""
    from edgeuq.quantize import Budget, build_quantized, plan_for

    prep, sens, report = _prepared(ck, calib, out, samples, settings, method)
    costs = prep.costs
    smallest = costs.fixed_bytes + sum(min(costs.bytes[lay.name][p] for p in lay.options) for lay in prep.layers)
    budget = max(fraction * costs.total_bytes({}), smallest)  # a too-small fraction -> the smallest plan
    plan = plan_for(prep, sens, Budget("bytes", budget), method, report)
    root = build_quantized(prep, plan, out / "bundle", name="student-quantized", samples=samples).bundle.root
    return root, plan, [lay.name for lay in prep.layers]


def quantized_to_size(ck, calib: np.ndarray, out: Path, target_bytes: float, samples: int, method: str = "fisher"):
    """The knapsack given the whole size goal: the largest initializer budget whose built bundle
    (graphs included) is at most ``target_bytes`` ONNX bytes. The budget follows from the size goal
    alone (no test data is looked at): start at the target, build, shrink the budget by the
    overshoot (the graph structure the initializer costs do not count), at most 6 builds.
    Returns (bundle root, plan, layer names, builds)."""
    from edgeuq.quantize import Budget, build_quantized, plan_for

    prep, sens, report = _prepared(ck, calib, out, samples, None, method)
    costs = prep.costs
    smallest = costs.fixed_bytes + sum(min(costs.bytes[lay.name][p] for p in lay.options) for lay in prep.layers)
    budget = float(target_bytes)
    for attempt in range(6):
        plan = plan_for(prep, sens, Budget("bytes", max(budget, smallest)), method, report)
        root = build_quantized(prep, plan, out / f"bundle{attempt}", name="student-quantized",
                               samples=samples).bundle.root
        total = _graph_bytes(root)
        if total <= target_bytes or budget <= smallest:
            return root, plan, [lay.name for lay in prep.layers], attempt + 1
        budget = min(budget, plan.total_bytes) - (total - target_bytes)
    raise RuntimeError(f"no plan within {target_bytes:.0f} bytes after 6 builds (last: {total} bytes)")


def bytes_by_layer(bundle_root: Path, layer_names) -> dict:
    """Where a bundle's ONNX bytes go: per layer the initializers (and Constant payloads) it owns
    (weights, scales, zero points, biases, its input's quantizer; ``edgeuq.quantize.layers.
    attribute_initializers``), the initializers no layer owns (norms, positions, ...), and the rest
    of the serialized graphs (nodes, tensor names, attributes, types)."""
    import onnx

    from edgeuq.quantize.compact import name_bytes
    from edgeuq.quantize.layers import attribute_initializers

    per = {n: 0 for n in layer_names}
    other = structure = names = files = 0
    for path in sorted(Path(bundle_root).rglob("*.onnx")):
        model = onnx.load(str(path))
        p, rest = attribute_initializers(model, layer_names)
        for k, v in p.items():
            per[k] += v
        size = path.stat().st_size
        payload = sum(p.values()) + rest
        other += rest
        structure += size - payload
        names += name_bytes(model)
        files += size
    return {"layers": per, "other_initializers": other, "graph_structure": structure, "tensor_name_bytes": names,
            "total": files}


def compacted_teacher_bytes(bundle_root: Path) -> int:
    """The fp32 teacher's ONNX bytes with short tensor names (the same compaction the quantized
    student gets), so that the size ratio can also be read without the names' share."""
    import onnx

    from edgeuq.quantize.compact import compact_tensor_names

    total = 0
    for path in sorted(Path(bundle_root).rglob("*.onnx")):
        model = onnx.load(str(path))
        compact_tensor_names(model)
        total += model.ByteSize()
    return total


def bytes_table(summary: dict):
    """(headers, rows) of the bytes-per-layer table: the fp32 student, its quantized bundle before
    (int32 biases, long names) and after (float biases, short names), bytes and precision per layer."""
    b = summary["bytes_by_layer"]
    cols = b["columns"]
    headers = ["part"] + [c["label"] for c in cols]
    rows = []
    for layer in b["layer_names"]:
        rows.append([layer] + [f"{c['bytes']['layers'][layer]:,}" + (f" ({c['precisions'][layer]})"
                                                                     if c.get("precisions") else "")
                               for c in cols])
    rows.append(["initializers no layer owns (norms, positions)"]
                + [f"{c['bytes']['other_initializers']:,}" for c in cols])
    rows.append(["graph structure (nodes, attributes, types, names)"]
                + [f"{c['bytes']['graph_structure']:,}" for c in cols])
    rows.append(["  of which tensor names"] + [f"{c['bytes']['tensor_name_bytes']:,}" for c in cols])
    rows.append(["total ONNX bytes"] + [f"{c['bytes']['total']:,}" for c in cols])
    t, tc = b["teacher_bytes"], b["teacher_compacted_bytes"]
    rows.append([f"fp32 teacher ({t:,} B) / total"] + [f"{t / c['bytes']['total']:.2f}x" for c in cols])
    rows.append([f"fp32 teacher with short names ({tc:,} B) / total"]
                + [f"{tc / c['bytes']['total']:.2f}x" for c in cols])
    for key, label in (("accuracy", "accuracy (test)"), ("ood_auroc_mi", "OOD AUROC (MI)")):
        rows.append([label] + [f"{c[key]:.4f}" if c.get(key) is not None else "-" for c in cols])
    if "teacher_accuracy" in b:
        rows.append([f"accuracy loss vs the fp32 teacher ({b['teacher_accuracy']:.4f}), points"]
                    + [f"{100 * (b['teacher_accuracy'] - c['accuracy']):.2f}" for c in cols])
        rows.append([f"retained OOD AUROC (MI) vs the fp32 teacher ({b['teacher_ood_auroc_mi']:.4f})"]
                    + [f"{c['ood_auroc_mi'] / b['teacher_ood_auroc_mi']:.3f}" for c in cols])
    return headers, rows


def write_bytes_json(summary: dict, path: Path) -> Path:
    from edgeuq.provenance import write_results

    if "bytes_by_layer" not in summary:
        raise SystemExit("the run JSON has no bytes_by_layer (no quantized student in that run): rerun")
    headers, rows = bytes_table(summary)
    write_results(path, results_table(headers, rows, note=summary["bytes_by_layer"]["note"]),
                  summary["command"], summary["provenance"])
    print(f"bytes table: {path}")
    return path


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
    write_results(path, results_table(headers, rows), summary["command"], summary["provenance"])
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
    ap.add_argument("--quantize-sensitivity", choices=("range", "fisher"), default="range",
                    help="the knapsack's loss model (fisher: the student's true Fisher on the calibration windows)")
    ap.add_argument("--quantize-target-ratio", type=float, default=0.0,
                    help="also quantize to fit 1/RATIO of the distillation teacher's ONNX bytes (the whole budget)")
    ap.add_argument("--size-reference", nargs="+", choices=("shipped", "short-names"), default=["shipped"],
                    help="what --quantize-target-ratio divides: the teacher's ONNX bytes as shipped, or with the "
                         "same short tensor names the quantized student gets (one quantized column each)")
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
    ap.add_argument("--bytes-json", help="also write the bytes-per-layer table of the quantized student "
                                         "(e.g. results/compress_bytes.json)")
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
    bytes_cols = None
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
                           DistillConfig(loss=loss, uq_weight=a.uq_weight, feature_weight=a.feature_weight,
                                         train=replace(DISTILL_TRAIN, epochs=a.distill_epochs)), progress=False,
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
            from edgeuq.quantize import QuantSettings

            fp32_row = row
            for frac in a.quantize_fractions:
                cols = [{"label": f"student {loss} fp32", "bytes": bytes_by_layer(Path(row["bundle"]), []),
                         "accuracy": row["accuracy"], "ood_auroc_mi": row["ood_auroc_mi"]}]
                for tag, settings in (("before", QuantSettings(**BEFORE_SETTINGS)), ("after", QuantSettings())):
                    qroot, plan, layer_names = quantized_bundle(
                        ck, splits.train.x[:128], out / "quant" / f"{loss}_{frac:g}_{tag}", frac, a.samples, settings,
                        a.quantize_sensitivity)
                    label = (f"student {loss} quantized ({frac:g} of fp32 bytes, {a.quantize_sensitivity}"
                             + (", int32 biases, long names)" if tag == "before" else ")"))
                    qrow, _ = evaluate(label, ck, out / "eval" / f"q_{tag}", splits, cross, ood, a.samples,
                                       a.repeats, teacher_mi, bundle_root=qroot)
                    rows.append(qrow)
                    print(f"evaluated {qrow['name']}")
                    cols.append({"label": f"quantized {tag}", "bytes": bytes_by_layer(qroot, layer_names),
                                 "precisions": plan.assignment(), "accuracy": qrow["accuracy"],
                                 "ood_auroc_mi": qrow["ood_auroc_mi"], "settings": settings.to_dict()})
                cols[0]["bytes"] = bytes_by_layer(Path(fp32_row["bundle"]), layer_names)
                bytes_cols = {"layer_names": layer_names, "columns": cols, "fraction": frac}
            for reference in (a.size_reference if a.quantize_target_ratio and bytes_cols is not None else []):
                t_row = next(r for r in rows if r["name"] == f"teacher {a.distill_teacher}")
                ref_bytes = (compacted_teacher_bytes(Path(t_row["bundle"])) if reference == "short-names"
                             else t_row["bytes"])
                target = ref_bytes / a.quantize_target_ratio
                qroot, plan, layer_names, builds = quantized_to_size(
                    ck, splits.train.x[:128], out / "quant" / f"{loss}_ratio{a.quantize_target_ratio:g}_{reference}",
                    target, a.samples, a.quantize_sensitivity)
                what = "the teacher" if reference == "shipped" else "the teacher with short names"
                label = f"student {loss} quantized to 1/{a.quantize_target_ratio:g} of {what} ({a.quantize_sensitivity})"
                qrow, _ = evaluate(label, ck, out / "eval" / f"q_target_{reference}", splits, cross, ood, a.samples,
                                   a.repeats, teacher_mi, bundle_root=qroot)
                qrow["size_target_bytes"], qrow["size_builds"] = target, builds
                rows.append(qrow)
                print(f"evaluated {qrow['name']} ({builds} builds to fit {target:.0f} bytes)")
                bytes_cols["columns"].append({"label": f"quantized after, 1/{a.quantize_target_ratio:g} of {what}",
                                              "bytes": bytes_by_layer(qroot, layer_names),
                                              "precisions": plan.assignment(), "accuracy": qrow["accuracy"],
                                              "ood_auroc_mi": qrow["ood_auroc_mi"]})

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
                            tcfg, DistillConfig(train=replace(DISTILL_TRAIN, epochs=max(1, a.distill_epochs // 3))), progress=False, log=print,
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
    if bytes_cols is not None:
        teacher_root = Path(next(r["bundle"] for r in rows if r["name"] == f"teacher {a.distill_teacher}"))
        bytes_cols.update(teacher_accuracy=teacher_row["accuracy"], teacher_ood_auroc_mi=teacher_row["ood_auroc_mi"])
        bytes_cols.update(teacher_bytes=fp32_teacher_bytes, teacher_compacted_bytes=compacted_teacher_bytes(teacher_root),
                          note=("bytes per layer: initializers (and Constant payloads) each layer owns -- weights, "
                                "scales, zero points, bias, its input quantizer; accuracy and OOD AUROC on the "
                                "held-out test / OOD windows (calibration: 128 training windows); 'before' = "
                                f"QuantSettings({', '.join(f'{k}={v}' for k, v in BEFORE_SETTINGS.items())})"))
    summary = {"load_average": os.getloadavg(), "data": f"{source}; {desc}", "samples": a.samples, "threads": 1, "repeats": a.repeats,
               "teacher_naive_mc_ms": naive, "distill_teacher": a.distill_teacher, "rows": rows, "quick": a.quick,
               "elapsed_s": time.perf_counter() - t_start, "command": command,
               "provenance": finish(prov, note="quick smoke run: tiny budgets" if a.quick else None)}
    if bytes_cols is not None:
        summary["bytes_by_layer"] = bytes_cols
    atomic_write(out / "compress_frontier.json", json.dumps(summary, indent=2, sort_keys=True, default=str))
    print(f"\n{source}; {desc}")
    print(f"one window, 1 thread, medians of {a.repeats} interleaved rounds (load average at the end: "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores); all metrics through edgeuq_runtime (ONNX Runtime)\n")
    print(format_table(*frontier_table(summary), markdown=True))
    print(f"\nJSON: {out / 'compress_frontier.json'}")
    if "bytes_by_layer" in summary:
        print()
        print(format_table(*bytes_table(summary), markdown=True))
    if a.tables_json:
        write_tables_json(summary, Path(a.tables_json))
    if a.bytes_json:
        write_bytes_json(summary, Path(a.bytes_json))
    return 0


def _from_json(a) -> int:
    """Re-render an earlier run's table without rerunning anything."""
    summary = json.loads(a.from_json.read_text())
    print(format_table(*frontier_table(summary), markdown=True))
    if a.tables_json:
        write_tables_json(summary, Path(a.tables_json))
    if a.bytes_json:
        write_bytes_json(summary, Path(a.bytes_json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
