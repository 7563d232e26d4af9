"""Kwon et al.'s pruning of the packaged MiniLM-L6 (BERT trunk) with layer choice: agreement of the
pruned model with the unpruned one on SST-2 dev phrases, with and without mask rearrangement (step 2)
and mask tuning (step 3), and Fisher-chosen layers against the top layers. A quick check (a few
minutes on 2 cores); prints a table, writes no results JSON.

    nice -n 10 .venv/bin/python bench/bert_prune_check.py [--data ../shared/data/text/sst2]
        [--keep-layers 3] [--target-flops 0.6] [--calib 512] [--dev 500] [--head-train 4000] [--max-length 32]

The head: a tiny MLP (``head_hidden`` 64) fitted on the frozen MiniLM's pooled features of
``--head-train`` SST-2 training phrases (full-batch Adam); the calibration phrases for the Fisher
and the mask tuning are ``--calib`` other training phrases with their labels (Kwon's empirical
Fisher); the evaluation phrases are the first ``--dev`` of dev.tsv (never used before).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "2")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "text" / "sst2"


def _trim(ids: np.ndarray) -> np.ndarray:
    """Drop the all-padding columns (outputs are unchanged: padding is masked)."""
    return np.ascontiguousarray(ids[:, :int((ids != 0).sum(1).max())])


@torch.no_grad()
def _logits(model, ids: np.ndarray, batch: int = 128) -> np.ndarray:
    lengths = (ids != 0).sum(1)
    order = np.argsort(lengths, kind="stable")
    out = np.zeros((len(ids), model.cfg.num_classes), np.float32)
    for i in range(0, len(ids), batch):
        idx = order[i:i + batch]
        out[idx] = model(torch.from_numpy(ids[idx, :int(lengths[idx].max())])).numpy()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--keep-layers", type=int, default=3)
    ap.add_argument("--target-flops", type=float, default=0.6)
    ap.add_argument("--calib", type=int, default=512)
    ap.add_argument("--dev", type=int, default=500)
    ap.add_argument("--head-train", type=int, default=4000)
    ap.add_argument("--max-length", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if not (a.data / "train.tsv").exists():
        print(f"SKIPPED: no SST-2 data at {a.data} (not measured)")
        return 0
    try:
        from edgeuq.text.pretrained import load_pretrained
    except ImportError as exc:
        print(f"SKIPPED: text extra missing ({exc}) (not measured)")
        return 0
    from edgeuq.compress.prune import PruneConfig, prune
    from edgeuq.compress.slicing import count_params, drop_layers
    from edgeuq.models import build_model
    from edgeuq.models.config import bert_model_config
    from edgeuq.text.datasets import read_labelled_text
    from edgeuq.text.wordpiece import wordpiece_from_tokenizer_json

    torch.manual_seed(a.seed)
    t0 = time.time()
    pre = load_pretrained()
    tok = wordpiece_from_tokenizer_json(pre.tokenizer_json, a.max_length)
    train = read_labelled_text(a.data / "train.tsv", None)
    dev = read_labelled_text(a.data / "dev.tsv", train.class_names)
    rng = np.random.default_rng(a.seed)
    perm = rng.permutation(len(train))
    head_idx, calib_idx = perm[:a.head_train], perm[a.head_train:a.head_train + a.calib]
    enc = lambda texts: _trim(tok.encode_batch(list(texts)))  # noqa: E731
    head_ids, calib_ids = enc(train.texts[i] for i in head_idx), enc(train.texts[i] for i in calib_idx)
    dev_ids, dev_y = enc(dev.texts[:a.dev]), np.asarray(dev.y[:a.dev])
    cfg = bert_model_config(pre.config, len(train.class_names), a.max_length, scheme="mc_dropout", head_hidden=64)
    model = build_model(cfg).eval()
    model.encoder.load_bert_state(pre.state)

    # the tiny SST-2 head on frozen pooled features
    with torch.no_grad():
        feats = torch.cat([model.trunk(torch.from_numpy(head_ids[i:i + 256])) for i in range(0, len(head_ids), 256)])
    y = torch.from_numpy(np.asarray(train.y)[head_idx])
    opt = torch.optim.Adam(model.head.parameters(), lr=3e-3, weight_decay=1e-4)
    for _ in range(300):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model.head_forward(feats), y)
        loss.backward()
        opt.step()
    model.eval()
    ref = _logits(model, dev_ids)
    ref_pred = ref.argmax(1)
    print(f"MiniLM-L6 + head: dev accuracy {np.mean(ref_pred == dev_y):.3f} on {len(dev_ids)} phrases "
          f"(head fit {time.time() - t0:.0f} s so far); params {count_params(model)}")
    calib_y = np.asarray(train.y)[calib_idx]

    rows = []

    def report(name, res_model, info, seconds):
        z = _logits(res_model, dev_ids)
        pred = z.argmax(1)
        p_ref = torch.softmax(torch.from_numpy(ref), -1).numpy()
        p = torch.softmax(torch.from_numpy(z), -1).numpy()
        rows.append((name, info.get("kept_layers"), float(np.mean(pred == ref_pred)), float(np.mean(pred == dev_y)),
                     float(np.mean(np.abs(p - p_ref).sum(1) / 2)), info["model_macs_after"] / info["model_macs_before"],
                     count_params(res_model), seconds))
        print(f"{name}: kept layers {info.get('kept_layers')} heads {info['heads_kept']} "
              f"neurons {info['neurons_kept']}; agreement {rows[-1][2]:.3f}, accuracy {rows[-1][3]:.3f}, "
              f"mean TV distance {rows[-1][4]:.4f}, MACs {rows[-1][5]:.3f} of unpruned ({seconds:.0f} s)", flush=True)
        return info

    first = None
    for name, rearrange, tune in (("steps 1+2+3", True, True), ("steps 1+2 (no tuning)", True, False),
                                  ("steps 1+3 (no rearrangement)", False, True), ("step 1 only", False, False)):
        t = time.time()
        res = prune(model, calib_ids, calib_y, PruneConfig(target_flops=a.target_flops, keep_layers=a.keep_layers,
                                                           rearrange=rearrange, tune=tune))
        info = report(name, res.model, res.info, time.time() - t)
        first = first or info
    print(f"layer Fisher {[round(v, 4) for v in first['layer_fisher']]} -> kept {first['kept_layers']}")
    L = pre.config.num_hidden_layers
    top = list(range(L - a.keep_layers, L))
    if top != first["kept_layers"]:
        t = time.time()
        cut = drop_layers(model, top)
        res = prune(cut, calib_ids, calib_y, PruneConfig(target_flops=a.target_flops))
        info = dict(res.info, kept_layers=top, model_macs_before=first["model_macs_before"])
        report("top layers, steps 1+2+3", res.model, info, time.time() - t)
    for name, kept in (("layers only (Fisher choice, no head/neuron pruning)", first["kept_layers"]),
                       ("layers only (top layers)", top)):
        t = time.time()
        cut = drop_layers(model, kept)
        from edgeuq.compress.slicing import count_macs

        report(name, cut, {"kept_layers": kept, "heads_kept": [], "neurons_kept": [],
                           "model_macs_after": count_macs(cut), "model_macs_before": first["model_macs_before"]},
               time.time() - t)
    print()
    print("| variant | kept layers | agreement with unpruned | dev accuracy | mean TV distance | MACs ratio | params | s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:.3f} | {r[3]:.3f} | {r[4]:.4f} | {r[5]:.3f} | {r[6]} | {r[7]:.0f} |")
    print(f"unpruned dev accuracy {np.mean(ref_pred == dev_y):.3f}; total {time.time() - t0:.0f} s; "
          f"load {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
