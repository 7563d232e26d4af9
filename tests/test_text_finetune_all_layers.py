"""Fine-tuning every encoder layer (``train_layers`` = the encoder's depth) on a tiny random BERT
of MiniLM's architecture: token rows padded per batch instead of a frozen-layer cache, every layer
trained and the embeddings not, length buckets that cover each row once, the best epoch kept, and
a time cap that stops at a step with the state saved and resumes to the uninterrupted run."""
from __future__ import annotations

import types
from dataclasses import replace

import numpy as np
import pytest
import torch

from require_extras import require_extra

require_extra("safetensors", "text")

from text_teacher_support import sentiment_rows, tiny_config, write_tiny_model, write_tsv, questions  # noqa: E402

from edgeuq.models.transformer import build_model  # noqa: E402
from edgeuq.text import finetune as ft_mod  # noqa: E402
from edgeuq.text.cache import length_buckets, token_rows  # noqa: E402
from edgeuq.text.finetune import FINETUNE_TRAIN, FinetuneConfig, features_from_cache, finetune  # noqa: E402
from edgeuq.text.pipeline import TeacherOptions, teacher_model_config, train_text_teacher  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CFG = tiny_config()
LAYERS = CFG.num_hidden_layers


def _model(seed: int = 0):
    torch.manual_seed(seed)
    m = build_model(teacher_model_config(CFG, 2, TeacherOptions(train_layers=LAYERS, max_length=12,
                                                                ood_features="none", hidden=16)))
    return m.eval()


def _data(n: int, seed: int):
    """Random right-padded ids (lengths 2..12) with labels from a token's presence (learnable)."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((n, 12), dtype=np.int64)
    y = np.zeros(n, dtype=np.int64)
    for i in range(n):
        k = int(rng.integers(2, 13))
        ids[i, :k] = rng.integers(5, CFG.vocab_size, k)
        y[i] = int(6 in ids[i, :k] or 7 in ids[i, :k] or 8 in ids[i, :k])
    return ids, y


def _config(epochs: int = 2, **kw) -> FinetuneConfig:
    return FinetuneConfig(train_layers=LAYERS, lr_head=1e-2,
                          train=replace(FINETUNE_TRAIN, epochs=epochs, batch_size=8, lr=1e-3, seed=3), **kw)


def test_token_rows_feed_the_layers_what_the_deployed_trunk_computes_from_ids():
    """Second implementation: the trunk's own forward on the padded ids (embeddings inside)."""
    m = _model()
    ids, y = _data(30, 0)
    rows = token_rows(ids, y, m.encoder.embeddings, CFG.pad_token_id)
    idx = np.array([3, 17, 4, 29, 0])
    h, mask = rows.batch(idx)
    assert not h.requires_grad
    t = int((ids[idx] != 0).sum(1).max())
    with torch.no_grad():
        want = m.trunk(torch.from_numpy(ids[idx, :t]))
        got = m.trunk_from_hidden(h, mask, 0)
    err = float((got - want).abs().max())
    assert err <= 1e-5, err
    assert torch.equal(rows.padded_ids(idx), torch.from_numpy(ids[idx, :t]))
    sub = rows.subset([29, 3])
    assert torch.equal(sub.padded_ids([0, 1]), rows.padded_ids([29, 3]))
    assert sub.labels.tolist() == [y[29], y[3]]


def test_token_rows_refuse_a_pad_inside_a_row():
    ids = np.array([[5, 6, 0, 7], [5, 0, 0, 0]])
    with pytest.raises(ValueError, match="right-padded"):
        token_rows(ids, np.array([0, 1]), torch.nn.Identity(), 0)


@pytest.mark.parametrize("seed", [None, 0, 1])
def test_length_buckets_cover_every_row_exactly_once(seed):
    lengths = np.random.default_rng(5).integers(1, 40, 1013)
    rng = None if seed is None else np.random.default_rng(seed)
    batches = length_buckets(lengths, 32, rng)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(1013))             # every row, once
    assert all(1 <= len(b) <= 32 for b in batches)
    # buckets: within a batch the lengths are sorted (chunks of 50 batches sorted by length)
    assert all(np.all(np.diff(lengths[b]) >= 0) for b in batches)


