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
  2. the student's bundle (device WordPiece with the pruned vocabulary) evaluated through the device
     runtime: SST-2 test accuracy, ECE, AUROC per score vs TREC and the constructed shifts of
     bench/text_ood.py, S = 32 vs one deterministic pass (paired, interleaved); the teacher's numbers
     from host PyTorch in the same run.
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
    ap.add_argument("--prune-rows", type=int, help="prune.rows: calibration phrases (default: the recipe's)")
    ap.add_argument("--posterior-rows", type=int, help="posterior.rows (default: the recipe's)")
    ap.add_argument("--transfer", type=int, help="training phrases in the transfer set (default: the recipe's)")
    ap.add_argument("--augment", type=int, help="augmented copies per phrase (default: the recipe's)")
    ap.add_argument("--val", type=int, help="validation phrases (default: the recipe's)")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--fit", type=int, default=3000, help="training phrases fitting the densities")
    ap.add_argument("--shift-rows", type=int, default=300, help="sentences per other-text shift")
    ap.add_argument("--eval-rows", type=int, default=0,
                    help="a seeded random N of the SST-2 test and TREC rows (0 = all; quick runs)")
    ap.add_argument("--seed", type=int, default=0)
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
    from edgeuq.text.finetune import sample_probs
    from edgeuq.text.ood import avg_avg, layer_pooled, shuffle_words, text_sentences, truncate_words
    from edgeuq.text.pipeline import load_text_teacher
    from edgeuq.text.student_chain import build_text_student, student_options_from
    from edgeuq.uq import auroc, decompose, expected_calibration_error
    from edgeuq_runtime import UncertaintyRuntime
    from edgeuq_runtime.density import fit_density
    from edgeuq_runtime.wordpiece import WordPieceTokenizer

    t_start = time.time()
    recipe = get_recipe(a.recipe)
    opts = student_options_from(recipe.train, f"recipe {recipe.name} [train]")
    opts = dataclasses.replace(opts, **{k: v for k, v in (("transfer", a.transfer), ("augment_copies", a.augment),
                                                          ("val", a.val)) if v is not None}, seed=a.seed)
    overrides = [(s, k, v) for s, k, v in (("prune", "keep_layers", a.keep_layers),
                                            ("prune", "target_flops", a.target_flops), ("vocab", "rank", a.rank),
                                            ("distill", "epochs", a.epochs), ("prune", "rows", a.prune_rows),
                                            ("posterior", "rows", a.posterior_rows)) if v is not None]
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
                            log=lambda m: print(m, flush=True))
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
    for name, sents in pools.items():
        sets[name] = [sents[i] for i in np.sort(src_rng.permutation(len(sents))[:a.shift_rows])]
    shifts = [k for k in sets if k != "sst2"]

    def scores_of(model, tokzr, runtime=None):
        # one encoder pass per set: the per-layer pooled features (edgeuq.text.ood.layer_pooled); the
        # trunk's pooled feature is the last layer's masked mean (BertTransformer.trunk without density
        # features), the Avg-Avg feature their mean over the layers
        out = {}
        fit_lp = layer_pooled(model.encoder, tokzr.encode_batch(fit_texts))
        dens = {"density": fit_density(fit_lp[:, -1].astype(np.float64), fit_y, 2),
                "density_avgavg": fit_density(avg_avg(fit_lp), fit_y, 2)}
        for name, tx in sets.items():
            ids = tokzr.encode_batch(tx)
            lp = layer_pooled(model.encoder, ids)
            f = lp[:, -1]
            if runtime is not None:
                r = runtime.predict_text(tx, samples=a.samples, seed=3)
                probs, mi, tot = r.probs, r.epistemic, r.total
            else:
                rr = decompose(sample_probs(model, f, a.samples, seed=3))
                probs, mi, tot = rr.probs, rr.epistemic, rr.total
            out[name] = {"probs": probs, "mi": mi, "total": tot, "maxp": 1 - probs.max(-1),
                         "density": dens["density"].score(f.astype(np.float64), "none"),
                         "density_avgavg": dens["density_avgavg"].score(avg_avg(lp), "none")}
        return out

    def summary(sc, params, nbytes, lat=None, how=""):
        y = test.y
        row = {"params": params, "bytes": nbytes, "acc": float(np.mean(sc["sst2"]["probs"].argmax(-1) == y)),
               "ece": float(expected_calibration_error(sc["sst2"]["probs"], y)), "how": how}
        for s in ("mi", "total", "maxp", "density", "density_avgavg"):
            for sh in shifts:
                row[f"auroc_{sh}_{s}"] = float(auroc(sc["sst2"][s], sc[sh][s]))
        if lat:
            row.update(lat)
        return row

    def param_count(m):
        return int(sum(p.numel() for p in m.parameters()))

    t0 = time.time()
    lat_texts = list(test.texts[:32])
    s_row = summary(scores_of(student, small_tok, runtime=rt), param_count(student), weight_bytes,
                    _latency(rt, lat_texts, a.samples),
                    "device runtime (UncertaintyRuntime.predict_text, S = 32) on the bundle; densities host-side")
    s_row["bundle_bytes"] = bundle_bytes
    t_row = summary(scores_of(teacher, tok), param_count(teacher), int(param_count(teacher) * 4), None,
                    "host PyTorch (float32 weights: 4 bytes a parameter), S = 32")
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
                 "layers": list(student.teacher_layers), "ffn": int(cfg.ffn),
                 # the widths each kept layer has after prune (``ffn`` above is the config's uniform default)
                 "heads_per_layer": [int(cfg.block_shape(i).heads) for i in range(cfg.depth)],
                 "ffn_per_layer": [int(cfg.block_shape(i).ffn) for i in range(cfg.depth)],
                 "rank": int(cfg.trunk_options.embedding_rank), "positions": int(cfg.trunk_options.max_positions),
                 "vocab": int(small_tok.vocab_size), "embedding_params": emb_params,
                 **{k: vocab_info[k] for k in ("embedding_svd_rel_error",) if k in vocab_info}},
        "chain": {"recipe": recipe.name, "steps": steps, "left_out": left_out, "seconds": t_chain,
                  "records": st.summary["steps"], "options": st.summary["options"]},
        "fisher": {k: prune_info[k] for k in prune_info if "fisher" in k or "layer" in k} or None,
        "layer_choice_zero_shot": prune_info.get("layer_choice_zero_shot", {}),
        "distillation": {"transfer_phrases": int(st.summary["transfer_rows"]), "epochs": distill_rec.get("options", {}).get("epochs"),
                         "seconds": distill_rec.get("seconds"), "history": distill_rec.get("info", {}).get("history"),
                         "best_epoch": distill_rec.get("info", {}).get("best_epoch"),
                         "hidden_weight": distill_rec.get("options", {}).get("hidden_weight")},
        "laplace": {"prior_precision": records.get("posterior", {}).get("info", {}).get("prior_precision")},
        "eval_rows": {"sst2_test": len(test), "trec": len(trec), "other_text": a.shift_rows},
        "teacher": t_row, "student": s_row, "eval_s": t_eval, "total_s": time.time() - t_start,
        "teacher_source": str(a.teacher_dir), "teacher_digest": teacher_art.digest,
    }
    heads = ["model", "params", "weight MB", "SST-2 acc", "ECE", *[f"AUROC MI {sh}" for sh in shifts],
             "AUROC density TREC", "AUROC Avg-Avg density TREC", "S=32 / 1 pass"]

    def trow(name, r):
        return [name, f"{r['params'] / 1e6:.2f}M", f"{r['bytes'] / 1e6:.1f}", f"{r['acc']:.4f}", f"{r['ece']:.4f}",
                *[f"{r[f'auroc_{sh}_mi']:.3f}" for sh in shifts], f"{r['auroc_trec_density']:.3f}",
                f"{r['auroc_trec_density_avgavg']:.3f}", f"{r['ratio']:.2f}" if "ratio" in r else None]

    spec = results["spec"]
    results["tables"] = {"text_student_cut": results_table(heads, [
        trow(f"teacher ({teacher_art.base}, top {teacher_art.options.get('train_layers')} layers fine-tuned; host)",
             t_row),
        trow(f"student ({' -> '.join(steps)}): layers {spec['layers']}, heads {spec['heads_per_layer']}, "
             f"FFN {spec['ffn_per_layer']}, vocab {spec['vocab']}, "
             f"rank {spec['rank']} (device runtime)", s_row)])}
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
