"""Out-of-distribution features and scores for text models.

Fine-tuned sentence features forget topic: a sentiment head's pooled features put
news or questions close to the class means (the density score inverts). The
text-OOD literature found features of the *pretrained* encoder better:
Mahalanobis distance on the pretrained model's pooled features (Uppaal et al.,
ACL 2023) and on token features averaged over tokens *and* over all layers
("Avg-Avg", Chen et al. 2022). This module computes those features:

    layer_pooled(encoder, ids)  -> (N, L + 1, d)   masked token mean of the embedding output
                                                   and of every layer's output
    avg_avg(feats, layers)      -> (N, d)          mean over the chosen layers (default 1..L)

and the logit-based energy score (Liu et al. 2020), ``-T logsumexp(z / T)``
(higher = more unusual). The density itself is the runtime's tied-covariance
Gaussian (:mod:`edgeuq_runtime.density`), fitted on training sentences only.

:func:`text_sentences` cuts running text (docstrings, licence files, dataset
descriptions) into sentence-sized pieces, to build off-topic test sets from
text that installed packages ship.
"""
from __future__ import annotations

import re
from typing import Iterable, List, Optional, Sequence

import numpy as np
import torch

from ..models.bert import BertEncoder, key_bias_from_mask

__all__ = ["layer_pooled", "avg_avg", "energy_score", "text_sentences", "shuffle_words", "truncate_words",
           "WithOODFeatures", "OOD_KINDS"]


@torch.no_grad()
def layer_pooled(encoder: BertEncoder, ids: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """Masked mean over real tokens of the embedding output (index 0) and of each
    layer's output (index 1..L): float32 (N, L + 1, d). Batches are length-sorted
    and trimmed (padding never enters a mean)."""
    ids = np.asarray(ids)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"ids must be an integer array (N, T), got {ids.dtype} {ids.shape}")
    enc = encoder.eval()
    pad = encoder.cfg.pad_token_id
    n_layers = len(enc.layers)
    lengths = (ids != pad).sum(axis=1)
    if len(ids) and lengths.min() < 1:
        raise ValueError("every row of ids needs at least one non-pad token")
    order = np.argsort(lengths, kind="stable")
    out = np.zeros((len(ids), n_layers + 1, encoder.cfg.hidden_size), dtype=np.float32)
    for i in range(0, len(ids), batch_size):
        idx = order[i:i + batch_size]
        t = int(lengths[idx].max())
        x = torch.from_numpy(ids[idx, :t].astype(np.int64))
        mask = enc.mask(x)
        bias = key_bias_from_mask(mask)
        m = mask.unsqueeze(-1)
        den = m.sum(1)
        h = enc.embeddings(x)
        pooled = [(h * m).sum(1) / den]
        for layer in enc.layers:
            h = layer(h, bias)
            pooled.append((h * m).sum(1) / den)
        out[idx] = torch.stack(pooled, 1).numpy()
    return out


def avg_avg(layer_feats: np.ndarray, layers: Optional[Sequence[int]] = None) -> np.ndarray:
    """Mean over ``layers`` (indices into axis 1 of :func:`layer_pooled`'s output;
    default 1..L, every encoder layer, not the embedding output): (N, d) float64."""
    f = np.asarray(layer_feats)
    if f.ndim != 3:
        raise ValueError(f"layer features must have shape (N, L + 1, d), got {f.shape}")
    sel = list(range(1, f.shape[1])) if layers is None else [int(i) for i in layers]
    if not sel or min(sel) < 0 or max(sel) >= f.shape[1]:
        raise ValueError(f"layers must be non-empty indices in [0, {f.shape[1] - 1}], got {sel}")
    return f[:, sel, :].mean(axis=1, dtype=np.float64)


def energy_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``-T logsumexp(z / T)`` per row (higher = more unusual; Liu et al. 2020)."""
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"logits must have shape (N, C), got {z.shape}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    s = z / temperature
    top = s.max(axis=1)
    return -temperature * (top + np.log(np.exp(s - top[:, None]).sum(axis=1)))


_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'])")
_WS = re.compile(r"\s+")


def text_sentences(texts: Iterable[str], min_words: int = 5, max_words: int = 40) -> List[str]:
    """Sentence-sized pieces of running text: whitespace collapsed, split after
    ``.!?`` before a capital, kept when they have ``min_words``..``max_words`` words
    and mostly letters (no code or tables); duplicates dropped, order kept."""
    seen, out = set(), []
    for text in texts:
        for s in _SPLIT.split(_WS.sub(" ", text).strip()):
            s = s.strip()
            words = s.split()
            if not (min_words <= len(words) <= max_words):
                continue
            letters = sum(ch.isalpha() or ch == " " for ch in s)
            if letters < 0.85 * len(s) or s in seen:
                continue
            seen.add(s)
            out.append(s)
    return out


def shuffle_words(texts: Sequence[str], rng: np.random.Generator) -> List[str]:
    """Each text's words in a random order (same words, no syntax)."""
    out = []
    for t in texts:
        w = t.split()
        out.append(" ".join(w[i] for i in rng.permutation(len(w))))
    return out


