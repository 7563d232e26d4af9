"""Fine-tune a pretrained text classifier on CPU in minutes.

The lower ``L - train_layers`` encoder layers are frozen; their outputs are
computed once and cached to disk (trimmed to each sentence's length, float16,
one ``.npz`` per split, written atomically and keyed by a hash of the weights,
the token ids and the layer index). Training then runs only the top
``train_layers`` layers and the head on the cached states. Afterwards the
last-layer Laplace posterior (K-FAC GGN) is fitted on the training features and
its prior precision chosen by validation NLL (the project's scheme,
:mod:`edgeuq.schemes.laplace`).
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..models.sampling import mc_sample_head_logits, noise_by_sample
from ..schemes.laplace import laplace_factors_kron
from ..training.config import TrainConfig
from ..training.loop import Batch, LossOut, StepTotals, run_steps, warmup_linear_decay
from .cache import HiddenCache, length_buckets, progress as _progress
from .classifier import TextClassifier  # or a bert-trunk model (edgeuq.models.trunks.BertTransformer): same methods

__all__ = ["FinetuneConfig", "finetune", "fit_text_laplace", "features_from_cache", "sample_probs",
           "TEXT_PRIOR_GRID"]


#: The fine-tuning defaults of the shared optimiser options (``lr``: the encoder layers').
FINETUNE_TRAIN = TrainConfig(epochs=2, batch_size=32, lr=5e-5, weight_decay=0.01)


@dataclass(frozen=True)
class FinetuneConfig:
    """How :func:`finetune` trains: the top ``train_layers`` encoder layers at ``train.lr`` and the
    head at ``lr_head``. ``train`` is the project's one set of optimiser options
    (:class:`edgeuq.training.TrainConfig`: epochs, batch_size, lr, weight_decay, seed, threads);
    fine-tuning keeps every epoch, so its ``patience`` is not used."""

    train_layers: int = 1
    lr_head: float = 1e-3
    train: TrainConfig = FINETUNE_TRAIN
    #: stop at the first optimiser step after this many seconds of training (0: no cap); with a
    #: ``state_path`` the state is saved there and a later call resumes at that step
    time_cap_s: float = 0.0
    #: keep the weights of the epoch with the best validation accuracy (needs ``val``), not the last
    keep_best: bool = False
    #: train the embeddings too (word, position and type tables and their LayerNorm, at ``train.lr``);
    #: only with every layer trained (token rows, ``start`` 0: a frozen-layer cache sits above them)
    train_embeddings: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.train_layers, bool) or not isinstance(self.train_layers, int) or self.train_layers < 0:
            raise ValueError(f"train_layers must be an integer >= 0, got {self.train_layers!r}")
        if not (isinstance(self.time_cap_s, (int, float)) and self.time_cap_s >= 0):  # NaN-safe
            raise ValueError(f"time_cap_s must be >= 0 seconds, got {self.time_cap_s!r}")
        if not isinstance(self.keep_best, bool):
            raise ValueError(f"keep_best must be a bool, got {self.keep_best!r}")
        if not isinstance(self.train_embeddings, bool):
            raise ValueError(f"train_embeddings must be a bool, got {self.train_embeddings!r}")
        if not (isinstance(self.lr_head, (int, float)) and self.lr_head > 0):  # NaN-safe
            raise ValueError(f"lr_head must be > 0, got {self.lr_head!r}")
        if not isinstance(self.train, TrainConfig):
            raise ValueError(f"train must be a TrainConfig, got {type(self.train).__name__}")


def _batches(cache: HiddenCache, batch_size: int, rng: Optional[np.random.Generator]) -> List[np.ndarray]:
    """Length-bucketed batches of the cache's rows (shuffled buckets when ``rng`` is given)."""
    return length_buckets(np.diff(cache.offsets), batch_size, rng)


