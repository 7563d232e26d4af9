"""Text commands.

``edgeuq text-tokenizer``: write the device WordPiece tokenizer of the packaged
MiniLM (or a model folder) and optionally check it against the ``tokenizers``
library on the texts of TSV files (first column, header skipped).

``edgeuq text-teacher``: fine-tune the packaged MiniLM on a labelled TSV/CSV file,
fit the last-layer Laplace posterior, write one device bundle per scheme and a
``text_teacher`` artifact with the held-out and OOD metrics
(:func:`edgeuq.text.pipeline.train_text_teacher`)."""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

__all__ = ["register"]


def _cmd_tokenizer(a: argparse.Namespace) -> int:
    import numpy as np

    from .pretrained import load_pretrained
    from .wordpiece import reference_tokenizer, wordpiece_from_tokenizer_json

    pre = load_pretrained(a.model)
    tok = wordpiece_from_tokenizer_json(pre.tokenizer_json, a.max_length)
    if a.out:
        tok.save(Path(a.out))
        print(f"device WordPiece tokenizer ({tok.vocab_size} tokens, max_length {tok.max_length}) -> {a.out}")
    if not a.check:
        return 0
    ref = reference_tokenizer(pre.tokenizer_json, a.max_length)
    total = bad = 0
    for path in a.check:
        with open(path, encoding="utf-8", newline="") as fh:
            texts = [r[0] for r in list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))[1:] if r]
        for i in range(0, len(texts), 2048):
            chunk = texts[i:i + 2048]
            want = np.asarray([e.ids for e in ref.encode_batch(chunk)], dtype=np.int64)
            bad += int((tok.encode_batch(chunk) != want).any(axis=1).sum())
        total += len(texts)
        print(f"{path}: {len(texts)} texts checked", flush=True)
    print(f"agreement with tokenizers: {total - bad}/{total} texts identical")
    return 0 if bad == 0 else 1


def _require_text_extra(model) -> None:
    """Fail early, naming the extra, when the packaged weights or safetensors are missing."""
    import importlib.util

    from .pretrained import TextExtraMissing, locate_packaged_model

    if importlib.util.find_spec("safetensors") is None:
        raise TextExtraMissing("safetensors is not installed; install edgeuq's text extra (pip install 'edgeuq[text]')")
    if model is None:
        locate_packaged_model()


def _metric_rows(art) -> list:
    rows = []
    for scheme, m in art.metrics.items():
        ood = m.get("ood", {})
        rows.append([scheme, m["rows"], f"{m['accuracy']:.4f}", f"{m['ece']:.4f}", f"{m['nll']:.3f}",
                     "; ".join(f"{k[4:] if k.startswith('ood:') else k}: {v['auroc_mi']:.3f} / {v['auroc_total']:.3f}"
                               for k, v in ood.items()) or "-",
                     str(art.bundle_path(scheme))])
    return rows


def _cmd_teacher(a: argparse.Namespace) -> int:
    from ..cli_args import data_options
    from .pretrained import TextExtraMissing

    try:
        _require_text_extra(a.model)
        from ..report import format_table
        from .pipeline import TeacherOptions, train_text_teacher

        opts = TeacherOptions(train_layers=a.train_layers, epochs=a.epochs, lr=a.lr, lr_head=a.lr_head,
                              batch=a.batch, max_length=a.max_length, train_limit=a.train_limit,
                              train_subset=a.train_subset, val_limit=a.val_limit, laplace_rows=a.laplace_rows,
                              held_out=a.held_out,
                              seed=a.seed, samples=a.samples, schemes=tuple(a.scheme), threads=a.threads,
                              ood_features=a.ood_features, time_cap_min=a.time_cap_min, keep_best=a.keep_best)
        classes = [c.strip() for c in a.classes.split(",") if c.strip()] if a.classes else None
        art = train_text_teacher(Path(a.train), Path(a.out), opts, val=a.val, test=a.test, ood=a.ood or (),
                                 class_names=classes, data_options=data_options(a), model=a.model, name=a.name,
                                 force=a.force)
    except TextExtraMissing as exc:
        print(f"edgeuq text-teacher: error: {exc}", file=sys.stderr)
        return 2
    print()
    print(format_table(("scheme", "held-out rows", "acc", "ECE", "NLL", "OOD AUROC MI / total H", "bundle"),
                       _metric_rows(art)))
    print(f"\ntext_teacher {art.directory} (digest {art.digest[:12]}…); metrics from the device runtime, "
          f"S={art.options['samples']}")
    return 0


def _cmd_student(a: argparse.Namespace) -> int:
    from ..report import format_table
    from .student_chain import build_text_student

    names = None if a.steps is None else [n.strip() for n in a.steps.split(",") if n.strip()]
    st = build_text_student(a.teacher, a.out, a.recipe, steps=names, overrides=a.option or (), train=a.train,
                            val=a.val, progress=not a.no_progress, pretrained=a.pretrained)
    rows = [(r["index"], r["step"], "cached" if r["cached"] else f"{r['seconds']:.1f} s", r["checkpoint"])
            for r in st.summary["steps"]]
    print()
    print(format_table(("#", "step", "time", "checkpoint"), rows))
    print(f"\nstudent bundle {st.bundle} ({st.summary['params'] / 1e6:.2f}M parameters, vocabulary "
          f"{st.summary['vocab']}; teacher {st.summary['teacher_params'] / 1e6:.2f}M); summary "
          f"{Path(a.out) / 'text_student.json'}")
    return 0


