"""The noise stream's cached decoding plans (noise._plan): grouped dropout runs, shaped normal gathers and
exact uniform midpoints give the values of the brute-force reference and of the plain per-spec decoder
(noise._decode), for every grouping the plan can form; plans are cached per spec objects, never reused
for other specs."""
from __future__ import annotations

import numpy as np
import pytest
from rt_helpers import ref_noise_rows

from edgeuq_runtime import NoiseSpec
from edgeuq_runtime import noise as N

# runs the plan groups: adjacent 8-bit masks with one threshold (odd sizes: padding between them), a
# threshold change inside a dropout run (0.1 -> 0.3: a new run), adjacent 16-bit masks (p = 0.01), a
# 16-bit run next to an 8-bit one with another threshold, and every other kind in between
GROUPED = [NoiseSpec("d1", "dropout_mask", (3, 5), {"p": 0.1}), NoiseSpec("d2", "dropout_mask", (7,), {"p": 0.1}),
           NoiseSpec("d3", "dropout_mask", (2, 2), {"p": 0.3}), NoiseSpec("n1", "standard_normal", (3, 3)),
           NoiseSpec("n2", "standard_normal", (1,)), NoiseSpec("e1", "dropout_mask", (5,), {"p": 0.01}),
           NoiseSpec("e2", "dropout_mask", (9,), {"p": 0.01}), NoiseSpec("f", "dropout_mask", (4,), {"p": 0.5}),
           NoiseSpec("u", "uniform", (2, 3)), NoiseSpec("c", "categorical", (2, 3), {"k": 3}),
           NoiseSpec("g", "dropout_mask", (1,), {"p": 0.0})]


def _plain(specs, rows, rng):
    """The plain decoder, spec by spec from its own layout (the stream's definition before plans)."""
    layout = N.row_layout(specs)
    width = sum(w for _, w in layout)
    raw = rng.bit_generator.random_raw(rows * width).astype("<u8", copy=False).reshape(rows, width)
    return {s.name: N._decode(s, raw, off, rows) for s, (off, _) in zip(specs, layout)}


@pytest.mark.parametrize("rows", [1, 2, 9])
def test_plan_matches_the_brute_force_reference_for_every_run(rows):
    got = N.sample_noise_rows(GROUPED, rows, np.random.default_rng(21))
    ref = ref_noise_rows(GROUPED, rows, np.random.default_rng(21))
    assert list(got) == [s.name for s in GROUPED]   # manifest order
    for s in GROUPED:
        assert got[s.name].shape == (rows, *s.shape) and got[s.name].dtype == np.float32, s.name
        assert got[s.name].flags.c_contiguous, s.name   # fed to graphs as is
        tol = 1e-6 if s.kind == "standard_normal" else 0.0   # float32 atoms vs the float64 reference
        err = float(np.max(np.abs(got[s.name] - ref[s.name].astype(np.float32))))
        assert err <= tol, (s.name, err)


@pytest.mark.parametrize("order", [0, 1, 2])
def test_plan_equals_the_plain_decoder_bit_for_bit(order):
    specs = list(GROUPED)
    np.random.default_rng(order).shuffle(specs)   # other runs, other offsets
    specs = tuple(specs)
    got = N.sample_noise_rows(specs, 16, np.random.default_rng(5))
    ref = _plain(specs, 16, np.random.default_rng(5))
    for s in specs:
        np.testing.assert_array_equal(got[s.name], ref[s.name], err_msg=s.name)
        assert np.array_equal(np.signbit(got[s.name]), np.signbit(ref[s.name])), s.name   # +0, never -0


def test_grouping_across_a_threshold_change_would_be_caught():
    """Control: d3 (p = 0.3) decoded with the run's p = 0.1 threshold differs from the reference, so
    the comparisons above fail for a plan that merges runs of different thresholds."""
    rows = 9
    raw = np.random.default_rng(21).bit_generator.random_raw(rows * N.words_per_row(GROUPED)).reshape(rows, -1)
    off = N.row_layout(GROUPED)[2][0]
    wrong = N._decode(NoiseSpec("d3", "dropout_mask", (2, 2), {"p": 0.1}), raw, off, rows)
    ref = ref_noise_rows(GROUPED, rows, np.random.default_rng(21))["d3"].astype(np.float32)
    assert not np.array_equal(wrong, ref)


def test_plans_are_cached_per_spec_objects_and_never_reused_for_others():
    specs = (NoiseSpec("a", "dropout_mask", (64,), {"p": 0.1}), NoiseSpec("b", "standard_normal", (8,)))
    assert N._plan(specs)[1] is N._plan(specs)[1]   # built once
    # same names and shapes, another threshold: another plan, other values
    other = (NoiseSpec("a", "dropout_mask", (64,), {"p": 0.5}), specs[1])
    assert N._plan(other)[1] is not N._plan(specs)[1]
    a = N.sample_noise_rows(specs, 4, np.random.default_rng(0))["a"]
    b = N.sample_noise_rows(other, 4, np.random.default_rng(0))["a"]
    assert not np.array_equal(a, b)
    assert abs(float((a == 0).mean()) - 26 / 256) <= 0.1 and abs(float((b == 0).mean()) - 0.5) <= 0.15
    # a list edited in place is looked up by its items: the edit takes effect
    items = list(specs)
    first = N.sample_noise_rows(items, 4, np.random.default_rng(0))["a"]
    items[0] = other[0]
    second = N.sample_noise_rows(items, 4, np.random.default_rng(0))["a"]
    np.testing.assert_array_equal(first, a)
    np.testing.assert_array_equal(second, b)
    assert not np.array_equal(first, second)


def test_many_spec_sets_keep_the_cache_bounded():
    for i in range(3 * N._MAX_PLANS):
        N.sample_noise_rows((NoiseSpec(f"n{i}", "uniform", (3,)),), 1, np.random.default_rng(i))
    assert len(N._PLANS) <= N._MAX_PLANS
