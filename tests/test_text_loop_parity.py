"""The text fine-tuning loop, the text MC sampler and the text student's distillation now go
through the shared pieces (``edgeuq.training.loop.run_steps`` / ``warmup_linear_decay``,
``edgeuq.models.sampling.mc_sample_head_logits``, ``TrainConfig``, ``edgeuq.text.cache.length_buckets``).
The references are the pre-change implementations themselves, read from git at the commit before
the change (:data:`PRE_CHANGE`) and run beside the new code: same weights, losses and
probabilities on a tiny seeded model. ``run_epochs`` (now on ``run_steps``) is compared against
its own pre-change source too. Without that commit in the clone's history (a shallow clone)
these tests skip and say so."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from edgeuq.models.bert import BertConfig
from edgeuq.text.cache import cache_hidden
from edgeuq.text.classifier import TextClassifier
from edgeuq.training import TrainConfig
from edgeuq.text.finetune import FinetuneConfig, features_from_cache, finetune, fit_text_laplace, sample_probs
from pre_change import module_at

TINY = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=24,
                  max_position_embeddings=20)
#: The last commit before the text loop, sampler and options were routed through the shared pieces.
PRE_CHANGE = "5d6e97b39f6eb47e47abe55bf5a875e5f6a1c736"


def old_module(path: str, package: str):
    """The module ``path`` as it was at :data:`PRE_CHANGE` (:func:`pre_change.module_at`)."""
    return module_at(PRE_CHANGE, path, package)


# ----------------------------------------------------------------------------- fixtures
def _ids(rng, n, t=10):
    ids = np.zeros((n, t), np.int64)
    for i in range(n):
        k = int(rng.integers(3, t + 1))
        ids[i, :k] = rng.integers(1, TINY.vocab_size, size=k)
    return ids


def _setup(scheme="mc_dropout", n=70, start=1):
    torch.manual_seed(0)
    model = TextClassifier(TINY, num_classes=2, hidden=8, scheme=scheme).eval()
    rng = np.random.default_rng(0)
    ids = _ids(rng, n)
    y = (ids[:, 1] % 2).astype(np.int64)  # a learnable label
    cache = cache_hidden(model.encoder, ids, y, start=start, name="t")
    val = cache_hidden(model.encoder, _ids(rng, 20), rng.integers(0, 2, 20), start=start, name="v")
    return model, cache, val


def _max_param_diff(a, b) -> float:
    return max(float(torch.max(torch.abs(pa - pb))) for pa, pb in zip(a.state_dict().values(), b.state_dict().values())
               if pa.dtype.is_floating_point)


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("start", [1, 2])  # train the top 2 layers + head, or the top one + head
def test_finetune_on_the_shared_step_loop_equals_the_old_loop(start):
    model, cache, val = _setup(start=start)
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    old = old_module("edgeuq/text/finetune.py", "edgeuq.text")
    layers = TINY.num_hidden_layers - start
    ha = old.finetune(a, cache, old.FinetuneConfig(train_layers=layers, epochs=3, batch_size=16, lr_encoder=1e-3,
                                                   lr_head=3e-3, weight_decay=0.01, seed=3), val=val)
    cfg = FinetuneConfig(train_layers=layers, lr_head=3e-3,
                         train=TrainConfig(epochs=3, batch_size=16, lr=1e-3, weight_decay=0.01, seed=3))
    hb = finetune(b, cache, cfg, val=val)
    assert _max_param_diff(model, b) > 1e-3  # it trained
    err = _max_param_diff(a, b)
    assert err <= 1e-6, err
    assert np.allclose(ha["train_loss"], hb["train_loss"], rtol=0, atol=1e-7)
    assert ha["val_acc"] == hb["val_acc"]


@pytest.mark.parametrize("scheme", ["mc_dropout", "laplace"])
def test_sample_probs_through_the_shared_sampler_equals_the_old_sampler(scheme):
    model, cache, val = _setup(scheme)
    feats = features_from_cache(model, cache)
    if scheme == "laplace":
        fit_text_laplace(model, feats, features_from_cache(model, val), val.labels, samples=8)
    assert len(model.noise_specs()) == (2 if scheme == "mc_dropout" else 1)  # several specs: the draw order matters
    old = old_module("edgeuq/text/finetune.py", "edgeuq.text").sample_probs(model, feats, 7, seed=5)
    new = sample_probs(model, feats, 7, seed=5)
    assert old.shape == new.shape == (7, len(feats), 2)
    err = float(np.max(np.abs(old - new)))
    assert err <= 1e-6, err
    # and the samples really differ (noise is drawn, not the mean)
    assert float(np.max(np.abs(new[0] - new[1]))) > 1e-4


def test_run_epochs_on_run_steps_equals_the_old_loop():
    from edgeuq.models import ModelConfig, SignalTransformer
    from edgeuq.training import TrainConfig
    from edgeuq.training.loop import cross_entropy_loss, run_epochs

    old = old_module("edgeuq/training/loop.py", "edgeuq.training")
    tiny = dict(input_length=64, num_classes=3, patch=8, d_model=8, heads=2, depth=1, ffn=8, dropout=0.1,
                stochastic_blocks=())
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((50, 64)).astype(np.float32), rng.integers(0, 3, 50)
    out = []
    for fn in (old.run_epochs, run_epochs):
        torch.manual_seed(0)
        m = SignalTransformer(ModelConfig(**tiny))
        vals = iter([1.0, 0.9, 0.95, 0.8])
        res = fn(m, x, y, TrainConfig(epochs=4, batch_size=16, lr=1e-3, patience=5), m.parameters(),
                 lambda: (next(vals), 0.5), loss_fn=cross_entropy_loss, progress=False)
        out.append((m, res))
    (ma, ra), (mb, rb) = out
    assert _max_param_diff(ma, mb) <= 1e-6
    assert ra.best_epoch == rb.best_epoch == 4
    for ea, eb in zip(ra.history, rb.history):
        assert abs(ea.train_loss - eb.train_loss) <= 1e-7 and ea.train_acc == eb.train_acc
