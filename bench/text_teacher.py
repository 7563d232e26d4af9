"""Pretrained MiniLM text teacher on SST-2: fine-tune (frozen lower layers cached),
MC dropout and last-layer Laplace heads, OOD against TREC, device bundles.

    nice -n 10 .venv/bin/python bench/text_teacher.py [--train-layers 2] [--epochs 1] \\
        [--tables-json results/text_teacher.json]
    ... --reuse-teacher --student-only --student [--student-scheme laplace] [--student-d-model 128] \\
        [--student-augment 1]                 # a student of an earlier teacher run
    python bench/text_teacher.py --from-json RUN1/results.json [RUN2/results.json ...]
                                            # print earlier runs' tables, run nothing
    python bench/text_teacher.py --quick --student --tables-json results/text_teacher.json
                                            # minutes: 1 layer, 1 epoch on 3,000 phrases (mode quick)

The teacher is made by the library's text-teacher stage
(:func:`edgeuq.text.pipeline.train_text_teacher`: frozen-layer cache, fine-tuning,
last-layer Laplace, one verified device bundle per head, runtime metrics); this
script only adds the benchmark's measurements on that artifact (host-side heads
incl. the deterministic reference, latency, the student) and its tables.

Needs the ``text`` extra (packaged all-MiniLM-L6-v2; ``--model`` takes another BERT
folder) and ../shared/data/text (SST-2, TREC). Writes under --out (default
runs/text_teacher, git-ignored): teacher/ (the text_teacher artifact, with its
frozen-layer cache, reused across runs), student/, results.json; prints one table.
Every number is measured in this run; latencies are medians on one thread of this
(shared) machine.

Splits: train = SST-2 train (phrases, --train-limit caps it), validation (early
choice of nothing, Laplace prior precision) = 2000 sentences of SST-2 dev,
test = SST-2 test (the GLUE dev set, 872 sentences); OOD = TREC test (500
questions) and TREC train (5452).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402

from edgeuq_runtime.atomic import atomic_write  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "text"


def _features(model, ids: np.ndarray, batch: int = 128) -> np.ndarray:
    lengths = (ids != 0).sum(1)
    order = np.argsort(lengths)
    out = np.zeros((len(ids), model.feature_dim), dtype=np.float32)
    with torch.no_grad():
        for i in range(0, len(ids), batch):
            idx = order[i:i + batch]
            t = int(lengths[idx].max())
            out[idx] = model.trunk(torch.from_numpy(ids[idx, :t])).numpy()
    return out


def _uq_scores(probs_s: np.ndarray) -> dict:
    from edgeuq.uq import decompose

    r = decompose(probs_s)
    return {"probs": r.probs, "total": r.total, "mi": r.epistemic, "maxp": 1.0 - r.probs.max(-1)}


def _evaluate(probs_s: np.ndarray, labels: np.ndarray, ood: dict) -> dict:
    from edgeuq.uq import auroc, expected_calibration_error, nll

    ind = _uq_scores(probs_s["test"])
    row = {"acc": float(np.mean(ind["probs"].argmax(-1) == labels)),
           "ece": expected_calibration_error(ind["probs"], labels),
           "nll": nll(ind["probs"], labels)}
    for name in ood:
        o = _uq_scores(probs_s[name])
        for score in ("mi", "total", "maxp"):
            row[f"auroc_{name}_{score}"] = auroc(ind[score], o[score])
    return row


def _latency(rt, texts, samples: int, repeats: int = 5) -> dict:
    """Deterministic and S-sample calls timed in the same rounds (random order per round, one
    warm-up round discarded); ``ratio`` is the paired median of the per-round ratios."""
    from edgeuq.profile import measure_stages, paired_ratio

    ids = rt.tokenize(texts)
    st = measure_stages({"det": lambda: rt.deterministic(ids), "mc": lambda: rt.predict(ids, samples=samples, seed=0)},
                        warmup=1, repeats=repeats)
    r = paired_ratio(st["mc"], st["det"])
    return {"det_ms": st["det"].median_ms / len(texts), "mc_ms": st["mc"].median_ms / len(texts), "ratio": r.median,
            "ratio_ci": [r.ci_low, r.ci_high], "latency_rounds": repeats}


def main(argv=None) -> int:
    from edgeuq.text.heads import text_scheme_names

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "text_teacher")
    ap.add_argument("--model", type=Path, default=None,
                    help="a BERT model folder or zip instead of the packaged MiniLM (tests use a tiny one)")
    ap.add_argument("--train-layers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--train-limit", type=int, default=0, help="use the first N training phrases (0 = all)")
    ap.add_argument("--train-subset", type=int, default=0,
                    help="fine-tune on a random N of the cached phrases (0 = all; the cache covers all)")
    ap.add_argument("--val-limit", type=int, default=2000, help="validation sentences: a random N of SST-2 dev")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--lr-encoder", type=float, default=5e-5)
    ap.add_argument("--lr-head", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ood-features", default="none",
                    help="features the teacher bundles' trunk also emits for the density score (the text-teacher "
                         "stage's option; 'none' keeps the bundles the plain classifier, as this bench always had)")
    ap.add_argument("--reuse-teacher", action="store_true",
                    help="load the text_teacher artifact in --out/teacher instead of running the stage (a run "
                         "with the same options reuses it anyway)")
    ap.add_argument("--student", action="store_true", help="also distil the edge student (edgeuq.compress stage)")
    ap.add_argument("--student-only", action="store_true",
                    help="with --reuse-teacher: skip the teacher evaluation, run only the student stage")
    ap.add_argument("--student-phrases", type=int, default=30000, help="teacher-labelled phrases for the student")
    ap.add_argument("--student-epochs", type=int, default=6)
    ap.add_argument("--student-teacher", choices=text_scheme_names(), default="laplace",
                    help="which teacher head labels the transfer set")
    ap.add_argument("--student-scheme", choices=text_scheme_names(), default="laplace",
                    help="the student's stochastic head: MC dropout (distilled with kl+uq) or a last-layer Laplace "
                         "posterior fitted on its own features after distillation (distilled with kl)")
    ap.add_argument("--student-augment", type=int, default=0, metavar="COPIES",
                    help="add COPIES augmented copies of each transfer phrase (word masking + n-gram sampling, "
                         "Tang et al. 2019), labelled by the teacher only")
    ap.add_argument("--reuse-student", action="store_true",
                    help="with --student: take the distilled student checkpoint an earlier run left in "
                         "--out/student/checkpoint (same options) instead of distilling again")
    ap.add_argument("--student-d-model", type=int, default=64)
    ap.add_argument("--student-depth", type=int, default=2)
    ap.add_argument("--student-ffn", type=int, default=128)
    ap.add_argument("--calibrate-phrases", type=int, default=4000,
                    help="training phrases that fit each bundle's density model (edgeuq calibrate; the teacher's "
                         "trunk is slow on one thread, so a random subset)")
    ap.add_argument("--tables-json", type=Path, help="also write both tables for scripts/render_tables.py "
                                                     "(e.g. results/text_teacher.json)")
    ap.add_argument("--from-json", type=Path, nargs="+", metavar="RESULTS_JSON",
                    help="run nothing: print (and with --tables-json write) the tables of earlier runs' "
                         "results.json (each run's teacher heads; the student of each run that has one)")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke-sized run whose JSON says mode quick: top layer only, 1 epoch on 3,000 phrases, a "
                         "student on 3,000 phrases for 2 epochs, 500 calibration phrases")
    a = ap.parse_args(argv)
    if a.from_json is not None:
        return _from_json(a)
    if a.student_only and not a.reuse_teacher:
        ap.error("--student-only needs --reuse-teacher")
    from edgeuq.provenance import command_line, start

    if a.quick:
        a.train_layers, a.epochs, a.train_subset = 1, 1, a.train_subset or 3000
        a.student_phrases, a.student_epochs, a.calibrate_phrases = min(a.student_phrases, 3000), 2, 500
    a.provenance = start("quick" if a.quick else "full", 1)
    a.command = command_line("bench/text_teacher.py", argv)
    torch.set_num_threads(1)

    from edgeuq.data.text import SST2_CLASSES, load_sst2, load_trec
    from edgeuq.text.cache import cache_hidden, cache_key
    from edgeuq.text.finetune import sample_probs
    from edgeuq.text.pipeline import TeacherOptions, cache_path, load_text_teacher, seeded_rows, train_text_teacher
    from edgeuq.text.pretrained import load_pretrained
    from edgeuq.text.wordpiece import wordpiece_from_tokenizer_json
    from edgeuq_runtime import UncertaintyRuntime, load_bundle

    sst_dir, trec_dir = a.data / "sst2", a.data / "trec"
    if not (sst_dir / "train.tsv").is_file() or not (trec_dir / "test.tsv").is_file():
        print(f"SST-2/TREC not found under {a.data}; nothing to do", file=sys.stderr)
        return 2
    t_start = time.time()
    teacher_dir = a.out / "teacher"
    # ---- the teacher: the library's text-teacher stage (cache, fine-tune, Laplace, bundles, runtime metrics)
    if a.reuse_teacher:
        if not (teacher_dir / "text_teacher.json").is_file():
            ap.error(f"--reuse-teacher: no text_teacher artifact in {teacher_dir}")
        art = load_text_teacher(teacher_dir)
    else:
        opts = TeacherOptions(train_layers=a.train_layers, epochs=a.epochs, lr=a.lr_encoder, lr_head=a.lr_head,
                              max_length=a.max_length, train_limit=a.train_limit, train_subset=a.train_subset,
                              val_limit=a.val_limit, samples=a.samples, seed=a.seed,
                              schemes=tuple(text_scheme_names()), threads=1, ood_features=a.ood_features)
        art = train_text_teacher(sst_dir / "train.tsv", teacher_dir, opts, val=sst_dir / "dev.tsv",
                                 test=sst_dir / "test.tsv", ood=[trec_dir / "test.tsv", trec_dir / "train.tsv"],
                                 class_names=SST2_CLASSES, model=a.model, name="minilm-sst2",
                                 log=lambda m: print(m, flush=True))
    o = art.options
    # ---- the benchmark's own measurements on the stage's artifact
    pre = load_pretrained(a.model)
    tok = wordpiece_from_tokenizer_json(pre.tokenizer_json, art.max_length)
    sst = load_sst2(sst_dir)
    trec_test, trec_train = load_trec(trec_dir, "test"), load_trec(trec_dir, "train")
    train = sst["train"]
    if o["train_limit"] and o["train_limit"] < len(train):
        train = train.subset(np.arange(o["train_limit"]))
    val = sst["dev"].subset(seeded_rows(len(sst["dev"]), o["val_limit"], o["seed"]))  # the stage's validation rows
    model = art.load_model()
    start = pre.config.num_hidden_layers - o["train_layers"]
    ids_train = tok.encode_batch(train.texts)
    if a.student:  # the stage's frozen-layer cache of every training phrase (read back, not recomputed)
        enc = pre.encoder().eval()
        full_cache = cache_hidden(enc, ids_train, train.y, start,
                                  path=cache_path(teacher_dir, "train", cache_key(enc, ids_train, start)),
                                  batch_size=128, name="sst2-train")
    if a.student_only:  # the teacher artifact and results.json of an earlier run; only the student stage runs
        results = json.loads((a.out / "results.json").read_text())
        results["student"] = _student(a, art.load_model(a.student_teacher), pre, tok, full_cache, ids_train, train.y, train.texts, val,
                                      _features(model, tok.encode_batch(val.texts)), sst["test"],
                                      {"trec_test": trec_test}, teacher_dir)
        results["student"]["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        atomic_write(a.out / "results.json", json.dumps(results, indent=1))
        _print_side_by_side(results)
        _maybe_write_tables(a, argv, results)
        return 0
    sets = {"val": val, "test": sst["test"], "trec_test": trec_test, "trec_train": trec_train}
    feats = {k: _features(model, tok.encode_batch(v.texts)) for k, v in sets.items()}
    ood = {"trec_test": None, "trec_train": None}
    rows = {}
    with torch.no_grad():  # deterministic (MAP) reference
        det = {k: torch.softmax(model.head_forward(torch.from_numpy(f)), -1).numpy()[None] for k, f in feats.items()}
    rows["deterministic"] = _evaluate(det, sst["test"].y, ood)
    runtime_rows, bundles = {}, {}
    lat_texts = list(sst["test"].texts[:32])
    for scheme in art.bundles:  # the stage's heads (the Laplace posterior is in the artifact's weights)
        head = art.load_model(scheme)  # the same weights with this scheme's head (built from the stored config)
        rows[scheme] = _evaluate({k: sample_probs(head, f, a.samples, seed=2) for k, f in feats.items()},
                                 sst["test"].y, ood)
        root = art.bundle_path(scheme)
        b = load_bundle(root)
        rt = UncertaintyRuntime(root, threads=1, seed=0)
        runtime_rows[scheme] = {"runtime_acc": art.metrics[scheme]["accuracy"],
                                "bytes": int(sum((b.root / f).stat().st_size for f in b.manifest.files)),
                                **_latency(rt, lat_texts, a.samples)}
        bundles[scheme] = str(root)

    timings = dict(art.timings)
    results = {"pretrained": art.base, "weights_sha256": art.weights_sha256, "train_phrases": art.data["rows"]["train"],
               "train_layers": o["train_layers"], "epochs": o["epochs"], "samples": a.samples,
               "cache_s": timings.get("cache_s"), "train_s": None if a.reuse_teacher else timings.get("train_s"),
               "history": dict(art.history), "laplace": art.laplace, "rows": rows, "runtime": runtime_rows,
               "bundles": bundles, "teacher_artifact": str(teacher_dir), "total_s": time.time() - t_start,
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "machine": f"{platform.machine()}, {os.cpu_count()} cores"}
    if a.student:
        results["student"] = _student(a, art.load_model(a.student_teacher), pre, tok, full_cache, ids_train, train.y, train.texts, val,
                                      feats["val"], sst["test"], {"trec_test": trec_test, "trec_train": trec_train},
                                      teacher_dir)
    a.out.mkdir(parents=True, exist_ok=True)
    atomic_write(a.out / "results.json", json.dumps(results, indent=1))

    t_cache, t_train = results["cache_s"], results["train_s"]
    print(f"\nteacher {art.base}, SST-2 ({results['train_phrases']} phrases, top {o['train_layers']} layers + head, "
          f"{o['epochs']} epoch(s); cache " + (f"{t_cache:.0f}s" if t_cache is not None else "-") + ", training "
          + (f"{t_train:.0f}s" if t_train is not None else "in an earlier run") + f"), S = {a.samples}, OOD = TREC")
    hdr = (f"{'head':<14}{'acc':>7}{'ECE':>7}{'NLL':>7}{'AUROC MI':>10}{'AUROC H':>9}{'AUROC 1-p':>11}"
           f"{'(trec-train MI/H)':>19}{'rt acc':>8}{'det ms':>8}{'S ms':>7}{'ratio':>7}{'MB':>6}")
    print(hdr)
    for name, r in rows.items():
        rt = runtime_rows.get(name, {})
        extra = (f"{rt['runtime_acc']:>8.4f}{rt['det_ms']:>8.2f}{rt['mc_ms']:>7.2f}{rt['ratio']:>7.2f}"
                 f"{rt['bytes'] / 1e6:>6.1f}") if rt else f"{'-':>8}{'-':>8}{'-':>7}{'-':>7}{'-':>6}"
        print(f"{name:<14}{r['acc']:>7.4f}{r['ece']:>7.4f}{r['nll']:>7.3f}{r['auroc_trec_test_mi']:>10.3f}"
              f"{r['auroc_trec_test_total']:>9.3f}{r['auroc_trec_test_maxp']:>11.3f}"
              f"{r['auroc_trec_train_mi']:>10.3f}/{r['auroc_trec_train_total']:.3f}{extra}")
    print("(deterministic: MI is 0 by construction, its MI AUROC is 0.5; ms per sentence, batch of 32, one thread)")
    if a.student:
        _print_side_by_side(results)
    _maybe_write_tables(a, argv, results)
    return 0


#: Row labels of the teacher table.
HEAD_LABELS = {"deterministic": "deterministic (MAP)", "mc_dropout": "MC dropout (head)",
               "laplace": "last-layer Laplace (K-FAC GGN)"}
HEAD_NAMES = {"mc_dropout": "MC dropout", "laplace": "Laplace"}


def teacher_table(results: dict):
    """(headers, rows) of the teacher table (host evaluation + device-runtime columns) from a results.json."""
    s = results["samples"]
    headers = ["head", "acc", "ECE", "NLL", "AUROC MI (TREC test)", "AUROC total H", "AUROC 1-max p",
               "AUROC MI / H (TREC train)", "rt acc", "det ms", f"S={s} ms", "ratio", "bundle MB"]
    rows = []
    for name, r in results["rows"].items():
        rt = results.get("runtime", {}).get(name)
        mi = f"{r['auroc_trec_test_mi']:.3f}" + (" (MI = 0)" if name == "deterministic" else "")
        rows.append([HEAD_LABELS.get(name, name), f"{r['acc']:.4f}", f"{r['ece']:.4f}", f"{r['nll']:.3f}", mi,
                     f"{r['auroc_trec_test_total']:.3f}", f"{r['auroc_trec_test_maxp']:.3f}",
                     f"{r['auroc_trec_train_mi']:.3f} / {r['auroc_trec_train_total']:.3f}",
                     *([f"{rt['runtime_acc']:.4f}", f"{rt['det_ms']:.2f}", f"{rt['mc_ms']:.2f}", f"{rt['ratio']:.2f}",
                        f"{rt['bytes'] / 1e6:.1f}"] if rt else [None] * 5)])
    return headers, rows


def _opt(row: dict, key: str):
    """A score that only a calibrated bundle has: its value, or None ("–": not measured in that run)."""
    return f"{row[key]:.3f}" if key in row else None


def student_table(runs):
    """(headers, rows) of teacher vs student on the device runtime; ``runs``: [(run label, results.json), ...],
    each with a ``student`` section (one teacher row and one student row per run)."""
    samples = {r["samples"] for _, r in runs}
    if len(samples) != 1:
        raise ValueError(f"student runs with different S {sorted(samples)} cannot share one table")
    headers = ["model", "acc", "ECE", "AUROC MI", "AUROC total H", "AUROC density", "AUROC combined", "det ms",
               f"S={samples.pop()} ms", "ratio", "bundle MB"]
    rows = []
    for label, res in runs:
        st = res.get("student")
        if not st:
            raise ValueError(f"run {label}: its results.json has no student section")
        epochs = (f", {st['epochs']} epochs" + (f", best epoch {st['best_epoch']}" if st.get("best_epoch") else "")
                  if st.get("epochs") else "")
        cfg = st.get("config", {})
        arch = (f"d {cfg['d_model']}, depth {cfg['depth']}, {HEAD_NAMES.get(cfg.get('scheme', 'mc_dropout'))} head, "
                if cfg else "")
        for name, r in ((f"teacher of student {label} ({HEAD_NAMES.get(st['teacher_head'], st['teacher_head'])} head)",
                         st["teacher"]),
                        (f"student {label}: {arch}{st['phrases']:,} phrases"
                         + (f" + {st['augmented']:,} augmented" if st.get("augmented") else "")
                         + f"{epochs} (distillation "
                         + (f"{st['distill_s']:.0f} s)" if st.get("distill_s") is not None else "in an earlier run)"),
                         st["student"])):
            rows.append([name, f"{r['acc']:.4f}", f"{r['ece']:.4f}", f"{r['auroc_trec_test_mi']:.3f}",
                         f"{r['auroc_trec_test_total']:.3f}", _opt(r, "auroc_trec_test_density"),
                         _opt(r, "auroc_trec_test_combined"), f"{r['det_ms']:.2f}", f"{r['mc_ms']:.2f}",
                         f"{r['ratio']:.2f}", f"{r['bytes'] / 1e6:.2f}"])
    return headers, rows


def _fine_tune_label(results: dict) -> str:
    return (f"top {results['train_layers']} layers, {results['epochs']} epoch(s), "
            f"{results['train_phrases']:,} phrases")


def tables_json(runs) -> dict:
    """Both tables in scripts/render_tables.py's format from one or more results.json: ``teacher``
    (every run's heads, labelled by its fine-tuning when there are several) and ``student``
    (every run that has a student section: runs A, B, ...)."""
    runs = list(runs)
    teachers = []  # one teacher's rows once, however many student runs reused it
    for r in runs:
        if not any(t["rows"] == r["rows"] and t.get("runtime") == r.get("runtime") for t in teachers):
            teachers.append(r)
    headers, rows = teacher_table(teachers[0])
    if len(teachers) > 1:
        rows = [[f"{_fine_tune_label(r)}: {row[0]}", *row[1:]] for r in teachers for row in teacher_table(r)[1]]
    from edgeuq.report import results_table

    t = {"teacher": results_table(headers, rows)}
    students = [r for r in runs if r.get("student")]
    if students:
        t["student"] = results_table(*student_table([(chr(ord("A") + i), r) for i, r in enumerate(students)]))
    return {"tables": t}


def _maybe_write_tables(a, argv, results: dict) -> None:
    """This run's tables with its command and provenance (one run per results JSON: tables that
    mix runs are printed by --from-json, never written as if one command made them)."""
    if not a.tables_json:
        return
    from edgeuq.provenance import finish, write_results

    note = "the teacher of an earlier run (--reuse-teacher)" if a.reuse_teacher else None
    write_results(a.tables_json, tables_json([results]), a.command, finish(a.provenance, note=note))
    print(f"tables: {a.tables_json}")


def _print_markdown(headers, rows) -> None:
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" for _ in headers) + "|")
    for r in rows:
        print("| " + " | ".join("–" if c is None else str(c) for c in r) + " |")


def _from_json(a) -> int:
    """Re-render earlier runs' tables without running anything."""
    doc = tables_json([json.loads(p.read_text()) for p in a.from_json])
    for name, t in doc["tables"].items():
        print(f"\n{name}:")
        _print_markdown(t["headers"], t["rows"])
    if a.tables_json:
        print("--from-json prints only: a results table is written by the run that measured it", file=sys.stderr)
        return 2
    return 0


