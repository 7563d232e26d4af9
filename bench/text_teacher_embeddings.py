"""Does training the token embeddings lift the all-layer MiniLM teacher? A paired experiment.

    python bench/text_teacher_embeddings.py --data ../shared/data/text [--epochs 1] [--lr 5e-5]
        [--json results/text_teacher_embeddings.json]

Two arms fine-tune the packaged MiniLM-L6 with every encoder layer trained, on the same SST-2
training phrases, batches, seed and schedule (the recipe of ``bench/text_teacher_full.py``:
AdamW, lr 5e-5 for the encoder, 1e-3 for the head, linear warm-up and decay, batch 32, max
length 64, the epoch with the best validation accuracy kept). They differ in one thing:

- ``frozen``: the embeddings (word, position and type tables, their LayerNorm) stay pretrained,
  as in the shipped recipe;
- ``trained``: they train with the layers (``FinetuneConfig.train_embeddings``).

The arms run side by side, one process and one torch thread each (a 2-core host runs both in
the time of one). Each reports validation accuracy (held-out training phrases: the only number
a recipe may be chosen by) and GLUE dev accuracy (the test set here), both of the deterministic
host model (no MC sampling, no bundle: the device runtime's numbers come from
``bench/text_teacher_full.py``). The difference between the arms is one pair, one seed:
the table says so.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

from edgeuq.provenance import command_line, finish, start, write_results  # noqa: E402
from edgeuq.report import format_table, results_table  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

ARMS = ("frozen", "trained")


def _arm(arm: str, data: str, epochs: int, lr: float, batch: int, val_limit: int, train_limit: int,
         seed: int, queue) -> None:
    """One arm in its own process; puts a dict (or {"error": ...}) on ``queue``."""
    try:
        import torch

        torch.set_num_threads(1)
        from edgeuq.text.cache import token_rows
        from edgeuq.text.finetune import FINETUNE_TRAIN, FinetuneConfig, features_from_cache, finetune
        from edgeuq.data.sources import DataOptions
        from edgeuq.models.transformer import build_model
        from edgeuq.text.datasets import text_splits
        from edgeuq.text.pipeline import TeacherOptions, seeded_rows, teacher_model_config
        from edgeuq.text.pretrained import load_pretrained
        from edgeuq.text.wordpiece import wordpiece_from_tokenizer_json

        sst = Path(data) / "sst2"
        opts = TeacherOptions(train_layers=6, epochs=epochs, lr=lr, batch=batch, seed=seed, ood_features="none",
                              keep_best=True)
        splits = text_splits(sst / "train.tsv", sst / "dev.tsv", sst / "test.tsv", [], None, DataOptions(),
                             opts.held_out, seed)
        if val_limit and val_limit < len(splits.val):
            splits = replace(splits, val=splits.val.subset(seeded_rows(len(splits.val), val_limit, seed)))
        train = splits.train if not train_limit else splits.train.subset(np.arange(train_limit))
        pre = load_pretrained()
        tok = wordpiece_from_tokenizer_json(pre.tokenizer_json, opts.max_length)
        torch.manual_seed(seed)
        model = build_model(teacher_model_config(pre.config, len(splits.class_names), opts))
        model.encoder.load_bert_state(pre.state)
        model.eval()
        pad = pre.config.pad_token_id

        def rows(ds):
            return token_rows(tok.encode_batch(list(ds.texts)), ds.y, model.encoder.embeddings, pad)

        tr, va, te = rows(train), rows(splits.val), rows(splits.test)
        cfg = FinetuneConfig(train_layers=6, lr_head=opts.lr_head, keep_best=True, train_embeddings=arm == "trained",
                             train=replace(FINETUNE_TRAIN, epochs=epochs, batch_size=batch, lr=lr, seed=seed))
        t0 = time.time()
        hist = finetune(model, tr, cfg, val=va)
        train_s = time.time() - t0

        def acc(r):
            with torch.no_grad():
                pred = model.head_forward(torch.from_numpy(features_from_cache(model, r))).argmax(-1).numpy()
            return float(np.mean(pred == r.labels))

        queue.put({"arm": arm, "val_acc": acc(va), "dev_acc": acc(te), "train_s": round(train_s, 1),
                   "history": hist, "rows": {"train": len(tr), "val": len(va), "dev": len(te)}})
    except Exception as e:  # the parent reports it; nothing is silently dropped
        import traceback

        queue.put({"arm": arm, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "text")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--val-limit", type=int, default=2000)
    ap.add_argument("--train-limit", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--quick", action="store_true", help="smoke size: 1,000 phrases, 300 validation rows")
    a = ap.parse_args(argv)
    if a.quick:
        a.train_limit, a.val_limit = 1000, 300
    sst = a.data / "sst2"
    if not (sst / "train.tsv").is_file():
        print(f"SST-2 not found under {a.data}; nothing to do", file=sys.stderr)
        return 2
    prov = start("quick" if a.quick else "full", 1)
    command = command_line("bench/text_teacher_embeddings.py", argv)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_arm, args=(arm, str(a.data), a.epochs, a.lr, a.batch, a.val_limit, a.train_limit,
                                            a.seed, queue)) for arm in ARMS]
    t0 = time.time()
    for p in procs:
        p.start()
    got = {}
    for _ in ARMS:
        r = queue.get()
        got[r["arm"]] = r
        print(f"arm {r['arm']}: " + (f"FAILED {r['error']}\n{r['trace']}" if "error" in r else
                                     f"val acc {r['val_acc']:.4f}, GLUE dev acc {r['dev_acc']:.4f} "
                                     f"({r['train_s'] / 60:.1f} min training)"), flush=True)
    for p in procs:
        p.join()
    failed = [arm for arm in ARMS if "error" in got[arm]]
    if failed:
        print(f"arm(s) {failed} failed; no results written", file=sys.stderr)
        return 1
    rows = [[arm, f"{got[arm]['val_acc']:.4f}", f"{got[arm]['dev_acc']:.4f}", f"{got[arm]['train_s'] / 60:.1f}"]
            for arm in ARMS]
    delta_val = got["trained"]["val_acc"] - got["frozen"]["val_acc"]
    delta_dev = got["trained"]["dev_acc"] - got["frozen"]["dev_acc"]
    n_dev = got["frozen"]["rows"]["dev"]
    results = {
        "what": "paired: all-layer MiniLM-L6 SST-2 teacher with frozen vs trained embeddings (host model, "
                "deterministic head; one seed)",
        "recipe": {"train_layers": 6, "epochs": a.epochs, "lr": a.lr, "lr_head": 1e-3, "batch": a.batch,
                   "max_length": 64, "seed": a.seed, "val_limit": a.val_limit, "keep_best": True,
                   "schedule": "AdamW, linear warm-up over 6 % of the steps, then linear decay to 0"},
        "arms": got, "delta_trained_minus_frozen": {"val_acc": delta_val, "dev_acc": delta_dev},
        "wall_s": round(time.time() - t0, 1),
        "tables": {"text_teacher_embeddings": results_table(
            ["embeddings", "val acc (held-out training phrases)", "GLUE dev acc (host, deterministic)",
             "training min (one core each, side by side)"], rows,
            note=(f"one seed ({a.seed}), {a.epochs} epoch(s) at lr {a.lr:g}, the arms side by side on one core each; "
                  f"trained minus frozen: val {delta_val * 100:+.2f} points, GLUE dev {delta_dev * 100:+.2f} points "
                  f"(one pair: a GLUE dev difference of one sentence is {100 / n_dev:.2f} points)"))},
    }
    table = results["tables"]["text_teacher_embeddings"]
    print("\n" + format_table(table["headers"], table["rows"]) + "\n" + table["note"])
    if a.json:
        write_results(a.json, results, command, finish(prov))
        print(f"results: {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
