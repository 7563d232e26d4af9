"""An edge student cut from the MiniLM teacher: kept layers by mask Fisher, pruned FFN, pruned
vocabulary, SVD-factorised embedding, distilled with hidden-state matching; teacher vs student.

    nice -n 10 .venv/bin/python bench/text_student_cut.py --teacher-dir runs/text_ood \\
        [--layers 3] [--ffn 768] [--rank 64] [--transfer 12000] [--max-seconds 900] \\
        [--json results/text_student_cut.json]

Needs the teacher that bench/text_ood.py left in --teacher-dir (teacher.pt, Laplace head).
Steps, all measured in this run:
  1. mask Fisher (Kwon et al. 2022, step 1) of layer, head and FFN-neuron masks on --fisher
     SST-2 training phrases, labels = the teacher's predictions;
  2. layer choice: the k layers of largest Fisher, compared with the top k layers (k..L-1),
     each cut *without training* (agreement with the teacher and its accuracy on SST-2 dev);
  3. the Fisher choice is built (FFN neurons of largest Fisher, vocabulary pruned to the
     tokens of SST-2 train+dev phrases + specials + single characters, embedding rank --rank,
     SVD-initialised) and distilled on --transfer teacher-labelled training phrases (KL at T=2
     + hidden-state MSE of each kept layer to its teacher layer), capped at --max-seconds;
  4. Laplace last layer refitted on the student's features; bundle exported (device WordPiece
     with the pruned vocabulary) and evaluated through the device runtime: SST-2 test
     accuracy, ECE, AUROC per score vs TREC and the constructed shifts of bench/text_ood.py,
     S = 32 vs one deterministic pass (paired, interleaved); the teacher's numbers from host
     PyTorch in the same run.
"""
from __future__ import annotations

import argparse
import dataclasses
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


@torch.no_grad()
def _predict(model, ids) -> np.ndarray:
    lengths = (ids != 0).sum(1)
    order = np.argsort(lengths)
    pred = np.zeros(len(ids), np.int64)
    for i in range(0, len(ids), 128):
        idx = order[i:i + 128]
        pred[idx] = model(torch.from_numpy(ids[idx, :int(lengths[idx].max())])).argmax(-1).numpy()
    return pred


