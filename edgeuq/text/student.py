"""An edge student cut from the pretrained teacher (not trained from scratch).

    teacher (MiniLM-L6 + head)
      -> mask Fisher (Kwon et al. 2022, step 1): squared gradients of a mask on every
         layer's residual update, every attention head and every FFN neuron, under
         the teacher's own predictions                              :func:`mask_fisher`
      -> keep k layers by layer Fisher (not simply the top ones)    :func:`choose_layers`
      -> keep the FFN neurons with the largest Fisher per kept layer
      -> vocabulary pruned to the WordPiece tokens a corpus uses, plus the specials and
         every single character (so unseen words still split, and unknown ones become
         [UNK] exactly as before)                                   :func:`prune_vocab`
      -> token embedding factorised, SVD-initialised: V' x r . r x d :class:`FactorisedEmbeddings`
      -> distillation on teacher-labelled text: KL of the logits (temperature T) +
         hidden-state matching of every kept layer to the teacher layer it came from
         (TinyBERT-style, token-masked MSE)                          :func:`distil_student`

Why prune *and* factorise: the device tokenizer keeps working with a pruned vocabulary
(it is the same WordPiece with fewer entries; the bundle ships it), and pruning alone
(~12k of 30,522 tokens for SST-2) still leaves 4.7M embedding parameters at d = 384;
the rank-r factor then brings the table to V'·r + r·d.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from edgeuq_runtime.wordpiece import WordPieceTokenizer

from ..training.config import TrainConfig
from ..training.loop import warmup_linear_decay
from ..compress.kwon import choose_layers as kwon_choose_layers, mask_gradients
from ..compress.masks import apply_masks
from ..models.bert import FactorisedEmbeddings, key_bias_from_mask, masked_mean_pool
from ..models.trunks import bert_maskable_blocks
from .cache import length_buckets
from .classifier import TextClassifier

__all__ = ["MaskFisher", "mask_fisher", "choose_layers", "prune_vocab", "FactorisedEmbeddings", "StudentSpec",
           "build_student", "DistilConfig", "STUDENT_TRAIN", "distil_student", "param_count"]


# ----------------------------------------------------------------------------- mask Fisher
# One copy of the masks and their gradients: the compression stage's (edgeuq.compress.masks /
# edgeuq.compress.kwon, over the encoder's maskable blocks); these are thin calls for the
# TextClassifier callers.
def _blocks(model: TextClassifier):
    return bert_maskable_blocks(model.encoder, "encoder.")


def masked_forward(model: TextClassifier, ids: torch.Tensor, layer_mask: torch.Tensor, head_mask: torch.Tensor,
                   ffn_mask: torch.Tensor) -> torch.Tensor:
    """Deterministic logits with masks (:func:`edgeuq.compress.masks.apply_masks`): layer l's output
    is ``h + m_l (layer(h) - h)``, head masks scale the attention context, FFN masks the neurons."""
    L = len(model.encoder.layers)
    with apply_masks(model, [head_mask[i] for i in range(L)], [ffn_mask[i] for i in range(L)],
                     [layer_mask[i] for i in range(L)], blocks=_blocks(model)):
        return model(ids)


@dataclass(frozen=True)
class MaskFisher:
    """Sum over mini-batches of squared mask gradients (empirical Fisher of each mask)."""

    layers: np.ndarray   # (L,)
    heads: np.ndarray    # (L, H)
    ffn: np.ndarray      # (L, F)
    rows: int


def mask_fisher(model: TextClassifier, ids: np.ndarray, batch_size: int = 8) -> MaskFisher:
    """Fisher of layer, head and FFN-neuron masks at 1, the loss being the cross-entropy
    against the model's own predicted class (label-free: any unlabelled text works): the
    compression stage's per-sample mask gradients (:func:`edgeuq.compress.kwon.mask_gradients`)
    summed over each mini-batch (texts sorted by length), squared, summed over batches."""
    model.eval()
    blocks = _blocks(model)
    pad = model.cfg.pad_token_id
    lengths = (ids != pad).sum(1)
    order = np.argsort(lengths, kind="stable")
    acc = None
    for i in range(0, len(ids), batch_size):
        idx = order[i:i + batch_size]
        x = np.ascontiguousarray(ids[idx, :int(lengths[idx].max())])
        with torch.no_grad():
            pred = model(torch.from_numpy(x)).argmax(-1).numpy()
        g = mask_gradients(model, x, pred, batch_size=len(x), blocks=blocks)
        parts = [g.layers.sum(0) ** 2, np.stack([h.sum(0) for h in g.heads]) ** 2,
                 np.stack([n.sum(0) for n in g.neurons]) ** 2]
        acc = parts if acc is None else [a + p for a, p in zip(acc, parts)]
    return MaskFisher(acc[0], acc[1], acc[2], int(len(ids)))


def choose_layers(fisher: MaskFisher, k: int) -> Tuple[int, ...]:
    """The ``k`` layers of largest layer-mask Fisher, in network order
    (:func:`edgeuq.compress.kwon.choose_layers`)."""
    return kwon_choose_layers(fisher.layers, k)


# ----------------------------------------------------------------------------- vocabulary
def prune_vocab(tokenizer: WordPieceTokenizer, corpus_ids: np.ndarray) -> Tuple[WordPieceTokenizer, np.ndarray]:
    """A tokenizer keeping the tokens that occur in ``corpus_ids`` (the full tokenizer's ids of
    an unlabelled corpus), the special tokens and every single-character piece (``c`` and
    ``##c``), in the original order (so ``[PAD]`` stays 0). Returns it and ``old_ids`` (V',)
    with ``new id i`` = old id ``old_ids[i]``. On the corpus the pruned tokenizer gives the same
    pieces (every piece it used is kept); elsewhere a word splits into the kept pieces or becomes
    ``[UNK]`` (WordPiece's own rule)."""
    vocab = tokenizer.vocab
    keep = np.zeros(len(vocab), bool)
    keep[np.unique(np.asarray(corpus_ids).ravel())] = True
    prefix = tokenizer.continuing_subword_prefix
    special = set(tokenizer.special_tokens) | {tokenizer.unk_token, tokenizer.cls_token, tokenizer.sep_token,
                                               tokenizer.pad_token}
    for i, t in enumerate(vocab):
        if t in special or len(t) == 1 or (t.startswith(prefix) and len(t) == len(prefix) + 1):
            keep[i] = True
    old_ids = np.flatnonzero(keep)
    pruned = replace(tokenizer, vocab=tuple(vocab[i] for i in old_ids))
    return pruned, old_ids


# ----------------------------------------------------------------------------- embedding
# ----------------------------------------------------------------------------- the student
@dataclass(frozen=True)
class StudentSpec:
    layers: Tuple[int, ...]          # teacher layers kept, in order
    ffn: int                         # FFN neurons kept per layer
    rank: int                        # embedding rank (0 = no factorisation)
    max_length: int = 64             # the most WordPiece ids the student's tokenizer emits ([CLS]/[SEP] included)
    # keep only the first ``max_length`` rows of the teacher's position table (the positions the tokenizer can
    # emit; MiniLM's 512 x 384 table is 448 x 384 weights the student never reads at max_length 64). Outputs for
    # input of <= max_length ids are unchanged; longer input is refused (BertEmbeddings.positions), and a bundle
    # whose tokenizer could emit more is refused at export (edgeuq.text.export).
    trim_positions: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(int(i) for i in self.layers))
        if not self.layers or list(self.layers) != sorted(set(self.layers)):
            raise ValueError(f"layers must be distinct teacher layer indices in order, got {self.layers}")
        if self.ffn < 1 or self.rank < 0:
            raise ValueError(f"ffn must be >= 1 and rank >= 0, got {self.ffn}, {self.rank}")
        if isinstance(self.max_length, bool) or not isinstance(self.max_length, int) or self.max_length < 3:
            raise ValueError(f"max_length must be an integer >= 3 ([CLS], a token, [SEP]), got {self.max_length!r}")
        if not isinstance(self.trim_positions, bool):
            raise ValueError(f"trim_positions must be true or false, got {self.trim_positions!r}")


def param_count(module: nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


@torch.no_grad()
def build_student(teacher: TextClassifier, spec: StudentSpec, old_ids: np.ndarray,
                  fisher: Optional[MaskFisher] = None) -> Tuple[TextClassifier, Dict[str, float]]:
    """A student holding the teacher's kept layers (FFN neurons of largest Fisher), its head,
    and its embedding rows ``old_ids`` (SVD-factorised to ``spec.rank`` when > 0)."""
    tc = teacher.cfg
    if spec.ffn > tc.intermediate_size or max(spec.layers) >= tc.num_hidden_layers:
        raise ValueError(f"spec {spec} does not fit the teacher ({tc.num_hidden_layers} layers, "
                         f"{tc.intermediate_size} FFN)")
    if spec.ffn < tc.intermediate_size and fisher is None:
        raise ValueError("pruning FFN neurons needs the mask Fisher")
    if spec.max_length > tc.max_position_embeddings:
        raise ValueError(f"max_length {spec.max_length} exceeds the teacher's {tc.max_position_embeddings} positions")
    positions = spec.max_length if spec.trim_positions else tc.max_position_embeddings
    cfg = replace(tc, vocab_size=int(len(old_ids)), num_hidden_layers=len(spec.layers), intermediate_size=spec.ffn,
                  max_position_embeddings=positions)
    s = TextClassifier(cfg, num_classes=teacher.num_classes, hidden=teacher.hidden, head_dropout=teacher.head_dropout,
                       scheme=teacher.scheme)
    info: Dict[str, float] = {}
    te, se = teacher.encoder, s.encoder
    idx = torch.from_numpy(np.asarray(old_ids, dtype=np.int64))
    table = te.embeddings.word_embeddings.weight[idx]
    if spec.rank:
        emb = FactorisedEmbeddings(cfg, spec.rank)
        info["embedding_svd_rel_error"] = emb.init_svd(table)
        se.embeddings = emb
    else:
        se.embeddings.word_embeddings.weight.copy_(table)
    se.embeddings.position_embeddings.weight.copy_(te.embeddings.position_embeddings.weight[:positions])
    for name in ("token_type_embeddings", "LayerNorm"):
        getattr(se.embeddings, name).load_state_dict(getattr(te.embeddings, name).state_dict())
    for j, i in enumerate(spec.layers):
        src, dst = te.layers[i], se.layers[j]
        dst.attention.load_state_dict(src.attention.state_dict())
        keep = (torch.arange(tc.intermediate_size) if spec.ffn == tc.intermediate_size else
                torch.from_numpy(np.sort(np.argsort(-fisher.ffn[i], kind="stable")[:spec.ffn])))
        dst.intermediate.dense.weight.copy_(src.intermediate.dense.weight[keep])
        dst.intermediate.dense.bias.copy_(src.intermediate.dense.bias[keep])
        dst.output.dense.weight.copy_(src.output.dense.weight[:, keep])
        dst.output.dense.bias.copy_(src.output.dense.bias)
        dst.output.LayerNorm.load_state_dict(src.output.LayerNorm.state_dict())
    s.fc1.load_state_dict(teacher.fc1.state_dict())
    s.fc2.weight.copy_(teacher.fc2.weight)
    s.fc2.bias.copy_(teacher.fc2.bias)
    return s.eval(), info


def _hidden_all(encoder, ids: torch.Tensor) -> Tuple[List[torch.Tensor], torch.Tensor]:
    mask = encoder.mask(ids)
    bias = key_bias_from_mask(mask)
    h = encoder.embeddings(ids)
    out = []
    for layer in encoder.layers:
        h = layer(h, bias)
        out.append(h)
    return out, mask


#: The student distillation's defaults of the shared optimiser options (``lr``: the encoder's).
STUDENT_TRAIN = TrainConfig(epochs=1, batch_size=32, lr=1e-4, weight_decay=0.01)


@dataclass(frozen=True)
class DistilConfig:
    """How :func:`distil_student` trains: the encoder at ``train.lr``, the head at ``lr_head``.
    ``train`` is the project's one set of optimiser options (:class:`edgeuq.training.TrainConfig`:
    epochs, batch_size, lr, weight_decay, seed, threads); distillation keeps every epoch (its
    ``patience`` is not used) and may stop at ``max_seconds``."""

    lr_head: float = 5e-4
    temperature: float = 2.0
    hidden_weight: float = 1.0
    max_seconds: float = 0.0        # stop early after this much training time (0 = no limit)
    train: TrainConfig = STUDENT_TRAIN

    def __post_init__(self) -> None:
        if not isinstance(self.train, TrainConfig):
            raise ValueError(f"train must be a TrainConfig, got {type(self.train).__name__}")
        for name in ("lr_head", "temperature"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v > 0):  # NaN-safe
                raise ValueError(f"{name} must be > 0, got {v!r}")
        for name in ("hidden_weight", "max_seconds"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v >= 0):
                raise ValueError(f"{name} must be >= 0, got {v!r}")


def distil_student(student: TextClassifier, teacher: TextClassifier, spec: StudentSpec, teacher_ids: np.ndarray,
                   student_ids: np.ndarray, cfg: DistilConfig = DistilConfig(),
                   log: Callable[[str], None] = print) -> Dict[str, list]:
    """KL(teacher || student) at temperature T (times T^2) on the deterministic logits, plus
    the token-masked MSE of every student layer's output against the teacher layer it was
    cut from, on teacher-labelled text (the teacher computed on the fly, no gradients)."""
    if teacher_ids.shape != student_ids.shape:
        raise ValueError("teacher_ids and student_ids must be the same texts")
    tc = cfg.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    torch.manual_seed(tc.seed)
    rng = np.random.default_rng(tc.seed)
    teacher.eval()
    head = list(student.fc1.parameters()) + [student.fc2.weight, student.fc2.bias]
    hid = set(id(p) for p in head)
    body = [p for p in student.parameters() if id(p) not in hid]
    opt = torch.optim.AdamW([{"params": body, "lr": tc.lr}, {"params": head, "lr": cfg.lr_head}],
                            weight_decay=tc.weight_decay)
    lengths = (teacher_ids != 0).sum(1)
    steps = tc.epochs * math.ceil(len(teacher_ids) / tc.batch_size)
    sched = warmup_linear_decay(opt, steps)
    hist: Dict[str, list] = {"loss": [], "kl": [], "hidden": [], "seconds": []}
    t0 = time.time()
    T = cfg.temperature
    step = 0
    for epoch in range(tc.epochs):
        batches = length_buckets(lengths, tc.batch_size, rng)
        student.train()
        tot = [0.0, 0.0, 0.0]
        n = 0
        for idx in batches:
            t = int(lengths[idx].max())
            xt = torch.from_numpy(teacher_ids[idx, :t])
            xs = torch.from_numpy(student_ids[idx, :t])
            with torch.no_grad():
                th, tmask = _hidden_all(teacher.encoder, xt)
                tz = teacher.head_forward(masked_mean_pool(th[-1], tmask))
            sh, smask = _hidden_all(student.encoder, xs)
            student.set_sampling(False)
            sz = student.head_forward(masked_mean_pool(sh[-1], smask))
            kl = nn.functional.kl_div(nn.functional.log_softmax(sz / T, -1), nn.functional.softmax(tz / T, -1),
                                      reduction="batchmean") * T * T
            m = smask.unsqueeze(-1)
            mse = sum(((s_h - th[i]) ** 2 * m).sum() / (m.sum() * s_h.shape[-1])
                      for s_h, i in zip(sh, spec.layers))
            loss = kl + cfg.hidden_weight * mse
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            tot[0] += float(loss.detach()) * len(idx)
            tot[1] += float(kl.detach()) * len(idx)
            tot[2] += float(mse.detach()) * len(idx)
            n += len(idx)
            if step % 100 == 0:
                log(f"distil epoch {epoch + 1} step {step}/{steps}: loss {tot[0] / n:.4f} (kl {tot[1] / n:.4f}, "
                    f"hidden {tot[2] / n:.4f}) {time.time() - t0:.0f}s")
            if cfg.max_seconds and time.time() - t0 > cfg.max_seconds:
                break
        for key, v in zip(("loss", "kl", "hidden"), tot):
            hist[key].append(v / max(n, 1))
        hist["seconds"].append(time.time() - t0)
        if cfg.max_seconds and time.time() - t0 > cfg.max_seconds:
            log(f"distillation stopped at the time limit ({cfg.max_seconds:.0f}s) after {step} of {steps} steps")
            hist["stopped_at_step"] = [step, steps]
            break
    student.eval()
    return hist
