"""The shift suite on real bearing data: teacher(s) and the distilled student, every score side by side.

One run:

1. **Data** (any registered source; default the CWRU folder ../shared/data/cwru, else the
   embedded physics-based synthetic set, named so): the protocol of ``edgeuq.shifts`` holds out
   whole recordings -- the largest load (generalise), the largest fault size (flag) -- and cuts
   every other recording in time into train | val | cal | test.
2. **Models** trained here on the protocol's training windows only: the teacher of each scheme
   recipe asked for (``compile/cwru-<scheme>.toml``; quick: mc-dropout), the student distilled from
   the first teacher (``compile/cwru-student.toml``), and a teacher trained without one fault
   type (unseen fault type, whole recordings). ``--quick`` cuts epochs (numbers are then a smoke
   run, said so in the JSON).
3. **Suite** (``edgeuq.shifts.run_suite``): per model, calibrate a copy of its bundle (density on
   the training windows, conformal p-values on cal), pick the device rule on validation, score
   every shift with MI, total entropy, density, the old max-z, min-p, Fisher and the device rule.

    python bench/shifts.py [--quick] [--data DIR] [--json results/shifts.json] [--plot docs/shifts.png]

Writes the JSON (with provenance) that ``scripts/render_tables.py`` renders into docs/shifts.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


REPO = Path(__file__).resolve().parents[1]
QUICK_EPOCHS = 4


def _splits(data):
    from edgeuq.data import Splits, WindowDataset
    from edgeuq_runtime.preprocess import zscore_windows

    def z(ds):
        return WindowDataset(zscore_windows(ds.x), ds.y, ds.class_names, ds.fs, ds.meta)

    return Splits(z(data.train), z(data.val), z(data.test))


#: augmentation kinds of the student's transfer set: none of them is a family the suite evaluates
#: (white noise is a "generalise" set, clipping a "flag" set), so the student sees no evaluation shift
#: in training, like its teachers; pink (1/f) noise stands in for white noise.
STUDENT_TRANSFER_KINDS = ("pink_noise", "shift", "mixup", "synthetic")


def student_transfer(quick: bool):
    from edgeuq.compress.transfer import TransferConfig

    return TransferConfig(copies=1, kinds=STUDENT_TRANSFER_KINDS, snr_db=(6.0, 20.0),
                          teacher_samples=8 if quick else 32, seed=0)


def train_models(records, work: Path, schemes, quick: bool, drop_type: str, protocol, log=print):
    """Checkpoints -> bundles of the teachers, the student and the teacher without ``drop_type``."""
    import torch

    from edgeuq.bundle import build_bundle
    from edgeuq.catalog import get_recipe
    from edgeuq.compress.distill import DISTILL_TRAIN, DistillConfig
    from edgeuq.compress.stages import distill_stage, load_teacher
    from edgeuq.export import export_onnx
    from edgeuq.models import ModelConfig
    from edgeuq.pipeline import train_stage
    from edgeuq.shifts import build_protocol_data
    from edgeuq.training import TrainConfig

    torch.set_num_threads(1)
    models, timings = [], {}

    def bundle(ck, name, samples):
        art = export_onnx(ck, work / "onnx" / name, verify=True)
        return build_bundle(art, work / "bundles" / name, name, "0.0.0", default_samples=samples, overwrite=True).root

    def teacher(scheme, classes, tag):
        rec = get_recipe(f"cwru-{scheme}")
        data = build_protocol_data(records, classes, int(rec.data["window"]), protocol)
        sp = _splits(data)
        epochs = QUICK_EPOCHS if quick else int(rec.train["epochs"])
        cfg = ModelConfig.from_dict(rec.model, input_length=sp.window, num_classes=len(classes))
        t0 = time.perf_counter()
        ck = train_stage(sp, cfg, TrainConfig.from_dict(rec.train, epochs=epochs), work / "ck" / tag, uq=rec.uq,
                         progress=False, log=log)
        timings[tag] = time.perf_counter() - t0
        log(f"{tag}: trained {epochs} epochs in {timings[tag]:.0f} s")
        return ck, sp, rec

    classes = ("normal", "inner_race", "outer_race", "ball")
    first = None
    for scheme in schemes:
        ck, sp, rec = teacher(scheme, classes, f"teacher-{scheme}")
        samples = 16 if quick else int(rec.uq.get("samples", 32))
        models.append((f"teacher {scheme}", bundle(ck, f"teacher-{scheme}", samples)))
        first = first or (ck, sp)
    ck, sp = first
    srec = get_recipe("cwru-student")
    scfg = ModelConfig.from_dict(srec.model, input_length=sp.window, num_classes=len(classes))
    t0 = time.perf_counter()
    sck = distill_stage(load_teacher(ck.directory), scfg, sp, work / "student",
                        student_transfer(quick),
                        DistillConfig(train=replace(DISTILL_TRAIN, epochs=QUICK_EPOCHS if quick else int(srec.train["epochs"]))),
                        progress=False,
                        log=log)
    timings["student"] = time.perf_counter() - t0
    models.append((f"student <- {schemes[0]}", bundle(sck, "student", 16 if quick else 16)))
    if drop_type:
        kept = tuple(c for c in classes if c != drop_type)
        tck, _, rec = teacher(schemes[0], kept, f"teacher-{schemes[0]}-no-{drop_type}")
        models.append((f"teacher {schemes[0]} without {drop_type}", bundle(tck, f"teacher-no-{drop_type}",
                                                                             16 if quick else 32)))
    return models, timings


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "cwru"),
                    help="any data source with record metadata (default: the CWRU folder; synthetic without it)")
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_EPOCHS} epochs, S = 16, <= 160 windows per set "
                                                        "(smoke run)")
    ap.add_argument("--schemes", nargs="+", default=None, help="teacher recipes cwru-<scheme> (default: mc-dropout "
                                                               "quick; mc-dropout hsa variational laplace full)")
    ap.add_argument("--drop-type", default="ball", help="the fault type a second teacher never sees ('' = none)")
    ap.add_argument("--work", type=Path, default=Path("bench_out/shifts"))
    ap.add_argument("--json", type=Path, default=REPO / "results" / "shifts.json")
    ap.add_argument("--plot", type=Path, default=REPO / "docs" / "shifts.png")
    ap.add_argument("--samples", type=int)
    ap.add_argument("--reuse", action="store_true", help="evaluate the models an earlier run trained in --work "
                                                         "(its models.json) instead of training again")
    ap.add_argument("--from-json", type=Path, metavar="RUN_JSON",
                    help="run nothing: rewrite the tables (and the plot) of an earlier run's JSON in place")
    a = ap.parse_args(argv)
    if a.from_json is not None:
        from edgeuq.shifts.run import plot_suite, suite_tables

        doc = json.loads(a.from_json.read_text())
        doc["tables"] = suite_tables(doc["suite"])
        a.from_json.write_text(json.dumps(doc, indent=1, default=str, allow_nan=True))
        print(f"tables rewritten: {a.from_json}; plot: {plot_suite(doc['suite'], a.plot)}")
        return 0

    from edgeuq.data import synthetic_records
    from edgeuq.data.sources import load_records
    from edgeuq.provenance import command_line, finish, start
    from edgeuq.shifts import SetOptions, ShiftProtocol, SuiteOptions
    from edgeuq.shifts.run import plot_suite, run_suite, suite_tables

    t_start = time.perf_counter()
    prov = start("quick" if a.quick else "full", 1)
    cmd = command_line("bench/shifts.py", argv)
    data_path = Path(a.data)
    if data_path.exists():
        records, src = load_records(data_path)
        source = f"{src.describe} {data_path.name} ({len(records)} recordings)"
    else:
        print(f"{data_path} not found: using the embedded physics-based synthetic data (SIMULATED)")
        records = synthetic_records()
        source = f"SIMULATED: embedded physics-based synthetic set ({len(records)} recordings)"
    schemes = a.schemes or (["mc-dropout"] if a.quick else ["mc-dropout", "hsa", "variational", "laplace"])
    protocol = ShiftProtocol(max_eval_windows=160 if a.quick else None)
    a.work.mkdir(parents=True, exist_ok=True)
    listing = a.work / "models.json"
    if a.reuse and listing.is_file():
        saved = json.loads(listing.read_text())
        models, timings = [(n, Path(p)) for n, p in saved["models"]], saved["timings_s"]
        transfer = saved.get("student_transfer", "not recorded by the run that trained these models")
        print(f"reusing the models trained by an earlier run: {listing}")
    else:
        models, timings = train_models(records, a.work, schemes, a.quick, a.drop_type, protocol)
        transfer = student_transfer(a.quick).to_dict()
        listing.write_text(json.dumps({"models": [[n, str(p)] for n, p in models], "timings_s": timings,
                                       "student_transfer": transfer}, indent=1))
    doc = run_suite(models, records, a.work / "suite", protocol, SetOptions(),
                    SuiteOptions(samples=a.samples, progress=False))
    note = (f"QUICK smoke run ({QUICK_EPOCHS} epochs, S = 16, <= 160 windows per set): not the full measurement"
            if a.quick else "full run (recipe epochs)")
    kinds = transfer.get("kinds") if isinstance(transfer, dict) else None
    note += (f"; student transfer set: {', '.join(kinds) if kinds else transfer}"
             f"; data: {source}; {time.perf_counter() - t_start:.0f} s in all")
    if a.reuse:
        note += f"; models trained by an earlier run of the same command in {a.work} (--reuse)"
    provenance = finish(prov, note=note)
    tables = suite_tables(doc)
    out = {"command": cmd, "provenance": provenance, "mode": "quick" if a.quick else "full", "source": source,
           "timings_s": timings, "tables": tables, "suite": doc,
           "student_transfer": transfer}
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(out, indent=1, default=str, allow_nan=True))
    print(f"json: {a.json}")
    print(f"plot: {plot_suite(doc, a.plot)}")
    from edgeuq.report import format_table

    for name, t in tables.items():
        print(f"\n{name}:\n" + format_table(t["headers"], t["rows"]))
    print(f"\n{provenance['note']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