def _agreement(model, ids, ref_pred, y) -> dict:
    pred = _predict(model, ids)
    return {"agree_with_teacher": float(np.mean(pred == ref_pred)), "acc": float(np.mean(pred == y))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--teacher-dir", type=Path, default=REPO / "runs" / "text_ood")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "text_student_cut")
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--ffn", type=int, default=768)
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--fisher", type=int, default=512)
    ap.add_argument("--transfer", type=int, default=12000)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--max-seconds", type=float, default=900)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--full-position-table", action="store_true",
                    help="keep the teacher's whole position table (default: only the --max-length positions the "
                         "tokenizer can emit; same outputs, (512 - max_length) x 384 fewer float32 weights)")
    ap.add_argument("--fit", type=int, default=3000, help="training phrases fitting the student's densities")
    ap.add_argument("--choice", choices=("fisher", "top", "bottom"), default="fisher",
                    help="which layer choice is distilled (all three are compared without training)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    from edgeuq.provenance import command_line, finish, start, write_results
    from edgeuq.report import results_table

    prov = start("full", 1)
    command = command_line("bench/text_student_cut.py", argv)
    torch.set_num_threads(1)
    if not (a.teacher_dir / "teacher.pt").is_file():
        print(f"no teacher.pt in {a.teacher_dir}: run bench/text_ood.py first", file=sys.stderr)
        return 2
    if not (a.data / "sst2" / "train.tsv").is_file():
        print(f"SST-2/TREC not found under {a.data}; nothing to do", file=sys.stderr)
        return 2
    import text_ood as ood_bench
    from edgeuq.data.text import load_sst2, load_trec
    from edgeuq.text.classifier import TextClassifier
    from edgeuq.text.export import export_text_bundle
    from edgeuq.text.finetune import fit_text_laplace
    from edgeuq.text.ood import avg_avg, layer_pooled, shuffle_words, text_sentences, truncate_words
    from edgeuq.text.pretrained import load_pretrained
    from edgeuq.text.student import (STUDENT_TRAIN, DistilConfig, StudentSpec, build_student, choose_layers,
                                     distil_student,
                                     mask_fisher, param_count, prune_vocab)
    from edgeuq.text.wordpiece import wordpiece_from_tokenizer_json
    from edgeuq.uq import auroc, decompose, expected_calibration_error
    from edgeuq.text.finetune import sample_probs
    from edgeuq_runtime import UncertaintyRuntime
    from edgeuq_runtime.density import fit_density

    t_start = time.time()
    pre = load_pretrained()
    tok = wordpiece_from_tokenizer_json(pre.tokenizer_json, a.max_length)
    sst = load_sst2(a.data / "sst2")
    trec = load_trec(a.data / "trec", "test")
    teacher = TextClassifier(pre.config, num_classes=2, scheme="laplace")
    teacher.load_state_dict(torch.load(a.teacher_dir / "teacher.pt", weights_only=True))
    teacher.eval()
    rng = np.random.default_rng(a.seed)
    train = sst["train"]
    L = pre.config.num_hidden_layers

    # 1. mask Fisher on teacher-labelled phrases
    t0 = time.time()
    fi = rng.permutation(len(train))[:a.fisher]
    fisher = mask_fisher(teacher, tok.encode_batch([train.texts[i] for i in fi]), batch_size=8)
    t_fisher = time.time() - t0
    print(f"mask Fisher on {a.fisher} phrases ({t_fisher:.0f}s): layers {np.round(fisher.layers, 3).tolist()}",
          flush=True)

    # vocabulary: tokens of the SST-2 train + dev phrases (an unlabelled corpus) + specials + characters
    t0 = time.time()
    corpus_ids = tok.encode_batch(list(train.texts) + list(sst["dev"].texts))
    small_tok, old_ids = prune_vocab(tok, corpus_ids)
    remap = np.zeros(tok.vocab_size, np.int64)
    remap[old_ids] = np.arange(len(old_ids))
    print(f"vocabulary {tok.vocab_size} -> {small_tok.vocab_size} tokens ({time.time() - t0:.0f}s)", flush=True)

    # 2. layer choice, zero-shot
    dev = sst["dev"].subset(rng.permutation(len(sst["dev"]))[:1000])
    dev_ids = tok.encode_batch(dev.texts)
    teacher.set_sampling(False)
    t_dev_pred = _predict(teacher, dev_ids)
    choices = {"fisher": choose_layers(fisher, a.layers), "top": tuple(range(L - a.layers, L)),
               "bottom": tuple(range(a.layers))}
    zero_shot = {}
    for name, layers in choices.items():
        spec = StudentSpec(layers=layers, ffn=a.ffn, rank=a.rank, max_length=a.max_length,
                           trim_positions=not a.full_position_table)
        s, info = build_student(teacher, spec, old_ids, fisher)
        zero_shot[name] = {"layers": list(layers), **_agreement(s, remap[dev_ids], t_dev_pred, dev.y), **info}
        print(f"cut {name} {layers}, no training: {zero_shot[name]}", flush=True)

    # 3. build + distil the chosen cut (default: the Fisher choice)
    spec = StudentSpec(layers=choices[a.choice], ffn=a.ffn, rank=a.rank, max_length=a.max_length,
                       trim_positions=not a.full_position_table)
    student, info = build_student(teacher, spec, old_ids, fisher)
    ti = np.sort(rng.permutation(len(train))[:a.transfer])
    t_ids = tok.encode_batch([train.texts[i] for i in ti])
    t0 = time.time()
    hist = distil_student(student, teacher, spec, t_ids, remap[t_ids],
                          DistilConfig(max_seconds=a.max_seconds,
                                       train=dataclasses.replace(STUDENT_TRAIN, epochs=a.epochs, seed=a.seed)),
                          log=lambda m: print(m, flush=True))
    t_distil = time.time() - t0
    print(f"distilled in {t_distil:.0f}s: {hist}", flush=True)

    # 4. Laplace refit, bundle, device-runtime evaluation
    def feats_of(model, ids):
        lengths = (ids != 0).sum(1)
        order = np.argsort(lengths)
        out = np.zeros((len(ids), model.feature_dim), np.float32)
        with torch.no_grad():
            for i in range(0, len(ids), 128):
                idx = order[i:i + 128]
                out[idx] = model.trunk(torch.from_numpy(ids[idx, :int(lengths[idx].max())])).numpy()
        return out

    student.scheme = "laplace"
    fit_rows = rng.permutation(len(train))[:a.fit]
    fit_ids = tok.encode_batch([train.texts[i] for i in fit_rows])
    fit_y = train.y[fit_rows]
    val = sst["dev"].subset(rng.permutation(len(sst["dev"]))[:1000])
    val_ids = tok.encode_batch(val.texts)
    s_fit = feats_of(student, remap[fit_ids])
    lap = fit_text_laplace(student, s_fit, feats_of(student, small_tok.encode_batch(val.texts)), val.y)
    bundle_dir = a.out / "bundle-laplace"
    b = export_text_bundle(student, small_tok, bundle_dir, ("negative", "positive"), "minilm-cut-student-laplace",
                           default_samples=a.samples, check_texts=list(sst["test"].texts[:8]),
                           metadata={"base": pre.name, "stage": "text_student_cut", "layers": list(spec.layers),
                                     "ffn": spec.ffn, "rank": spec.rank}, overwrite=True)
    bundle_bytes = int(sum((b.root / f).stat().st_size for f in b.manifest.files))
    weight_bytes = int(sum((b.root / f).stat().st_size for f in b.manifest.files if f.endswith(".onnx")))
    rt = UncertaintyRuntime(b.root, threads=1, seed=0)

    # the sets of bench/text_ood.py (whole test set; other-text sources)
    test = sst["test"]
    pools = {"python_docs": text_sentences(ood_bench.python_doc_texts()),
             "licenses": text_sentences(ood_bench.license_texts()),
             "sklearn_descr": text_sentences(ood_bench.sklearn_descr_texts())}
    src_rng = np.random.default_rng(a.seed + 2)
    sets = {"sst2": list(test.texts), "trec": list(trec.texts),
            "shuffled": shuffle_words(list(test.texts), np.random.default_rng(a.seed + 3)),
            "truncated": truncate_words(list(test.texts))}
    for name, sents in pools.items():
        sets[name] = [sents[i] for i in np.sort(src_rng.permutation(len(sents))[:300])]
    shifts = [k for k in sets if k != "sst2"]

    def scores_of(model, tokzr, ids_map, runtime=None):
        out = {}
        lp_fit = layer_pooled(model.encoder, ids_map(fit_ids))
        dens = {"density": fit_density(feats_of(model, ids_map(fit_ids)).astype(np.float64), fit_y, 2),
                "density_avgavg": fit_density(avg_avg(lp_fit), fit_y, 2)}
        for name, tx in sets.items():
            ids = tokzr.encode_batch(tx)
            f = feats_of(model, ids)
            if runtime is not None:
                r = runtime.predict_text(tx, samples=a.samples, seed=3)
                probs, mi, tot = r.probs, r.epistemic, r.total
            else:
                rr = decompose(sample_probs(model, f, a.samples, seed=3))
                probs, mi, tot = rr.probs, rr.epistemic, rr.total
            out[name] = {"probs": probs, "mi": mi, "total": tot, "maxp": 1 - probs.max(-1),
                         "density": dens["density"].score(f.astype(np.float64), "none"),
                         "density_avgavg": dens["density_avgavg"].score(avg_avg(layer_pooled(model.encoder, ids)),
                                                                        "none")}
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

    t0 = time.time()
    lat_texts = list(test.texts[:32])
    s_scores = scores_of(student, small_tok, lambda ids: remap[ids], runtime=rt)
    s_row = summary(s_scores, param_count(student), weight_bytes, _latency(rt, lat_texts, a.samples),
                    "device runtime (UncertaintyRuntime.predict_text, S = 32) on the bundle; densities host-side")
    s_row["bundle_bytes"] = bundle_bytes
    t_row = summary(scores_of(teacher, tok, lambda ids: ids), param_count(teacher),
                    int(sum(p.numel() for p in teacher.parameters()) * 4), None,
                    "host PyTorch (float32 weights: 4 bytes a parameter), S = 32")
    t_eval = time.time() - t0

    emb_params = int(sum(p.numel() for n, p in student.named_parameters() if "embeddings" in n))
    results = {
        "what": "an edge student cut from the MiniLM-L6 SST-2 teacher (kept layers by mask Fisher, FFN pruned by mask "
                "Fisher, vocabulary pruned to SST-2 phrase tokens, SVD-factorised embedding, distilled with hidden-"
                "state matching); teacher vs student",
        "spec": {"choice": a.choice, "layers": list(spec.layers), "ffn": spec.ffn, "rank": spec.rank,
                 "positions": int(student.cfg.max_position_embeddings),
                 "vocab": int(small_tok.vocab_size), "embedding_params": emb_params, **info},
        "fisher": {"rows": a.fisher, "layers": fisher.layers.tolist(), "seconds": t_fisher},
        "layer_choice_zero_shot": zero_shot,
        "distillation": {"transfer_phrases": int(a.transfer), "epochs": a.epochs, "max_seconds": a.max_seconds,
                         "seconds": t_distil, "history": hist},
        "laplace": {"prior_precision": lap["prior_precision"]},
        "teacher": t_row, "student": s_row, "eval_s": t_eval, "total_s": time.time() - t_start,
        "teacher_source": str(a.teacher_dir / "teacher.pt"),
    }
    heads = ["model", "params", "weight MB", "SST-2 acc", "ECE", *[f"AUROC MI {sh}" for sh in shifts],
             "AUROC density TREC", "AUROC Avg-Avg density TREC", "S=32 / 1 pass"]

    def trow(name, r):
        return [name, f"{r['params'] / 1e6:.2f}M", f"{r['bytes'] / 1e6:.1f}", f"{r['acc']:.4f}", f"{r['ece']:.4f}",
                *[f"{r[f'auroc_{sh}_mi']:.3f}" for sh in shifts], f"{r['auroc_trec_density']:.3f}",
                f"{r['auroc_trec_density_avgavg']:.3f}", f"{r['ratio']:.2f}" if "ratio" in r else None]

    results["tables"] = {"text_student_cut": results_table(heads, [
        trow("teacher (MiniLM-L6, top layer fine-tuned; host)", t_row),
        trow(f"student ({a.choice} layers): {list(spec.layers)}, FFN {spec.ffn}, vocab {small_tok.vocab_size}, rank {spec.rank} "
             "(device runtime)", s_row)])}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "results.json").write_text(json.dumps(results, indent=1))
    print(json.dumps({k: results[k] for k in ("spec", "layer_choice_zero_shot", "teacher", "student")}, indent=1))
    if a.json:
        write_results(a.json, results, command, finish(prov))
        print(f"results: {a.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