def _calibrate(bundle_dir, fit_ids, fit_y, cal_ids, cal_y, samples: int) -> None:
    """``edgeuq calibrate`` on a text bundle, in place: density on ``fit_ids``' trunk features,
    conformal and abstention thresholds on the held-out ``cal_ids``."""
    from edgeuq.calibrate.fit import CalibrationOptions, calibrate_bundle

    t0 = time.time()
    calibrate_bundle(Path(bundle_dir), cal_ids, cal_y, fit_ids, fit_y, CalibrationOptions(samples=samples),
                     log=lambda m: print(m, flush=True))
    print(f"calibrated {bundle_dir} in {time.time() - t0:.0f}s", flush=True)


def _runtime_eval(bundle_dir, test, ood: dict, samples: int, lat_texts) -> dict:
    """Accuracy, ECE, OOD AUROC (MI, total entropy, 1 - max p) and latency measured on the device runtime."""
    from edgeuq.calibrate.scores import calibrated_extra_scores
    from edgeuq.uq import auroc, expected_calibration_error, nll
    from edgeuq_runtime import UncertaintyRuntime, load_bundle

    rt = UncertaintyRuntime(bundle_dir, threads=1, seed=0)
    r = rt.predict_text(list(test.texts), samples=samples, seed=3)
    row = {"acc": float(np.mean(r.prediction == test.y)), "ece": expected_calibration_error(r.probs, test.y),
           "nll": nll(r.probs, test.y)}
    extra_in = calibrated_extra_scores(rt, rt.tokenize(list(test.texts)), r.epistemic, r.total, r.prediction)
    for name, ds in ood.items():
        o = rt.predict_text(list(ds.texts), samples=samples, seed=4)
        row[f"auroc_{name}_mi"] = auroc(r.epistemic, o.epistemic)
        row[f"auroc_{name}_total"] = auroc(r.total, o.total)
        row[f"auroc_{name}_maxp"] = auroc(1 - r.probs.max(-1), 1 - o.probs.max(-1))
        extra_out = calibrated_extra_scores(rt, rt.tokenize(list(ds.texts)), o.epistemic, o.total, o.prediction)
        for score in ("density", "combined"):  # only on a calibrated bundle; absent, never guessed
            if extra_in and score in extra_in:
                row[f"auroc_{name}_{score}"] = auroc(extra_in[score], extra_out[score])
    b = load_bundle(bundle_dir)
    row["bytes"] = int(sum((b.root / f).stat().st_size for f in b.manifest.files))
    row.update(_latency(rt, lat_texts, samples))
    return row


