"""Accuracy / calibration / OOD frontier of mixed-precision quantization vs model bytes.

On the bearing task (CWRU 12 kHz drive end when present, the synthetic generator
otherwise) a demo-sized model is trained (cached), its true and empirical
Fisher and its Hutchinson Hessian traces are estimated on calibration windows,
and the size budget is swept. At every budget each allocation method is solved
exactly (multiple-choice knapsack) and the quantized bundle is scored *through
the device runtime* (ONNX Runtime, S MC samples, the same noise for every model):

    fisher-true    FIT: Tr(F_w)·E[δw²] + Tr(F_a)·E[δa²], true Fisher (labels from the model)
    fisher-emp     the same with the empirical Fisher (data labels)
    hawq           Hutchinson Tr(H)/n · ‖Q(W) − W‖² (HAWQ-V2 style)
    range          quantization noise relative to each tensor's magnitude (no curvature)
    random         random layer ranking (median over seeds)
    uniform int8 / uniform int4 (int4 where ONNX Runtime has it, int8 convolutions) at their own sizes

Prints one table (accuracy, NLL, ECE, OOD AUROC of mutual information, median
runtime latency of one window with S samples on one thread, ratios to fp32
paired per round: every model timed in the same rounds, random order per round), where Fisher-guided is and is not the best at equal
size, and the size reduction reached within 0.5 pt accuracy and 1 pt ECE of
fp32; writes quant_frontier.png and results.json.

CWRU: classes normal / inner race / outer race in distribution, ball faults held
out as the unseen-fault OOD set. Synthetic: the demo recipe's four classes, the
compound fault as OOD.

    python bench/quant_frontier.py [--out runs/quant_frontier] [--data auto|cwru|synthetic] [--epochs 8]
                                   [--tables-json results/quant_frontier.json] [--quick]

``--tables-json`` writes the three tables (frontier, Fisher vs the alternatives, size reduction
within tolerance) for ``scripts/render_tables.py`` with this run's provenance record.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np

from edgeuq.catalog import get_recipe
from edgeuq.data import load_cwru, split_in_domain, window_records
from edgeuq.evaluate import evaluate_sets
from edgeuq.artifact import ArtifactError, cached, digest_of
from edgeuq.fisher import FisherConfig, FisherReport, estimate_fisher, hutchinson_trace
from edgeuq.models import ModelConfig
from edgeuq.pipeline import prepare_data, train_stage
from edgeuq.profile import measure_stages, paired_ratio
from edgeuq.quantize import (
    Budget, QuantSettings, build_quantized, plan_for, plan_from_assignment, prepare_model, sensitivity_for,
    uniform_assignment,
)
from edgeuq.report import format_table, results_table
from edgeuq.uq import auroc, expected_calibration_error
from edgeuq.training import TrainConfig, load_checkpoint
from edgeuq_runtime import UncertaintyRuntime

ACC_TOL_PT = 0.5
ECE_TOL_PT = 1.0
METHODS = ("fisher-true", "fisher-emp", "hawq", "range", "random")


def default_cwru_dir() -> Path:
    env = os.environ.get("EDGEUQ_CWRU_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cwru"


@dataclass
class Task:
    splits: object
    ood: object
    description: str


def load_task(kind: str, cwru: Path, rec) -> Task:
    window, hop = int(rec.data["window"]), int(rec.data["hop"])
    use_cwru = {"auto": (cwru / "12k_DE").is_dir(), "cwru": True, "synthetic": False}[kind]
    if use_cwru:
        records = load_cwru(cwru)
        classes = ("normal", "inner_race", "outer_race")
        known = [r for r in records if r.label in classes]
        ball = [r for r in records if r.label == "ball"]
        splits = split_in_domain(known, window, hop, class_names=classes)
        ood = window_records(ball, window, window, class_names=classes, allow_unknown=True)
        return Task(splits, ood, f"CWRU 12 kHz drive end ({cwru}): {len(known)} records of {list(classes)}, "
                                 f"{len(ball)} ball-fault records held out as unseen-fault OOD")
    data = prepare_data(rec)
    ood = next(v for k, v in data.shifted.items() if k.startswith("unseen fault"))
    return Task(data.splits, ood, "synthetic bearing generator (simulated data): " + data.description)


def subset(ds, n: int, seed: int):
    if len(ds) <= n:
        return ds
    return ds.subset(np.sort(np.random.default_rng(seed).choice(len(ds), n, replace=False)))


def train_or_load(task: Task, rec, out: Path, epochs: int, log) -> object:
    ck_dir = out / "checkpoint"
    sp = task.splits
    cfg = ModelConfig.from_dict(rec.model, input_length=sp.window, num_classes=len(sp.class_names))
    tag = {"task": task.description, "epochs": epochs, "config": cfg.to_dict()}
    tag_file = out / "checkpoint.tag.json"
    if (ck_dir / "checkpoint.json").is_file() and tag_file.is_file() and json.loads(tag_file.read_text()) == tag:
        try:
            ck = load_checkpoint(ck_dir)
            log(f"checkpoint: cached {ck_dir}")
            return ck
        except ArtifactError as exc:  # an older format or a damaged file: train again
            log(f"checkpoint: not reusing {ck_dir} ({exc})")
    t = time.perf_counter()
    tcfg = TrainConfig.from_dict(rec.train, epochs=epochs)
    ck = train_stage(sp, cfg, tcfg, ck_dir, progress=True, log=log)
    tag_file.write_text(json.dumps(tag, sort_keys=True))
    log(f"checkpoint: trained in {time.perf_counter() - t:.0f} s (best epoch {ck.metrics['best_epoch']}, "
        f"val acc {ck.metrics['val_acc']:.4f})")
    return ck


def cached_fisher(ck, x, y, labels: str, out: Path, noise_samples: int, log):
    d = out / f"fisher-{labels}"
    cfg = FisherConfig(labels=labels, noise_samples=noise_samples)
    key = digest_of(ck, cfg.to_dict(), len(x), hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest())
    rep = cached(FisherReport, d, key)  # same checkpoint, settings and windows: reuse
    if rep is not None:
        log(f"fisher ({labels}): cached {d}")
        return rep
    t = time.perf_counter()
    rep = estimate_fisher(ck.load_model(), x, y, cfg, structures=False,
                          meta={"checkpoint_sha256": ck.sha256}).save(d, inputs=key)
    log(f"fisher ({labels}): {time.perf_counter() - t:.0f} s on {len(x)} windows x {noise_samples} noise draws")
    return rep


def cached_hessian(ck, x, y, out: Path, probes: int, log) -> Dict[str, float]:
    f = out / "hessian_traces.json"
    if f.is_file():
        d = json.loads(f.read_text())
        if d.get("checkpoint_sha256") == ck.sha256 and d.get("n") == len(x) and d.get("probes") == probes:
            log("hessian: cached")
            return d["traces"]
    t = time.perf_counter()
    tr = hutchinson_trace(ck.load_model(), x, y, FisherConfig(noise_samples=1), probes=probes)
    f.write_text(json.dumps({"checkpoint_sha256": ck.sha256, "n": len(x), "probes": probes, "traces": tr}))
    log(f"hessian: {time.perf_counter() - t:.0f} s ({probes} Hutchinson probes)")
    return tr


def summarize_precisions(assign: Mapping[str, str]) -> str:
    counts: Dict[str, int] = {}
    for p in assign.values():
        counts[p] = counts.get(p, 0) + 1
    return " ".join(f"{counts[p]}x{p}" for p in ("fp32", "fp16", "int8", "int4") if p in counts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/quant_frontier")
    ap.add_argument("--data", choices=("auto", "cwru", "synthetic"), default="auto")
    ap.add_argument("--cwru", type=Path, default=default_cwru_dir())
    ap.add_argument("--recipe", default="bearing-demo", help="model, training and windowing settings (name or .toml)")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--samples", type=int, default=16, help="MC samples S in evaluation and latency")
    ap.add_argument("--fisher-windows", type=int, default=256)
    ap.add_argument("--calib-windows", type=int, default=128, help="QDQ activation calibration windows")
    ap.add_argument("--test-windows", type=int, default=500)
    ap.add_argument("--ood-windows", type=int, default=250)
    ap.add_argument("--hessian-probes", type=int, default=8)
    ap.add_argument("--random-seeds", type=int, default=3)
    ap.add_argument("--latency-repeats", type=int, default=30)
    ap.add_argument("--bootstrap", type=int, default=300, help="paired bootstrap resamples for the comparison")
    ap.add_argument("--tables-json", type=Path, help="also write the tables for scripts/render_tables.py")
    ap.add_argument("--quick", action="store_true", help="2 epochs, 128 Fisher / 64 calibration / 200 test / 100 OOD "
                                                        "windows, 10 latency repeats, 100 resamples (mode quick)")
    a = ap.parse_args(argv)
    from edgeuq.provenance import command_line, start, write_results

    if a.quick:
        a.epochs, a.fisher_windows, a.calib_windows, a.test_windows, a.ood_windows = 2, 128, 64, 200, 100
        a.latency_repeats, a.bootstrap, a.hessian_probes, a.random_seeds = 10, 100, 4, 2
    prov = start("quick" if a.quick else "full", 1)
    command = command_line("bench/quant_frontier.py", argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    log = lambda s: print(s, flush=True)  # noqa: E731
    t_start = time.perf_counter()
    rec = get_recipe(a.recipe)
    task = load_task(a.data, a.cwru, rec)
    sp = task.splits
    log(f"data: {task.description}; train {len(sp.train)} / val {len(sp.val)} / test {len(sp.test)}, "
        f"OOD {len(task.ood)} windows")
    ck = train_or_load(task, rec, out, a.epochs, log)

    calib = subset(sp.train, a.fisher_windows, 1)
    reports = {lab: cached_fisher(ck, calib.x, calib.y, lab, out, 2, log) for lab in ("true", "empirical")}
    hess_set = subset(sp.train, a.fisher_windows // 2, 2)
    hessian = cached_hessian(ck, hess_set.x, hess_set.y, out, a.hessian_probes, log)

    t = time.perf_counter()
    qcalib = subset(sp.train, a.calib_windows, 3)
    prep = prepare_model(ck, qcalib.x, out / "work", latency=True, samples=a.samples,
                         settings=QuantSettings(calibration_windows=a.calib_windows))
    log(f"layers: {len(prep.layers)}; costs measured (bytes + per-layer ONNX Runtime profile) in "
        f"{time.perf_counter() - t:.0f} s")
    costs = prep.costs
    fp32_bytes = costs.total_bytes({})
    u8 = uniform_assignment(prep.layers, "int8")
    u4 = uniform_assignment(prep.layers, "int4", fallback="int8")
    b8, b4 = costs.total_bytes(u8), costs.total_bytes(u4)
    budgets = sorted({b4, int(b4 + 0.25 * (b8 - b4)), int(b4 + 0.5 * (b8 - b4)), int(b4 + 0.75 * (b8 - b4)), b8,
                      int(0.5 * fp32_bytes)})
    sens = {
        "fisher-true": sensitivity_for("fisher", prep, reports["true"]),
        "fisher-emp": sensitivity_for("fisher", prep, reports["empirical"]),
        "hawq": sensitivity_for("hawq", prep, hessian_traces=hessian),
        "range": sensitivity_for("range", prep, reports["true"]),
    }
    for s in range(a.random_seeds):
        sens[f"random-{s}"] = sensitivity_for("random", prep, seed=s)

    # ---- plans: (row label, budget, plan); identical assignments are evaluated once
    rows: List[Tuple[str, Optional[int], object]] = [
        ("fp32", None, plan_from_assignment(prep, {lay.name: "fp32" for lay in prep.layers}, sens["fisher-true"],
                                            "fp32", reports["true"])),
        ("uniform int8", None, plan_from_assignment(prep, u8, sens["fisher-true"], "uniform-int8", reports["true"])),
        ("uniform int4", None, plan_from_assignment(prep, u4, sens["fisher-true"], "uniform-int4", reports["true"])),
    ]
    for b in budgets:
        for m, table in sens.items():
            rows.append((m, b, plan_for(prep, table, Budget("bytes", b), m, reports["true"])))

    test = subset(sp.test, a.test_windows, 4)
    ood = subset(task.ood, a.ood_windows, 5)
    x1 = test.x[:1]
    t = time.perf_counter()
    uniq: Dict[tuple, object] = {}
    for _, _, plan in rows:
        uniq.setdefault(key_of(plan), plan)
    log(f"evaluating {len(uniq)} distinct quantized models ({len(rows)} plans) on {len(test)} test + {len(ood)} OOD "
        f"windows, S={a.samples}, through the device runtime (same MC noise for every model)")
    outputs: Dict[tuple, Outputs] = {}
    runtimes: Dict[tuple, UncertaintyRuntime] = {}
    for i, (key, plan) in enumerate(uniq.items()):
        res = build_quantized(prep, plan, out / "bundles" / f"m{i:03d}", samples=a.samples)
        ev = evaluate_sets(res.bundle.root, {"test": test, "ood": ood}, samples=a.samples, seed=0, progress=False)
        runtimes[key] = UncertaintyRuntime(res.bundle.root, threads=1, seed=0)
        outputs[key] = Outputs(ev["test"].result.probs, ev["test"].result.epistemic, ev["ood"].result.probs,
                               ev["ood"].result.epistemic, float("nan"), plan.total_bytes)
        o = outputs[key]
        log(f"  [{i + 1}/{len(uniq)}] {plan.total_bytes} B  acc {accuracy(o, test.y):.4f}  nll {nll(o, test.y):.5f}  "
            f"auroc {auroc_mi(o):.3f}  ({summarize_precisions(plan.assignment())})")
    log(f"evaluation: {time.perf_counter() - t:.0f} s")
    # latency: every model's S-sample call in the same rounds (seeded random order per round), so the
    # "x fp32" ratio is paired per round (median of per-round ratios), not two runs minutes apart
    fp32_key = key_of(rows[0][2])
    names = {key: f"m{i:03d}" for i, key in enumerate(runtimes)}
    lat = measure_stages({names[k]: (lambda rt=rt: rt.predict(x1, samples=a.samples)) for k, rt in runtimes.items()},
                         warmup=3, repeats=a.latency_repeats)
    for k in runtimes:
        pr = paired_ratio(lat[names[k]], lat[names[fp32_key]])
        outputs[k] = replace(outputs[k], latency_ms=lat[names[k]].median_ms, latency_ratio=pr.median)
    log(f"latency: {len(runtimes)} models timed together, {a.latency_repeats} rounds in random order per round")

    ref = outputs[fp32_key]
    y = test.y
    metric_fns = {
        "accuracy": lambda o, it, io: accuracy(o, y, it),
        "nll": lambda o, it, io: nll(o, y, it),
        "ece": lambda o, it, io: ece(o, y, it),
        "auroc": lambda o, it, io: auroc_mi(o, it, io),
        "kl": lambda o, it, io: kl_to(ref, o, it, io),
        "dmi": lambda o, it, io: dmi_to(ref, o, it, io),
    }
    higher_better = {"accuracy": True, "auroc": True, "nll": False, "ece": False, "kl": False, "dmi": False}
    full_t, full_o = np.arange(len(test)), np.arange(len(ood))

    def summary(o: Outputs) -> dict:
        return {**{k: fn(o, full_t, full_o) for k, fn in metric_fns.items()}, "latency_ms": o.latency_ms,
                "latency_x_fp32": o.latency_ratio, "bytes": o.bytes}

    merged: List[Tuple[str, Optional[int], dict, str, List[Outputs]]] = []
    for label, b, plan in rows:
        if not label.startswith("random-"):
            o = outputs[key_of(plan)]
            merged.append((label, b, summary(o), summarize_precisions(plan.assignment()), [o]))
    for b in budgets:
        outs = [outputs[key_of(p)] for lab, bb, p in rows if lab.startswith("random-") and bb == b]
        sums = [summary(o) for o in outs]
        med = {k: float(np.median([r[k] for r in sums])) for k in sums[0]}
        merged.append(("random", b, med, f"median of {len(outs)} seeds", outs))
    order = {"fp32": 0, "uniform int8": 1, "uniform int4": 2, **{m: 3 + i for i, m in enumerate(METHODS)}}
    merged.sort(key=lambda r: (r[1] or 0, order[r[0]]))
    base = merged[0][2]
    table_rows, records = [], []
    for label, b, r, prec, _ in merged:
        table_rows.append([label, "-" if b is None else f"{b / 1024:.1f}", int(r["bytes"]),
                           f"{fp32_bytes / r['bytes']:.2f}", f"{100 * r['accuracy']:.2f}", f"{r['nll']:.5f}",
                           f"{100 * r['ece']:.3f}", f"{r['auroc']:.4f}", f"{r['kl']:.2e}", f"{r['dmi']:.2e}",
                           f"{r['latency_ms']:.2f}", f"{r['latency_x_fp32']:.2f}", prec])
        records.append({"method": label, "budget_bytes": b, **r, "precisions": prec})
    heads = ("method", "budget KiB", "bytes", "x smaller", "acc %", "NLL", "ECE %", "AUROC(MI)", "KL->fp32",
             "|dMI|", "latency ms", "x fp32 lat", "precisions")
    print()
    print(f"Quantization frontier -- {task.description}")
    print(f"fp32 model {fp32_bytes} bytes; S={a.samples}; {len(test)} test / {len(ood)} OOD windows; KL->fp32 = mean "
          f"KL(fp32 predictive || quantized predictive), |dMI| = mean |change of mutual information|, both over "
          f"test+OOD windows; latency = median of {a.latency_repeats} runtime predict() calls on one window, "
          f"1 thread, ONNX Runtime, all models timed in the same rounds (random order per round); x fp32 lat = "
          f"paired median of per-round ratios")
    print(format_table(heads, table_rows))

    # ---- Fisher-guided (true) vs each alternative at equal size: paired bootstrap over windows
    rng = np.random.default_rng(0)
    boots = [(rng.integers(0, len(test), len(test)), rng.integers(0, len(ood), len(ood))) for _ in range(a.bootstrap)]
    print(f"\nFisher-guided (true Fisher) vs each alternative at the same budget: paired bootstrap over windows "
          f"({a.bootstrap} resamples); 'better'/'worse' = the 95% interval of the difference excludes 0")
    cmp_rows, not_best = [], []
    pairs = [(other, b) for other in ("fisher-emp", "hawq", "range", "random") for b in budgets]
    pairs += [("uniform int8", b8), ("uniform int4", b4)]
    tallies: Dict[str, List[int]] = {}
    for other, b in pairs:
        f_out = next(m[4][0] for m in merged if m[0] == "fisher-true" and m[1] == b)
        o_outs = next(m[4] for m in merged if m[0] == other and (m[1] == b or other.startswith("uniform")))
        tally = tallies.setdefault(other, [0, 0, 0])
        for k, fn in metric_fns.items():
            sign = 1.0 if higher_better[k] else -1.0
            diffs = np.array([sign * (fn(f_out, it, io) - np.median([fn(o, it, io) for o in o_outs]))
                              for it, io in boots])
            lo, hi = np.percentile(diffs, [2.5, 97.5])
            if not (np.isfinite(lo) and np.isfinite(hi)):  # never let a NaN pass as "no difference"
                raise RuntimeError(f"{k}: non-finite bootstrap interval comparing fisher-true with {other} at {b} B")
            if lo > 0:
                tally[0] += 1
            elif hi < 0:
                tally[2] += 1
                f_val = fn(f_out, full_t, full_o)
                o_val = float(np.median([fn(o, full_t, full_o) for o in o_outs]))
                not_best.append(f"{other} beats fisher-true on {k} at {b} B: {o_val:.4g} vs {f_val:.4g}")
            else:
                tally[1] += 1
    for other, (w, tie, lo) in tallies.items():
        cmp_rows.append([other, w, tie, lo])
    print(format_table(("alternative", "fisher-true better", "no significant difference", "fisher-true worse"),
                       cmp_rows))
    if not_best:
        print("Where Fisher-guided is NOT the best (significant):")
        for line in not_best:
            print("  - " + line)
    else:
        print("Fisher-guided is never significantly worse than an alternative at equal size.")

    # ---- size reduction within tolerance
    print(f"\nLargest size reduction with accuracy >= fp32 - {ACC_TOL_PT} pt and ECE <= fp32 + {ECE_TOL_PT} pt "
          f"(fp32: acc {100 * base['accuracy']:.2f} %, ECE {100 * base['ece']:.3f} %), among the budgets swept:")
    red_rows = []
    for label in ("fisher-true", "fisher-emp", "hawq", "range", "random", "uniform int8", "uniform int4"):
        ok = [r for lab, _, r, _, _ in merged if lab == label and r["accuracy"] >= base["accuracy"] - ACC_TOL_PT / 100
              and r["ece"] <= base["ece"] + ECE_TOL_PT / 100]
        if ok:
            best = min(ok, key=lambda r: r["bytes"])
            red_rows.append([label, int(best["bytes"]), f"{fp32_bytes / best['bytes']:.2f}x",
                             f"{100 * best['accuracy']:.2f}", f"{100 * best['ece']:.3f}"])
        else:
            red_rows.append([label, "-", "none within tolerance", "-", "-"])
    print(format_table(("method", "bytes", "reduction", "acc %", "ECE %"), red_rows))

    png = plot([m[:4] for m in merged], fp32_bytes, base, out / "quant_frontier.png", task.description)
    (out / "results.json").write_text(json.dumps({"task": task.description, "fp32_bytes": fp32_bytes,
                                                  "budgets": budgets, "rows": records, "not_best": not_best,
                                                  "comparison": {k: dict(zip(("better", "tie", "worse"), v))
                                                                 for k, v in tallies.items()}},
                                                 indent=2, default=float))
    print(f"\nplot: {png}   results: {out / 'results.json'}   total {time.perf_counter() - t_start:.0f} s")
    if a.tables_json:
        note = (f"{task.description}; fp32 model {fp32_bytes} bytes; S={a.samples}; {len(test)} test / {len(ood)} OOD "
                f"windows; KL->fp32 = mean KL(fp32 predictive || quantized), |dMI| = mean |change of MI|; latency = "
                f"median of {a.latency_repeats} runtime calls on one window, 1 thread, ratio to fp32 in this run")
        write_results(a.tables_json, {"tables": {
            "frontier": results_table(heads, table_rows, note=note),
            "fisher_vs": results_table(["alternative", "fisher-true better", "no significant difference",
                                        "fisher-true worse"], cmp_rows,
                                       note=f"paired bootstrap over windows ({a.bootstrap} resamples) at equal size; a "
                                            "difference counts when its 95 % interval excludes 0. "
                                            + ("Where Fisher-guided is not the best: " + "; ".join(not_best)
                                               if not_best else
                                               "Fisher-guided is never significantly worse at equal size.")),
            "reduction": results_table(["method", "bytes", "reduction", "acc %", "ECE %"], red_rows,
                                       note=f"largest size reduction with accuracy >= fp32 - {ACC_TOL_PT} pt and "
                                            f"ECE <= fp32 + {ECE_TOL_PT} pt among the budgets swept")}}, command, prov)
        print(f"tables: {a.tables_json}")
    return 0


@dataclass(frozen=True)
class Outputs:
    """What the runtime returned for one model: mean predictive and MI on the test and OOD windows."""

    probs: np.ndarray
    mi: np.ndarray
    ood_probs: np.ndarray
    ood_mi: np.ndarray
    latency_ms: float
    bytes: int
    latency_ratio: float = float("nan")   # paired median of per-round latency / fp32 latency


def key_of(plan) -> tuple:
    return tuple(sorted(plan.assignment().items()))


def _all(n: int, idx):
    return np.arange(n) if idx is None else idx


def accuracy(o: Outputs, y, it=None) -> float:
    it = _all(len(y), it)
    return float(np.mean(o.probs[it].argmax(1) == y[it]))


def nll(o: Outputs, y, it=None) -> float:
    it = _all(len(y), it)
    return float(-np.mean(np.log(np.maximum(o.probs[it, y[it]], 1e-12))))


def ece(o: Outputs, y, it=None) -> float:
    it = _all(len(y), it)
    return expected_calibration_error(o.probs[it], y[it])


def auroc_mi(o: Outputs, it=None, io=None) -> float:
    return auroc(o.mi[_all(len(o.mi), it)], o.ood_mi[_all(len(o.ood_mi), io)])


def _kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    p, q = np.maximum(p, 1e-12), np.maximum(q, 1e-12)
    return np.sum(p * (np.log(p) - np.log(q)), axis=1)


def kl_to(ref: Outputs, o: Outputs, it, io) -> float:
    return float(np.mean(np.concatenate([_kl(ref.probs[it], o.probs[it]), _kl(ref.ood_probs[io], o.ood_probs[io])])))


def dmi_to(ref: Outputs, o: Outputs, it, io) -> float:
    return float(np.mean(np.abs(np.concatenate([ref.mi[it] - o.mi[it], ref.ood_mi[io] - o.ood_mi[io]]))))


def plot(merged, fp32_bytes: int, base: dict, path: Path, title: str) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    styles = {"random": ("tab:gray", "x:"), "range": ("tab:green", "v-"), "hawq": ("tab:blue", "^-"),
              "fisher-emp": ("tab:orange", "s--"), "fisher-true": ("tab:red", "o-")}  # fisher-true drawn last
    metrics = [("accuracy", "accuracy"), ("nll", "NLL"), ("ece", "ECE"), ("auroc", "OOD AUROC (MI)"),
               ("kl", "KL(fp32 || quantized)"), ("dmi", "mean |change of MI|")]
    fig = Figure(figsize=(15, 8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 3).ravel()
    for ax, (key, name) in zip(axes, metrics):
        for label, (color, style) in styles.items():
            pts = sorted((r["bytes"], r[key]) for lab, _, r, _ in merged if lab == label)
            if pts:
                ax.plot([p[0] / 1024 for p in pts], [p[1] for p in pts], style, color=color, label=label,
                        ms=7 if label == "fisher-emp" else 4, lw=1.0, mfc="none" if label == "fisher-emp" else color)
        for label, marker in (("uniform int8", "D"), ("uniform int4", "P")):
            r = next(r for lab, _, r, _ in merged if lab == label)
            ax.plot([r["bytes"] / 1024], [r[key]], marker, color="black", ms=8, label=label, ls="none")
        ax.axhline(base[key], color="black", lw=0.8, ls="--", label=f"fp32 ({fp32_bytes / 1024:.0f} KiB)")
        ax.set_xlabel("model KiB")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Mixed-precision frontier: {title[:90]}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


if __name__ == "__main__":
    sys.exit(main())
