"""An edge student cut from the MiniLM teacher by the compression chain (edgeuq text-student): kept
layers and pruned heads/FFN (prune), pruned vocabulary and SVD-factorised embedding (vocab),
distillation with hidden-state matching (distill), Laplace last layer refitted (posterior); teacher
vs student.

    nice -n 10 .venv/bin/python bench/text_student_cut.py --teacher-dir runs/bench/text_teacher/teacher \\
        [--recipe compile/text-student.toml] [--steps prune,vocab,distill,posterior] [--transfer 12000] \\
        [--augment 1] [--epochs 2] [--rank 64] [--keep-layers 3] [--target-flops 0.6] \\
        [--json results/text_student_cut.json]

Needs a text_teacher artifact (``edgeuq text-teacher`` or bench/text_teacher.py's ``teacher/``) and
SST-2/TREC under --data. Steps, all measured in this run:
  1. the recipe's chain over the teacher through :func:`edgeuq.text.student_chain.build_text_student`
     (the same ``run_chain`` as ``edgeuq compress`` / ``edgeuq text-student``; each step's info and
     time recorded); a step the recipe names that cannot run in this tree (``prune`` before its
     options for the bert trunk exist) is left out and the JSON says so (``chain.left_out``);
  2. both bundles calibrated (``edgeuq.calibrate.calibrate_bundle`` on copies: the density model fitted
     on --fit SST-2 training phrases, the combined score's conformal p-values on --calib dev.tsv
     phrases; never on the rows scored): the student's (device WordPiece with the pruned vocabulary;
     its trunk also emits the Avg-Avg feature of its own layers with ``ood_features = "frozen_avg"``)
     and the teacher's bundle of the same head scheme (its trunk emits the pretrained Avg-Avg feature);
     then each bundle's device rule is picked (``edgeuq.calibrate.rule.pick_text_rule``: every subset of
     MI / entropy / density with Bonferroni min and weighted Bonferroni) on validation rows -- --rule-val
     dev.tsv phrases used neither for the fit, the calibration nor the report, against other rows of the
     constructed shifts -- and written into the bundle; TREC is never used for it (a held-out report);
  3. both evaluated through the device runtime (``edgeuq.calibrate.scores.score_windows``): SST-2 test
     (= GLUE dev) accuracy, ECE, NLL, AUROC of every score the runtime offers (MI, total entropy,
     1 - max p, the bundle's density, the calibrated combined score, the picked device rule) plus two
     host-side densities on each model's per-layer pooled features, vs TREC and the constructed shifts of
     bench/text_ood.py;
     the retained ratio (student AUROC / teacher AUROC) per score and shift; S = 32 vs one
     deterministic pass of the student (paired, interleaved).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
DEFAULT_DATA = REPO.parent / "shared" / "data" / "text"

#: the scores measured for teacher and student (higher = more unusual): the runtime's (MI, total
#: entropy, 1 - max probability, the calibrated bundle's density and combined score) and two host-side
#: densities on the model's own per-layer pooled features (last layer; Avg-Avg over its layers)
#: ``combined``: the device rule's score, -log10 of the min-rule (Bonferroni) combination of the MI, entropy
#: and density conformal p-values per predicted class; ``combined_z``: the calibration's other combined
#: score, max(z of log MI, z of density) (what the runtime reports for a bundle calibrated without p-values);
#: ``device``: -log10 of the combined p-value of the device rule written into the bundle, picked
#: (edgeuq.calibrate.rule.pick_text_rule: parts x {min, weighted Bonferroni}) on validation rows -- SST-2
#: dev.tsv phrases used neither for the density fit, the calibration nor the report, against other rows of
#: the constructed shifts (shuffled, truncated, other text); never on TREC, which stays a held-out report
SCORES = ("mi", "total", "maxp", "density", "combined", "combined_z", "device", "host_density_avgavg",
          "host_density_last")
SCORE_LABELS = {"mi": "MI", "total": "total H", "maxp": "1 - max p", "density": "density (bundle)",
                "combined": "combined (calibrated p-values)", "combined_z": "combined (calibrated z-max)",
                "device": "device rule, picked on constructed shifts; TREC held out",
                "host_density_avgavg": "Avg-Avg density (host)", "host_density_last": "last-layer density (host)"}


def _onnx_bytes(root: Path) -> int:
    return int(sum(p.stat().st_size for p in Path(root).rglob("*.onnx")))


def _latency(rt, texts, samples: int, repeats: int = 5) -> dict:
    from edgeuq.profile import measure_stages, paired_ratio

    ids = rt.tokenize(texts)
    st = measure_stages({"det": lambda: rt.deterministic(ids), "mc": lambda: rt.predict(ids, samples=samples, seed=0)},
                        warmup=1, repeats=repeats)
    r = paired_ratio(st["mc"], st["det"])
    return {"det_ms": st["det"].median_ms / len(texts), "mc_ms": st["mc"].median_ms / len(texts), "ratio": r.median,
            "ratio_ci": [r.ci_low, r.ci_high], "latency_rounds": repeats}


def _runnable_steps(recipe, steps):
    """The recipe's steps (or ``steps``) that this tree can read, and {step: why} for those left out."""
    from edgeuq.compress.chain import chain_from_table, chain_table

    names = steps or [e["name"] for e in recipe.compress.get("steps", [])]
    keep, left_out = [], {}
    for name in names:
        try:
            chain_from_table(chain_table(recipe.compress, [name]))
            keep.append(name)
        except ValueError as exc:
            left_out[name] = str(exc)
    return keep, left_out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--teacher-dir", type=Path, default=REPO / "runs" / "bench" / "text_teacher" / "teacher",
                    help="text_teacher artifact folder")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "text_student_cut")
    ap.add_argument("--recipe", default="text-student", help="text recipe name or .toml (its [[compress.steps]])")
    ap.add_argument("--steps", help="comma-separated steps (default: the recipe's)")
    ap.add_argument("--keep-layers", type=int, help="prune.keep_layers (default: the recipe's)")
    ap.add_argument("--target-flops", type=float, help="prune.target_flops (default: the recipe's)")
    ap.add_argument("--rank", type=int, help="vocab.rank (default: the recipe's)")
    ap.add_argument("--epochs", type=int, help="distill.epochs (default: the recipe's)")
    ap.add_argument("--density-weight", type=float,
                    help="distill.density_weight: match the student's Avg-Avg to the teacher's density feature "
                         "(default: the recipe's)")
    ap.add_argument("--prune-rows", type=int, help="prune.rows: calibration phrases (default: the recipe's)")
    ap.add_argument("--posterior-rows", type=int, help="posterior.rows (default: the recipe's)")
    ap.add_argument("--transfer", type=int, help="training phrases in the transfer set (default: the recipe's)")
    ap.add_argument("--augment", type=int, help="augmented copies per phrase (default: the recipe's)")
    ap.add_argument("--val", type=int, help="validation phrases (default: the recipe's)")
    ap.add_argument("--ood-features", choices=("none", "frozen_avg"),
                    help="what the student's trunk emits for the density score (default: the recipe's)")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--fit", type=int, default=3000, help="training phrases fitting the densities")
    ap.add_argument("--calib", type=int, default=1000,
                    help="SST-2 dev.tsv phrases calibrating the bundles (the combined score's p-values)")
    ap.add_argument("--shift-rows", type=int, default=300, help="sentences per other-text shift")
    ap.add_argument("--rule-val", type=int, default=1000,
                    help="SST-2 dev.tsv phrases (neither calibration nor fit nor reported) on which, against other "
                         "rows of the constructed shifts (not TREC), the device rule is picked")
    ap.add_argument("--eval-rows", type=int, default=0,
                    help="a seeded random N of the SST-2 test and TREC rows (0 = all; quick runs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--progress", action="store_true", help="progress bars (labelling, distillation) on stderr")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    from edgeuq.provenance import command_line, finish, start, write_results
    from edgeuq.report import results_table

    prov = start("full", 1)
    command = command_line("bench/text_student_cut.py", argv)
    torch.set_num_threads(1)
    if not (a.teacher_dir / "text_teacher.json").is_file():
        print(f"no text_teacher artifact in {a.teacher_dir}: run `edgeuq text-teacher` (or bench/text_teacher.py) first",
              file=sys.stderr)
        return 2
    if not (a.data / "sst2" / "train.tsv").is_file():
        print(f"SST-2/TREC not found under {a.data}; nothing to do", file=sys.stderr)
        return 2
    import dataclasses

    import text_ood as ood_bench
    from edgeuq.catalog import get_recipe
    from edgeuq.compress.chain import tokenizer_of
    from edgeuq.data.text import load_sst2, load_trec
    from edgeuq.text.ood import avg_avg, layer_pooled, shuffle_words, text_sentences, truncate_words
    from edgeuq.text.pipeline import load_text_teacher
    from edgeuq.text.student_chain import build_text_student, student_options_from
    from edgeuq.uq import auroc, expected_calibration_error
    from edgeuq_runtime import UncertaintyRuntime
    from edgeuq_runtime.density import fit_density
    from edgeuq_runtime.wordpiece import WordPieceTokenizer

    t_start = time.time()
    recipe = get_recipe(a.recipe)
    opts = student_options_from(recipe.train, f"recipe {recipe.name} [train]")
    opts = dataclasses.replace(opts, **{k: v for k, v in (("transfer", a.transfer), ("augment_copies", a.augment),
                                                          ("val", a.val), ("ood_features", a.ood_features)) if v is not None}, seed=a.seed)
    overrides = [(s, k, v) for s, k, v in (("prune", "keep_layers", a.keep_layers),
                                            ("prune", "target_flops", a.target_flops), ("vocab", "rank", a.rank),
                                            ("distill", "epochs", a.epochs), ("prune", "rows", a.prune_rows),
                                            ("posterior", "rows", a.posterior_rows),
                                            ("distill", "density_weight", a.density_weight)) if v is not None]
    steps, left_out = _runnable_steps(recipe, [n.strip() for n in a.steps.split(",")] if a.steps else None)
    for name, why in left_out.items():
        print(f"step {name!r} left out (it cannot run in this tree): {why}", file=sys.stderr, flush=True)
    overrides = [o for o in overrides if o[0] in steps]
    teacher_art = load_text_teacher(a.teacher_dir)
    teacher = teacher_art.load_model()
    tok = WordPieceTokenizer.load(teacher_art.file_path("tokenizer.json"))
    sst = load_sst2(a.data / "sst2")
    trec = load_trec(a.data / "trec", "test")
    train = sst["train"]

    # 1. the chain over the teacher (the student's bundle included)
    t0 = time.time()
    st = build_text_student(a.teacher_dir, a.out, recipe, steps=steps, overrides=overrides, options=opts,
                            train=a.data / "sst2" / "train.tsv", val=a.data / "sst2" / "dev.tsv",
                            log=lambda m: print(m, flush=True), progress=a.progress)
    t_chain = time.time() - t0
    records = {r["step"]: r for r in st.summary["steps"]}
    student = st.checkpoint.load_model().eval()
    small_tok = tokenizer_of(st.checkpoint)
    b_root = st.bundle
    from edgeuq_runtime import load_bundle

    b = load_bundle(b_root)
    bundle_bytes = int(sum((b.root / f).stat().st_size for f in b.manifest.files))
    weight_bytes = int(sum((b.root / f).stat().st_size for f in b.manifest.files if f.endswith(".onnx")))
    rt = UncertaintyRuntime(b_root, threads=1, seed=0)

    # 2. the sets of bench/text_ood.py (whole test set; other-text sources)
    rng = np.random.default_rng(a.seed)
    fit_rows = rng.permutation(len(train))[:a.fit]
    fit_texts = [train.texts[i] for i in fit_rows]
    fit_y = train.y[fit_rows]
    test = sst["test"]
    if a.eval_rows and a.eval_rows < len(test):
        test = test.subset(np.sort(np.random.default_rng(a.seed + 4).permutation(len(test))[:a.eval_rows]))
    if a.eval_rows and a.eval_rows < len(trec):
        trec = trec.subset(np.sort(np.random.default_rng(a.seed + 5).permutation(len(trec))[:a.eval_rows]))
    pools = {"python_docs": text_sentences(ood_bench.python_doc_texts()),
             "licenses": text_sentences(ood_bench.license_texts()),
             "sklearn_descr": text_sentences(ood_bench.sklearn_descr_texts())}
    src_rng = np.random.default_rng(a.seed + 2)
    sets = {"sst2": list(test.texts), "trec": list(trec.texts),
            "shuffled": shuffle_words(list(test.texts), np.random.default_rng(a.seed + 3)),
            "truncated": truncate_words(list(test.texts))}
    rule_shift = {}    # the device rule's shifted validation rows: other sentences of the same sources
    for name, sents in pools.items():
        perm = src_rng.permutation(len(sents))
        sets[name] = [sents[i] for i in np.sort(perm[:a.shift_rows])]
        taken = set(sets[name])
        rule_shift[name] = [sents[i] for i in np.sort(perm[a.shift_rows:2 * a.shift_rows]) if sents[i] not in taken]
    shifts = [k for k in sets if k != "sst2"]

    # 3. every score the runtime offers, on calibrated copies of both bundles (edgeuq.calibrate): the
    #    density model fitted on --fit training phrases, the conformal p-values of the combined score on
    #    --calib validation phrases (dev.tsv); the scored sets (SST-2 test = GLUE dev, TREC, shifts) are
    #    neither. The teacher's bundle is the one of the student's head scheme (its trunk also emits the
    #    pretrained Avg-Avg features); the student's trunk emits its own layers' Avg-Avg features
    #    (StudentOptions.ood_features) when the chain was asked to.
    val = sst["dev"]
    # the dev.tsv rows the distill step validated on are left out of the calibration rows
    seen = (set(st.summary.get("val_row_index", ())) if st.summary.get("val_split_rows") == len(val) else None)
    if seen is None:
        print("WARNING: the student's validation split is not dev.tsv row for row: its rows are not excluded from "
              "the calibration rows", file=sys.stderr, flush=True)
    free = np.array([i for i in range(len(val)) if not seen or i not in seen])
    cal_rows = np.sort(np.random.default_rng(a.seed + 6).permutation(free)[:a.calib])
    cal_texts, cal_y = [val.texts[i] for i in cal_rows], np.asarray(val.y)[cal_rows]
    # the device rule's validation rows (never TREC, never a reported row): in-distribution = other dev.tsv
    # phrases than the calibration ones (and not equal to a fit, calibration or reported text); shuffled and
    # truncated = two more disjoint draws of them, shuffled / cut as the reported shifts are
    reported = {t for k in sets for t in sets[k]}
    used = reported | set(cal_texts) | set(fit_texts)
    rest = [i for i in np.random.default_rng(a.seed + 7).permutation(np.setdiff1d(free, cal_rows))
            if val.texts[i] not in used]
    n_sh = a.shift_rows
    rule_in = [val.texts[i] for i in rest[:a.rule_val]]
    rule_shift["shuffled"] = shuffle_words([val.texts[i] for i in rest[a.rule_val:a.rule_val + n_sh]],
                                           np.random.default_rng(a.seed + 8))
    rule_shift["truncated"] = truncate_words([val.texts[i] for i in rest[a.rule_val + n_sh:a.rule_val + 2 * n_sh]])
    rule_shift = {k: [t for t in v if t not in reported] for k, v in rule_shift.items()}
    rule_shift = {k: rule_shift[k] for k in ("shuffled", "truncated", *pools) if rule_shift.get(k)}
    rule_rows = {"in_distribution": len(rule_in), **{k: len(v) for k, v in rule_shift.items()},
                 "source": "SST-2 dev.tsv rows neither calibrating nor validating the distillation nor equal to a fit "
                           "or reported text; shifted: other rows of the constructed shifts (TREC not used)"}
    print(f"device-rule validation rows: {rule_rows}", flush=True)
    # the rows themselves, so that another copy of a bundle (bench/text_student_int8.py --rule-rows) picks its
    # own rule on exactly these
    from edgeuq.calibrate.rule import RULE_ROWS_FILE, TextRuleRows, save_text_rule_rows

    save_text_rule_rows(a.out / RULE_ROWS_FILE, TextRuleRows(tuple(rule_in), {k: tuple(v) for k, v in rule_shift.items()},
                                                             rule_rows["source"]))

    def calibrated_copy(root: Path, dest: Path) -> dict:
        from edgeuq.calibrate.fit import CalibrationOptions, calibrate_text_bundle

        res, dropped = calibrate_text_bundle(
            root, cal_texts, cal_y, fit_texts, fit_y,
            CalibrationOptions(samples=a.samples, threads=1, seed=a.seed,
                               fit_source=f"SST-2 training phrases (--fit {len(fit_texts)})"),
            out_dir=dest, log=lambda m: print(m, flush=True))
        c = res.calibration
        from edgeuq.calibrate.rule import RulePickOptions, pick_text_rule

        pick = pick_text_rule(dest, rule_in, rule_shift, RulePickOptions(samples=a.samples, seed=a.seed, threads=1),
                              log=lambda m: print(m, flush=True))
        return {"bundle": str(dest), "fit_rows": len(fit_texts) - dropped, "fit_dropped_as_calibration": dropped,
                "device_rule": pick.to_json(), "device_rule_rows": rule_rows,
                "calibration_rows": len(cal_y),
                "calibration_source": "SST-2 dev.tsv rows the distill step did not validate on" if seen is not None
                else "SST-2 dev.tsv (the distill step's validation rows NOT excluded)",
                "density_pooling": None if c.density is None else c.density.pooling,
                "pvalue_parts": list(c.pvalues.parts) if c.pvalues else None,
                "pvalue_rule": c.pvalues.rule if c.pvalues else None}

    def scores_of(bundle_root: Path, model, tokzr):
        """Runtime scores through the calibrated bundle (score_windows: one trunk pass, S head draws,
        density and combined from the calibration) + host-side densities on the model's per-layer pooled
        features (edgeuq.text.ood.layer_pooled; fitted on the --fit training phrases)."""
        from edgeuq.calibrate.rule import all_parts_calibrated
        from edgeuq.calibrate.scores import score_windows
        from edgeuq_runtime.calibration import Calibrated

        runtime = UncertaintyRuntime(bundle_root, threads=1, seed=0)
        # "combined": the min rule of every part the calibration stored; "device": the rule picked into the bundle
        cal = all_parts_calibrated(runtime.bundle)
        cal_dev = Calibrated.from_bundle(runtime.bundle)
        # the same calibration without its p-value rule: the z-max combined score of its ``combined`` section
        cal_z = Calibrated(dataclasses.replace(cal.cal, pvalues=None), cal.density)
        fit_lp = layer_pooled(model.encoder, tokzr.encode_batch(fit_texts))
        dens = {"host_density_last": fit_density(fit_lp[:, -1].astype(np.float64), fit_y, 2),
                "host_density_avgavg": fit_density(avg_avg(fit_lp), fit_y, 2)}
        out = {}
        for name, tx in sets.items():
            w = score_windows(runtime, runtime.tokenize(tx), a.samples, seed=3, calibrated=cal)
            lp = layer_pooled(model.encoder, tokzr.encode_batch(tx))
            pv = cal.pvalues(w.epistemic, w.total, w.density, w.prediction)
            dev = -np.log10(cal_dev.combined_pvalue({p: pv[p] for p in cal_dev.cal.pvalues.parts}))
            out[name] = {"probs": w.probs, "mi": w.epistemic, "total": w.total, "maxp": 1 - w.probs.max(-1),
                         "density": w.density, "combined": w.combined, "device": dev,
                         "combined_z": cal_z.combined_score(w.epistemic, w.density),
                         "host_density_last": dens["host_density_last"].score(lp[:, -1].astype(np.float64), "none"),
                         "host_density_avgavg": dens["host_density_avgavg"].score(avg_avg(lp), "none")}
        return out

    def summary(sc, params, nbytes, lat=None, how=""):
        y = test.y
        p = sc["sst2"]["probs"]
        row = {"params": params, "bytes": nbytes, "acc": float(np.mean(p.argmax(-1) == y)),
               "ece": float(expected_calibration_error(p, y)),
               "nll": float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)))), "how": how}
        for s in SCORES:
            for sh in shifts:
                v = sc["sst2"][s]
                # a score the bundle does not offer (no calibration density) is recorded as not measured
                row[f"auroc_{sh}_{s}"] = None if v is None else float(auroc(v, sc[sh][s]))
        if lat:
            row.update(lat)
        return row

    def param_count(m):
        return int(sum(p.numel() for p in m.parameters()))

    t0 = time.time()
    t_bundle = a.teacher_dir / teacher_art.bundles[student.cfg.scheme]
    calibration = {"student": calibrated_copy(b_root, a.out / "calibrated" / "student"),
                   "teacher": calibrated_copy(t_bundle, a.out / "calibrated" / "teacher")}
    t_cal = time.time() - t0
    t0 = time.time()
    lat_texts = list(test.texts[:32])
    s_row = summary(scores_of(a.out / "calibrated" / "student", student, small_tok), param_count(student),
                    weight_bytes, _latency(rt, lat_texts, a.samples),
                    "device runtime on the calibrated bundle (edgeuq.calibrate.scores.score_windows, S = 32); "
                    "host_* densities host-side")
    s_row["bundle_bytes"] = bundle_bytes
    t_row = summary(scores_of(a.out / "calibrated" / "teacher", teacher, tok), param_count(teacher),
                    int(param_count(teacher) * 4), None,
                    "device runtime on the teacher's calibrated bundle (S = 32); bytes: float32 weights of the "
                    "model (4 bytes a parameter; its bundle also runs pretrained copies for the density features); "
                    "host_* densities host-side")
    t_row["bundle_bytes"] = _onnx_bytes(t_bundle)
    retained = {f"{sh}_{s}": (None if t_row[f"auroc_{sh}_{s}"] is None or s_row[f"auroc_{sh}_{s}"] is None
                              else s_row[f"auroc_{sh}_{s}"] / t_row[f"auroc_{sh}_{s}"])
                for s in SCORES for sh in shifts}
    t_eval = time.time() - t0

    cfg = student.cfg
    vocab_info = dict(records.get("vocab", {}).get("info", {}))
    prune_info = dict(records.get("prune", {}).get("info", {}))
    distill_rec = records.get("distill", {})
    emb_params = int(sum(p.numel() for n, p in student.named_parameters() if "embeddings" in n))
    results = {
        "what": "an edge student cut from the MiniLM-L6 SST-2 teacher by the compression chain (edgeuq text-student: "
                + " -> ".join(steps) + "); teacher vs student",
        "spec": {"choice": f"teacher layers {list(student.teacher_layers)} of {teacher.cfg.depth} (kept by the chain)",
                 "layers": list(student.teacher_layers),
                 # the widths each kept layer has after prune (the config's ``ffn`` is only its uniform default)
                 "heads_per_layer": [int(cfg.block_shape(i).heads) for i in range(cfg.depth)],
                 "ffn_per_layer": [int(cfg.block_shape(i).ffn) for i in range(cfg.depth)],
                 "rank": int(cfg.trunk_options.embedding_rank), "positions": int(cfg.trunk_options.max_positions),
                 "density_features": str(st.summary["options"].get("ood_features", "none")),  # the bundle's trunk
                 "vocab": int(small_tok.vocab_size), "embedding_params": emb_params,
                 **{k: vocab_info[k] for k in ("embedding_svd_rel_error",) if k in vocab_info}},
        "chain": {"recipe": recipe.name, "steps": steps, "left_out": left_out, "seconds": t_chain,
                  "records": st.summary["steps"], "options": st.summary["options"]},
        "fisher": {k: prune_info[k] for k in prune_info if "fisher" in k or "layer" in k} or None,
        "layer_choice_zero_shot": prune_info.get("layer_choice_zero_shot", {}),
        "distillation": {"transfer_phrases": int(st.summary["transfer_rows"]), "epochs": distill_rec.get("options", {}).get("epochs"),
                         "seconds": distill_rec.get("seconds"), "history": distill_rec.get("info", {}).get("history"),
                         "best_epoch": distill_rec.get("info", {}).get("best_epoch"),
                         "hidden_weight": distill_rec.get("options", {}).get("hidden_weight"),
                         "density_weight": distill_rec.get("options", {}).get("density_weight")},
        "laplace": {"prior_precision": records.get("posterior", {}).get("info", {}).get("prior_precision")},
        "eval_rows": {"sst2_test": len(test), "trec": len(trec), "other_text": a.shift_rows},
        "device_rule_rows": rule_rows,
        "teacher": t_row, "student": s_row, "retained": retained, "scores": list(SCORES), "shifts": shifts,
        "calibration": calibration, "calibrate_s": t_cal, "eval_s": t_eval, "total_s": time.time() - t_start,
        "teacher_source": str(a.teacher_dir), "teacher_digest": teacher_art.digest,
    }
    def f3(v):
        return "not measured" if v is None else f"{v:.3f}"

    heads = ["model", "params", "weight MB", "SST-2 acc", "ECE", *[f"AUROC TREC {SCORE_LABELS[s]}" for s in SCORES],
             "S=32 / 1 pass"]

    def trow(name, r):
        return [name, f"{r['params'] / 1e6:.2f}M", f"{r['bytes'] / 1e6:.1f}", f"{r['acc']:.4f}", f"{r['ece']:.4f}",
                *[f3(r[f"auroc_trec_{s}"]) for s in SCORES], f"{r['ratio']:.2f}" if "ratio" in r else None]

    spec = results["spec"]
    results["tables"] = {
        "text_student_cut": results_table(heads, [
            trow(f"teacher ({teacher_art.base}, top {teacher_art.options.get('train_layers')} layers fine-tuned)",
                 t_row),
            trow(f"student ({' -> '.join(steps)}): layers {spec['layers']}, heads {spec['heads_per_layer']}, "
                 f"FFN {spec['ffn_per_layer']}, vocab {spec['vocab']}, rank {spec['rank']}", s_row),
            ["retained (student AUROC / teacher AUROC)", None, None, None, None,
             *[f3(retained[f"trec_{s}"]) for s in SCORES], None]]),
        # every score against every shift: teacher / student (retained)
        "text_student_cut_shifts": results_table(["score", *shifts], [
            [SCORE_LABELS[s], *[f"{f3(t_row[f'auroc_{sh}_{s}'])} / {f3(s_row[f'auroc_{sh}_{s}'])} "
                                f"({f3(retained[f'{sh}_{s}'])})" for sh in shifts]] for s in SCORES])}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    print(json.dumps({k: results[k] for k in ("spec", "teacher", "student")}, indent=1))
    if left_out:
        print(f"NOTE: steps left out of the recipe's chain: {sorted(left_out)} (recorded under chain.left_out)")
    if a.json:
        write_results(a.json, results, command, finish(prov))
        print(f"results: {a.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