def test_all_layers_train_and_the_embeddings_stay_frozen():
    m = _model()
    ids, y = _data(64, 1)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    hist = finetune(m, token_rows(ids, y, m.encoder.embeddings, 0), _config(epochs=1))
    after = m.state_dict()
    emb = [k for k in before if k.startswith("encoder.embeddings.")]
    assert emb and all(torch.equal(before[k], after[k]) for k in emb), "embeddings changed"
    for i in range(LAYERS):
        keys = [k for k in before if k.startswith(f"encoder.encoder.layer.{i}.")]
        assert keys
        unchanged = [k for k in keys if torch.equal(before[k], after[k])]
        assert not unchanged, f"layer {i}: {unchanged} not trained"
    assert len(hist["train_loss"]) == 1 and np.isfinite(hist["train_loss"][0])


def test_train_embeddings_trains_the_tables_with_the_layers_and_refuses_a_frozen_layer_cache():
    m = _model()
    ids, y = _data(64, 1)
    rows = token_rows(ids, y, m.encoder.embeddings, 0)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    cfg = _config(epochs=1, train_embeddings=True)
    finetune(m, rows, replace(cfg, train=replace(cfg.train, weight_decay=0.0)))
    after = m.state_dict()
    # the word table: only rows of tokens that occur can move (a second check of where the gradient
    # goes; without weight decay, AdamW leaves a row with no gradient where it is)
    word = next(k for k in before if k.startswith("encoder.embeddings.") and "word" in k)
    seen = np.unique(ids[ids != 0])
    moved = np.flatnonzero((before[word] != after[word]).any(dim=1).numpy())
    assert len(moved) and set(moved.tolist()) <= set(seen.tolist()) | {0}, "unseen token rows moved"
    others = [k for k in before if k.startswith("encoder.embeddings.") and k != word
              and ("position" in k or "norm" in k.lower())]
    assert others, "no position table or LayerNorm found among the embeddings"
    unchanged = [k for k in others if torch.equal(before[k], after[k])]
    assert not unchanged, f"{unchanged} not trained"
    assert not rows.trainable, "the caller's rows were changed"
    # the frozen default is the earlier test's; a frozen-layer cache (start > 0) cannot train the tables
    cache = types.SimpleNamespace(start=1, labels=y)
    with pytest.raises(ValueError, match="train_embeddings needs every layer"):
        finetune(_model(), cache, _config(train_embeddings=True))
    with pytest.raises(ValueError, match="train_embeddings must be a bool"):
        _config(train_embeddings="yes")


def test_keep_best_returns_the_weights_of_the_best_validation_epoch():
    m = _model()
    ids, y = _data(64, 2)
    vids, vy = _data(40, 3)
    val = token_rows(vids, vy, m.encoder.embeddings, 0)
    hist = finetune(m, token_rows(ids, y, m.encoder.embeddings, 0), _config(epochs=4, keep_best=True), val=val)
    assert len(hist["val_acc"]) == 4 and len(hist["epoch_s"]) == 4
    best = int(np.argmax(hist["val_acc"]))
    assert hist["best_epoch"] == best + 1
    # recomputed on the returned model, independently of the loop's bookkeeping
    with torch.no_grad():
        pred = m.head_forward(torch.from_numpy(features_from_cache(m, val))).argmax(-1).numpy()
    assert float(np.mean(pred == vy)) == pytest.approx(hist["val_acc"][best], abs=1e-12)
    with pytest.raises(ValueError, match="keep_best needs validation"):
        finetune(_model(), token_rows(ids, y, m.encoder.embeddings, 0), _config(keep_best=True))


