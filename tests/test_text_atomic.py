"""The text stage's resumable state (frozen-layer caches, fine-tuned weights) is written through the
runtime's one atomic write: a failure before the rename leaves no file (so a re-run never loads a
torn cache) and no temporary file; a written cache loads back equal to what was computed."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import edgeuq_runtime.atomic as atomic
from edgeuq.models.bert import BertConfig, BertEncoder
from edgeuq.text.cache import cache_hidden

TINY = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=12,
                  max_position_embeddings=8)


def _encoder_and_ids():
    torch.manual_seed(0)
    enc = BertEncoder(TINY).eval()
    ids = np.random.default_rng(0).integers(1, TINY.vocab_size, size=(5, 6)).astype(np.int64)
    ids[1, 3:] = 0
    return enc, ids


def _refuse_rename(src, dst):
    raise OSError("simulated crash before the rename")


def test_cache_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    enc, ids = _encoder_and_ids()
    path = tmp_path / "cache" / "train-x.npz"
    monkeypatch.setattr(atomic.os, "replace", _refuse_rename)
    with pytest.raises(OSError, match="simulated crash"):
        cache_hidden(enc, ids, np.arange(5), 1, path=path)
    assert list(path.parent.iterdir()) == []          # neither the cache nor a temporary file
    monkeypatch.undo()
    made = cache_hidden(enc, ids, np.arange(5), 1, path=path)
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    loaded = cache_hidden(enc, ids, np.arange(5), 1, path=path)   # read back from the file
    assert loaded.start == made.start == 1
    assert np.array_equal(loaded.offsets, made.offsets) and np.array_equal(loaded.labels, made.labels)
    assert np.array_equal(loaded.states, made.states)   # float16 saved and loaded losslessly


def test_fine_tuned_weights_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    from edgeuq.text.pipeline import _save_atomic

    path = tmp_path / "cache" / "finetuned-x.pt"
    obj = {"state": {"w": torch.arange(6.0)}, "history": "[]"}
    monkeypatch.setattr(atomic.os, "replace", _refuse_rename)
    with pytest.raises(OSError, match="simulated crash"):
        _save_atomic(obj, path)
    assert list(Path(path.parent).iterdir()) == []
    monkeypatch.undo()
    _save_atomic(obj, path)
    back = torch.load(path, weights_only=True)
    assert back["history"] == "[]" and torch.equal(back["state"]["w"], obj["state"]["w"])