def _student(a, teacher, pre, tok, cache, ids_train, y_train, train_texts, val, val_feats, test, ood,
             teacher_dir: Path) -> dict:
    from edgeuq.compress.distill import DISTILL_TRAIN, DistillConfig
    from edgeuq.text.distill import distill_text_student, student_config, student_loss, teacher_transfer_sets

    rng = np.random.default_rng(a.seed + 7)
    idx = np.sort(rng.permutation(len(cache))[:a.student_phrases])
    t0 = time.time()
    if a.reuse_student:
        return _student_rest(a, tok, None, None, idx, rng, ids_train, y_train, val, test, ood, None, None, teacher_dir)
    labelled = teacher_transfer_sets(teacher, cache.subset(idx), ids_train[idx], val_feats, tok.encode_batch(val.texts),
                                     samples=16, seed=a.seed)
    y_transfer = y_train[idx]
    if a.student_augment:  # teacher-only labels on masked / n-gram copies (label -1: no human label)
        from edgeuq.compress.transfer import TransferSet
        from edgeuq.text.augment import AugmentConfig, augment_texts
        from edgeuq.text.finetune import sample_probs

        aug_ids = tok.encode_batch(augment_texts([train_texts[i] for i in idx],
                                                 AugmentConfig(copies=a.student_augment, seed=a.seed)))
        aug_probs = sample_probs(teacher, _features(teacher, aug_ids), 16, seed=a.seed + 3).astype(np.float32)
        tr, va = labelled
        labelled = (TransferSet(np.concatenate([tr.x, aug_ids]), np.concatenate([tr.probs, aug_probs], axis=1)), va)
        y_transfer = np.concatenate([y_transfer, np.full(len(aug_ids), -1, dtype=np.int64)])
    t_label = time.time() - t0
    print(f"student: transfer set of {len(idx)} phrases (+ {len(y_transfer) - len(idx)} augmented copies) labelled "
          f"by the {a.student_teacher} teacher (S=16) in {t_label:.0f}s", flush=True)
    scfg = student_config(tok.vocab_size, tok.max_length, d_model=a.student_d_model, depth=a.student_depth,
                          ffn=a.student_ffn, scheme=a.student_scheme)
    # a Laplace student does not sample while it learns (its posterior comes after): match the teacher's mean
    dcfg = DistillConfig(loss=student_loss(scfg), train=replace(DISTILL_TRAIN, epochs=a.student_epochs,
                                                                 batch_size=64, lr=2e-3, patience=3, seed=a.seed))
    t0 = time.time()
    ck = distill_text_student(teacher, f"MiniLM teacher ({a.student_teacher}) {teacher_dir}",
                              pre.weights_sha256, labelled, y_transfer, val.y, scfg, a.out / "student",
                              ("negative", "positive"), cfg=dcfg, log=lambda m: print(m, flush=True))
    return _student_rest(a, tok, ck, dcfg, idx, rng, ids_train, y_train, val, test, ood, t_label, t0, teacher_dir,
                         augmented=int(len(y_transfer) - len(idx)))