def test_time_cap_stops_at_a_step_saves_the_state_and_the_resumed_run_equals_the_uninterrupted_one(
        tmp_path, monkeypatch):
    ids, y = _data(64, 4)          # 8 batches per epoch, 2 epochs
    ref = _model()
    ref_hist = finetune(ref, token_rows(ids, y, ref.encoder.embeddings, 0), _config())

    clock = {"t": 0.0}

    def fake_time():                # one second per reading: the cap falls mid-run
        clock["t"] += 1.0
        return clock["t"]

    state = tmp_path / "state.pt"
    m = _model()
    rows = token_rows(ids, y, m.encoder.embeddings, 0)
    monkeypatch.setattr(ft_mod, "time", types.SimpleNamespace(time=fake_time))
    hist = finetune(m, rows, _config(time_cap_s=11.5), state_path=state)
    monkeypatch.undo()
    assert "stopped" in hist and state.is_file()
    epoch, step = hist["stopped"]
    assert (epoch, step) != (2, 8) and 1 <= epoch <= 2 and 0 <= step < 8, hist["stopped"]
    stopped_weights = {k: v.clone() for k, v in m.state_dict().items()}
    assert any(not torch.equal(stopped_weights[k], ref.state_dict()[k]) for k in stopped_weights)

    m2 = _model(seed=9)             # other initial weights: everything must come from the state
    hist2 = finetune(m2, token_rows(ids, y, m2.encoder.embeddings, 0), _config(), state_path=state)
    assert "stopped" not in hist2 and not state.exists()     # finished: the state is spent
    assert hist2["train_loss"] == pytest.approx(ref_hist["train_loss"], rel=1e-5, abs=1e-7)
    for k, v in ref.state_dict().items():
        err = float((m2.state_dict()[k] - v).abs().max()) if v.numel() else 0.0
        assert err <= 1e-5, (k, err)


def test_pipeline_trains_every_layer_without_a_cache_and_refuses_frozen_avg(tmp_path):
    d = tmp_path
    model = write_tiny_model(d / "model")
    train = write_tsv(d / "train.tsv", ["review", "verdict"], sentiment_rows(48, 0))
    val = write_tsv(d / "val.tsv", ["review", "verdict"], sentiment_rows(16, 1))
    test = write_tsv(d / "test.tsv", ["review", "verdict"], sentiment_rows(16, 2))
    ood = write_tsv(d / "q.tsv", ["text"], [(q,) for q in questions(16, 3)])
    from edgeuq.data.sources import DataOptions

    cols = DataOptions(text_column="review", label_column="verdict")
    opts = TeacherOptions(train_layers=LAYERS, epochs=2, lr=3e-3, lr_head=3e-2, batch=8, max_length=12, samples=4,
                          ood_features="avgavg", keep_best=True)
    with pytest.raises(ValueError, match="frozen_avg"):
        train_text_teacher(train, d / "bad", replace(opts, ood_features="frozen_avg"), val=val, test=test,
                           model=model, data_options=cols, log=lambda m: None)
    assert not (d / "bad" / "cache").exists()   # refused before any work
    log = []
    art = train_text_teacher(train, d / "out", opts, val=val, test=test, ood=[ood], model=model, data_options=cols,
                             log=log.append)
    assert any("all 2 layers train" in line for line in log), log
    assert not list((d / "out" / "cache").glob("train-*.npz"))   # no frozen-layer cache written
    assert list((d / "out" / "cache").glob("finetuned-*.pt"))    # the finished weights are kept
    assert art.history["best_epoch"] in (1, 2) and len(art.history["val_acc"]) == 2
    assert art.options["keep_best"] is True and "time_cap_min" not in art.options
    for scheme in opts.schemes:
        assert 0.0 <= art.metrics[scheme]["accuracy"] <= 1.0


def test_options_added_later_leave_the_old_keys_unchanged():
    """Artifacts and fine-tuned weights made before time_cap_min / keep_best keep their keys."""
    d = TeacherOptions().to_dict()
    assert "time_cap_min" not in d and "keep_best" not in d
    d2 = TeacherOptions(time_cap_min=5.0, keep_best=True).to_dict()
    assert d2["time_cap_min"] == 5.0 and d2["keep_best"] is True
    with pytest.raises(ValueError, match="time_cap_min"):
        TeacherOptions(time_cap_min=float("nan"))
    with pytest.raises(ValueError, match="time_cap_s"):
        FinetuneConfig(time_cap_s=-1.0)
