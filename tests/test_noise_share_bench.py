"""bench/noise_share.py compares the numpy noise stream with the same noise drawn inside ONNX
Runtime; that comparison is only fair if the in-graph graph draws the same distributions at the
same shapes. Checked here against the closed forms (KS and moments), with negative controls."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

from require_extras import require_extra  # noqa: E402

require_extra("onnxruntime")
stats = require_extra("scipy.stats")

from edgeuq_runtime.noise import NoiseSpec  # noqa: E402


def _bench():
    path = Path(__file__).resolve().parents[1] / "bench" / "noise_share.py"
    spec = importlib.util.spec_from_file_location("noise_share_bench", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_ingraph_noise_has_the_streams_distributions_and_shapes():
    specs = [NoiseSpec("z", "standard_normal", (32, 24)), NoiseSpec("d", "dropout_mask", (4, 8, 8), {"p": 0.1}),
             NoiseSpec("u", "uniform", (5,)), NoiseSpec("c", "categorical", (2, 3), {"k": 3})]
    rows = 16
    draw = _bench().ingraph_noise_session(specs, rows)
    outs = [draw() for _ in range(20)]
    for i, s in enumerate(specs):
        assert outs[0][i].shape == (rows, *s.shape) and outs[0][i].dtype == np.float32
    z = np.concatenate([o[0].ravel() for o in outs]).astype(np.float64)
    crit = math.sqrt(-0.5 * math.log(1e-3 / 2)) / math.sqrt(z.size)
    assert stats.kstest(z, "norm").statistic <= crit
    assert not stats.kstest(1.05 * z, "norm").statistic <= crit
    u = np.concatenate([o[2].ravel() for o in outs]).astype(np.float64)
    assert stats.kstest(u, "uniform").statistic <= math.sqrt(-0.5 * math.log(1e-3 / 2)) / math.sqrt(u.size)
    d = np.concatenate([o[1].ravel() for o in outs]).astype(np.float64)
    assert set(np.unique(d).tolist()) <= {0.0, float(np.float32(1 / 0.9))}
    assert abs(np.mean(d == 0) - 0.1) <= 5 * math.sqrt(0.09 / d.size)
    c = np.concatenate([o[3].reshape(-1, 3) for o in outs])
    assert np.all(c.sum(1) == 1.0) and np.all(np.abs(c.mean(0) - 1 / 3) <= 5 * math.sqrt(2 / 9 / len(c)))
    # fresh draws every call (the session does not replay one sequence per call)
    assert not np.array_equal(outs[0][0], outs[1][0])


def test_stream1_comparator_draws_the_previous_streams_words_and_distributions():
    """The bench's stream-1 comparator is a fair sampler: it takes the previous stream's words per
    row (normals 32 bits each, padded to pairs) and its normals, uniforms and masks have their
    closed-form distributions (KS, rate), so the paired stream 1 / stream 2 ratio compares equals."""
    specs = [NoiseSpec("z", "standard_normal", (33,)), NoiseSpec("u", "uniform", (7,)),
             NoiseSpec("d", "dropout_mask", (16,), {"p": 0.1})]
    rows = 4000
    g = np.random.default_rng(4)
    out = _bench().stream1_rows(specs, rows, g)
    h = np.random.default_rng(4)
    h.bit_generator.random_raw(rows * (17 + 4 + 4))          # 34 normals x 32 bits, 7 x 32, 16 x 16 bits
    assert g.bit_generator.random_raw() == h.bit_generator.random_raw()
    crit = lambda n: math.sqrt(-0.5 * math.log(1e-3 / 2)) / math.sqrt(n)  # noqa: E731
    z = out["z"].ravel().astype(np.float64)
    assert out["z"].shape == (rows, 33) and stats.kstest(z, "norm").statistic <= crit(z.size)
    assert not stats.kstest(1.03 * z, "norm").statistic <= crit(z.size)
    u = out["u"].ravel().astype(np.float64)
    assert stats.kstest(u, "uniform").statistic <= crit(u.size)
    d = out["d"].ravel()
    assert abs(np.mean(d == 0) - 0.1) <= 5 * math.sqrt(0.09 / d.size)


def test_mixed_multiply_comparator_decodes_the_streams_values():
    """The bench's paired before/after of the dropout decode ("mixed-type multiply": one
    np.multiply(keep, scale, dtype=float32) per spec, the plans before they cast and scaled in place)
    is only a fair comparison if it decodes the same stream: the same values as the runtime's
    ``sample_noise_rows`` and as a plain-Python decode of the documented layout, for grouped 8-bit runs,
    a threshold change, 16-bit masks and other kinds in between, and the same words consumed."""
    from edgeuq_runtime.noise import sample_noise_rows, words_per_row

    specs = (NoiseSpec("a", "dropout_mask", (3, 5), {"p": 0.1}), NoiseSpec("b", "dropout_mask", (7,), {"p": 0.1}),
             NoiseSpec("c", "dropout_mask", (4,), {"p": 0.3}), NoiseSpec("z", "standard_normal", (3,)),
             NoiseSpec("e", "dropout_mask", (9,), {"p": 0.01}), NoiseSpec("f", "dropout_mask", (5,), {"p": 0.01}),
             NoiseSpec("u", "uniform", (2,)), NoiseSpec("k", "categorical", (3,), {"k": 3}))
    rows = 6
    got = _bench().stream2_mixed_multiply_rows(specs, rows, np.random.default_rng(11))
    ref = sample_noise_rows(specs, rows, np.random.default_rng(11))
    assert list(got) == [s.name for s in specs]
    for s in specs:
        assert got[s.name].shape == (rows, *s.shape) and got[s.name].dtype == np.float32, s.name
        err = float(np.max(np.abs(got[s.name] - ref[s.name])))
        assert err <= 0.0, (s.name, err)
    # plain Python for the masks: 8 bits per element at p = 0.1 / 0.3 (t = 26 / 77), 16 bits at p = 0.01 (t = 655)
    raw = np.random.default_rng(11).bit_generator.random_raw(rows * words_per_row(specs)).reshape(rows, -1)
    width = {"a": (0, 15, 8, 26), "b": (2, 7, 8, 26), "c": (3, 4, 8, 77), "e": (5, 9, 16, 655), "f": (8, 5, 16, 655)}
    for name, (word, n, bits, t) in width.items():
        for r in range(rows):
            data = b"".join(int(w).to_bytes(8, "little") for w in raw[r, word:])
            vals = [int.from_bytes(data[i * bits // 8:(i + 1) * bits // 8], "little") for i in range(n)]
            want = [2 ** bits / (2 ** bits - t) if v >= t else 0.0 for v in vals]
            err = float(np.max(np.abs(got[name][r].ravel().astype(np.float64) - np.array(want))))
            assert err <= 1e-6, (name, r, err)
