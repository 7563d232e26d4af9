"""Regression tests for issue 9, inputs and arguments: exact normalisation, input-quality flags,
bounded threads / samples / memory, the sample_logits contract and the bundle identity in results.

Every reference here is computed independently of the runtime (float64 or exact rational
arithmetic, closed forms)."""
from __future__ import annotations

import hashlib
import time
import warnings

import numpy as np
import pytest

from edgeuq_runtime import (MAX_SAMPLES, InputError, InputSpec, ManifestError, UncertaintyRuntime, input_quality,
                            sample_noise_tiled)
from edgeuq_runtime.preprocess import zscore_windows
from rt_helpers import CLASSES, C, L, exact_zscore, ref_flag, ref_noise_rows, softmax


@pytest.fixture
def rt(tiny):
    return UncertaintyRuntime(tiny.dir, seed=0)


def reference_probs(tiny, x, samples, seed):
    """(S, B, C) float64 probabilities: exact z-score, float64 graphs, the runtime's noise contract."""
    x = np.atleast_2d(x)
    z = np.stack([exact_zscore(r) for r in x])
    feats = z @ tiny.W.astype(np.float64)
    mask = sample_noise_tiled(tiny.manifest.noise, samples, len(x), np.random.default_rng(seed))["mask_0"]
    logits = (np.tile(feats, (samples, 1)) * mask) @ tiny.V.astype(np.float64)
    return softmax(logits).reshape(samples, len(x), C)