def truncate_words(texts: Sequence[str], keep: float = 0.3, min_words: int = 2) -> List[str]:
    """The first ``keep`` share of each text's words (at least ``min_words``)."""
    out = []
    for t in texts:
        w = t.split()
        out.append(" ".join(w[:max(min_words, int(round(keep * len(w))))]))
    return out


OOD_KINDS = ("frozen_avg", "avgavg", "pretrained")


class WithOODFeatures(torch.nn.Module):
    """A fine-tuned :class:`~edgeuq.text.classifier.TextClassifier` whose trunk also emits the
    pretrained encoder's features, so the bundle's density score (``edgeuq calibrate``, the
    runtime's :class:`~edgeuq_runtime.density.GaussianDensity` on the trunk output) sees topic:

        trunk(ids) -> [fine-tuned pooled features (d) | OOD features (d)]      (B, 2d)
        head(f)    -> the classifier's head on f[:, :d]

    ``kind`` ``"frozen_avg"``: the token mean averaged over the frozen layers 1..start (free: those
    layers run anyway; best on bench/text_ood.py's held-out shifts); ``"avgavg"``: averaged over
    all layers 1..L of the pretrained encoder (Chen et al. 2022); ``"pretrained"``: the masked
    token mean of the pretrained encoder's last layer (Uppaal et al. 2023). Fine-tuning keeps
    layers ``0..start-1`` frozen, so they are shared; for ``avgavg`` and ``pretrained`` the
    pretrained copies of layers ``start..L-1`` run beside the fine-tuned ones (``L - start``
    extra layers). ``density_columns`` = (d, 2d) tells ``edgeuq calibrate`` where they are.
    Export it with :func:`edgeuq.text.export.export_text_bundle` like the classifier itself."""

    def __init__(self, model, pretrained: BertEncoder, kind: str, start: int) -> None:
        super().__init__()
        import copy

        if kind not in OOD_KINDS:
            raise ValueError(f"kind must be one of {list(OOD_KINDS)}, got {kind!r}")
        n = len(model.encoder.layers)
        if len(pretrained.layers) != n or not 0 <= start <= n:
            raise ValueError(f"start must lie in [0, {n}] and the pretrained encoder have {n} layers")
        shared = [model.encoder.embeddings, *list(model.encoder.layers)[:start]]
        ref = [pretrained.embeddings, *list(pretrained.layers)[:start]]
        for a, b in zip(shared, ref):
            for (name, p), q in zip(a.named_parameters(), b.parameters()):
                if p.shape != q.shape or not torch.equal(p.detach(), q.detach()):
                    raise ValueError(f"layers below start={start} must be the pretrained ones (frozen); "
                                     f"{name} differs")
        if kind == "frozen_avg" and start < 1:
            raise ValueError("kind 'frozen_avg' needs at least one frozen layer (start >= 1); every layer is "
                             "fine-tuned here, use 'avgavg' or 'pretrained'")
        self.model = model
        self.kind = kind
        self.start = int(start)
        top = [] if kind == "frozen_avg" else list(pretrained.layers)[start:]
        self.pre_top = torch.nn.ModuleList([copy.deepcopy(l) for l in top])
        d = model.feature_dim
        self.density_columns = (d, 2 * d)

    # what export_text_bundle reads -------------------------------------------------------
    @property
    def cfg(self):
        return self.model.cfg

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    @property
    def scheme(self) -> str:
        return self.model.scheme

    @scheme.setter
    def scheme(self, value: str) -> None:
        self.model.scheme = value

    @property
    def feature_dim(self) -> int:
        return 2 * self.model.feature_dim

    def noise_specs(self):
        return self.model.noise_specs()

    def as_model(self, max_length: int):
        """The same network as a ``bert``-trunk model built from its ModelConfig (the trunk option
        ``density_features``; the pretrained copies become ``pretrained_top``)."""
        from ..models.transformer import build_model
        from ..models.trunks import load_head_state

        cfg = self.model.model_config(max_length, trunk_options={"density_features": self.kind,
                                                                  "frozen_layers": self.start})
        state = dict(self.model.trunk_state())
        state.update({"pretrained_top." + k: v for k, v in self.pre_top.state_dict().items()})
        model = build_model(cfg)
        load_head_state(model, state)
        return model.eval()

    def set_sampling(self, on: bool) -> None:
        self.model.set_sampling(on)

    def trunk(self, ids: torch.Tensor) -> torch.Tensor:
        from ..models.trunks import with_density_features

        return with_density_features(self.model.encoder, self.pre_top, self.start, self.kind, ids)

    def head_forward(self, feats: torch.Tensor, noise=None) -> torch.Tensor:
        return self.model.head_forward(feats[:, :self.model.feature_dim], noise)

    def forward(self, ids: torch.Tensor, noise=None) -> torch.Tensor:
        return self.head_forward(self.trunk(ids), noise)
