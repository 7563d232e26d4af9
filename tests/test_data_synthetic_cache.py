"""The content-addressed cache of the synthetic generator's records (edgeuq.data.synthetic_cache)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from edgeuq.data import SyntheticBearingConfig, synthetic_records
from edgeuq.data.synthetic_cache import SyntheticCacheError, cached_synthetic_records, records_digest

CFG = SyntheticBearingConfig(fs=12000.0, duration_s=0.25, loads=(0.0, 2.0), seed=5)
KINDS = ("normal", "inner_race")


def test_a_hit_returns_the_generators_records(tmp_path):
    """First call generates (miss) and stores; second reads back (hit) the same records as a fresh,
    uncached generation: same signals (stored bytes round-trip), labels, rates and metadata."""
    first, hit1 = cached_synthetic_records(CFG, KINDS, tmp_path)
    again, hit2 = cached_synthetic_records(CFG, KINDS, tmp_path)
    fresh = synthetic_records(CFG, kinds=KINDS)
    assert (hit1, hit2) == (False, True)
    assert len(again) == len(fresh) == len(first) > 0
    for a, f in zip(again, fresh):
        np.testing.assert_array_equal(a.signal, f.signal)
        assert a.signal.dtype == np.float32 and a.label == f.label and a.fs == f.fs
        assert dict(a.meta) == dict(f.meta)


def test_the_digest_follows_every_input(tmp_path):
    base = records_digest(CFG, KINDS)
    assert records_digest(CFG, KINDS) == base
    assert records_digest(replace(CFG, seed=6), KINDS) != base
    assert records_digest(replace(CFG, duration_s=0.5), KINDS) != base
    assert records_digest(replace(CFG, noise_std=CFG.noise_std * 2), KINDS) != base
    assert records_digest(CFG, ("normal",)) != base
    # a changed config is a new entry, never the old one read back
    cached_synthetic_records(CFG, KINDS, tmp_path)
    other, hit = cached_synthetic_records(replace(CFG, seed=6), KINDS, tmp_path)
    assert not hit
    assert not np.array_equal(other[0].signal, synthetic_records(CFG, kinds=KINDS)[0].signal)


def test_a_damaged_entry_raises_naming_the_file(tmp_path):
    cached_synthetic_records(CFG, KINDS, tmp_path)
    npz = tmp_path / f"{records_digest(CFG, KINDS)}.npz"
    with np.load(npz) as z:
        sig, off = z["signal"].copy(), z["offsets"]
    sig[10] += 1.0
    np.savez(npz, signal=sig, offsets=off)
    with pytest.raises(SyntheticCacheError, match=npz.name):
        cached_synthetic_records(CFG, KINDS, tmp_path)