def predict_no_warnings(rt, x, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any RuntimeWarning escaping the runtime fails the test
        return rt.predict(x, **kw)


# ---------------------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize("scale", [1e19, 1e30, 1e37, 1e-30, 1e-40])
def test_float32_scaled_windows_are_normalised_exactly(rt, tiny, windows, scale):
    """A window scaled by a huge (or tiny) factor is the same window after z-scoring: same answer,
    equal to the exact reference, and no overflow warning."""
    x = (windows.astype(np.float64) * scale).astype(np.float32)
    assert np.isfinite(x).all()
    r = predict_no_warnings(rt, x, samples=6, seed=1)
    np.testing.assert_allclose(r.samples, reference_probs(tiny, x, 6, 1), rtol=1e-4, atol=2e-5)
    if scale >= 1e-30:  # not subnormal: the scaled window is the same signal
        base = rt.predict(windows, samples=6, seed=1)
        assert np.array_equal(r.prediction, base.prediction)
        np.testing.assert_allclose(r.samples, base.samples, rtol=1e-4, atol=2e-5)


def test_windows_near_float32_max_are_answered_not_blamed_on_the_model(rt, tiny, windows):
    x = (windows / np.abs(windows).max(axis=1, keepdims=True) * 3.4e38).astype(np.float32)
    assert np.isfinite(x).all() and np.abs(x).max() > 3e38
    r = predict_no_warnings(rt, x, samples=4, seed=2)
    np.testing.assert_allclose(r.samples, reference_probs(tiny, x, 4, 2), rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("offset", [1e7, 1e9, -3e7])
def test_float64_dc_offset_keeps_the_signal(rt, tiny, windows, offset):
    """A raw reading with a large DC offset (counts around 1e7) keeps its class: float64 input is
    not rounded to float32 before the mean is removed."""
    x = windows.astype(np.float64) + offset
    r = predict_no_warnings(rt, x, samples=6, seed=3)
    np.testing.assert_allclose(r.samples, reference_probs(tiny, x, 6, 3), rtol=1e-4, atol=2e-5)
    base = rt.predict(windows.astype(np.float64), samples=6, seed=3)
    assert np.array_equal(r.prediction, base.prediction)
    np.testing.assert_allclose(r.samples, base.samples, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("offset", [1e5, 1e6, 3e7])
def test_float32_dc_offset_is_exact_for_the_values_given(rt, tiny, windows, offset):
    """float32 windows with offsets >= 1e5: the mean is not accumulated in float32, so the result is
    the exact z-score of the float32 values (whatever the offset left of the signal)."""
    x = (windows * 100 + offset).astype(np.float32)
    z = zscore_windows(x)
    ref = np.stack([exact_zscore(r) for r in x])
    assert float(np.max(np.abs(z - ref))) <= 1e-6
    r = predict_no_warnings(rt, x, samples=5, seed=4)
    np.testing.assert_allclose(r.samples, reference_probs(tiny, x, 5, 4), rtol=1e-4, atol=2e-5)


def test_float64_extremes_and_subnormals_are_exact():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, L))
    for x in (w * 1e300, w * 1e-300, w * 5e-320, w + 1e15, np.where(np.arange(L) == 3, 1.7e308, 0.0)[None]):
        assert np.isfinite(x).all()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            z = zscore_windows(x)
        ref = np.stack([exact_zscore(r) for r in x])
        assert float(np.max(np.abs(z - ref))) <= 1e-6, x


def test_longdouble_beyond_float64_is_an_input_error(rt):
    if np.finfo(np.longdouble).max <= np.finfo(np.float64).max:
        pytest.skip("long double is float64 on this platform")
    x = np.ones((1, L), np.longdouble)
    x[0, 3] = np.longdouble(10) ** 400
    with pytest.raises(InputError, match=r"not representable as float64"):
        rt.predict(x)
    ok = np.random.default_rng(1).standard_normal((2, L)).astype(np.longdouble)
    assert rt.predict(ok, samples=2, seed=0).samples.shape == (2, 2, C)


def test_normalization_none_refuses_values_beyond_float32(build_bundle):
    b = build_bundle(input=InputSpec(length=L, sample_rate_hz=50.0, normalization="none"))
    rt = UncertaintyRuntime(b.dir)
    with pytest.raises(InputError, match=r"not representable as float32|beyond the float32 range"):
        rt.predict(np.full((1, L), 1e39))


# ---------------------------------------------------------------------------------------- quality flags


@pytest.mark.parametrize("value, dtype", [(0.0, np.float32), (3.3, np.float32), (-7e10, np.float64),
                                          (1e38, np.float32), (1e-30, np.float64), (0.1, np.float16)])
def test_constant_window_is_flagged_flat_never_diagnosed(rt, tiny, value, dtype):
    x = np.full((2, L), value, dtype=dtype)
    x[1] = np.random.default_rng(0).standard_normal(L)  # row 1 is usable
    r = predict_no_warnings(rt, x, samples=8, seed=0)
    assert r.input_flags == ("flat", "")
    assert r.labels()[0] is None and r.labels()[1] in CLASSES
    rows = r.to_rows()
    assert rows[0]["prediction"] is None and rows[0]["class_index"] is None and rows[0]["input_flag"] == "flat"
    assert rows[1]["input_flag"] is None and rows[1]["prediction"] in CLASSES
    # the flat row is evaluated on an all-zero window, whatever the constant and its rounding
    zero = rt.predict(np.zeros((1, L)), samples=8, seed=0)
    np.testing.assert_array_equal(r.samples[:, 0], zero.samples[:, 0])
    assert list(r.diagnosed) == [False, True]


def test_clipped_window_is_flagged(rt):
    t = np.linspace(0, 4 * np.pi, L)
    clipped = np.clip(3 * np.sin(t), -1.0, 1.0)
    fine = np.sin(t + 0.3) + 0.01 * np.arange(L)
    r = rt.predict(np.stack([clipped, fine]), samples=2, seed=0)
    assert r.input_flags == ("clipped", "")
    assert r.labels()[0] is None


def test_input_quality_rules_against_a_plain_loop():
    rng = np.random.default_rng(5)
    x = rng.integers(-2, 3, size=(400, L)).astype(np.float64)  # many ties: exercises both rules
    x[:50] = rng.standard_normal((50, L))
    x[50] = 4.0

    assert input_quality(x) == tuple(ref_flag(list(r)) for r in x)
    assert {"flat", "clipped", ""} <= set(input_quality(x))


def test_masked_nan_is_refused(rt, windows):
    x = np.ma.masked_invalid(np.where(np.arange(L) == 4, np.nan, windows))
    with pytest.raises(InputError, match=r"masked array with 5 masked values"):
        rt.predict(x)
    unmasked = np.ma.masked_array(windows, mask=np.zeros_like(windows, dtype=bool))
    np.testing.assert_array_equal(rt.predict(unmasked, samples=2, seed=0).samples,
                                  rt.predict(windows, samples=2, seed=0).samples)
    hidden = np.ma.masked_array(np.where(np.arange(L) == 4, np.nan, windows), mask=False)
    with pytest.raises(InputError, match=r"non-finite"):
        rt.predict(hidden)


# ---------------------------------------------------------------------------------------- bounded arguments


@pytest.mark.parametrize("threads", [1000, 1_000_000, 257, 0, -1, 2.0, True, "4"])
def test_threads_are_bounded_and_refused_quickly(tiny, threads):
    t0 = time.perf_counter()
    with pytest.raises(InputError, match=r"threads must be an integer >= 1"):
        UncertaintyRuntime(tiny.dir, threads=threads)
    assert time.perf_counter() - t0 < 10  # refused before any thread pool is built


@pytest.mark.parametrize("samples", [MAX_SAMPLES + 1, 10 ** 5, 2 ** 63, 10 ** 30])
def test_absurd_samples_are_refused(rt, windows, samples):
    with pytest.raises(InputError, match=rf"samples must be an integer >= 1 and <= {MAX_SAMPLES}"):
        rt.predict(windows, samples=samples)
    with pytest.raises(InputError, match=r"samples must be"):
        rt.sample_logits(rt.trunk_features(windows), samples, np.random.default_rng(0))


@pytest.mark.parametrize("value", [MAX_SAMPLES + 1, 10 ** 5, 2 ** 63])
def test_absurd_default_samples_are_refused(build_bundle, value):
    with pytest.raises(ManifestError, match=r"default_samples: must be an integer <= 4096"):
        build_bundle(default_samples=value)


def test_max_batch_bounds_every_graph_run_and_never_changes_the_result(tiny):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((50, L))
    full = UncertaintyRuntime(tiny.dir).predict(x, samples=9, seed=7)
    for max_batch in (16, 7, 100, 1):
        small = UncertaintyRuntime(tiny.dir, max_batch=max_batch)
        sizes = {"trunk": [], "head": []}
        for role in sizes:
            runner = getattr(small, f"_{role}")
            orig = runner.run
            runner.run = (lambda o, key: lambda feeds: sizes[key].append(len(next(iter(feeds.values())))) or o(feeds))(
                orig, role)
        r = small.predict(x, samples=9, seed=7)
        assert max(sizes["trunk"]) <= max_batch and sum(sizes["trunk"]) == 50
        assert max(sizes["head"]) <= max_batch and sum(sizes["head"]) == 9 * 50
        np.testing.assert_array_equal(r.samples, full.samples)
        det = small.deterministic(x)
        assert max(sizes["head"][-len(range(0, 50, max_batch)):]) <= max_batch
        np.testing.assert_allclose(det.probs, UncertaintyRuntime(tiny.dir).deterministic(x).probs, rtol=1e-6)


def test_sample_logits_is_the_predict_contract(rt, tiny, windows):
    """predict = sample_logits on the trunk features; the noise is the documented tiled draw; and
    k1 then k2 samples from one generator are exactly k1 + k2 samples."""
    feats = rt.trunk_features(windows)
    whole = rt.sample_logits(feats, 11, np.random.default_rng(9))
    assert whole.shape == (11, len(windows), C)
    g = np.random.default_rng(9)
    parts = np.concatenate([rt.sample_logits(feats, 4, g), rt.sample_logits(feats, 7, g)], axis=0)
    np.testing.assert_array_equal(parts, whole)
    mask = sample_noise_tiled(tiny.manifest.noise, 11, len(windows), np.random.default_rng(9))["mask_0"]
    expected = (np.tile(feats.astype(np.float64), (11, 1)) * mask) @ tiny.V.astype(np.float64)
    np.testing.assert_allclose(whole.reshape(-1, C), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rt.predict(windows, samples=11, seed=9).samples, softmax(whole), rtol=1e-6)
    small = UncertaintyRuntime(tiny.dir, max_batch=3)
    np.testing.assert_array_equal(small.sample_logits(feats, 11, np.random.default_rng(9)), whole)
    with pytest.raises(InputError, match=r"rng must be a numpy Generator"):
        rt.sample_logits(feats, 2, 0)


def test_bundle_digest_is_the_manifest_sha256_and_is_in_every_result(rt, tiny, windows):
    digest = hashlib.sha256((tiny.dir / "manifest.json").read_bytes()).hexdigest()
    assert rt.bundle_digest == digest == rt.bundle.digest
    assert rt.predict(windows, samples=2).bundle_digest == digest
    assert rt.deterministic(windows).bundle_digest == digest


def test_no_noise_leaks_into_float16_or_list_input(rt, windows):
    a = rt.predict(windows.tolist(), samples=3, seed=0)
    b = rt.predict(windows.astype(np.float64), samples=3, seed=0)
    np.testing.assert_array_equal(a.samples, b.samples)
    h = rt.predict(windows.astype(np.float16), samples=3, seed=0)
    assert h.samples.shape == (3, len(windows), C) and np.isfinite(h.samples).all()


@pytest.mark.parametrize("second", ["standard_normal", "uniform"], ids=["mixed-kinds", "one-primitive"])
def test_two_noise_inputs_are_drawn_per_sample_whatever_max_batch(tmp_path, second):
    """With several noise inputs, row s * B + b draws each of them in manifest order, rows in order
    (the documented stream): checked against a brute-force float64 reference, for any
    max_batch, and k1 + k2 samples from one generator equal one call of k1 + k2."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgeuq_runtime import GraphSpec, NoiseSpec, write_bundle
    from rt_helpers import make_manifest, make_trunk

    rng = np.random.default_rng(0)
    W = rng.standard_normal((L, 8)).astype(np.float32)
    V = rng.standard_normal((8, C)).astype(np.float32)
    vi = helper.make_tensor_value_info
    g = helper.make_graph(
        [helper.make_node("Mul", ["features", "mask_0"], ["m"]), helper.make_node("Add", ["m", "eps_1"], ["a"]),
         helper.make_node("MatMul", ["a", "V"], ["logits"])], "head",
        [vi("features", TensorProto.FLOAT, ["N", 8]), vi("mask_0", TensorProto.FLOAT, ["N", 8]),
         vi("eps_1", TensorProto.FLOAT, ["N", 8])], [vi("logits", TensorProto.FLOAT, ["N", C])],
        initializer=[numpy_helper.from_array(V, "V")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "head.onnx"))
    make_trunk(tmp_path / "trunk.onnx", W)
    noise = (NoiseSpec("mask_0", "dropout_mask", (8,), {"p": 0.3}), NoiseSpec("eps_1", second, (8,)))
    m = make_manifest(noise=noise, head=GraphSpec("head.onnx", ("features", "mask_0", "eps_1"), ("logits",)))
    root = write_bundle(tmp_path / "b", m, {"trunk.onnx": tmp_path / "trunk.onnx",
                                            "head.onnx": tmp_path / "head.onnx"}).root
    x = rng.standard_normal((5, L))
    S = 6
    # reference: the documented stream, brute force: per sample, per row, mask words then eps words
    ref = ref_noise_rows(noise, S * 5, np.random.default_rng(4))
    masks = list(ref["mask_0"].reshape(S, 5, 8))
    eps = list(ref["eps_1"].reshape(S, 5, 8))
    z = np.stack([exact_zscore(r) for r in x]) @ W.astype(np.float64)
    expected = softmax(np.stack([(z * mk + e) @ V.astype(np.float64) for mk, e in zip(masks, eps)]))
    tiled = sample_noise_tiled(noise, S, 5, np.random.default_rng(4))
    np.testing.assert_allclose(tiled["mask_0"], np.concatenate(masks), rtol=1e-6)
    np.testing.assert_allclose(tiled["eps_1"], np.concatenate(eps), rtol=1e-5, atol=1e-6)
    for max_batch in (1024, 5, 3, 12):
        rt = UncertaintyRuntime(root, max_batch=max_batch)
        np.testing.assert_allclose(rt.predict(x, samples=S, seed=4).samples, expected, rtol=1e-4, atol=1e-5)
        feats, gen = rt.trunk_features(x), np.random.default_rng(4)
        parts = np.concatenate([rt.sample_logits(feats, 2, gen), rt.sample_logits(feats, 4, gen)])
        np.testing.assert_array_equal(parts, rt.sample_logits(feats, S, np.random.default_rng(4)))
