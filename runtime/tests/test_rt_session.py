"""UncertaintyRuntime: sampling, seeding, s-major tiling, chunking, deterministic mode, errors."""
from __future__ import annotations

import numpy as np
import pytest

from edgeuq_runtime import (BackendError, InputError, ManifestError, NoiseSpec, UncertaintyRuntime,
                            decompose, sample_noise_tiled)
from rt_helpers import CLASSES, C, F, L, entropy, softmax


@pytest.fixture
def rt(tiny):
    return UncertaintyRuntime(tiny.dir, seed=0)


def test_properties(rt, tiny):
    assert rt.manifest == tiny.manifest
    assert rt.class_names == CLASSES and rt.input_length == L and rt.default_samples == 16
    assert rt.max_batch == 1024 and "tiny-har" in repr(rt)


def test_shapes_and_default_samples(rt, windows):
    r = rt.predict(windows)
    assert r.samples.shape == (16, 5, C) and r.num_samples == 16
    assert r.probs.shape == (5, C) and r.prediction.shape == (5,)
    np.testing.assert_allclose(r.samples.sum(-1), 1.0)
    assert r.labels()[0] in CLASSES
    assert rt.predict(windows[0]).samples.shape == (16, 1, C)  # a single window is a batch of one


def test_samples_differ(rt, windows):
    r = rt.predict(windows, samples=8)
    assert not np.allclose(r.samples[0], r.samples[1])
    assert len({r.samples[s].tobytes() for s in range(8)}) == 8
    assert np.all(r.epistemic > 0)


def test_seed_reproducibility(rt, windows):
    a = rt.predict(windows, samples=6, seed=42)
    b = rt.predict(windows, samples=6, seed=42)
    c = rt.predict(windows, samples=6, seed=43)
    np.testing.assert_array_equal(a.samples, b.samples)
    assert not np.allclose(a.samples, c.samples)


def test_session_generator_advances_and_is_seeded(tiny, windows):
    r1, r2 = UncertaintyRuntime(tiny.dir, seed=5), UncertaintyRuntime(tiny.dir, seed=5)
    first, second = r1.predict(windows, samples=4), r1.predict(windows, samples=4)
    assert not np.allclose(first.samples, second.samples)  # advanced between calls
    np.testing.assert_array_equal(first.samples, r2.predict(windows, samples=4).samples)
    # a per-call seed overrides the session's and does not consume the session's generator
    r3 = UncertaintyRuntime(tiny.dir, seed=99)
    np.testing.assert_array_equal(r3.predict(windows, samples=4, seed=5).samples, first.samples)
    r4 = UncertaintyRuntime(tiny.dir, seed=5)
    r4.predict(windows, samples=4, seed=123)
    np.testing.assert_array_equal(r4.predict(windows, samples=4).samples, first.samples)


