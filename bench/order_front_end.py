"""With vs without the order-tracking front ends ("order", "order_envelope") on CWRU: train on loads 0-2 hp (fault size 0.021 in
held out), test on the whole 3 hp recordings (a new load = a new speed, same orders) and flag
shifts that should look foreign (the unseen fault size; a *simulated* bearing of other geometry
from the physics-based generator).

    python bench/order_front_end.py --cwru ../shared/data/cwru --work /tmp/ofe --json results/order_front_end.json

Per model (S = 32, device runtime): accuracy on 3 hp, false abstention on 3 hp at the threshold that
flags 5 % of in-distribution validation windows (per score: density, MI), and AUROC (validation
windows of the training loads vs each set). The density is fitted on the training windows' features
(never on a scored window). With the front end, the runtime is given each record's measured rpm; the
"estimated speed" row runs the same bundle with the speed estimated per window (no rpm given).
Skips cleanly (exit 0, message) without the CWRU folder.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

HELD_LOAD, UNSEEN_SIZE, EVAL_HOP = 3.0, 0.021, 2048


def _windows(records, window, hop, front_end, classes, allow_unknown=False):
    from edgeuq.data import window_records

    raw = window_records(records, window, hop, class_names=classes, normalize=False, allow_unknown=allow_unknown)
    rpm = np.array([float(next(r for r in records if r.record_id == rid).meta.get("rpm", np.nan))
                    for rid in raw.meta["record"]])
    return raw, rpm


def run(cwru: Path, work: Path, epochs: int, log=print) -> dict:
    import torch

    from edgeuq.bundle.build import write_artifact_bundle
    from edgeuq.catalog import get_recipe
    from edgeuq.data import BEARING_CLASSES, load_cwru, split_by_load
    from edgeuq.data.synthetic import BearingGeometry, SyntheticBearingConfig, synthetic_records
    from edgeuq.data.windowing import front_end_from_recipe
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
    held = [r for r in kept if float(r.meta["load_hp"]) == HELD_LOAD]
    geo = BearingGeometry(n_balls=12, ball_diameter=0.25, pitch_diameter=1.8)  # other orders (simulated)
    other = synthetic_records(SyntheticBearingConfig(fs=12000.0, duration_s=4.0, loads=(0.0, 3.0), geometry=geo,
                                                     severities=(0.014,), normal_records_per_load=1, seed=7),
                              kinds=("inner_race", "outer_race", "ball"))
    out = {"rows": []}
    for name, fe_data in (("time domain (no front end)", {}),
                          ("order tracking", {"front_end": "order", "front_end_rpm": [1600, 2000]}),
                          ("envelope order spectrum", {"front_end": "order_envelope", "front_end_rpm": [1600, 2000]})):
        fe = front_end_from_recipe({**dict(rec.data), **fe_data})
        tag = fe.front_end if fe is not None else "time"
        sp = split_by_load(kept, [HELD_LOAD], window, hop, class_names=classes, front_end=fe)
        ck_dir = work / tag / "checkpoint"
        t0 = time.time()
        if (ck_dir / "checkpoint.json").is_file():
            ck = load_checkpoint(ck_dir)
        else:
            cfg = ModelConfig.from_dict(rec.model, input_length=sp.window, num_classes=len(classes))
            ck = train_stage(sp, cfg, TrainConfig.from_dict(rec.train, epochs=epochs), ck_dir, uq=rec.uq,
                                    progress=False, log=log)
        train_s = time.time() - t0
        art = export_onnx(ck, work / tag / "onnx", verify=True)
        write_artifact_bundle(art, work / tag / "bundle", f"ofe-{tag}", "0.1.0", default_samples=32, overwrite=True,
                              sections={"preprocessing": fe} if fe is not None else None)
        rt = UncertaintyRuntime(work / tag / "bundle", seed=0)

        def feats_scores(x, rpm=None):
            kw = {"rpm": rpm} if fe is not None and rpm is not None else {}
            f = rt.trunk_features(x, **kw)
            res = rt.predict(x, samples=32, **kw)
            return f, res

        # density fitted on the training windows (raw windows through the runtime, never a scored window)
        tr_raw, tr_rpm = _windows(kept, window, 4 * hop, fe, classes)  # a thinned copy of the training loads' windows
        keep = tr_raw.meta["load_hp"] != HELD_LOAD
        tr_cut = np.array([s < 0.85 * len(next(r for r in kept if r.record_id == rid))
                           for rid, s in zip(tr_raw.meta["record"], tr_raw.meta["start"] + window)])
        m = keep & tr_cut
        f_tr = rt.trunk_features(tr_raw.x[m], **({"rpm": tr_rpm[m]} if fe is not None else {}))
        dens = fit_density(f_tr, tr_raw.y[m], num_classes=len(classes))
        # in-distribution validation: the time-disjoint tails (last 15 %) of the training-load records
        va_raw, va_rpm = _windows([r for r in kept if float(r.meta["load_hp"]) != HELD_LOAD], window, EVAL_HOP, fe, classes)
        tail = np.array([s >= 0.85 * len(next(r for r in kept if r.record_id == rid))
                         for rid, s in zip(va_raw.meta["record"], va_raw.meta["start"])])
        sets = {"val (0-2 hp tails)": (va_raw.x[tail], va_raw.y[tail], va_rpm[tail])}
        h_raw, h_rpm = _windows(held, window, EVAL_HOP, fe, classes)
        sets["new load 3 hp"] = (h_raw.x, h_raw.y, h_rpm)
        u_raw, u_rpm = _windows(unseen, window, EVAL_HOP, fe, classes, allow_unknown=True)
        sets["unseen size 0.021"] = (u_raw.x, u_raw.y, u_rpm)
        o_raw, o_rpm = _windows(other, window, EVAL_HOP, fe, classes)
        sets["other geometry (simulated)"] = (o_raw.x, o_raw.y, o_rpm)
        variants = [("given rpm" if fe is not None else "-", True)]
        if fe is not None and fe.front_end == "order":
            variants.append(("estimated per window", False))
        for speed, use_rpm in variants:
            sc = {}
            for k, (x, y, rpm) in sets.items():
                f, res = feats_scores(x, rpm if use_rpm else None)
                d = dens.score(f)
                sc[k] = {"density": d, "mi": np.asarray(res.epistemic, dtype=np.float64),
                         "acc": float(np.mean(np.asarray(res.prediction) == y)) if (y >= 0).all() else float("nan")}
            thr = {s: float(np.quantile(sc["val (0-2 hp tails)"][s], 0.95)) for s in ("density", "mi")}
            row = {"model": name, "speed": speed, "train_s": round(train_s, 1),
                   "val_acc": sc["val (0-2 hp tails)"]["acc"], "acc_3hp": sc["new load 3 hp"]["acc"]}
            for s in ("density", "mi"):
                row[f"abstain_3hp_{s}"] = float(np.mean(sc["new load 3 hp"][s] > thr[s]))
                for k in ("new load 3 hp", "unseen size 0.021", "other geometry (simulated)"):
                    row[f"auroc_{s}[{k}]"] = float(auroc(sc["val (0-2 hp tails)"][s], sc[k][s]))
            log(json.dumps(row))
            out["rows"].append(row)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cwru", type=Path, default=Path("../shared/data/cwru"))
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--quick", action="store_true", help="2 epochs: mode quick")
    a = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from edgeuq.provenance import command_line, finish, start, write_results
    from edgeuq.report import results_table

    prov, command = start("quick" if a.quick else "full", 1), command_line("bench/order_front_end.py", argv)
    if a.quick:
        a.epochs = 2
    if not (a.cwru / "MANIFEST.csv").is_file():
        print(f"order_front_end: SKIPPED, no CWRU folder at {a.cwru} (not measured)")
        return 1
    res = run(a.cwru, a.work, a.epochs)
    from _shift_table import table

    headers, rows = table(res["rows"], ("density", "mi"), (("speed", "speed"),))
    if a.json:
        write_results(a.json, results_table(headers, rows, raw=res["rows"]), command,
                      finish(prov, note="other-geometry bearings simulated; one seed; 3 hp = whole recordings; density fitted on training windows"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
