"""Distributions of the runtime's noise stream against their closed forms (Kolmogorov-Smirnov and
moments), at the shapes the variational and MC-dropout heads use, every element position, and the
extreme raw words (no NaN or infinity can come out). Each check has a negative control: the same
statistic on a slightly wrong distribution must fail it, so the bounds are tight enough to matter."""
from __future__ import annotations

import math

import numpy as np
import pytest
from rt_helpers import require_extra

scipy_stats = require_extra("scipy.stats", "scipy: the runtime's test reference (a main dependency of edgeuq; make test installs it)")

from edgeuq_runtime.noise import NoiseSpec, _decode, dropout_threshold, row_layout, sample_noise_rows  # noqa: E402

#: The variational CWRU head's noise (qkv, proj, fc1, fc2 per token; the head's two linears).
VI_SPECS = [NoiseSpec(f"vi{i}", "standard_normal", s)
            for i, s in enumerate([(32, 96), (32, 32), (32, 64), (32, 32), (32,), (4,)])]


def ks_bound(n: int, alpha: float = 1e-3) -> float:
    """Asymptotic critical value of the one-sample KS statistic: P(D > c) = alpha."""
    return math.sqrt(-0.5 * math.log(alpha / 2.0)) / math.sqrt(n)


def ks(x: np.ndarray, cdf) -> float:
    return float(scipy_stats.kstest(np.asarray(x, np.float64), cdf).statistic)


def test_variational_noise_is_standard_normal_in_every_spec():
    d = sample_noise_rows(VI_SPECS, 40, np.random.default_rng(7))
    allz = np.concatenate([v.ravel() for v in d.values()]).astype(np.float64)
    assert np.all(np.isfinite(allz))
    n = len(allz)
    assert ks(allz, "norm") <= ks_bound(n)
    assert not ks(1.05 * allz, "norm") <= ks_bound(n)             # control: sigma 5 % off is caught
    assert not ks(allz + 0.02, "norm") <= ks_bound(n)             # control: a 0.02 shift is caught
    assert abs(allz.mean()) <= 5 / math.sqrt(n)
    assert abs(allz.var() - 1.0) <= 5 * math.sqrt(2.0 / n)
    for s in VI_SPECS:                                            # each spec on its own
        z = d[s.name].ravel()
        assert ks(z, "norm") <= ks_bound(z.size), s.name


@pytest.mark.parametrize("position", ["first", "second", "last"])
def test_every_element_position_is_standard_normal(position):
    """Each element position of a row on its own (across rows) must be N(0, 1), not only the pooled
    values: the first and last 16-bit lanes of a word and the last element of a padded word."""
    spec = NoiseSpec("z", "standard_normal", (33,))                # 33 elements: the last word is padded
    rows = 20_000
    z = sample_noise_rows([spec], rows, np.random.default_rng(8))["z"]
    col = {"first": 0, "second": 1, "last": 32}[position]
    x = z[:, col].astype(np.float64)
    assert ks(x, "norm") <= ks_bound(rows)
    assert abs(x.mean()) <= 5 / math.sqrt(rows) and abs(x.var() - 1) <= 5 * math.sqrt(2 / rows)


def test_uniform_noise_is_uniform_and_dropout_keeps_at_rate_one_minus_p():
    specs = [NoiseSpec("u", "uniform", (32, 16)), NoiseSpec("m", "dropout_mask", (32, 64), {"p": 0.1})]
    d = sample_noise_rows(specs, 256, np.random.default_rng(9))   # 131k uniforms: u^1.02 (CDF off by 0.0072) is caught
    u = d["u"].ravel().astype(np.float64)
    assert ks(u, "uniform") <= ks_bound(u.size)
    assert not ks(u ** 1.02, "uniform") <= ks_bound(u.size)
    m = d["m"].ravel().astype(np.float64)
    n = m.size
    keep = float(np.mean(m > 0))
    p_eff = dropout_threshold(0.1)[1]                              # 26/256: the declared 8-bit rate
    assert abs(keep - (1 - p_eff)) <= 5 * math.sqrt(0.09 / n)
    assert abs(m.mean() - 1.0) <= 5 * math.sqrt(0.1 / 0.9 / n) + 1e-6   # E[mask] = 1


@pytest.mark.parametrize("word", [0, 0xFFFFFFFFFFFFFFFF, 0x00000000FFFFFFFF, 0xFFFFFFFF00000000, 0x80000000_80000000])
def test_extreme_raw_words_give_finite_noise(word):
    """The decoders on the extreme bit patterns: every kind finite and in its range (the normal's
    extreme atoms are the means of the two tail cells, |z| <= 4.39; uniforms stay strictly inside
    (0, 1), so the Gumbel transform in the HSA graph never sees 0 or 1)."""
    specs = [NoiseSpec("n", "standard_normal", (4,)), NoiseSpec("u", "uniform", (4,)),
             NoiseSpec("d", "dropout_mask", (4,), {"p": 0.5}), NoiseSpec("c", "categorical", (3,), {"k": 3})]
    layout = row_layout(specs)
    width = sum(w for _, w in layout)
    raw = np.full((3, width), word, dtype="<u8")
    for s, (off, _) in zip(specs, layout):
        out = _decode(s, raw, off, 3)
        assert np.all(np.isfinite(out)), (s.kind, hex(word))
        if s.kind == "standard_normal":
            assert float(np.abs(out).max()) <= 4.39
        if s.kind == "uniform":
            assert out.min() > 0.0 and out.max() < 1.0
