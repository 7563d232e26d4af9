"""Noise means (deterministic mode) agree with the samplers."""
from __future__ import annotations

import numpy as np
import pytest

from edgeuq_runtime import NOISE_MEANS, NOISE_SAMPLERS, NoiseSpec, mean_noise, sample_noise, sample_noise_tiled


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


@pytest.mark.parametrize("kinds", [("dropout_mask", "dropout_mask", "uniform"), ("standard_normal",) * 2,
                                   ("dropout_mask", "standard_normal"), ("categorical", "uniform")])
def test_chunked_draw_equals_the_sample_by_sample_definition(kinds):
    """The runtime draws k samples at once (sample_noise_samples); that must equal k draws of one
    sample each, every spec in manifest order (sample_noise_tiled, written as that loop), and
    consecutive chunks must continue the same stream."""
    from edgeuq_runtime.noise import sample_noise_samples

    shapes = [(3, 4), (5,), (2, 2, 2)]
    specs = [NoiseSpec(f"n{i}", k, (*shapes[i % 3][:-1], 4) if k == "categorical" else shapes[i % 3],
                       {"p": 0.25} if k == "dropout_mask" else {"k": 4} if k == "categorical" else {})
             for i, k in enumerate(kinds)]
    ref = sample_noise_tiled(specs, 7, 3, np.random.default_rng(11))
    g = np.random.default_rng(11)
    first, second = sample_noise_samples(specs, 4, 3, g), sample_noise_samples(specs, 3, 3, g)
    for s in specs:
        got = np.concatenate([first[s.name], second[s.name]])
        assert got.shape == (21, *s.shape) and got.dtype == np.float32
        assert first[s.name].flags.c_contiguous and second[s.name].flags.c_contiguous  # fed to graphs as is
        np.testing.assert_array_equal(got, ref[s.name])
