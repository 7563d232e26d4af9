"""Uncertainty-preserving distillation of any teacher into a small student.

The teacher (a checkpoint of any scheme, or a bundle run by the device
runtime) labels a transfer set (:mod:`.transfer`) with S sample probability
vectors per window. The student — typically a smaller transformer whose only
stochastic part is its MC-dropout head — is trained on

    ce_weight · CE(labels)            (real training windows only)
  + τ² · KL(p̄_T^τ ‖ p̄_S^τ)            (mean predictive, temperature τ)
  + uq_weight · [(MI_T − MI_S)² + (E H_T − E H_S)²]     (loss ``kl+uq``)
  + hidden_weight · mean_j MSE(h_S,j, h_T,map(j))   (optional hidden-state matching, TinyBERT:
                                      each student hidden state — embedding output, every layer —
                                      against the teacher layer it was cut from, the student's
                                      ``teacher_layers``; token-masked)
  + density_weight · ‖ā_S − ā_T‖² / Var(ā_T)   (optional density-feature matching: the mean over
                                      the student's layers of their token means (its Avg-Avg density
                                      feature, Chen et al. 2022) against the teacher's density feature
                                      (e.g. its pretrained encoder's Avg-Avg), relative to that
                                      feature's variance over the batch; token models)
  + feature_weight · D(P · f_S, f_T)   (optional feature distillation: the student's pooled trunk
                                      features f_S through a linear projection P against the
                                      teacher's f_T, D = relative MSE or 1 − cosine; P is refitted by
                                      least squares on the training set before every epoch and
                                      for the kept student, the student learns by SGD in between)

with K student samples per window per step (trunk once, head K times, the
deployment split). ``LOSSES`` names the variants compared in docs/compress.md:
``ce`` (labels only, the baseline), ``kl``, ``kl+uq`` (the default).
The best epoch is chosen by the same loss on a teacher-labelled, perturbed
validation set (so the choice rewards matching the teacher off-distribution).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..models import tile_samples
from ..models.eval_mode import evaluating
from ..training.config import TrainConfig
from .losses import FEATURE_LOSSES, density_matching, feature_matching, hidden_matching, mean_kl, uncertainty_matching
from .transfer import TransferSet

__all__ = ["DISTILL_TRAIN", "DistillConfig", "DistillResult", "LOSSES", "epoch_batches", "student_sample_logits", "distill_loss", "distill_model",
           "make_projection", "fit_projection"]

LossTerms = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "DistillConfig"], torch.Tensor]


def _ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    known = labels >= 0
    if not bool(known.any()):
        return logits.new_zeros(())
    return F.cross_entropy(logits.mean(0)[known], labels[known])


def _loss_ce(s, t, y, cfg):
    return _ce(s, y)


def _loss_kl(s, t, y, cfg):
    return cfg.ce_weight * _ce(s, y) + mean_kl(s, t, cfg.temperature)


def _loss_kl_uq(s, t, y, cfg):
    return _loss_kl(s, t, y, cfg) + cfg.uq_weight * uncertainty_matching(s, t)


#: name -> loss(student logits (K, B, C), teacher probs (S, B, C), labels (B,) with -1 = none, cfg)
LOSSES: Dict[str, LossTerms] = {"ce": _loss_ce, "kl": _loss_kl, "kl+uq": _loss_kl_uq}
DEFAULT_LOSS = "kl+uq"


#: The student's optimiser options (the project's one set: :class:`edgeuq.training.TrainConfig`).
DISTILL_TRAIN = TrainConfig(epochs=15, batch_size=64, lr=2e-3, weight_decay=1e-2, patience=5, seed=0)


#: TrainConfig's training-time augmentation fields: not distillation options (the transfer set's
#: kinds perturb its inputs), so neither read nor written in the flat form
AUGMENT_KEYS = tuple(f.name for f in fields(TrainConfig) if f.name.startswith("augment_"))


@dataclass(frozen=True)
class DistillConfig:
    """The distillation loss options, and ``train``: the optimiser options (epochs, batch_size,
    lr, weight_decay, patience, seed, threads) as the one :class:`~edgeuq.training.TrainConfig`.
    :meth:`from_flat` / :meth:`to_dict` read and write the flat form (one mapping of both, as a
    recipe's ``[train]`` or the ``distill`` compression step's options hold them)."""

    loss: str = DEFAULT_LOSS
    temperature: float = 2.0
    uq_weight: float = 2.0
    ce_weight: float = 0.5
    student_samples: int = 8
    feature_weight: float = 0.0   # > 0: feature distillation (needs the teacher's features in the transfer set)
    feature_loss: str = "mse"     # FEATURE_LOSSES
    #: > 0: hidden-state matching (needs a student with ``hidden_states``, the bert trunk, and the
    #: teacher's hidden states); 0 (default): off, the loss is unchanged
    hidden_weight: float = 0.0
    #: > 0: density-feature matching (needs a student with ``hidden_states`` and the teacher's
    #: density feature, ``teacher_density``); 0 (default): off
    density_weight: float = 0.0
    #: > 0: length-bucketed batches (token models): each epoch's shuffled rows are cut into groups of
    #: ``length_buckets`` batches, sorted by real length inside a group, and the batches shuffled, so a
    #: batch trimmed to its longest row carries little padding (every row still once an epoch);
    #: 0 (default): plain shuffled batches
    length_buckets: int = 0
    train: TrainConfig = DISTILL_TRAIN

    def __post_init__(self) -> None:
        if not isinstance(self.train, TrainConfig):
            raise ValueError(f"train must be a TrainConfig, got {type(self.train).__name__}")
        if self.train.augment_noise:
            raise ValueError("train.augment_noise: distillation does not augment its batches; the transfer set's "
                             "kinds (TransferConfig.kinds, e.g. pink_noise) are its perturbations")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown distillation loss {self.loss!r}; available: {sorted(LOSSES)}")
        if self.feature_loss not in FEATURE_LOSSES:
            raise ValueError(f"unknown feature loss {self.feature_loss!r}; available: {list(FEATURE_LOSSES)}")
        for name in ("feature_weight", "hidden_weight", "density_weight"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if not self.temperature > 0 or self.uq_weight < 0 or self.ce_weight < 0:
            raise ValueError("temperature must be > 0 and the loss weights >= 0")
        if self.student_samples < 1:
            raise ValueError(f"student_samples must be >= 1, got {self.student_samples}")
        if isinstance(self.length_buckets, bool) or not isinstance(self.length_buckets, int) \
                or self.length_buckets < 0:
            raise ValueError(f"length_buckets must be an integer >= 0, got {self.length_buckets!r}")

    @classmethod
    def from_flat(cls, d: Mapping[str, Any], train: TrainConfig = DISTILL_TRAIN) -> "DistillConfig":
        """From one flat mapping: TrainConfig's keys go to ``train`` (the rest from ``train``),
        the others are this class's; an unknown key is an error naming it."""
        train_keys = {f.name for f in fields(TrainConfig)} - set(AUGMENT_KEYS)
        own = {f.name for f in fields(cls)} - {"train"}
        unknown = sorted(set(d) - train_keys - own)
        if unknown:
            raise TypeError(f"DistillConfig: unknown option(s) {unknown}; known: {sorted(train_keys | own)}")
        return cls(train=replace(train, **{k: v for k, v in d.items() if k in train_keys}),
                   **{k: v for k, v in d.items() if k in own})

    def to_dict(self) -> dict:
        """The flat form (:meth:`from_flat` reads it back)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "train"}
        return {**out, **{k: v for k, v in self.train.to_dict().items() if k not in AUGMENT_KEYS}}


@dataclass(frozen=True)
class DistillResult:
    history: Tuple[Tuple[float, float], ...]  # (train loss, validation loss) per epoch
    best_epoch: int
    best_val_loss: float
    #: feature distillation: the fitted projection (student features -> teacher features), else None
    projection: Optional[torch.nn.Module] = None

    def to_dict(self) -> dict:
        return {"best_epoch": self.best_epoch, "best_val_loss": self.best_val_loss,
                "history": [list(h) for h in self.history]}


def epoch_batches(n: int, batch_size: int, rng: np.random.Generator, lengths: Optional[np.ndarray] = None,
                  buckets: int = 0) -> List[np.ndarray]:
    """One epoch's batches of row indices ``0..n-1``, each row once: ``rng.permutation(n)`` cut in
    order (``buckets`` 0 or no ``lengths``), or cut into groups of ``buckets`` batches, each group's
    rows sorted by ``lengths`` (stable) and cut into batches, the batches then shuffled
    (:attr:`DistillConfig.length_buckets`). Either way ``ceil(n / batch_size)`` batches."""
    perm = rng.permutation(n)
    if not buckets or lengths is None:
        return [perm[i:i + batch_size] for i in range(0, n, batch_size)]
    lengths = np.asarray(lengths)
    group = buckets * batch_size
    batches: List[np.ndarray] = []
    for g in range(0, n, group):
        idx = perm[g:g + group]
        idx = idx[np.argsort(lengths[idx], kind="stable")]
        batches += [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def student_sample_logits(model: torch.nn.Module, x: torch.Tensor, samples: int) -> torch.Tensor:
    """(K, B, C) logits: trunk once, head on K tiled copies (masks drawn by the layers
    in training mode or with sampling on; a deterministic student repeats itself)."""
    feats = model.trunk(x)
    k = samples if model.cfg.is_stochastic else 1
    return model.head_forward(tile_samples(feats, k)).reshape(k, x.shape[0], -1)


def distill_loss(model: torch.nn.Module, x: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor,
                 cfg: DistillConfig, teacher_features: Optional[torch.Tensor] = None,
                 projection: Optional[torch.nn.Module] = None,
                 teacher_hidden: Optional[Callable[[torch.Tensor], Any]] = None,
                 teacher_density: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
    """The output loss ``cfg.loss``, plus ``cfg.feature_weight`` times the feature term when
    ``teacher_features`` (B, d_t) and ``projection`` are given, plus ``cfg.hidden_weight`` times the
    hidden-state term when ``teacher_hidden`` (ids -> the teacher's hidden states) is given, plus
    ``cfg.density_weight`` times the density-feature term when ``teacher_density`` (ids -> (B, d))
    is given (the trunk runs once for all)."""
    trim = getattr(model, "trim_padding", None)   # token models with a padding mask: the batch's real length
    if trim is not None:
        x = trim(x)
    hidden = cfg.hidden_weight > 0 and teacher_hidden is not None
    density = cfg.density_weight > 0 and teacher_density is not None
    if hidden or density:
        states, mask = model.hidden_states(x)
        feats = model.features_from_hidden(states, mask)
    else:
        feats = model.trunk(x)
    k = cfg.student_samples if model.cfg.is_stochastic else 1
    logits = model.head_forward(tile_samples(feats, k)).reshape(k, x.shape[0], -1)
    loss = LOSSES[cfg.loss](logits, teacher, labels, cfg)
    if cfg.feature_weight > 0 and teacher_features is not None and projection is not None:
        loss = loss + cfg.feature_weight * feature_matching(feats, teacher_features, projection, cfg.feature_loss)
    if hidden:
        with torch.no_grad():
            target = teacher_hidden(x)
        layer_map = [0, *(i + 1 for i in model.teacher_layers)]
        loss = loss + cfg.hidden_weight * hidden_matching(states, target, mask, layer_map)
    if density:
        with torch.no_grad():
            target = teacher_density(x)
        loss = loss + cfg.density_weight * density_matching(states[1:], mask, target)
    return loss


@torch.no_grad()
def fit_projection(student: torch.nn.Module, projection: torch.nn.Linear, x: np.ndarray, teacher_features: np.ndarray,
                   ridge: float = 1e-2, chunk: int = 512) -> torch.nn.Linear:
    """Set ``projection`` to the ridge least-squares map (with bias) from the student's pooled trunk
    features of ``x`` (eval mode) to ``teacher_features``; returns it. The ridge (``ridge`` times
    the mean eigenvalue of the Gram matrix) bounds the map where the student's features are
    nearly degenerate (a fresh student), so the feature term cannot amplify its gradients."""
    parts = []
    with evaluating(student):
        for i in range(0, len(x), chunk):
            f = student.trunk(torch.from_numpy(np.ascontiguousarray(x[i : i + chunk])))
            parts.append((f.mean(1) if f.dim() == 3 else f).double())
    a = torch.cat([torch.cat(parts), torch.ones(len(x), 1, dtype=torch.float64)], dim=1)
    t = torch.from_numpy(np.asarray(teacher_features, dtype=np.float64))
    gram = a.T @ a
    gram += ridge * (torch.trace(gram) / gram.shape[0]) * torch.eye(gram.shape[0], dtype=torch.float64)
    w = torch.linalg.solve(gram, a.T @ t)                        # (d_s + 1, d_t)
    projection.weight.copy_(w[:-1].T.float())
    projection.bias.copy_(w[-1].float())
    return projection


def make_projection(student: torch.nn.Module, teacher_dim: int, seed: int = 0) -> torch.nn.Linear:
    """A linear map from the student's pooled trunk features to the teacher's ``teacher_dim``."""
    with evaluating(student):
        f = student.trunk(torch.zeros(1, student.cfg.input_length, dtype=torch.float32))
    d_s = int(f.shape[-1])
    gen = torch.Generator().manual_seed(seed)
    proj = torch.nn.Linear(d_s, int(teacher_dim))
    with torch.no_grad():
        proj.weight.copy_(torch.randn(int(teacher_dim), d_s, generator=gen) / math.sqrt(d_s))
        proj.bias.zero_()
    return proj


@torch.no_grad()
def _evaluate(model: torch.nn.Module, ts: TransferSet, labels: np.ndarray, cfg: DistillConfig,
              projection: Optional[torch.nn.Module] = None, teacher_hidden: Optional[Callable] = None,
              teacher_density: Optional[Callable] = None) -> float:
    model.eval()
    model.set_sampling(True)
    state = torch.random.get_rng_state()
    torch.manual_seed(cfg.train.seed + 12345)  # the same student masks every epoch
    total, n = 0.0, 0
    try:
        for i in range(0, len(ts), 256):
            x = torch.from_numpy(np.ascontiguousarray(ts.x[i : i + 256]))
            t = torch.from_numpy(np.ascontiguousarray(ts.probs[:, i : i + 256]))
            y = torch.from_numpy(labels[i : i + 256].astype(np.int64))
            tf = None if projection is None else torch.from_numpy(ts.features[i : i + 256])
            total += float(distill_loss(model, x, t, y, cfg, tf, projection, teacher_hidden, teacher_density)) * len(x)
            n += len(x)
    finally:
        torch.random.set_rng_state(state)
        model.set_sampling(False)
    return total / n


def distill_model(
    student: torch.nn.Module, train: TransferSet, train_labels: np.ndarray, val: TransferSet, val_labels: np.ndarray,
    cfg: DistillConfig = DistillConfig(), progress: bool = True, log: Optional[Callable[[str], None]] = None,
    teacher_hidden: Optional[Callable[[torch.Tensor], Any]] = None,
    teacher_density: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
) -> DistillResult:
    """Train ``student`` in place (AdamW, one-cycle, clipping; ``cfg.train`` sets the optimiser)
    and keep its best validation epoch.

    ``*_labels``: true class per transfer window, -1 where unknown (perturbed and
    synthetic windows); they only feed the CE term. ``teacher_hidden``: ids -> the teacher's hidden
    states (embedding output, every layer), needed when ``cfg.hidden_weight`` > 0; ``teacher_density``:
    ids -> the teacher's density feature (B, d), needed when ``cfg.density_weight`` > 0.
    """
    for name, ts, lab in (("training", train, train_labels), ("validation", val, val_labels)):
        if len(ts) == 0:
            raise ValueError(f"{name} transfer set is empty")
        if len(lab) != len(ts):
            raise ValueError(f"{name}: {len(ts)} transfer windows but {len(lab)} labels")
        if ts.probs.shape[2] != student.cfg.num_classes:
            raise ValueError(f"{name}: teacher has {ts.probs.shape[2]} classes, student {student.cfg.num_classes}")
        if ts.x.shape[1] != student.cfg.input_length:
            raise ValueError(f"{name}: windows of {ts.x.shape[1]} samples, student expects {student.cfg.input_length}")
    if cfg.hidden_weight > 0:
        if teacher_hidden is None:
            raise ValueError("hidden_weight > 0 needs the teacher's hidden states (teacher_hidden)")
        if not (callable(getattr(student, "hidden_states", None)) and hasattr(student, "teacher_layers")):
            raise ValueError(f"hidden_weight > 0 needs a student with per-layer hidden states (trunk 'bert'); "
                             f"trunk {student.cfg.trunk!r} has none")
    else:
        teacher_hidden = None
    if cfg.density_weight > 0:
        if teacher_density is None:
            raise ValueError("density_weight > 0 needs the teacher's density feature (teacher_density)")
        if not callable(getattr(student, "hidden_states", None)):
            raise ValueError(f"density_weight > 0 needs a student with per-layer hidden states (trunk 'bert'); "
                             f"trunk {student.cfg.trunk!r} has none")
    else:
        teacher_density = None
    tc = cfg.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    projection = None
    if cfg.feature_weight > 0:
        for name, ts in (("training", train), ("validation", val)):
            if ts.features is None:
                raise ValueError(f"feature_weight > 0 needs the teacher's features in the {name} transfer set "
                                 "(edgeuq.compress.transfer.with_teacher_features)")
        if train.features.shape[1] != val.features.shape[1]:
            raise ValueError("training and validation teacher features differ in width")
        projection = make_projection(student, train.features.shape[1], tc.seed)
        projection.requires_grad_(False)  # fitted in closed form (least squares) before every epoch and at the end
    torch.manual_seed(tc.seed)
    order = np.random.default_rng(tc.seed)
    params = list(student.parameters())
    opt = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    ft = None if projection is None else torch.from_numpy(train.features)
    steps = math.ceil(len(train) / tc.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=tc.lr, total_steps=tc.epochs * steps, pct_start=0.15)
    xt, pt = torch.from_numpy(np.ascontiguousarray(train.x)), torch.from_numpy(np.ascontiguousarray(train.probs))
    yt = torch.from_numpy(np.asarray(train_labels, dtype=np.int64))
    real_lengths = getattr(student, "real_lengths", None)   # token models: non-padding tokens per row
    lengths = real_lengths(xt).numpy() if cfg.length_buckets and real_lengths is not None else None
    best_state, best, best_epoch, bad = None, math.inf, 0, 0
    history: List[Tuple[float, float]] = []
    for epoch in range(tc.epochs):
        if projection is not None:
            fit_projection(student, projection, train.x, train.features)
        student.train()
        batches = epoch_batches(len(train), tc.batch_size, order, lengths, cfg.length_buckets)
        loss_sum = 0.0
        bar = tqdm(range(steps), desc=f"distill epoch {epoch + 1}/{tc.epochs}", disable=not progress, leave=False)
        for step in bar:
            idx = torch.from_numpy(batches[step])
            loss = distill_loss(student, xt[idx], pt[:, idx], yt[idx], cfg, None if ft is None else ft[idx], projection,
                                teacher_hidden, teacher_density)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(idx)
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
        val_loss = _evaluate(student, val, np.asarray(val_labels), cfg, projection, teacher_hidden, teacher_density)
        history.append((loss_sum / len(train), val_loss))
        if log is not None:
            log(f"distill epoch {epoch + 1:>2}: train loss {history[-1][0]:.4f} | val loss {val_loss:.4f}")
        if val_loss < best - 1e-6:
            best_state, best, best_epoch, bad = copy.deepcopy(student.state_dict()), val_loss, epoch + 1, 0
        else:
            bad += 1
            if bad >= tc.patience:
                break
    if best_state is not None:
        student.load_state_dict(best_state)
    if projection is not None:  # the map that goes with the kept student
        fit_projection(student, projection, train.x, train.features)
    student.eval()
    return DistillResult(tuple(history), best_epoch, best, projection)
