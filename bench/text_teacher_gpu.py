"""The full fine-tune of the MiniLM-L6 SST-2 teacher on an accelerator, as one prepared script.

    python bench/text_teacher_gpu.py [--data ../shared/data/text] [--epochs 3] [--lr 3e-5] \\
        [--batch 32] [--device auto] [--json runs/text_teacher_gpu.json]

Every encoder layer and the head train (``edgeuq.text.finetune.finetune`` with ``train_layers`` =
6; the embeddings frozen; ids padded per length-bucketed batch; AdamW, linear warm-up over 6 % of
the steps, then linear decay; the epoch with the best SST-2 dev accuracy kept) on the device that
``--device auto`` finds (CUDA when torch sees one, else the CPU). It prints, and writes with
``--json``, the recipe and the numbers, never the weights: time per epoch, dev accuracy per epoch,
the kept epoch, and SST-2 test (GLUE dev) accuracy of the deterministic head (host PyTorch, not the
device runtime: bundling is ``edgeuq text-teacher``'s job, and its ``--train-layers 6`` runs the
same loop on the CPU).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "text"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--lr-head", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto", help="auto (CUDA when available), cuda, cpu")
    ap.add_argument("--train-limit", type=int, default=0, help="first N training phrases (0 = all; a smoke test)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    if not (a.data / "sst2" / "train.tsv").is_file():
        print(f"SST-2 not found under {a.data}; nothing to do", file=sys.stderr)
        return 2
    import torch

    from edgeuq.data.text import load_sst2
    from edgeuq.models.transformer import build_model
    from edgeuq.provenance import command_line, finish, start
    from edgeuq.text.cache import token_rows
    from edgeuq.text.finetune import FINETUNE_TRAIN, FinetuneConfig, features_from_cache, finetune
    from edgeuq.text.pipeline import TeacherOptions, teacher_model_config
    from edgeuq.text.pretrained import load_pretrained
    from edgeuq.text.wordpiece import wordpiece_from_tokenizer_json

    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    prov = start("full", 1)
    pre = load_pretrained()
    tok = wordpiece_from_tokenizer_json(pre.tokenizer_json, a.max_length)
    sst = load_sst2(a.data / "sst2")
    train = sst["train"] if not a.train_limit else sst["train"].subset(np.arange(a.train_limit))
    layers = pre.config.num_hidden_layers
    opts = TeacherOptions(train_layers=layers, max_length=a.max_length, ood_features="none", seed=a.seed)
    torch.manual_seed(a.seed)
    model = build_model(teacher_model_config(pre.config, 2, opts))
    model.encoder.load_bert_state(pre.state)
    model.to(device)
    emb = model.encoder.embeddings
    pad = pre.config.pad_token_id
    rows = {k: token_rows(tok.encode_batch(list(ds.texts)), ds.y, emb, pad)
            for k, ds in (("train", train), ("dev", sst["dev"]), ("test", sst["test"]))}
    cfg = FinetuneConfig(train_layers=layers, lr_head=a.lr_head, keep_best=True,
                         train=replace(FINETUNE_TRAIN, epochs=a.epochs, batch_size=a.batch, lr=a.lr, seed=a.seed))
    t0 = time.time()
    hist = finetune(model, rows["train"], cfg, val=rows["dev"], device=device)
    train_s = time.time() - t0
    with torch.no_grad():
        feats = features_from_cache(model, rows["test"])
        pred = model.head_forward(torch.from_numpy(feats).to(device)).argmax(-1).cpu().numpy()
    test_acc = float(np.mean(pred == rows["test"].labels))
    out = {
        "what": "MiniLM-L6 SST-2 teacher, every encoder layer fine-tuned (embeddings frozen); recipe and numbers, "
                "no weights",
        "device": device, "device_name": torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu",
        "recipe": {"train_layers": layers, "epochs": a.epochs, "lr": a.lr, "lr_head": a.lr_head, "batch": a.batch,
                   "max_length": a.max_length, "seed": a.seed, "train_rows": len(rows["train"]),
                   "dev_rows": len(rows["dev"]), "schedule": "AdamW, warm-up 6 % of steps, linear decay to 0",
                   "keep_best": "epoch of the best SST-2 dev accuracy"},
        "time_per_epoch_s": hist.get("epoch_s"), "train_s": train_s, "dev_acc_per_epoch": hist["val_acc"],
        "train_loss_per_epoch": hist["train_loss"], "best_epoch": hist.get("best_epoch"),
        "sst2_test_acc_host": test_acc, "sst2_test_rows": len(rows["test"]),
        "how": "host PyTorch, deterministic head (no device runtime, no bundle)",
        "command": command_line("bench/text_teacher_gpu.py", argv), "provenance": finish(prov),
    }
    print(json.dumps(out, indent=1))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
