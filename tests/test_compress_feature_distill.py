"""Feature distillation: the student's pooled trunk features, through a learned linear projection,
matched to the teacher's. The loss has closed-form values, falls while training, and the fitted
projection is the ridge least-squares one on the final student features (checked with numpy)."""
import numpy as np
import pytest
import torch

from edgeuq.compress.distill import DistillConfig, distill_model, make_projection
from edgeuq.training import TrainConfig
from edgeuq.compress.losses import feature_matching
from edgeuq.compress.transfer import (
    TransferSet, features_with_model, load_transfer_set, save_transfer_set, with_teacher_features,
)
from edgeuq.models import ModelConfig, build_model
from edgeuq_runtime.preprocess import zscore_windows

L = 64


def test_feature_loss_closed_forms():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(32, 6, generator=g)
    ident = torch.nn.Linear(6, 6)
    with torch.no_grad():
        ident.weight.copy_(torch.eye(6))
        ident.bias.zero_()
    assert float(feature_matching(t, t, ident, "mse")) <= 1e-12
    zero = torch.nn.Linear(6, 6)
    with torch.no_grad():
        zero.weight.zero_()
        zero.bias.zero_()
    assert abs(float(feature_matching(t, t, zero, "mse")) - 1.0) <= 1e-6      # predicting zeros = 1
    assert float(feature_matching(2.5 * t, t, ident, "cosine")) <= 1e-6       # cosine ignores the scale
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    eye2 = torch.nn.Linear(2, 2)
    with torch.no_grad():
        eye2.weight.copy_(torch.eye(2))
        eye2.bias.zero_()
    assert abs(float(feature_matching(a, a.flip(1), eye2, "cosine")) - 1.0) <= 1e-6  # orthogonal = 1
    tokens = t[:, None, :].repeat(1, 5, 1)                                   # (B, T, d) pooled over T
    assert float(feature_matching(tokens, t, ident, "mse")) <= 1e-12
    with pytest.raises(ValueError, match="unknown feature loss"):
        feature_matching(t, t, ident, "l1")


def _data(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    t = np.arange(L)
    f = np.where(y == 0, 4 / L, 11 / L)[:, None]
    x = np.sin(2 * np.pi * f * t + rng.uniform(0, 6.3, (n, 1))) + 0.5 * rng.standard_normal((n, L))
    return zscore_windows(x.astype(np.float32)), y


def _models():
    torch.manual_seed(1)
    teacher = build_model(ModelConfig(input_length=L, num_classes=2, patch=8, embed="linear", d_model=24, heads=2,
                                      depth=2, ffn=32, dropout=0.1, stochastic_blocks=(1,), stochastic_head=True))
    torch.manual_seed(2)
    student = build_model(ModelConfig(input_length=L, num_classes=2, patch=8, embed="linear", d_model=8, heads=2,
                                      depth=1, ffn=16, dropout=0.1, stochastic_blocks=(), stochastic_head=True))
    return teacher.eval(), student


def _transfer(teacher, n, seed):
    x, y = _data(n, seed)
    probs = np.stack([np.eye(2, dtype=np.float32)[y] * 0.9 + 0.05] * 4)  # labels only; features carry the geometry
    return with_teacher_features(TransferSet(x, probs), lambda w: features_with_model(teacher, w)), y


def _feature_loss(student, proj, ts):
    with torch.no_grad():
        student.eval()
        return float(feature_matching(student.trunk(torch.from_numpy(ts.x)), torch.from_numpy(ts.features), proj))


def test_feature_distillation_lowers_the_feature_loss_and_fits_the_projection(tmp_path):
    teacher, student = _models()
    train, y_tr = _transfer(teacher, 256, 0)
    val, y_va = _transfer(teacher, 96, 1)
    assert train.features.shape == (256, 24)
    cfg = DistillConfig(loss="kl", feature_weight=1.0, feature_loss="mse",
                        train=TrainConfig(epochs=12, batch_size=32, lr=3e-3, patience=12))
    before = _feature_loss(student, make_projection(student, 24, cfg.train.seed), val)  # the projection it starts from
    res = distill_model(student, train, y_tr, val, y_va, cfg, progress=False)
    assert res.projection is not None
    after = _feature_loss(student, res.projection, val)
    assert after <= 0.5 * before, (before, after)
    # the learned projection against the least-squares one on the final student features (independent fit)
    with torch.no_grad():
        fs = student.trunk(torch.from_numpy(train.x)).numpy()
    a = np.hstack([fs, np.ones((len(fs), 1))]).astype(np.float64)
    gram = a.T @ a
    ridge = 1e-2 * np.trace(gram) / gram.shape[0]                  # the documented ridge
    w = np.linalg.solve(gram + ridge * np.eye(len(gram)), a.T @ train.features.astype(np.float64))
    ls = float(np.mean((a @ w - train.features) ** 2) / np.mean(train.features ** 2))
    unreg, *_ = np.linalg.lstsq(a, train.features, rcond=None)
    assert ls <= 1.2 * float(np.mean((a @ unreg - train.features) ** 2) / np.mean(train.features ** 2)) + 0.02
    learned = _feature_loss(student, res.projection, train)
    assert abs(learned - ls) <= 1e-3 + 1e-2 * ls, (learned, ls)
    # the features travel with the transfer set artifact
    back = load_transfer_set(save_transfer_set(train, tmp_path / "ts").directory)
    assert np.array_equal(back.features, train.features)


def test_feature_weight_without_teacher_features_is_refused():
    _, student = _models()
    x, y = _data(16, 0)
    ts = TransferSet(x, np.full((2, 16, 2), 0.5, np.float32))
    with pytest.raises(ValueError, match="teacher's features"):
        distill_model(student, ts, y, ts, y, DistillConfig(feature_weight=1.0, train=TrainConfig(epochs=1)), progress=False)
    with pytest.raises(ValueError, match="feature loss"):
        DistillConfig(feature_loss="l2")
