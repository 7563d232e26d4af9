"""Noise means (deterministic mode) agree with the samplers."""
from __future__ import annotations

import math

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


# -- the runtime's noise stream (noise.sample_noise_rows): brute-force layout and distributions ---------------
from rt_helpers import ref_noise_rows  # noqa: E402

from edgeuq_runtime.noise import dropout_threshold, sample_noise_rows, words_per_row  # noqa: E402

MIXED = [NoiseSpec("d", "dropout_mask", (3, 5), {"p": 0.3}), NoiseSpec("n", "standard_normal", (7,)),
         NoiseSpec("u", "uniform", (3,)), NoiseSpec("c", "categorical", (2, 5), {"k": 5}),
         NoiseSpec("e", "dropout_mask", (1,), {"p": 0.1})]


def test_stream_matches_the_brute_force_reference():
    """Every kind, odd sizes (padding to whole words), several rows: element by element in plain
    Python from the documented layout (rt_helpers.ref_noise_rows)."""
    got = sample_noise_rows(MIXED, 9, np.random.default_rng(3))
    ref = ref_noise_rows(MIXED, 9, np.random.default_rng(3))
    for s in MIXED:
        assert got[s.name].shape == (9, *s.shape) and got[s.name].dtype == np.float32
        assert got[s.name].flags.c_contiguous
        tol = 1e-6 if s.kind == "standard_normal" else 0.0  # float32 rounding of the atoms (|z| <= 4.39); the rest exact
        assert float(np.max(np.abs(got[s.name] - ref[s.name].astype(np.float32)))) <= tol, s.name
    # and the generator advanced by exactly rows x words_per_row raw words
    g = np.random.default_rng(3)
    sample_noise_rows(MIXED, 9, g)
    h = np.random.default_rng(3)
    h.bit_generator.random_raw(9 * words_per_row(MIXED))
    assert g.bit_generator.random_raw() == h.bit_generator.random_raw()


@pytest.mark.parametrize("splits", [(1,) * 12, (5, 7), (11, 1), (3, 4, 5)])
def test_stream_is_chunk_invariant(splits):
    whole = sample_noise_rows(MIXED, 12, np.random.default_rng(8))
    g = np.random.default_rng(8)
    parts = [sample_noise_rows(MIXED, n, g) for n in splits]
    for s in MIXED:
        np.testing.assert_array_equal(np.concatenate([p[s.name] for p in parts]), whole[s.name])


@pytest.mark.parametrize("p", [0.0, 0.1, 0.3, 0.5, 0.9, 1e-6, 0.01, 0.99999])
def test_dropout_stream_mean_is_one_and_rate_is_p_eff(p):
    n = 400_000
    spec = NoiseSpec("m", "dropout_mask", (100,), {"p": p})
    m = sample_noise_rows([spec], n // 100, np.random.default_rng(1))["m"].ravel()
    t, p_eff, bits = dropout_threshold(p)
    # the declared widths: 8 bits where p moves by <= 2 % of min(p, 1 - p), else 16 (brute force here)
    t8 = min(round(p * 256), 255)
    expect_bits = 8 if abs(t8 / 256 - p) <= 0.02 * min(p, 1 - p) else 16
    assert bits == expect_bits and t == min(round(p * 2 ** bits), 2 ** bits - 1) and p_eff == t / 2 ** bits
    assert abs(p_eff - p) <= 2.0 ** -(bits + 1)
    assert bits == 16 or abs(p_eff - p) <= 0.02 * min(p, 1 - p)
    assert bits == {0.0: 8, 0.1: 8, 0.3: 8, 0.5: 8, 0.9: 8, 1e-6: 16, 0.01: 16, 0.99999: 16}[p]
    values = np.unique(m)
    keep = np.float32(1.0 / (1.0 - p_eff))
    assert set(values.tolist()) <= {0.0, float(keep)}
    drop_rate = float(np.mean(m == 0))
    se = np.sqrt(max(p_eff * (1 - p_eff), 1e-12) / n)
    assert abs(drop_rate - p_eff) <= 5 * se + 1e-12, (drop_rate, p_eff)       # binomial standard error
    # E[mask] = 1 exactly (float32 rounding of 1/(1-p_eff) aside); Var = p_eff / (1 - p_eff)
    assert abs(m.astype(np.float64).mean() - 1.0) <= 5 * np.sqrt(p_eff / (1 - p_eff) / n) + 1e-6
    if 0 < p_eff:
        var = m.astype(np.float64).var()
        assert abs(var / (p_eff / (1 - p_eff)) - 1) <= 5 * np.sqrt(2 / n) + 5 * np.sqrt(1 / (n * p_eff * (1 - p_eff)))


def test_dropout_rate_is_p_eff_not_p_where_8_bits_move_it():
    """p = 0.1 draws at p_eff = 26/256 = 0.1016 (declared): with 4M elements the rate is told apart
    from 0.1 (a sampler that kept 16-bit thresholds, or compared with p itself, fails here)."""
    n = 4_000_000
    m = sample_noise_rows([NoiseSpec("m", "dropout_mask", (1000,), {"p": 0.1})], n // 1000,
                          np.random.default_rng(6))["m"]
    rate = float(np.mean(m == 0))
    se = math.sqrt(0.1 * 0.9 / n)
    assert abs(rate - 26 / 256) <= 5 * se and abs(rate - 0.1) > 5 * se


def test_uniform_normal_categorical_stream_moments():
    n = 200_000
    specs = [NoiseSpec("u", "uniform", (10,)), NoiseSpec("z", "standard_normal", (9,)),
             NoiseSpec("c", "categorical", (4,), {"k": 4})]
    d = sample_noise_rows(specs, n // 10, np.random.default_rng(2))
    u, z, c = d["u"].ravel().astype(np.float64), d["z"].ravel().astype(np.float64), d["c"]
    assert 0.0 <= u.min() and u.max() < 1.0
    assert abs(u.mean() - 0.5) <= 5 * np.sqrt(1 / 12 / len(u)) and abs(u.var() - 1 / 12) <= 5 * np.sqrt(1 / 180 / len(u))
    assert abs(z.mean()) <= 5 / np.sqrt(len(z)) and abs(z.var() - 1) <= 5 * np.sqrt(2 / len(z))
    assert abs(np.mean(z ** 4) - 3) <= 5 * np.sqrt(96 / len(z))                     # Var[z^4] = 105 - 9
    assert abs(np.mean(np.abs(z) > 1.96) - 0.05) <= 5 * np.sqrt(0.05 * 0.95 / len(z))
    assert np.all(c.sum(-1) == 1) and set(np.unique(c).tolist()) == {0.0, 1.0}
    freq = c.reshape(-1, 4).mean(0)
    assert np.all(np.abs(freq - 0.25) <= 5 * np.sqrt(0.25 * 0.75 / (n // 10)))
    # neighbouring elements of a row (one 64-bit word) are uncorrelated
    zz = d["z"].astype(np.float64)
    r = np.corrcoef(zz[:, 0], zz[:, 1])[0, 1]
    assert abs(r) <= 5 / np.sqrt(len(zz))
