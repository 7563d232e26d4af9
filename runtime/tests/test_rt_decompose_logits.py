"""``decompose_logits`` (the stream's fused softmax + decomposition) against a brute force in plain
Python floats (math.exp / math.log per entry, 0 log 0 = 0), including logits whose softmax
underflows to exact zeros, and against ``decompose(softmax(...))``."""
import math
import warnings

import numpy as np
import pytest

from edgeuq_runtime.uncertainty import LogitDecomposer, decompose, decompose_logits, softmax


def _brute(logits):
    """(probs, prediction, total, aleatoric, epistemic) entry by entry in Python floats."""
    s_n, b_n, c_n = logits.shape
    probs, total, alea = [], [], []
    for b in range(b_n):
        mean = [0.0] * c_n
        h_sum = 0.0
        for s in range(s_n):
            row = [float(v) for v in logits[s, b]]
            top = max(row)
            e = [math.exp(v - top) for v in row]
            z = math.fsum(e)
            p = [v / z for v in e]
            h_sum += -math.fsum(q * math.log(q) for q in p if q > 0)
            mean = [m + q / s_n for m, q in zip(mean, p)]
        probs.append(mean)
        total.append(-math.fsum(q * math.log(q) for q in mean if q > 0))
        alea.append(h_sum / s_n)
    probs = np.array(probs)
    total, alea = np.array(total), np.array(alea)
    return probs, probs.argmax(1), total, alea, np.maximum(total - alea, 0.0)


def _cases():
    rng = np.random.default_rng(0)
    yield "random", (rng.standard_normal((32, 6, 4)) * 3).astype(np.float32)
    yield "one sample, two classes", rng.standard_normal((1, 3, 2))
    yield "all samples agree", np.repeat(rng.standard_normal((1, 5, 4)) * 2, 8, axis=0)
    big = rng.standard_normal((16, 4, 5)) * 2
    big[:, :, 0] += 900.0                        # every other class's probability underflows to exactly 0
    big[::2, 1, :] = 0.0                         # and a row where half the samples are uniform
    yield "underflowing softmax", big
    yield "large magnitudes", rng.standard_normal((8, 3, 3)) * 1e4
    yield "ties", np.zeros((4, 2, 3))


@pytest.mark.parametrize("name,logits", list(_cases()), ids=[n for n, _ in _cases()])
def test_decompose_logits_equals_brute_force(name, logits):
    got = decompose_logits(logits)
    probs, pred, total, alea, epi = _brute(np.asarray(logits, dtype=np.float64))
    assert np.max(np.abs(got.probs - probs)) <= 1e-12
    assert np.array_equal(got.prediction, pred) or name == "ties"     # exact ties: any top class
    assert np.max(np.abs(got.confidence - probs.max(1))) <= 1e-12
    for a, b in ((got.total, total), (got.aleatoric, alea), (got.epistemic, epi)):
        assert np.max(np.abs(a - b)) <= 1e-11
    assert np.all(got.epistemic >= 0) and np.all(np.isfinite(got.total))
    ref = decompose(softmax(np.asarray(logits, dtype=np.float64), axis=-1))
    for field in ("probs", "total", "aleatoric", "epistemic", "confidence"):
        assert np.max(np.abs(getattr(got, field) - getattr(ref, field))) <= 1e-11, field


def test_decompose_logits_catches_a_wrong_aleatoric_term():
    """Control: the comparison above can fail. Entropy of the mean is not the mean entropy."""
    logits = np.random.default_rng(1).standard_normal((16, 4, 3)) * 3
    got = decompose_logits(logits)
    _, _, total, alea, _ = _brute(logits)
    assert not np.max(np.abs(got.total - alea)) <= 1e-11
    assert np.max(np.abs(got.aleatoric - alea)) <= 1e-11 and np.max(np.abs(got.total - total)) <= 1e-11


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_decompose_logits_refuses_non_finite_logits(bad):
    logits = np.zeros((4, 2, 3))
    logits[2, 1, 0] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        decompose_logits(logits)


def test_decompose_logits_refuses_wrong_shapes():
    for shape in ((4, 3), (0, 2, 3), (4, 2, 1)):
        with pytest.raises(ValueError, match="shape"):
            decompose_logits(np.zeros(shape))


def test_a_kept_decomposer_gives_decompose_logits_values_call_after_call():
    """``LogitDecomposer`` (buffers kept between calls, the stream's one-window path) against a fresh
    ``decompose_logits`` and the brute force, on a sequence of different logits of one shape: no value
    of an earlier call leaks into a later one; ``one`` (B = 1, Python values) equals row 0 of ``summary``."""
    rng = np.random.default_rng(3)
    for shape in ((32, 1, 4), (5, 1, 2), (16, 3, 6)):
        dec = LogitDecomposer(shape)
        for i in range(12):
            scale = (0.1, 1.0, 8.0, 300.0)[i % 4]            # 300: softmax rows underflowing to exact zeros
            logits = (rng.standard_normal(shape) * scale).astype(np.float32)
            ref = decompose_logits(logits)
            probs, pred, total, alea, epi = _brute(logits.astype(np.float64))
            got = dec.summary(logits)
            assert np.array_equal(got.prediction, ref.prediction) and np.array_equal(got.prediction, pred)
            for field, b in (("probs", probs), ("total", total), ("aleatoric", alea), ("epistemic", epi),
                             ("confidence", probs.max(1))):
                assert np.max(np.abs(getattr(got, field) - getattr(ref, field))) <= 1e-12, (shape, i, field)
                assert np.max(np.abs(getattr(got, field) - b)) <= 1e-11, (shape, i, field)
            if shape[1] == 1:
                p, k, conf, tot, al, ep = dec.one(logits)
                assert isinstance(k, int) and k == int(ref.prediction[0])
                assert max(abs(a - b) for a, b in zip(p, ref.probs[0].tolist())) <= 1e-12
                for a, b in ((conf, ref.confidence[0]), (tot, ref.total[0]), (al, ref.aleatoric[0]),
                             (ep, ref.epistemic[0])):
                    assert abs(a - float(b)) <= 1e-12, (shape, i)
                assert ep >= 0.0


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_kept_decomposer_refuses_non_finite_logits(bad):
    dec = LogitDecomposer((8, 1, 3))
    logits = np.random.default_rng(4).standard_normal((8, 1, 3)).astype(np.float32)
    dec.one(logits)
    logits[5, 0, 1] = bad
    for call in (dec.one, dec.summary, decompose_logits):
        with pytest.raises(ValueError, match="NaN or inf"):
            call(logits)


def test_finite_logits_whose_sum_overflows_are_decomposed():
    """The finiteness check of float32 logits sums them (in float64); float64 logits near the largest
    double, whose sum overflows, are checked entry by entry: decomposed, not refused, no warning."""
    logits = np.full((4, 1, 2), 1e308)
    logits[:, 0, 1] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = LogitDecomposer(logits.shape).one(logits)
    assert got[1] == 0 and abs(got[0][0] - 1.0) <= 1e-12 and got[3] >= 0.0
    assert int(decompose_logits(logits).prediction[0]) == 0


def test_a_kept_decomposer_refuses_another_shape():
    dec = LogitDecomposer((8, 1, 3))
    with pytest.raises(ValueError, match="decomposer is for"):
        dec.one(np.zeros((8, 1, 4), np.float32))
    with pytest.raises(ValueError, match="decomposer is for"):
        dec.one(np.zeros((1, 1, 3), np.float32))   # would broadcast into the buffers
    with pytest.raises(ValueError, match="classes >= 2"):
        LogitDecomposer((8, 1, 1))