def register(subparsers) -> None:
    from ..cli_args import add_text_column_arguments

    t = subparsers.add_parser(
        "text-teacher", help="fine-tune the pretrained text encoder (text extra) on a labelled TSV/CSV file: "
                             "Laplace / MC-dropout heads, device bundles, held-out and OOD metrics")
    t.add_argument("--train", required=True, help="labelled training texts (.tsv, or .csv)")
    t.add_argument("--val", help="labelled validation texts (Laplace prior precision; default: held out of --train)")
    t.add_argument("--test", help="labelled test texts for the metrics (default: held out of --train)")
    t.add_argument("--ood", nargs="+", metavar="FILE", help="out-of-distribution text files (OOD AUROC)")
    t.add_argument("--out", required=True, help="artifact folder (its cache/ is reused by a re-run)")
    g = t.add_argument_group("data")
    add_text_column_arguments(g)
    g.add_argument("--label-map", metavar="MAP",
                   help="translate your labels to class names: 'pos=positive,neg=negative' or a .json/.toml file "
                        "(case and separators are matched anyway)")
    g.add_argument("--classes", help="class names in index order, comma-separated (default: the training "
                                     "labels, sorted; class indices 0..K-1 when the labels are numbers)")
    g.add_argument("--held-out", type=float, default=0.1,
                   help="share of --train held out for each of a missing --val / --test (default 0.1)")
    g.add_argument("--train-limit", type=int, default=0, help="use the first N training rows (0 = all)")
    g.add_argument("--train-subset", type=int, default=0, help="fine-tune on a random N of them (0 = all)")
    g.add_argument("--val-limit", type=int, default=0, help="use a random N of the validation rows (0 = all)")
    m = t.add_argument_group("model and training")
    m.add_argument("--model", help="model folder or .zip with config.json, model.safetensors, tokenizer.json "
                                   "(default: the packaged all-MiniLM-L6-v2)")
    m.add_argument("--train-layers", type=int, default=2, help="top encoder layers trained (default 2)")
    m.add_argument("--epochs", type=int, default=1)
    m.add_argument("--lr", type=float, default=5e-5, help="learning rate of the encoder layers")
    m.add_argument("--lr-head", type=float, default=1e-3)
    m.add_argument("--batch", type=int, default=32)
    m.add_argument("--max-length", type=int, default=64, help="WordPiece ids per text incl. [CLS]/[SEP]")
    m.add_argument("--laplace-rows", type=int, default=10000, help="training rows of the Laplace GGN (0 = all)")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--time-cap-min", type=float, default=0.0,
                   help="stop fine-tuning at the first step after this many minutes, the state saved under "
                        "OUT/cache (0 = no cap; --force with the same options resumes there)")
    m.add_argument("--keep-best", action="store_true",
                   help="keep the epoch with the best validation accuracy, not the last")
    u = t.add_argument_group("uncertainty and bundles")
    u.add_argument("--scheme", nargs="+", default=["laplace", "mc_dropout"],
                   help="one bundle per scheme: laplace, mc_dropout (default: both)")
    u.add_argument("--samples", type=int, default=32, help="MC samples S of the bundles and metrics")
    u.add_argument("--threads", type=int, default=1, help="device-runtime threads in the evaluation")
    u.add_argument("--ood-features", choices=("frozen_avg", "avgavg", "pretrained", "none"), default="frozen_avg",
                   help="features the bundles' trunk emits beside the head's for `edgeuq calibrate`'s density score: "
                        "token means averaged over the frozen pretrained layers (default; no extra compute), over "
                        "all pretrained layers (Avg-Avg), the pretrained last layer, or none (the fine-tuned "
                        "features, which forget topic); bench/text_ood.py measures which flags off-topic text")
    u.add_argument("--name", default="text-teacher", help="bundle model name prefix")
    u.add_argument("--force", action="store_true", help="recompute even when an artifact of the same inputs exists")
    t.set_defaults(func=_cmd_teacher)

    from ..compress.cli import _option

    s = subparsers.add_parser(
        "text-student", help="the text teacher's edge student: the recipe's compression chain (prune, vocab, distill, "
                             "posterior) over the teacher artifact, then its device bundle")
    s.add_argument("--teacher", required=True, help="text_teacher artifact folder (edgeuq text-teacher --out)")
    s.add_argument("--recipe", default="text-student", help="text recipe name or .toml (default: text-student)")
    s.add_argument("--out", required=True, help="output folder (teacher checkpoint, chain/, bundle/; steps cached)")
    s.add_argument("--train", help="labelled training texts (default: the file the teacher recorded)")
    s.add_argument("--val", help="labelled validation texts (default: the teacher's)")
    s.add_argument("--steps", help="comma-separated steps in order (replaces the recipe's chain; each step keeps "
                                   "the recipe's options), e.g. vocab,distill,posterior")
    s.add_argument("--option", action="append", type=_option, metavar="STEP.KEY=VALUE",
                   help="set a step option (repeatable), e.g. --option distill.epochs=1")
    s.add_argument("--pretrained", help="the encoder folder or .zip the teacher was fine-tuned from (text-teacher "
                                        "--model; default: the packaged all-MiniLM-L6-v2), read when the distill step "
                                        "matches the teacher's density feature (density_weight > 0)")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=_cmd_student)

    p = subparsers.add_parser("text-tokenizer", help="write (and check) the device WordPiece tokenizer of the "
                                                     "pretrained text encoder (text extra)")
    p.add_argument("--model", help="model folder or .zip (default: the packaged all-MiniLM-L6-v2)")
    p.add_argument("--max-length", type=int, default=64, help="fixed token length incl. [CLS]/[SEP] (default 64)")
    p.add_argument("--out", help="write the tokenizer JSON here")
    p.add_argument("--check", nargs="*", default=[], help="TSV files whose texts are compared with `tokenizers`")
    p.set_defaults(func=_cmd_tokenizer)
