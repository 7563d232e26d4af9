"""Which score flags off-topic text? MiniLM teacher on SST-2; every score against held-out shifts.

    nice -n 10 .venv/bin/python bench/text_ood.py [--out runs/text_ood] [--cache-dir DIR] \\
        [--train-layers 1] [--train-subset 20000] [--json results/text_ood.json]

Scores (higher = more unusual), all from one run:
  mi, total, maxp       last-layer Laplace head, S samples (the teacher's current scores)
  energy                -logsumexp of the deterministic logits (Liu et al. 2020)
  density_finetuned     Mahalanobis density (tied-covariance class Gaussian, edgeuq_runtime.density)
                        on the fine-tuned trunk's pooled features (today's density score)
  density_pretrained    the same on the pretrained encoder's last-layer pooled features, before
                        fine-tuning (Uppaal et al. 2023)
  density_avgavg        the same on token-and-layer averaged pretrained features (Avg-Avg, Chen
                        et al. 2022; layers 1..6)
  density_frozen_avg    Avg-Avg over the layers the fine-tune keeps frozen (1..L-train_layers):
                        free in the deployed trunk
  density_ft+*          on the concatenation [fine-tuned | that feature] (one trunk output)
  combined_*            max(z of log MI, z of that density), statistics from calibration phrases
Every density is fitted on --fit SST-2 *training* phrases (with their labels); the combined
scores' statistics on SST-2 dev phrases; neither is ever scored.

Held-out shifts (OOD positive) against SST-2 test sentences (GLUE dev): the test set is cut
into halves A and B; A picks the default score (mean AUROC over the shifts built for A),
B and TREC report it. TREC is never used to choose.
  shuffled     B's (A's) sentences, words in random order
  truncated    their first 30 % of words (>= 2)
  python_docs  sentences of the docstrings of Python standard-library modules
  licenses     sentences of the licence files that installed distributions ship
  sklearn_descr sentences of scikit-learn's dataset descriptions (sklearn/datasets/descr/*.rst)
  trec         TREC test questions (report only)
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
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
DEFAULT_DATA = REPO.parent / "shared" / "data" / "text"

STDLIB_MODULES = ("os", "json", "collections", "argparse", "logging", "subprocess", "threading", "asyncio",
                  "email.message", "http.client", "urllib.request", "decimal", "fractions", "statistics", "random",
                  "re", "shutil", "pathlib", "typing", "unittest", "inspect", "socket", "ssl", "tarfile", "zipfile",
                  "csv", "sqlite3", "datetime", "calendar", "textwrap", "difflib", "heapq", "functools", "itertools",
                  "contextlib", "dataclasses", "enum", "abc", "io", "tempfile", "glob", "fnmatch", "pickle", "copy",
                  "pprint", "string", "codecs", "locale", "gettext", "queue", "sched", "selectors", "signal",
                  "smtplib", "ftplib", "imaplib", "mailbox", "xml.dom.minidom", "html.parser", "wave", "turtle",
                  "optparse", "configparser", "netrc", "plistlib", "hashlib", "hmac", "secrets", "uuid", "ipaddress")


def python_doc_texts() -> list:
    """Docstrings of standard-library modules and their public members."""
    out = []
    for name in STDLIB_MODULES:
        try:
            mod = importlib.import_module(name)
        except ImportError as exc:  # a stdlib module missing from this Python build: said, not hidden
            print(f"python_docs: {name} not importable ({exc})", file=sys.stderr)
            continue
        out.append(inspect.getdoc(mod) or "")
        for attr, obj in sorted(vars(mod).items()):
            if attr.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
                continue
            out.append(inspect.getdoc(obj) or "")
    return out


def license_texts() -> list:
    """Licence files shipped by the installed distributions (dist-info LICENSE*/COPYING*)."""
    from importlib import metadata

    out, seen = [], set()
    for dist in metadata.distributions():
        for f in dist.files or ():
            base = f.name.upper()
            if base.startswith(("LICENSE", "LICENCE", "COPYING")) and f.suffix.lower() in ("", ".txt", ".md", ".rst"):
                p = Path(f.locate())
                if p.is_file() and p.stat().st_size < 200_000:
                    t = p.read_text(errors="replace")
                    if t not in seen:
                        seen.add(t)
                        out.append(t)
    return out


def sklearn_descr_texts() -> list:
    import importlib.resources as res

    try:
        root = res.files("sklearn.datasets") / "descr"
    except ModuleNotFoundError:
        print("sklearn_descr: scikit-learn not installed", file=sys.stderr)
        return []
    return [p.read_text() for p in sorted(root.iterdir(), key=lambda p: p.name) if p.name.endswith(".rst")]


def trunk_features(model, ids: np.ndarray, batch: int = 128) -> np.ndarray:
    """Deterministic pooled trunk features, length-sorted batches trimmed to their longest row."""
    lengths = (ids != 0).sum(1)
    order = np.argsort(lengths, kind="stable")
    out = np.zeros((len(ids), model.feature_dim), np.float32)
    with torch.no_grad():
        for i in range(0, len(ids), batch):
            idx = order[i:i + batch]
            out[idx] = model.trunk(torch.from_numpy(ids[idx, :int(lengths[idx].max())])).numpy()
    return out


def _halves(items, rng):
    idx = rng.permutation(len(items))
    h = len(idx) // 2
    return [items[i] for i in np.sort(idx[:h])], [items[i] for i in np.sort(idx[h:])]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "text_ood")
    ap.add_argument("--cache-dir", type=Path, help="folder of frozen-layer caches (default OUT/cache); an earlier "
                                                   "bench/text_teacher.py run's cache folder is reused as is")
    ap.add_argument("--train-layers", type=int, default=1)
    ap.add_argument("--train-subset", type=int, default=20000)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--fit", type=int, default=5000, help="SST-2 training phrases that fit every density")
    ap.add_argument("--calib", type=int, default=2000, help="SST-2 dev phrases for the combined scores' statistics")
    ap.add_argument("--per-source", type=int, default=600, help="sentences drawn from each other-text source")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reuse-teacher", action="store_true", help="load OUT/teacher.pt instead of fine-tuning")
    ap.add_argument("--teacher-dir", type=Path,
                    help="score a TextTeacher artifact (edgeuq text-teacher --out DIR, e.g. the all-layers "
                         "fine-tune) instead of fine-tuning here: its Laplace head, its train_layers")
    ap.add_argument("--json", type=Path, help="write the results JSON (with provenance) here")
    ap.add_argument("--quick", action="store_true", help="smoke size: 3,000 phrases fine-tune, 1,500 fit")
    a = ap.parse_args(argv)
    from edgeuq.provenance import command_line, finish, start, write_results
    from edgeuq.report import results_table

    if a.quick:
        a.train_subset, a.fit, a.calib, a.per_source = 3000, 1500, 800, 300
    prov = start("quick" if a.quick else "full", 1)
    command = command_line("bench/text_ood.py", argv)
    torch.set_num_threads(1)
    if not (a.data / "sst2" / "train.tsv").is_file() or not (a.data / "trec" / "test.tsv").is_file():
        print(f"SST-2/TREC not found under {a.data}; nothing to do", file=sys.stderr)
        return 2

    from edgeuq.data.text import load_sst2, load_trec
    from edgeuq.text.cache import cache_hidden, cache_key
    from edgeuq.text.classifier import TextClassifier
    from edgeuq.text.finetune import (FINETUNE_TRAIN, FinetuneConfig, features_from_cache, finetune,
                                      fit_text_laplace, sample_probs)
    from edgeuq.text.ood import avg_avg, energy_score, layer_pooled, shuffle_words, text_sentences, truncate_words
    from edgeuq.text.pretrained import load_pretrained
    from edgeuq.text.wordpiece import wordpiece_from_tokenizer_json
    from edgeuq.uq import auroc, decompose, expected_calibration_error
    from edgeuq_runtime.density import fit_density

    t_start = time.time()
    rng = np.random.default_rng(a.seed)
    pre = load_pretrained()
    tok = wordpiece_from_tokenizer_json(pre.tokenizer_json, a.max_length)
    sst = load_sst2(a.data / "sst2")
    trec = load_trec(a.data / "trec", "test")
    train = sst["train"]
    n_layers = pre.config.num_hidden_layers
    art = None
    if a.teacher_dir is not None:
        from edgeuq.text.pipeline import load_text_teacher

        art = load_text_teacher(a.teacher_dir)
        a.train_layers = int(art.options["train_layers"])
        a.train_subset = int(art.data["rows"]["train"])
        a.epochs = int(art.options["epochs"])
        if art.max_length != a.max_length:
            tok = wordpiece_from_tokenizer_json(pre.tokenizer_json, art.max_length)
    start_layer = n_layers - a.train_layers

    # ---- the teacher (top train_layers fine-tuned on cached frozen states; Laplace head)
    model = TextClassifier(pre.config, num_classes=2, scheme="mc_dropout")
    model.encoder.load_bert_state(pre.state)
    model.eval()
    pretrained_enc = pre.encoder()   # the weights read above, not the package read a second time
    pretrained_enc.eval()
    # the training phrases' ids: only a fine-tune here reads them (60k phrases, ~19 s of tokenising)
    ids_train = tok.encode_batch(train.texts) if art is None and not a.reuse_teacher else None
    val = sst["dev"].subset(rng.permutation(len(sst["dev"]))[:2000])
    a.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if art is not None:  # a BertTransformer with the Laplace head and its fitted posterior (same methods)
        model = art.load_model("laplace")
        history, t_train = art.history, art.timings.get("train_s")
        print(f"teacher: {a.teacher_dir} (top {a.train_layers} of {n_layers} layers fine-tuned on "
              f"{a.train_subset} phrases, {a.epochs} epoch(s))", flush=True)
    elif a.reuse_teacher:
        model.load_state_dict(torch.load(a.out / "teacher.pt", weights_only=True))
        history, t_train = None, None
    else:
        cache_dir = a.cache_dir or a.out / "cache"
        key = cache_key(model.encoder, ids_train, start_layer)
        cache = cache_hidden(model.encoder, ids_train, train.y, start_layer,
                             path=cache_dir / f"sst2-train-{key}.npz", batch_size=128, name="sst2-train")
        sub = np.sort(np.random.default_rng(a.seed).permutation(len(cache))[:a.train_subset])
        cache = cache.subset(sub)
        print(f"cache ready ({time.time() - t0:.0f}s); fine-tuning top {a.train_layers} layer(s) on {len(cache)} "
              "phrases", flush=True)
        cfg = FinetuneConfig(train_layers=a.train_layers,
                             train=dataclasses.replace(FINETUNE_TRAIN, epochs=a.epochs, seed=a.seed))
        history = finetune(model, cache, cfg)
        t_train = time.time() - t0
        model.scheme = "laplace"
        lap_cache = cache.subset(np.random.default_rng(1).permutation(len(cache))[:10000])
        val_ids = tok.encode_batch(val.texts)
        val_feats = trunk_features(model, val_ids)
        fit_text_laplace(model, features_from_cache(model, lap_cache), val_feats, val.y)
        torch.save(model.state_dict(), a.out / "teacher.pt")
        del cache
    if art is None:
        model.scheme = "laplace"
    model.eval()
    # Avg-Avg over the frozen layers exists only while some layer stays frozen
    frozen_kinds = ("frozen_avg",) if start_layer > 0 else ()

    # ---- the sets
    test = sst["test"]
    half_a, half_b = _halves(list(range(len(test))), np.random.default_rng(a.seed + 1))
    pools = {"python_docs": text_sentences(python_doc_texts()), "licenses": text_sentences(license_texts()),
             "sklearn_descr": text_sentences(sklearn_descr_texts())}
    src_rng = np.random.default_rng(a.seed + 2)
    other = {}
    for name, sents in pools.items():
        pick = [sents[i] for i in np.sort(src_rng.permutation(len(sents))[:a.per_source])]
        other[name] = _halves(pick, src_rng)
        print(f"{name}: {len(sents)} sentences, {len(pick)} used, e.g. {pick[0][:90]!r}", flush=True)
    texts = {}
    for h, idx in (("A", half_a), ("B", half_b)):
        base = [test.texts[i] for i in idx]
        texts[f"sst2_{h}"] = base
        texts[f"shuffled_{h}"] = shuffle_words(base, np.random.default_rng(a.seed + 3))
        texts[f"truncated_{h}"] = truncate_words(base)
        for name, (sa, sb) in other.items():
            texts[f"{name}_{h}"] = sa if h == "A" else sb
    texts["trec_B"] = list(trec.texts)
    fit_idx = np.random.default_rng(a.seed + 4).permutation(len(train))[:a.fit]
    texts["fit"] = [train.texts[i] for i in fit_idx]
    fit_y = train.y[fit_idx]
    cal_rows = sst["dev"].subset(np.random.default_rng(a.seed + 5).permutation(len(sst["dev"]))[:a.calib])
    texts["calib"] = list(cal_rows.texts)

    # ---- features and scores of every set
    t0 = time.time()
    feats = {}
    for name, tx in texts.items():
        ids = tok.encode_batch(tx)
        lp = layer_pooled(pretrained_enc, ids)
        ft = trunk_features(model, ids)
        with torch.no_grad():
            logits = model.head_forward(torch.from_numpy(ft)).numpy()  # sampling off: the MAP logits
        probs_s = sample_probs(model, ft, a.samples, seed=7)
        r = decompose(probs_s)
        feats[name] = {"pretrained": lp[:, -1].astype(np.float64), "avgavg": avg_avg(lp),
                       "finetuned": ft.astype(np.float64),
                       "mi": r.epistemic, "total": r.total, "maxp": 1 - r.probs.max(-1),
                       "energy": energy_score(logits), "probs": r.probs}
        if frozen_kinds:
            feats[name]["frozen_avg"] = avg_avg(lp, range(1, start_layer + 1))
        for k in ("pretrained", "avgavg", *frozen_kinds):  # what a trunk emitting [fine-tuned | k] would give
            feats[name][f"ft+{k}"] = np.concatenate([feats[name]["finetuned"], feats[name][k]], axis=1)
        print(f"features {name}: {len(tx)} ({time.time() - t0:.0f}s)", flush=True)
    t_feats = time.time() - t0
    dens = {k: fit_density(feats["fit"][k], fit_y, 2)
            for k in ("finetuned", "pretrained", "avgavg", *frozen_kinds, "ft+pretrained", "ft+avgavg",
                      *(f"ft+{f}" for f in frozen_kinds))}
    for f in feats.values():
        for k, g in dens.items():
            f[f"density_{k}"] = g.score(f[k], "none")
    cal = feats["calib"]
    log_mi = np.log(cal["mi"] + 1e-12)
    stats = {"mi": (float(log_mi.mean()), float(log_mi.std()))}
    for k in dens:
        stats[k] = (float(cal[f"density_{k}"].mean()), float(cal[f"density_{k}"].std()))
    for f in feats.values():
        z_mi = (np.log(f["mi"] + 1e-12) - stats["mi"][0]) / stats["mi"][1]
        for k in dens:
            f[f"combined_{k}"] = np.maximum(z_mi, (f[f"density_{k}"] - stats[k][0]) / stats[k][1])
    scores = ["mi", "total", "maxp", "energy"] + [f"density_{k}" for k in dens] + [f"combined_{k}" for k in dens]
    shifts_a = ["shuffled", "truncated", *pools]
    shifts_b = shifts_a + ["trec"]
    table = {"A": {}, "B": {}}
    for h, shifts in (("A", shifts_a), ("B", shifts_b)):
        ind = feats[f"sst2_{h}"]
        for s in scores:
            table[h][s] = {sh: float(auroc(ind[s], feats[f"{sh}_{h}"][s])) for sh in shifts}
            table[h][s]["mean_constructed"] = float(np.mean([table[h][s][sh] for sh in shifts_a]))
    default = max(scores, key=lambda s: table["A"][s]["mean_constructed"])
    y_test = test.y
    probs_all = np.zeros((len(test), 2))
    probs_all[half_a] = feats["sst2_A"]["probs"]
    probs_all[half_b] = feats["sst2_B"]["probs"]
    acc = float(np.mean(probs_all.argmax(-1) == y_test))
    ece = float(expected_calibration_error(probs_all, y_test))

    print(f"\nteacher: top {a.train_layers} layer(s) fine-tuned, SST-2 test acc {acc:.4f}, ECE {ece:.4f} "
          f"(Laplace head, S = {a.samples}, host PyTorch)")
    print(f"default score (best mean AUROC over the constructed shifts on half A): {default}")
    hdr = f"{'score':<22}" + "".join(f"{sh[:12]:>13}" for sh in shifts_b) + f"{'mean(A)':>9}{'mean(B)':>9}"
    print(hdr)
    for s in scores:
        print(f"{s:<22}" + "".join(f"{table['B'][s][sh]:>13.3f}" for sh in shifts_b)
              + f"{table['A'][s]['mean_constructed']:>9.3f}{table['B'][s]['mean_constructed']:>9.3f}")
    sizes = {k: len(v) for k, v in texts.items()}
    results = {
        "what": "text OOD scores of the MiniLM-L6 SST-2 teacher against held-out shifts (host PyTorch features, "
                "numpy densities); AUROC, OOD positive",
        "teacher": {"train_layers": a.train_layers, "train_phrases": a.train_subset, "epochs": a.epochs,
                    "artifact": str(a.teacher_dir) if art is not None else None,
                    "test_acc": acc, "test_ece": ece, "samples": a.samples, "history": history,
                    "train_s": t_train},
        "density_fit": {"rows": int(a.fit), "source": "SST-2 train phrases (random, with labels)"},
        "combined_stats": {"rows": int(a.calib), "source": "SST-2 dev phrases", **{k: list(v) for k, v in stats.items()}},
        "sources": {"python_docs": f"docstrings of {len(STDLIB_MODULES)} Python {sys.version.split()[0]} stdlib "
                                   "modules and members",
                    "licenses": "LICENSE/COPYING files of the installed distributions (importlib.metadata)",
                    "sklearn_descr": "scikit-learn sklearn/datasets/descr/*.rst",
                    "shuffled": "SST-2 test sentences, words permuted", "truncated": "first 30% of words (>= 2)",
                    "trec": "TREC test questions (report only, never used to choose)"},
        "pool_sizes": {k: len(v) for k, v in pools.items()}, "set_sizes": sizes,
        "selection": {"rule": "max mean AUROC over the constructed shifts of half A", "default": default},
        "auroc": table, "features_s": t_feats, "total_s": time.time() - t_start,
        "tables": {"text_ood": results_table(
            ["score", *[f"{sh} (B)" for sh in shifts_b], "mean constructed (A, chooses)", "mean constructed (B)"],
            [[s + (" (default)" if s == default else ""), *[f"{table['B'][s][sh]:.3f}" for sh in shifts_b],
              f"{table['A'][s]['mean_constructed']:.3f}", f"{table['B'][s]['mean_constructed']:.3f}"]
             for s in scores])},
    }
    (a.out / "results.json").write_text(json.dumps(results, indent=1))
    if a.json:
        write_results(a.json, results, command, finish(prov))
        print(f"results: {a.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
