"""Noise means (deterministic mode) agree with the samplers."""
from __future__ import annotations

import numpy as np
import pytest

from edgeuq_runtime import NOISE_MEANS, NOISE_SAMPLERS, NoiseSpec, mean_noise, sample_noise


def test_every_kind_has_a_mean():
    assert set(NOISE_MEANS) == set(NOISE_SAMPLERS)


@pytest.mark.parametrize("spec", [NoiseSpec("m", "dropout_mask", (64,), {"p": 0.3}),
                                  NoiseSpec("n", "standard_normal", (64,)),
                                  NoiseSpec("u", "uniform", (64,))])
def test_mean_matches_empirical_mean(spec):
    drawn = sample_noise([spec], 4000, np.random.default_rng(0))[spec.name]
    mean = mean_noise([spec], 3)[spec.name]
    assert mean.shape == (3, 64) and mean.dtype == np.float32
    assert np.all(mean == mean.flat[0])
    assert abs(drawn.mean() - mean.flat[0]) < 0.01


def test_mean_noise_rejects_zero_rows():
    with pytest.raises(ValueError, match="positive"):
        mean_noise([NoiseSpec("u", "uniform", (2,))], 0)