def test_s_major_tiling_matches_manual_numpy(rt, tiny, windows):
    S, B, seed = 7, windows.shape[0], 11
    noise = sample_noise_tiled(tiny.manifest.noise, S, B, np.random.default_rng(seed))  # the documented draw
    mask = noise["mask_0"]
    feats = tiny.features(windows)
    expected = np.empty((S, B, C))
    for s in range(S):
        for b in range(B):  # row s*B + b is sample s of input b
            expected[s, b] = softmax(tiny.logits(feats[b], mask[s * B + b]))
    r = rt.predict(windows, samples=S, seed=seed)
    np.testing.assert_allclose(r.samples, expected, rtol=1e-5, atol=1e-6)
    # the stages agree with the same arithmetic
    np.testing.assert_allclose(rt.trunk_features(windows), feats, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rt.head_logits(np.tile(feats, (S, 1)), noise),
                               tiny.logits(np.tile(feats, (S, 1)), mask), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("max_batch", [1, 2, 5, 10, 34])
def test_chunked_equals_unchunked(tiny, windows, max_batch):
    S, B = 7, windows.shape[0]
    full = UncertaintyRuntime(tiny.dir).predict(windows, samples=S, seed=3)
    small = UncertaintyRuntime(tiny.dir, max_batch=max_batch)
    calls = []
    run = small._head.run
    small._head.run = lambda feeds: calls.append(len(feeds["features"])) or run(feeds)
    chunked = small.predict(windows, samples=S, seed=3)
    assert len(calls) > 1 and max(calls) <= max_batch and sum(calls) == S * B
    np.testing.assert_array_equal(chunked.samples, full.samples)
    np.testing.assert_array_equal(chunked.epistemic, full.epistemic)


def test_deterministic_is_noise_free(rt, tiny, windows):
    r = rt.deterministic(windows)
    expected = softmax(tiny.features(windows) @ tiny.V)
    assert r.samples.shape == (1, 5, C)
    np.testing.assert_allclose(r.probs, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(r.epistemic, 0.0)
    np.testing.assert_allclose(r.total, entropy(expected), rtol=1e-5)
    np.testing.assert_array_equal(rt.deterministic(windows).probs, r.probs)  # no randomness at all


def test_decomposition_identities(rt, windows):
    r = rt.predict(windows, samples=32, seed=1)
    np.testing.assert_allclose(r.total, r.aleatoric + r.epistemic, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(r.total, entropy(r.samples.mean(0)), rtol=1e-12)
    np.testing.assert_allclose(r.aleatoric, entropy(r.samples).mean(0), rtol=1e-12)
    assert np.all(r.epistemic >= 0) and np.all(r.epistemic > 1e-6)
    same = decompose(np.repeat(r.samples[:1], 10, axis=0))
    np.testing.assert_allclose(same.epistemic, 0.0, atol=1e-12)
    np.testing.assert_allclose(same.total, same.aleatoric, atol=1e-12)


def test_float64_input_accepted(rt, windows):
    a = rt.predict(windows.astype(np.float64), samples=3, seed=0)
    b = rt.predict(windows, samples=3, seed=0)
    np.testing.assert_allclose(a.samples, b.samples, rtol=1e-6)


@pytest.mark.parametrize("make_x, match", [
    (lambda w: w[:, :10], r"must have 16 samples, got shape \(5, 10\)"),
    (lambda w: w[None], r"must have shape \(16,\) or \(batch, 16\), got \(1, 5, 16\)"),
    (lambda w: (w * 100).astype(np.int16), r"dtype must be a real floating type.*int16"),
    (lambda w: np.where(np.arange(L) == 3, np.nan, w).astype(np.float32), r"non-finite values \(5 NaN, 0 inf\)"),
    (lambda w: np.where(np.arange(L) == 3, np.inf, w).astype(np.float32), r"non-finite values \(0 NaN, 5 inf\)"),
    (lambda w: w[:0], r"input batch is empty"),
    (lambda w: w.tolist()[0][:3], r"must have 16 samples"),
    (lambda w: "not an array", r"must be a numpy array"),
])
def test_bad_inputs(rt, windows, make_x, match):
    with pytest.raises(InputError, match=match):
        rt.predict(make_x(windows))
    with pytest.raises(InputError, match=match):
        rt.deterministic(make_x(windows))


@pytest.mark.parametrize("samples", [0, -3, 2.0, True, "4"])
def test_bad_samples(rt, windows, samples):
    with pytest.raises(InputError, match=r"samples must be an integer >= 1"):
        rt.predict(windows, samples=samples)


def test_bad_seed_and_max_batch(tiny, rt, windows):
    with pytest.raises(InputError, match=r"seed must be None or a non-negative integer"):
        rt.predict(windows, seed=-1)
    with pytest.raises(InputError, match=r"max_batch must be an integer >= 1"):
        UncertaintyRuntime(tiny.dir, max_batch=0)


def test_head_logits_checks_noise(rt, windows):
    feats = rt.trunk_features(windows)
    with pytest.raises(InputError, match=r"noise inputs must be exactly \['mask_0'\]"):
        rt.head_logits(feats, {})
    with pytest.raises(InputError, match=r"noise 'mask_0' must have shape \(5, 8\)"):
        rt.head_logits(feats, {"mask_0": np.ones((4, F), np.float32)})


def test_graph_names_must_match_manifest(build_bundle):
    bad = build_bundle(trunk_input="x")  # graph input 'x', manifest says 'signal'
    with pytest.raises(ManifestError, match=r"trunk graph 'trunk.onnx' has inputs \['x'\].*declares "
                                            r"graphs.trunk.inputs \['signal'\]"):
        UncertaintyRuntime(bad.dir)


def test_noise_shape_must_match_graph(build_bundle):
    bad = build_bundle(noise=(NoiseSpec("mask_0", "dropout_mask", (4,), {"p": 0.5}),))
    with pytest.raises(ManifestError, match=r"head graph input 'mask_0' has shape \[None, 8\]"):
        UncertaintyRuntime(bad.dir)


def test_corrupt_graph_without_verify_is_backend_error(tiny):
    (tiny.dir / "trunk.onnx").write_bytes(b"\x00garbage" * 8)
    with pytest.raises(BackendError, match=r"could not load graph 'trunk.onnx'"):
        UncertaintyRuntime(tiny.dir, verify=False)


def test_unknown_backend_in_manifest(build_bundle):
    odd = build_bundle(backend="tflite")
    with pytest.raises(BackendError, match=r"unknown backend 'tflite'"):
        UncertaintyRuntime(odd.dir)
