"""Cache of frozen-layer outputs: run the frozen lower encoder layers once over
a data set and keep each sentence's hidden states (trimmed to its length,
float16), so fine-tuning runs only the trainable top layers. Written atomically
as one ``.npz``; :func:`cache_key` names a cache by weights, ids and layer."""
from __future__ import annotations

import hashlib
import io
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from edgeuq_runtime.atomic import atomic_write

from ..models.bert import BertEncoder
from ..models.eval_mode import evaluating

__all__ = ["HiddenCache", "TokenRows", "token_rows", "cache_hidden", "cache_key", "length_buckets", "progress"]


def _take_rows(flat: np.ndarray, offsets: np.ndarray, index: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Rows ``index`` of a ragged array (``flat`` cut at ``offsets``): their concatenation and offsets."""
    lengths = offsets[index + 1] - offsets[index]
    new = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    taken = np.concatenate([flat[offsets[i]:offsets[i + 1]] for i in index]) if len(index) else flat[:0]
    return taken, new


@dataclass(frozen=True)
class HiddenCache:
    """Hidden states entering layer ``start`` for N sentences, trimmed per sentence."""

    start: int
    states: np.ndarray     # (sum of lengths, d) float16
    offsets: np.ndarray    # (N + 1,) int64
    labels: np.ndarray     # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: Sequence[int]) -> "HiddenCache":
        index = np.asarray(index, dtype=np.int64)
        states, offsets = _take_rows(self.states, self.offsets, index)
        return HiddenCache(self.start, states, offsets, self.labels[index])

    def mask(self, index: Sequence[int]) -> torch.Tensor:
        """(B, T) float padding mask of rows ``index`` (1 on each sentence's tokens), T the longest."""
        lengths = torch.as_tensor([int(self.offsets[i + 1] - self.offsets[i]) for i in index])
        return (torch.arange(int(lengths.max()))[None, :] < lengths[:, None]).to(torch.float32)

    def batch(self, index: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
        lengths = [int(self.offsets[i + 1] - self.offsets[i]) for i in index]
        t = max(lengths)
        d = self.states.shape[1]
        h = np.zeros((len(index), t, d), dtype=np.float32)
        for row, (i, n) in enumerate(zip(index, lengths)):
            h[row, :n] = self.states[self.offsets[i]:self.offsets[i] + n]
        return torch.from_numpy(h), self.mask(index)


@dataclass(frozen=True)
class TokenRows:
    """Token ids of N sentences, trimmed per sentence, for training every encoder layer: nothing
    lies below layer 0 but the embeddings, so instead of a cache :meth:`batch` pads the rows of one
    batch to its longest sentence and runs ``embed`` (the model's own embeddings, frozen: no
    gradient, eval mode) on them. The same reading interface as :class:`HiddenCache` (``start`` 0).
    ``trainable`` (:meth:`with_trainable_embed`): ``embed`` runs as it is (its mode, the caller's
    gradient mode), so the embeddings train with the layers."""

    ids: np.ndarray        # (sum of lengths,) int64
    offsets: np.ndarray    # (N + 1,) int64
    labels: np.ndarray     # (N,) int64
    embed: nn.Module
    pad_id: int = 0
    start: int = 0
    trainable: bool = False

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: Sequence[int]) -> "TokenRows":
        index = np.asarray(index, dtype=np.int64)
        ids, offsets = _take_rows(self.ids, self.offsets, index)
        return TokenRows(ids, offsets, self.labels[index], self.embed, self.pad_id, trainable=self.trainable)

    def with_trainable_embed(self, on: bool = True) -> "TokenRows":
        """The same rows with ``embed`` run in its own mode and with gradient (``on``) or frozen."""
        return replace(self, trainable=bool(on))

    mask = HiddenCache.mask

    def padded_ids(self, index: Sequence[int]) -> torch.Tensor:
        """(B, T) ids of rows ``index``, right-padded with ``pad_id`` to the longest."""
        lengths = [int(self.offsets[i + 1] - self.offsets[i]) for i in index]
        out = np.full((len(index), max(lengths)), self.pad_id, dtype=np.int64)
        for row, (i, n) in enumerate(zip(index, lengths)):
            out[row, :n] = self.ids[self.offsets[i]:self.offsets[i] + n]
        return torch.from_numpy(out)

    def batch(self, index: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
        """(embeddings (B, T, d) of the padded rows, mask (B, T)); computed without gradient in eval
        mode unless ``trainable``."""
        ids = self.padded_ids(index).to(next(self.embed.parameters()).device)
        if self.trainable:
            return self.embed(ids), self.mask(index)
        with evaluating(self.embed):
            h = self.embed(ids)
        return h, self.mask(index)


def token_rows(ids: np.ndarray, labels: np.ndarray, embed: nn.Module, pad_id: int) -> TokenRows:
    """:class:`TokenRows` of padded ids (N, T): each row trimmed at its first ``pad_id`` (the
    tokenizer pads on the right; a row is its non-pad prefix)."""
    ids = np.asarray(ids, dtype=np.int64)
    lengths = (ids != pad_id).sum(axis=1)
    if len(ids) and not np.all((ids != pad_id) == (np.arange(ids.shape[1])[None, :] < lengths[:, None])):
        raise ValueError("token_rows: ids must be right-padded with pad_id (a pad inside a row)")
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    flat = ids[ids != pad_id] if len(ids) else ids.reshape(-1)
    return TokenRows(flat, offsets, np.asarray(labels, dtype=np.int64), embed, int(pad_id))


def length_buckets(lengths: np.ndarray, batch_size: int, rng: Optional[np.random.Generator]) -> List[np.ndarray]:
    """Batches of row indices of similar length (little padding): sorted by length when ``rng`` is
    None; else a random order cut into chunks of 50 batches, each sorted by length and cut into
    batches, and the batches shuffled."""
    lengths = np.asarray(lengths)
    if rng is None:
        order = np.argsort(lengths, kind="stable")
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    order = rng.permutation(len(lengths))
    chunks = [order[i:i + batch_size * 50] for i in range(0, len(order), batch_size * 50)]
    out: List[np.ndarray] = []
    for c in chunks:
        c = c[np.argsort(lengths[c], kind="stable")]
        out += [c[i:i + batch_size] for i in range(0, len(c), batch_size)]
    rng.shuffle(out)
    return out


def progress(msg: str) -> None:
    end = "\r" if sys.stdout.isatty() else "\n"
    print(msg, end=end, flush=True)


def _length_order(ids: np.ndarray, pad_id: int) -> Tuple[np.ndarray, np.ndarray]:
    lengths = (ids != pad_id).sum(axis=1)
    return lengths, np.argsort(lengths, kind="stable")


def cache_key(encoder: BertEncoder, ids: np.ndarray, start: int) -> str:
    h = hashlib.sha256()
    for p in encoder.parameters():
        h.update(p.detach().numpy().tobytes())
    h.update(ids.tobytes())
    h.update(str(start).encode())
    return h.hexdigest()[:16]


@torch.no_grad()
def cache_hidden(encoder: BertEncoder, ids: np.ndarray, labels: np.ndarray, start: int,
                 path: Optional[Path] = None, batch_size: int = 64, name: str = "cache") -> HiddenCache:
    """Run the frozen layers 0..start-1 once; load from ``path`` when it exists."""
    if path is not None and Path(path).is_file():
        z = np.load(path)
        return HiddenCache(int(z["start"]), z["states"], z["offsets"], z["labels"])
    enc = encoder.eval()
    pad = encoder.cfg.pad_token_id
    lengths, order = _length_order(ids, pad)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    states = np.zeros((int(offsets[-1]), encoder.cfg.hidden_size), dtype=np.float16)
    t0 = time.time()
    nb = math.ceil(len(ids) / batch_size)
    for b in range(nb):
        idx = order[b * batch_size:(b + 1) * batch_size]
        t = int(lengths[idx].max())
        x = torch.from_numpy(ids[idx, :t])
        h, _ = enc(x, stop=start)
        h = h.numpy()
        for row, i in enumerate(idx):
            states[offsets[i]:offsets[i + 1]] = h[row, :lengths[i]]
        if b % 50 == 0 or b == nb - 1:
            progress(f"[{name}] frozen layers 0..{start - 1}: batch {b + 1}/{nb} ({time.time() - t0:.0f}s)")
    cache = HiddenCache(start, states, offsets, np.asarray(labels, dtype=np.int64))
    if path is not None:
        buf = io.BytesIO()
        np.savez(buf, start=start, states=states, offsets=offsets, labels=cache.labels)
        atomic_write(Path(path), buf.getbuffer())
    return cache


