"""run_epochs: a loss function of the batch (Batch/LossOut contract), and progress without bar floods."""
import io
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgeuq.models import ModelConfig, SignalTransformer
from edgeuq.training import TrainConfig
from edgeuq.training.loop import Batch, LossOut, cross_entropy_loss, run_epochs

TINY = dict(input_length=64, num_classes=3, patch=8, d_model=8, heads=2, depth=1, ffn=8, dropout=0.1,
            stochastic_blocks=())


def _data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 64)).astype(np.float32), rng.integers(0, 3, n)


def _run(loss_fn, epochs=2, progress=False, log=None):
    x, y = _data()
    torch.manual_seed(0)
    m = SignalTransformer(ModelConfig(**TINY))
    res = run_epochs(m, x, y, TrainConfig(epochs=epochs, batch_size=16, lr=1e-3, patience=5), m.parameters(),
                     lambda: (1.0, 0.5), loss_fn=loss_fn, progress=progress, log=log)
    return m, res


def test_batches_carry_the_rows_of_the_training_arrays():
    """A teacher's outputs can be looked up by ``batch.index``: every row is seen once per
    epoch and batch.x / batch.y are exactly those rows."""
    x, y = _data()
    seen = []

    def loss(model, batch: Batch) -> LossOut:
        assert batch.index.dtype == torch.int64
        idx = batch.index.numpy()
        assert np.array_equal(batch.x.numpy(), x[idx]) and np.array_equal(batch.y.numpy(), y[idx])
        seen.append(idx)
        return cross_entropy_loss(model, batch)

    _run(loss, epochs=2)
    per_epoch = np.concatenate(seen[:3]), np.concatenate(seen[3:])
    assert len(seen) == 6
    for rows in per_epoch:
        assert sorted(rows.tolist()) == list(range(len(x)))
    assert not np.array_equal(per_epoch[0], per_epoch[1])       # reshuffled each epoch


def test_default_loss_is_cross_entropy_and_a_custom_loss_changes_training():
    def explicit_ce(model, batch):
        logits = model(batch.x)
        return LossOut(F.cross_entropy(logits, batch.y), logits)

    a, ra = _run(cross_entropy_loss)
    b, rb = _run(explicit_ce)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    assert [h.train_loss for h in ra.history] == [h.train_loss for h in rb.history]

    def doubled(model, batch):
        out = cross_entropy_loss(model, batch)
        return LossOut(2.0 * out.loss, out.logits)

    _, rc = _run(doubled)
    # the reported training loss is the loss function's value
    assert rc.history[0].train_loss == pytest.approx(2.0 * ra.history[0].train_loss, rel=1e-6)


def test_no_progress_bars_when_output_is_not_a_terminal(monkeypatch, capsys):
    """Redirected output (a log file, CI): one line per epoch, no tqdm bar."""
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    _run(cross_entropy_loss, epochs=3, progress=True)
    lines = [ln for ln in out.getvalue().splitlines() if ln.strip()]
    assert len(lines) == 3 and all(ln.startswith(f"epoch {i + 1:>2}:") for i, ln in enumerate(lines))
    assert "it/s" not in err.getvalue() and "\r" not in err.getvalue() and "%|" not in err.getvalue()


def test_quiet_without_progress_and_log_lines_go_to_log(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    _run(cross_entropy_loss, epochs=2, progress=False)
    assert out.getvalue() == ""
    logged = []
    _run(cross_entropy_loss, epochs=2, progress=True, log=logged.append)
    assert len(logged) == 2 and out.getvalue() == ""
