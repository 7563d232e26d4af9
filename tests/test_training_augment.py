"""Training-time noise augmentation: the family's spectrum, the SNR it is added at, the share of rows,
z-scoring, strict settings, and that the training loop applies it (and only when asked)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeuq.training import TrainConfig
from edgeuq.data.augment import augment_batch, pink_noise
from edgeuq.training.loop import LossOut, run_epochs


def _spectral_slope(noise: np.ndarray) -> float:
    """Least-squares slope of log mean periodogram vs log frequency (bins 4 .. N/2): 0 white, -1 pink."""
    p = np.mean(np.abs(np.fft.rfft(noise, axis=-1)) ** 2, axis=0)
    k = np.arange(len(p))[4:]
    return float(np.polyfit(np.log(k), np.log(p[4:]), 1)[0])


def test_pink_noise_has_a_one_over_f_spectrum_not_a_white_one():
    n = pink_noise((400, 2048), np.random.default_rng(0))
    slope = _spectral_slope(n)
    assert abs(slope + 1.0) <= 0.05, slope
    white = np.random.default_rng(0).standard_normal((400, 2048))
    assert abs(_spectral_slope(white)) <= 0.05          # the reference: the evaluation's white noise is flat
    assert not abs(float(n.mean())) > 1e-3


@pytest.mark.parametrize("snr_db", [6.0, 14.0])
def test_noise_is_added_at_the_drawn_snr(snr_db):
    # a pure tone at a high bin: after augmentation its power over the rest of the spectrum is the SNR
    # (pink noise puts almost nothing in one high bin), z-scoring does not change the ratio
    L, k0 = 2048, 700
    t = np.arange(L)
    tone = np.sqrt(2.0) * np.sin(2 * np.pi * k0 * t / L)
    x = np.tile(tone, (64, 1)).astype(np.float32)
    out = augment_batch(x, "pink", (snr_db, snr_db), 1.0, np.random.default_rng(1)).astype(np.float64)
    spec = np.abs(np.fft.rfft(out, axis=-1)) ** 2
    tone_power = spec[:, k0]
    rest = spec.sum(axis=-1) - tone_power - spec[:, 0]
    measured = 10 * np.log10(tone_power / rest)
    assert np.all(np.abs(measured - snr_db) <= 0.2), measured
    assert np.all(np.abs(out.mean(axis=-1)) <= 1e-5) and np.all(np.abs(out.std(axis=-1) - 1.0) <= 1e-4)


def test_only_the_asked_share_of_rows_changes_and_the_input_is_kept():
    x = np.random.default_rng(2).standard_normal((4000, 256)).astype(np.float32)
    before = x.copy()
    out = augment_batch(x, "pink", (6.0, 20.0), 0.25, np.random.default_rng(3))
    changed = (out != x).any(axis=1)
    share = changed.mean()
    assert abs(share - 0.25) <= 4 * np.sqrt(0.25 * 0.75 / 4000), share
    assert np.array_equal(x, before)                         # the caller's batch is not modified
    assert np.array_equal(out[~changed], x[~changed]) and out.dtype == np.float32
    assert np.array_equal(augment_batch(x, "pink", (6.0, 20.0), 0.0, np.random.default_rng(4)), x)


def test_settings_are_strict():
    with pytest.raises(ValueError, match="augment_noise 'white'"):
        TrainConfig(augment_noise="white")
    with pytest.raises(ValueError, match="augment_snr_db"):
        TrainConfig(augment_noise="pink", augment_snr_db=(20.0, 6.0))
    with pytest.raises(ValueError, match="augment_fraction"):
        TrainConfig(augment_noise="pink", augment_fraction=1.5)
    with pytest.raises(ValueError, match="token model"):
        augment_batch(np.zeros((2, 8), dtype=np.int64), "pink", (6.0, 20.0), 1.0, np.random.default_rng(5))
    cfg = TrainConfig.from_dict({"augment_noise": "pink", "augment_snr_db": [6, 20]})
    assert cfg.augment_snr_db == (6.0, 20.0) and cfg.to_dict()["augment_snr_db"] == [6.0, 20.0]
    assert "pink noise" in cfg.augmentation() and "6-20 dB" in cfg.augmentation()
    assert TrainConfig().augmentation() == "none"


@pytest.mark.parametrize("family", ["", "pink"])
def test_the_training_loop_applies_the_augmentation_only_when_asked(family):
    x = np.random.default_rng(0).standard_normal((40, 64)).astype(np.float32)
    y = np.arange(40) % 2
    model = torch.nn.Linear(64, 2)
    seen = []

    def loss_fn(m, batch):
        seen.append((batch.x.clone(), batch.index.clone()))
        logits = m(batch.x)
        return LossOut(torch.nn.functional.cross_entropy(logits, batch.y), logits)

    cfg = TrainConfig(epochs=2, batch_size=8, patience=5, augment_noise=family, augment_fraction=0.5)
    run_epochs(model, x, y, cfg, model.parameters(), lambda: (0.0, 1.0), loss_fn=loss_fn, progress=False)
    rows = np.concatenate([b.numpy() for b, _ in seen])
    orig = np.concatenate([x[i.numpy()] for _, i in seen])
    changed = np.any(rows != orig, axis=1)
    assert len(rows) == 80
    if family:
        assert 20 <= changed.sum() <= 60                 # about half of 80 rows
    else:
        assert not changed.any()


def test_transfer_set_pink_noise_kind_adds_pink_noise_at_its_snr_and_the_demo_uses_no_white_noise():
    from edgeuq.compress.transfer import AUGMENTATIONS, TransferConfig, augment_windows
    from edgeuq.pipeline import StudentOptions

    L, k0 = 2048, 700
    tone = np.sqrt(2.0) * np.sin(2 * np.pi * k0 * np.arange(L) / L)
    x = np.tile(tone, (32, 1))
    out = augment_windows(x, TransferConfig(copies=1, kinds=("pink_noise",), snr_db=(9.0, 9.0),
                                            synthetic_fraction=0.0))
    copies = out[32:].astype(np.float64)
    spec = np.abs(np.fft.rfft(copies, axis=-1)) ** 2
    measured = 10 * np.log10(spec[:, k0] / (spec.sum(axis=-1) - spec[:, k0] - spec[:, 0]))
    assert len(out) == 64 and np.all(np.abs(measured - 9.0) <= 0.2), measured
    assert "pink_noise" not in AUGMENTATIONS            # other distillations keep their defaults
    opts = StudentOptions()
    # the demo's noise-shift set is white noise at 0 dB: the student's transfer set has neither
    assert "noise" not in opts.transfer_kinds and "pink_noise" in opts.transfer_kinds
    assert not opts.transfer_snr_db[0] <= 0.0 <= opts.transfer_snr_db[1]
