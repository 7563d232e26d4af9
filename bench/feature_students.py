"""Students that keep the teacher's feature geometry, and one-pass distance-aware schemes, on CWRU.

    python bench/feature_students.py --cwru ../shared/data/cwru --work /tmp/fs --json results/feature_students.json

Split as in bench/order_front_end.py: train on loads 0-2 hp without fault size 0.021 in; in-distribution
= the last 15 % (in time) of each training-load record; shifts: whole 3 hp recordings (should
generalise), fault size 0.021 in and *simulated* bearings of other geometry (should be flagged).
Models: the cwru-mc-dropout teacher; cwru-student distilled with the default output loss (kl+uq),
and with feature distillation added (weights given); DDU and SNGP versions of the teacher's
architecture (one deterministic pass). Per model (device runtime, S = 32 for sampled models):
accuracy, false abstention on 3 hp at the 5 % in-distribution threshold, AUROC of the density
(fitted on training windows only), MI and total entropy, and the student's retained AUROC
(student / teacher) per should-flag shift. Skips cleanly without the CWRU folder.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

HELD_LOAD, UNSEEN_SIZE, EVAL_HOP = 3.0, 0.021, 2048
SHIFTS = ("new load 3 hp", "unseen size 0.021", "other geometry (simulated)")
FLAG = SHIFTS[1:]


def run(cwru: Path, work: Path, epochs: int, distill_epochs: int, feature_weights, log=print) -> dict:
    import torch

    from edgeuq.bundle import build_bundle
    from edgeuq.catalog import get_recipe
    from edgeuq.compress.distill import DISTILL_TRAIN, DistillConfig
    from edgeuq.compress.stages import distill_stage, load_teacher, label_transfer
    from edgeuq.compress.transfer import TransferConfig
    from edgeuq.data import BEARING_CLASSES, load_cwru, split_by_load, window_records
    from edgeuq.data.synthetic import BearingGeometry, SyntheticBearingConfig, synthetic_records
    from edgeuq.export import export_onnx
    from edgeuq.models import ModelConfig
    from edgeuq.pipeline import train_stage
    from edgeuq.training import TrainConfig, load_checkpoint
    from edgeuq.uq.metrics import auroc
    from edgeuq_runtime import UncertaintyRuntime
    from edgeuq_runtime.density import fit_density

    torch.set_num_threads(1)
    rec = get_recipe("cwru-mc-dropout")
    window, hop, classes = int(rec.data["window"]), int(rec.data["hop"]), BEARING_CLASSES
    records = load_cwru(cwru)
    unseen = [r for r in records if abs(float(r.meta["severity"]) - UNSEEN_SIZE) < 1e-6]
    kept = [r for r in records if abs(float(r.meta["severity"]) - UNSEEN_SIZE) >= 1e-6]
    sp = split_by_load(kept, [HELD_LOAD], window, hop, class_names=classes)
    geo = BearingGeometry(n_balls=12, ball_diameter=0.25, pitch_diameter=1.8)
    other = synthetic_records(SyntheticBearingConfig(fs=12000.0, duration_s=4.0, loads=(0.0, 3.0), geometry=geo,
                                                     severities=(0.014,), normal_records_per_load=1, seed=7),
                              kinds=("inner_race", "outer_race", "ball"))
    train_fit = sp.train.subset(np.arange(0, len(sp.train), 4))  # the density's fit windows (training windows)
    sets = {"val": (sp.val.x, sp.val.y)}
    h = window_records([r for r in kept if float(r.meta["load_hp"]) == HELD_LOAD], window, EVAL_HOP, class_names=classes)
    sets[SHIFTS[0]] = (h.x, h.y)
    u = window_records(unseen, window, EVAL_HOP, class_names=classes, allow_unknown=True)
    sets[SHIFTS[1]] = (u.x, u.y)
    o = window_records(other, window, EVAL_HOP, class_names=classes)
    sets[SHIFTS[2]] = (o.x, o.y)

    def evaluate(name, ck, extra=None):
        art = export_onnx(ck, work / "eval" / name / "onnx", verify=True)
        build_bundle(art, work / "eval" / name / "bundle", name, "0", default_samples=32, overwrite=True)
        rt = UncertaintyRuntime(work / "eval" / name / "bundle", seed=0)
        dens = fit_density(rt.trunk_features(train_fit.x), train_fit.y, num_classes=len(classes))
        sc = {}
        for k, (x, y) in sets.items():
            res = rt.predict(x, samples=32)
            sc[k] = {"density": dens.score(rt.trunk_features(x)), "mi": np.asarray(res.epistemic, np.float64),
                     "total": np.asarray(res.total, np.float64),
                     "acc": float(np.mean(res.prediction == y)) if (y >= 0).all() else None}
        row = {"model": name, "val_acc": sc["val"]["acc"], "acc_3hp": sc[SHIFTS[0]]["acc"], **(extra or {})}
        for s in ("density", "mi", "total"):
            thr = float(np.quantile(sc["val"][s], 0.95))
            row[f"abstain_3hp_{s}"] = float(np.mean(sc[SHIFTS[0]][s] > thr))
            for k in SHIFTS:
                row[f"auroc_{s}[{k}]"] = float(auroc(sc["val"][s], sc[k][s]))
        log(json.dumps(row))
        return row

    rows = []
    teachers = {}
    one_pass = {"stochastic_blocks": [], "stochastic_head": False}   # DDU / SNGP: no stochastic sites
    for scheme, overrides in (("mc_dropout", {}), ("ddu", one_pass), ("sngp", one_pass)):
        ck_dir = work / "teachers" / scheme
        if (ck_dir / "checkpoint.json").is_file():
            ck = load_checkpoint(ck_dir)
        else:
            model = {**dict(rec.model), "scheme": scheme, **overrides}
            cfg = ModelConfig.from_dict(model, input_length=sp.window, num_classes=len(classes))
            t0 = time.time()
            ck = train_stage(sp, cfg, TrainConfig.from_dict(rec.train, epochs=epochs), ck_dir, uq=rec.uq,
                                    progress=False, log=log)
            log(f"{scheme}: trained in {time.time() - t0:.0f} s")
        teachers[scheme] = ck
        rows.append(evaluate(f"teacher {scheme}", ck))
    t_row = rows[0]
    srec = get_recipe("cwru-student")
    scfg = ModelConfig.from_dict(srec.model, input_length=sp.window, num_classes=len(classes))
    teacher = load_teacher(teachers["mc_dropout"].directory)
    tcfg = TransferConfig(copies=1, teacher_samples=32, seed=0)
    labelled = label_transfer(teacher, sp, tcfg)
    for fw in feature_weights:
        ck = distill_stage(teacher, scfg, sp, work / "students" / f"fw{fw:g}", tcfg,
                           DistillConfig(feature_weight=fw, train=replace(DISTILL_TRAIN, epochs=distill_epochs)), progress=False, log=log,
                           labelled=labelled)
        row = evaluate(f"student kl+uq, feature weight {fw:g}", ck)
        row["retained_auroc"] = {f"{s}[{k}]": row[f"auroc_{s}[{k}]"] / t_row[f"auroc_{s}[{k}]"]
                                 for s in ("density", "mi", "total") for k in FLAG}
        log(json.dumps(row["retained_auroc"]))
        rows.append(row)
    return {"rows": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cwru", type=Path, default=Path("../shared/data/cwru"))
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--distill-epochs", type=int, default=8)
    ap.add_argument("--feature-weights", type=float, nargs="+", default=[0.0, 1.0])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--quick", action="store_true", help="2 epochs (2 distillation epochs): mode quick")
    a = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from edgeuq.provenance import command_line, finish, start, write_results
    from edgeuq.report import results_table

    prov, command = start("quick" if a.quick else "full", 1), command_line("bench/feature_students.py", argv)
    if a.quick:
        a.epochs = 2
        a.distill_epochs = 2
    if not (a.cwru / "MANIFEST.csv").is_file():
        print(f"feature_students: SKIPPED, no CWRU folder at {a.cwru} (not measured)")
        return 1
    res = run(a.cwru, a.work, a.epochs, a.distill_epochs, a.feature_weights)
    from _shift_table import table

    headers, rows = table(res["rows"], ("density", "mi", "total"), ())
    headers.append("retained AUROC density / MI / total (0.021 size; other geometry)")
    for r, line in zip(res["rows"], rows):
        ret = r.get("retained_auroc")
        line.append("-" if not ret else "; ".join(
            " / ".join(f"{ret[f'{s}[{k}]']:.3f}" for s in ("density", "mi", "total"))
            for k in ("unseen size 0.021", "other geometry (simulated)")))
    if a.json:
        write_results(a.json, results_table(headers, rows, raw=res["rows"]), command,
                      finish(prov, note="other-geometry bearings simulated; one seed; density fitted on training windows"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