def _student_rest(a, tok, ck, dcfg, idx, rng, ids_train, y_train, val, test, ood, t_label, t0, teacher_dir,
                  augmented=0):
    """After distillation (or with --reuse-student, from the checkpoint an earlier run left): the
    student's Laplace posterior, export, bundle, calibration of both bundles, device-runtime evaluation."""
    from edgeuq.bundle import build_bundle
    from edgeuq.export import TOKENIZER_FILE, export_onnx
    from edgeuq.text.distill import fit_student_laplace, student_config
    from edgeuq.text.heads import POSTERIOR_METRIC, text_head
    from edgeuq.training import load_checkpoint

    scfg = student_config(tok.vocab_size, tok.max_length, d_model=a.student_d_model, depth=a.student_depth,
                          ffn=a.student_ffn, scheme=a.student_scheme)
    if ck is None:
        ck = load_checkpoint(a.out / "student" / "checkpoint")
        if ck.config != scfg:
            raise SystemExit(f"--reuse-student: {a.out / 'student' / 'checkpoint'} is a different student "
                             f"({ck.config}) than the options describe")
        from edgeuq.compress.transfer import load_transfer_set

        augmented = len(load_transfer_set(a.out / "student" / "transfer")) - len(idx)
        print(f"student: reusing {ck.directory} (distilled by an earlier run)", flush=True)
    val_ids = tok.encode_batch(val.texts)
    fit_idx = idx[rng.permutation(len(idx))[:10000]]
    if text_head(a.student_scheme).post_hoc_posterior and POSTERIOR_METRIC not in dict(ck.metrics):
        ck = fit_student_laplace(ck, ids_train[fit_idx], val_ids, val.y, log=lambda m: print(m, flush=True))
    t_distill = None if t0 is None else time.time() - t0
    tok.save(Path(ck.directory) / TOKENIZER_FILE)
    art = export_onnx(ck, a.out / "student" / "onnx")
    bundle = build_bundle(art, a.out / "student" / "bundle", "minilm-sst2-student", "1", default_samples=a.samples,
                          overwrite=True)
    lat_texts = list(test.texts[:32])
    cal_idx = np.sort(rng.permutation(len(ids_train))[:a.calibrate_phrases])
    # calibration amends a bundle in place: calibrate a copy of the teacher's, never the hashed artifact's own
    from edgeuq.text.pipeline import load_text_teacher

    teacher_bundle = a.out / f"bundle-{a.student_teacher}"
    if teacher_bundle.exists():
        shutil.rmtree(teacher_bundle)
    shutil.copytree(load_text_teacher(teacher_dir).bundle_path(a.student_teacher), teacher_bundle)
    for b in (bundle.root, teacher_bundle):
        _calibrate(b, ids_train[cal_idx], y_train[cal_idx], val_ids, val.y, a.samples)
    row = _runtime_eval(bundle.root, test, ood, a.samples, lat_texts)
    trow = _runtime_eval(teacher_bundle, test, ood, a.samples, lat_texts)
    best = dict(ck.metrics).get("distill", {}).get("best_epoch")
    loss = (dcfg.loss if dcfg is not None else dict(ck.metrics).get("distill", {}).get("config", {}).get("loss"))
    return {"teacher_head": a.student_teacher, "phrases": int(len(idx)), "label_s": t_label,
            "augmented": augmented,
            "epochs": a.student_epochs, "best_epoch": best,
            "distill_s": t_distill, "config": {"d_model": scfg.d_model, "depth": scfg.depth, "heads": scfg.heads,
                                               "ffn": scfg.ffn, "scheme": scfg.scheme, "loss": loss},
            "laplace": dict(ck.metrics).get("laplace"), "calibrate_phrases": int(len(cal_idx)),
            "student": row, "teacher": trow,
            "bundle": str(bundle.root)}


