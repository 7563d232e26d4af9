"""Distillation carries the teacher's epistemic uncertainty, not only its labels.

The teacher is a closed-form labeller with a known answer: clean two-tone
windows get S identical confident samples (MI = 0); windows whose tone is
buried in noise get two disagreeing halves of samples (MI = ln 2 − H(0.95) ≈
0.49). A student trained on the teacher-labelled transfer set with the
uncertainty-carrying loss must land much closer to the teacher's MI on unseen
noise windows than the same student trained identically with labels only.
"""
import numpy as np
import pytest
import torch

from edgeuq.compress.distill import DistillConfig, distill_model
from edgeuq.training import TrainConfig
from edgeuq.compress.losses import decompose
from edgeuq.compress.transfer import (
    TransferConfig, TransferSet, TransferSetArtifact, augment_windows, load_transfer_set, save_transfer_set,
)
from edgeuq.models import ModelConfig, build_model, mc_sample_probs
from edgeuq_runtime.preprocess import zscore_windows

L = 64
HI = 0.95


def _windows(n, rng, noise=0.3):
    y = rng.integers(0, 2, n)
    t = np.arange(L)
    f = np.where(y == 0, 4 / L, 11 / L)[:, None]
    x = np.sin(2 * np.pi * f * t + rng.uniform(0, 6.3, (n, 1))) + noise * rng.standard_normal((n, L))
    return zscore_windows(x.astype(np.float32)), y


def _teacher(x, samples, seed):
    spec = np.abs(np.fft.rfft(x, axis=1)) ** 2
    clean = spec[:, [4, 11]].max(1) / spec[:, 1:].sum(1) > 0.4
    cls = np.argmax(spec[:, [4, 11]], 1)
    p = np.empty((samples, len(x), 2), np.float32)
    half = samples // 2
    p[:, :, 0] = np.where(clean, np.where(cls == 0, HI, 1 - HI), 0.0)[None]
    p[:half, ~clean, 0] = HI
    p[half:, ~clean, 0] = 1 - HI
    p[:, :, 1] = 1 - p[:, :, 0]
    return p


def _transfer(x, y, seed):
    cfg = TransferConfig(copies=1, kinds=("noise",), snr_db=(-15.0, 5.0), synthetic_fraction=0.0,
                         teacher_samples=16, seed=seed)
    xa = augment_windows(x, cfg)
    labels = np.full(len(xa), -1)
    labels[: len(x)] = y
    return TransferSet(xa, _teacher(xa, cfg.teacher_samples, seed)), labels


def _student(loss, train, val):
    cfg = ModelConfig(input_length=L, num_classes=2, patch=8, embed="linear", d_model=16, heads=2, depth=1, ffn=32,
                      dropout=0.3, stochastic_blocks=(), stochastic_head=True)
    torch.manual_seed(0)
    model = build_model(cfg)
    distill_model(model, *train, *val, DistillConfig(loss=loss, train=TrainConfig(epochs=10, batch_size=32, lr=3e-3, patience=5)), progress=False)
    return model


def test_distillation_moves_student_mutual_information_toward_the_teachers():
    rng = np.random.default_rng(0)
    train = _transfer(*_windows(300, rng), seed=0)
    val = _transfer(*_windows(100, rng), seed=1)
    shifted = zscore_windows(np.random.default_rng(7).standard_normal((200, L)).astype(np.float32))
    mi_teacher = decompose(torch.from_numpy(_teacher(shifted, 16, 0)))[3]
    assert abs(float(mi_teacher.mean()) - (np.log(2) + HI * np.log(HI) + (1 - HI) * np.log(1 - HI))) <= 0.02

    gaps, accs = {}, {}
    x_clean, y_clean = _windows(200, np.random.default_rng(5))
    for loss in ("ce", "kl+uq"):
        model = _student(loss, train, val)
        mi = decompose(mc_sample_probs(model, torch.from_numpy(shifted), 32, rng=np.random.default_rng(0)))[3]
        gaps[loss] = float((mi - mi_teacher).abs().mean())
        probs = mc_sample_probs(model, torch.from_numpy(x_clean), 32, rng=np.random.default_rng(0)).mean(0)
        accs[loss] = float((probs.argmax(-1).numpy() == y_clean).mean())
    # both students classify clean windows; only the distilled one learned the teacher's disagreement
    assert accs["ce"] >= 0.95 and accs["kl+uq"] >= 0.95, accs
    assert gaps["kl+uq"] <= 0.6 * gaps["ce"], gaps


def test_transfer_set_artifact_is_hashed_and_tamper_evident(tmp_path):
    rng = np.random.default_rng(0)
    ts, _ = _transfer(*_windows(20, rng), seed=0)
    art = save_transfer_set(ts, tmp_path / "t", info={"teacher": "closed form"})
    back = load_transfer_set(tmp_path / "t")
    assert np.array_equal(back.x, ts.x) and np.array_equal(back.probs, ts.probs)
    assert len(art.digest) == 64 and TransferSetArtifact.load(tmp_path / "t").digest == art.digest
    (tmp_path / "t" / "transfer.npz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="sha256|changed|hash"):
        load_transfer_set(tmp_path / "t")


def test_augment_windows_counts_and_normalisation():
    x, _ = _windows(10, np.random.default_rng(0))
    out = augment_windows(x, TransferConfig(copies=2, synthetic_fraction=0.5, seed=3))
    assert out.shape == (10 + 20 + 5, L) and out.dtype == np.float32
    assert np.allclose(out.mean(1), 0, atol=1e-5) and np.allclose(out.std(1), 1, atol=1e-3)
    assert not np.allclose(out[10:20], out[:10])
    with pytest.raises(ValueError, match="unknown augmentation"):
        TransferConfig(kinds=("warp",))
