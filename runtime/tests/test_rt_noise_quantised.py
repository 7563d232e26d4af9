"""Stream 2's quantised kinds against their closed forms.

``standard_normal`` is N(0, 1) quantised to 2**16 equiprobable atoms (the conditional means of its
quantile cells) and ``uniform`` is U(0, 1) quantised to the 2**16 cell midpoints
(``edgeuq_runtime.noise``). Checked here: every atom against an independent numerical integral,
the declared bounds (sup |F - Phi| <= 2**-16, variance, tails), a chi-square goodness of fit of the
stream on 50 equiprobable bins of the closed-form CDF, each with a negative control. (Canaries
recorded under another stream are refused by name: tests/test_ota_device.py.)"""
from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest
from rt_helpers import require_extra

from edgeuq_runtime.noise import NoiseSpec, normal_table, sample_noise_rows

ND = NormalDist()


def _cell_mean_by_quadrature(i: int) -> float:
    """E[z | z in quantile cell i of 2**16] by Simpson's rule on the cell (tails cut at 12 sigma),
    independent of the table's closed form."""
    a = ND.inv_cdf(i / 65536) if i else -12.0
    b = ND.inv_cdf((i + 1) / 65536) if i < 65535 else 12.0
    x = np.linspace(a, b, 2001)
    f = x * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    h = (b - a) / 2000
    integral = h / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum())
    return integral * 65536


@pytest.mark.parametrize("i", [0, 1, 2, 100, 4095, 20000, 32767, 32768, 32769, 50000, 65534, 65535])
def test_normal_atoms_equal_the_cell_means_by_quadrature(i):
    t = normal_table()
    ref = _cell_mean_by_quadrature(i)
    assert abs(float(t[i]) - ref) <= 2e-6 * max(1.0, abs(ref)), (i, float(t[i]), ref)


def test_normal_table_is_sorted_antisymmetric_and_has_the_declared_moments():
    t = normal_table().astype(np.float64)
    assert t.shape == (65536,) and normal_table().dtype == np.float32 and not normal_table().flags.writeable
    assert np.all(np.diff(t) > 0)
    np.testing.assert_array_equal(t, -t[::-1])                     # mean 0 exactly
    assert not abs(t.mean()) > 0.0
    # variance of the atoms = 1 - E[Var(z | cell)]; declared 1 - 1.5e-6 (within 1e-7)
    assert abs(float(np.mean(t * t)) - (1 - 1.5e-6)) <= 1e-7
    assert 4.38 <= float(t[-1]) <= 4.39                            # the last cell's mean, beyond its edge 4.1696
    # each atom lies inside its cell, so the CDF of the atoms is within 2**-16 of Phi everywhere
    edges = np.array([ND.inv_cdf(k / 65536) for k in range(1, 65536, 97)])
    idx = np.arange(1, 65536, 97)
    assert np.all(t[idx - 1] < edges) and np.all(edges < t[idx])
    cdf_at_atoms = np.array([ND.cdf(float(x)) for x in t[::257]])
    k = np.arange(0, 65536, 257)
    assert np.all(cdf_at_atoms >= k / 65536) and np.all(cdf_at_atoms <= (k + 1) / 65536)


def _chi2_equiprobable(x: np.ndarray, cdf, bins: int = 50) -> float:
    """Pearson's chi-square of ``x`` on ``bins`` equiprobable bins of ``cdf`` (a vectorised CDF)."""
    b = np.minimum((cdf(x) * bins).astype(np.int64), bins - 1)
    counts = np.bincount(b, minlength=bins)
    expected = len(x) / bins
    return float(((counts - expected) ** 2 / expected).sum())


#: chi-square with 49 degrees of freedom: P(> 95) ~ 6e-5 (Wilson-Hilferty), a bound a correct
#: sampler passes and the controls below fail by far.
CHI2_49_BOUND = 95.0


def _phi(x):
    from scipy.special import ndtr
    return ndtr(np.asarray(x, np.float64))


def test_stream_normals_and_uniforms_pass_chi_square_and_controls_fail():
    require_extra("scipy", "scipy: the runtime's test reference (a main dependency of edgeuq; make test installs it)")
    specs = [NoiseSpec("z", "standard_normal", (50, 20)), NoiseSpec("u", "uniform", (100, 7))]
    d = sample_noise_rows(specs, 400, np.random.default_rng(21))
    z = d["z"].ravel().astype(np.float64)
    u = d["u"].ravel().astype(np.float64)
    assert not _chi2_equiprobable(z, _phi) > CHI2_49_BOUND
    assert not _chi2_equiprobable(u, lambda v: v) > CHI2_49_BOUND
    # controls: sigma 3 % off, a 0.03 shift, the atoms of 2**8 cells instead of 2**16, u^1.03
    assert _chi2_equiprobable(1.03 * z, _phi) > CHI2_49_BOUND
    assert _chi2_equiprobable(z + 0.03, _phi) > CHI2_49_BOUND
    coarse = np.array([_cell_mean_coarse(v) for v in range(256)])
    zc = coarse[np.random.default_rng(5).integers(0, 256, z.size)]
    assert _chi2_equiprobable(zc, _phi, bins=1000) > 1000 + 5 * math.sqrt(2 * 999)
    assert _chi2_equiprobable(u ** 1.03, lambda v: v) > CHI2_49_BOUND


def _cell_mean_coarse(v: int, cells: int = 256) -> float:
    a = ND.inv_cdf(v / cells) if v else -math.inf
    b = ND.inv_cdf((v + 1) / cells) if v < cells - 1 else math.inf
    pa, pb = (0.0 if math.isinf(x) else ND.pdf(x) for x in (a, b))
    return (pa - pb) * cells


def test_fine_bins_show_the_stream_normal_is_not_coarsely_quantised():
    """On 1000 equiprobable bins the stream's normals still fit Phi (2**16 atoms spread over every
    bin); the 256-atom control above fails the same test."""
    require_extra("scipy", "scipy: the runtime's test reference (a main dependency of edgeuq; make test installs it)")
    z = sample_noise_rows([NoiseSpec("z", "standard_normal", (1000,))], 400, np.random.default_rng(22))["z"]
    chi2 = _chi2_equiprobable(z.ravel().astype(np.float64), _phi, bins=1000)
    assert not chi2 > 1000 + 5 * math.sqrt(2 * 999)


def test_uniform_values_are_the_cell_midpoints():
    u = sample_noise_rows([NoiseSpec("u", "uniform", (64,))], 200, np.random.default_rng(23))["u"]
    k = u.astype(np.float64) * 65536 - 0.5
    np.testing.assert_array_equal(k, np.round(k))                 # exact: (v + 1/2) 2**-16 is a float32
    assert k.min() >= 0 and k.max() <= 65535



def test_prepare_noise_builds_the_table_only_for_normal_specs():
    """UncertaintyRuntime calls prepare_noise at load, so the first predict does not build the table."""
    from edgeuq_runtime.noise import prepare_noise

    normal_table.cache_clear()
    prepare_noise([NoiseSpec("d", "dropout_mask", (4,), {"p": 0.1}), NoiseSpec("u", "uniform", (3,))])
    assert normal_table.cache_info().currsize == 0
    prepare_noise([NoiseSpec("u", "uniform", (3,)), NoiseSpec("z", "standard_normal", (2,))])
    assert normal_table.cache_info().currsize == 1