def _print_side_by_side(results: dict) -> None:
    st = results["student"]
    print(f"\nTeacher vs student on the device runtime (SST-2 test, OOD = TREC test; S = {results['samples']}, "
          f"one thread, batch 32; student: d={st['config']['d_model']}, depth {st['config']['depth']}, "
          f"{st['phrases']} teacher-labelled phrases)")
    print(f"{'model':<22}{'acc':>7}{'ECE':>7}{'AUROC MI':>10}{'AUROC H':>9}{'density':>9}{'combined':>9}"
          f"{'det ms':>8}{'S ms':>8}{'ratio':>7}{'MB':>7}")
    scheme = st.get("config", {}).get("scheme", "mc_dropout")
    for name, r in ((f"teacher ({st['teacher_head']})", st["teacher"]), (f"student ({scheme})", st["student"])):
        print(f"{name:<22}{r['acc']:>7.4f}{r['ece']:>7.4f}{r['auroc_trec_test_mi']:>10.3f}"
              f"{r['auroc_trec_test_total']:>9.3f}{_opt(r, 'auroc_trec_test_density') or '-':>9}"
              f"{_opt(r, 'auroc_trec_test_combined') or '-':>9}{r['det_ms']:>8.2f}{r['mc_ms']:>8.2f}"
              f"{r['ratio']:>7.2f}{r['bytes'] / 1e6:>7.2f}")


if __name__ == "__main__":
    sys.exit(main())