@torch.no_grad()
def features_from_cache(model: TextClassifier, cache: HiddenCache, batch_size: int = 128) -> np.ndarray:
    """Deterministic trunk features (N, d) from a cache."""
    model.eval()
    dev = next(model.parameters()).device
    out = np.zeros((len(cache), model.feature_dim), dtype=np.float32)
    for idx in _batches(cache, batch_size, None):
        h, m = cache.batch(idx)
        out[idx] = model.trunk_from_hidden(h.to(dev), m.to(dev), cache.start).cpu().numpy()
    return out


def _val_accuracy(model: TextClassifier, val) -> float:
    feats = features_from_cache(model, val)
    with torch.no_grad():
        pred = model.head_forward(torch.from_numpy(feats).to(next(model.parameters()).device)).argmax(-1).cpu().numpy()
    return float(np.mean(pred == val.labels))


def finetune(model: TextClassifier, train: HiddenCache, cfg: FinetuneConfig,
             val: Optional[HiddenCache] = None, state_path: Optional[Path] = None,
             device: Optional[str] = None) -> Dict[str, list]:
    """Train layers ``train.start``.. and the head with cross-entropy (AdamW, linear warm-up and
    decay). ``train``/``val``: a :class:`~edgeuq.text.cache.HiddenCache` of the frozen layers, or
    :class:`~edgeuq.text.cache.TokenRows` (``start`` 0: every layer trains, the embeddings stay frozen
    unless ``cfg.train_embeddings``).

    ``cfg.time_cap_s`` stops at the first step after the cap; the history then carries
    ``stopped`` (epoch, step) and, with ``state_path``, the whole training state (weights, optimiser,
    schedule, batch order, partial sums, best weights so far) is saved there atomically; a call with
    the same arguments and an existing ``state_path`` resumes at that step. ``cfg.keep_best`` loads
    the weights of the epoch with the best validation accuracy at the end (``best_epoch``, 1-based).
    ``device`` (e.g. ``"cuda"``): the model is moved there and trained there (default: where it is)."""
    tc = cfg.train
    if device is not None:
        model.to(device)
    dev = next(model.parameters()).device
    if tc.threads:
        torch.set_num_threads(tc.threads)
    if cfg.keep_best and val is None:
        raise ValueError("keep_best needs validation data (val)")
    if cfg.train_embeddings:
        if train.start != 0 or not hasattr(train, "with_trainable_embed"):
            raise ValueError("train_embeddings needs every layer trained: token rows (start 0), not a cache of "
                             f"frozen layers (start {train.start})")
        train = train.with_trainable_embed()
    torch.manual_seed(tc.seed)
    rng = np.random.default_rng(tc.seed)
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    enc_params = [p for layer in list(model.encoder.layers)[train.start:] for p in layer.parameters()]
    if cfg.train_embeddings:
        enc_params = list(model.encoder.embeddings.parameters()) + enc_params
    for p in enc_params:
        p.requires_grad_(True)
    head_params = model.head_parameters()
    groups = [{"params": head_params, "lr": cfg.lr_head}]
    if enc_params:
        groups.append({"params": enc_params, "lr": tc.lr})
    opt = torch.optim.AdamW(groups, weight_decay=tc.weight_decay)
    steps = tc.epochs * math.ceil(len(train) / tc.batch_size)
    sched = warmup_linear_decay(opt, steps)
    history: Dict[str, list] = {"train_loss": [], "val_acc": []}
    start = train.start
    extra = cfg.time_cap_s > 0 or cfg.keep_best  # the history keys of the capped / best-epoch runs
    if extra:
        history["epoch_s"] = []
    best: Optional[dict] = None
    first_epoch, first_step, resumed_order, partial = 0, 0, None, (0.0, 0, 0)
    spent = 0.0  # training seconds of earlier (capped) calls
    if state_path is not None and Path(state_path).is_file():
        st = torch.load(state_path, map_location=dev, weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        history = st["history"]
        history.pop("stopped", None)
        best = st["best"]
        first_epoch, first_step, resumed_order = st["epoch"], st["step"], st["order"]
        partial = tuple(st["partial"])
        rng.bit_generator.state = st["rng"]
        torch.set_rng_state(st["torch_rng"].cpu())
        spent = float(st["spent_s"])
        print(f"resumed from {state_path} at epoch {first_epoch + 1} step {first_step + 1}", flush=True)

    def loss_fn(m: TextClassifier, batch: Batch) -> LossOut:
        logits = m.head_forward(m.trunk_from_hidden(batch.x, train.mask(batch.index.tolist()).to(dev), start))
        return LossOut(nn.functional.cross_entropy(logits, batch.y), logits)

    t0 = time.time() - spent  # elapsed training time, earlier capped calls included
    t_call = time.time()      # the cap counts this call's time
    stopped: Optional[Tuple[int, int]] = None
    for epoch in range(first_epoch, tc.epochs):
        t_epoch = time.time()
        model.train()
        if not cfg.train_embeddings:
            model.encoder.embeddings.eval()
        if epoch == first_epoch and resumed_order is not None:
            order = [np.asarray(o) for o in resumed_order]
        else:
            order = _batches(train, tc.batch_size, rng)
        skip = first_step if epoch == first_epoch else 0
        taken = [skip]

        def batches(order=order, skip=skip, taken=taken):
            for idx in order[skip:]:
                if cfg.time_cap_s and time.time() - t_call > cfg.time_cap_s:
                    return
                taken[0] += 1
                yield Batch(train.batch(idx)[0].to(dev), torch.from_numpy(train.labels[idx]).to(dev),
                            torch.from_numpy(idx))

        def on_step(b: int, t: StepTotals, epoch=epoch, n_batches=len(order), skip=skip) -> None:
            if (b + skip) % 100 == 0 and (sys.stdout.isatty() or extra):
                _progress(f"epoch {epoch + 1}/{tc.epochs} step {b + skip + 1}/{n_batches} "
                          f"loss {(t.loss_sum + partial[0]) / max(t.rows + partial[2], 1):.4f} "
                          f"({time.time() - t0:.0f}s)")

        # the shared step loop (edgeuq.training.loop); fine-tuning clips no gradients, as it never did
        totals = run_steps(model, opt, sched, batches(), loss_fn, clip_norm=None, on_step=on_step)
        total, n = totals.loss_sum + partial[0], totals.rows + partial[2]
        correct = totals.correct + partial[1]
        partial = (0.0, 0, 0)
        if taken[0] < len(order):  # the time cap: stop at this step, the state saved
            stopped = (epoch, taken[0])
            history["stopped"] = [epoch + 1, taken[0]]
            print(f"time cap {cfg.time_cap_s:.0f}s reached at epoch {epoch + 1} step {taken[0]}/{len(order)}"
                  + (f"; state saved to {state_path}" if state_path is not None else ""), flush=True)
            if state_path is not None:
                _save_state(state_path, {
                    "model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                    "history": history, "best": best, "epoch": epoch, "step": taken[0],
                    "order": [o.tolist() for o in order], "partial": [total, correct, n],
                    "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                    "spent_s": time.time() - t0})
            break
        history["train_loss"].append(total / max(n, 1))
        msg = f"epoch {epoch + 1}/{tc.epochs}: train loss {total / max(n, 1):.4f}"
        if val is not None:
            acc = _val_accuracy(model, val)
            history["val_acc"].append(acc)
            msg += f", val acc {acc:.4f}"
            if cfg.keep_best and (best is None or acc > best["acc"]):
                best = {"acc": acc, "epoch": epoch + 1,
                        "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
        if extra:
            history["epoch_s"].append(round(time.time() - t_epoch, 1))
        print(msg + f" ({time.time() - t0:.0f}s)", flush=True)
    if cfg.keep_best and best is not None:
        model.load_state_dict(best["state"])
        history["best_epoch"] = best["epoch"]
        print(f"kept epoch {best['epoch']} (val acc {best['acc']:.4f})", flush=True)
    if stopped is None and state_path is not None and Path(state_path).is_file():
        Path(state_path).unlink()  # finished: the resumable state is spent
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return history


def _save_state(path: Path, obj: dict) -> None:
    import io

    from edgeuq_runtime.atomic import atomic_write

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(Path(path), buf.getbuffer(), durable=True)


#: Prior precisions tried for a text head's Laplace posterior: wider at the low end than the
#: signal models' grid, since fine-tuned text heads kept choosing its edge (1e-2).
TEXT_PRIOR_GRID = tuple(float(v) for v in np.logspace(-5, 5, 21))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


@torch.no_grad()
def fit_text_laplace(model: TextClassifier, train_feats: np.ndarray, val_feats: np.ndarray, val_labels: np.ndarray,
                     grid: Optional[Sequence[float]] = None, samples: int = 64,
                     seed: int = 0) -> dict:
    """K-FAC last-layer Laplace on the last layer (``model.last_layer``): GGN from the training features, prior
    precision by validation NLL of the MC predictive (fixed eps, all grid points;
    default grid :data:`TEXT_PRIOR_GRID`)."""
    grid = TEXT_PRIOR_GRID if grid is None else tuple(grid)
    layer = model.last_layer
    phi_tr = model.last_layer_input(torch.from_numpy(train_feats)).double()
    phi_va = model.last_layer_input(torch.from_numpy(val_feats)).double()
    w, b = layer.weight.detach().double(), layer.bias.detach().double()
    probs_tr = torch.softmax(phi_tr @ w.T + b, -1).numpy()
    z_va = (phi_va @ w.T + b).numpy()
    xt = np.concatenate([phi_va.numpy(), np.ones((len(phi_va), 1))], axis=1)
    eps = np.random.default_rng(seed).standard_normal((samples, len(xt), layer.out_features))
    nlls = []
    for tau in grid:
        a_inv, g_chol = laplace_factors_kron(phi_tr.numpy(), probs_tr, tau)
        scale = np.sqrt(np.einsum("ni,ij,nj->n", xt, a_inv, xt))[None, :, None]
        p = _softmax(z_va[None] + scale * (eps @ g_chol.T)).mean(0)
        nlls.append(float(-np.mean(np.log(np.clip(p[np.arange(len(p)), val_labels], 1e-12, None)))))
    best = int(np.nanargmin(nlls))
    a_inv, g_chol = laplace_factors_kron(phi_tr.numpy(), probs_tr, grid[best])
    layer.set_posterior(grid[best], a_inv=a_inv, g_chol=g_chol)
    return {"prior_precision": float(grid[best]), "grid": list(grid), "val_nll": nlls}


@torch.no_grad()
def sample_probs(model: TextClassifier, feats: np.ndarray, samples: int, seed: int = 0) -> np.ndarray:
    """(S, N, C) softmax probabilities of the head with the runtime's kinds of noise drawn by its
    numpy samplers (seeded, one sample at a time: :func:`edgeuq.models.sampling.noise_by_sample`;
    the model's scheme decides which noise), through the one sampler
    :func:`~edgeuq.models.sampling.mc_sample_head_logits`. Not the runtime's noise *stream*
    (``edgeuq_runtime.noise.sample_noise_for_sample``): the same seed gives other draws there."""
    f = torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32))
    specs = model.noise_specs()
    noise: dict = {}  # a head without noise inputs gets none (as before: never torch's own draws)
    if specs:
        noise = {k: v.astype(np.float32) for k, v in
                 noise_by_sample(specs, samples, len(feats), np.random.default_rng(seed)).items()}
    return torch.softmax(mc_sample_head_logits(model, f, samples, noise=noise), -1).numpy()
