"""`evaluate` scores through the runtime's own ``predict`` (issue 20): its results carry the
runtime's ``input_flags`` and ``bundle_digest``, and do not depend on the runtime's ``max_batch``
(the old hand-stitched chunks, reseeded per chunk, depended on the chunk size)."""
import numpy as np
import pytest

from edgeuq.evaluate import evaluate_sets
from edgeuq_runtime import UncertaintyRuntime
from test_uq_evaluate import signal_bundle  # noqa: F401  (the tiny 3-class signal bundle fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FIELDS = ("probs", "total", "aleatoric", "epistemic", "confidence")


class _Set:
    def __init__(self, x, y):
        self.x, self.y = x, y


@pytest.fixture(scope="module")
def bundle(signal_bundle):
    return signal_bundle


@pytest.fixture(scope="module")
def data():
    x = np.random.default_rng(0).standard_normal((11, 128)).astype(np.float32)
    x[4] = 0.5                                   # a flat window (a dead sensor)
    return _Set(x, np.arange(11) % 3)


def test_results_equal_the_runtimes_own_predict_for_every_max_batch(bundle, data):
    want = UncertaintyRuntime(bundle).predict(data.x, samples=5, seed=3)      # the reference: one predict
    for max_batch in (1, 4, 7, None):
        got = evaluate_sets(bundle, {"s": data}, samples=5, seed=3, progress=False, max_batch=max_batch)["s"].result
        for name in FIELDS:
            g, w = getattr(got, name), getattr(want, name)
            # the flat window (row 4) carries no numbers (NaN) in both; every other row agrees
            assert np.array_equal(np.isnan(g), np.isnan(w)), (max_batch, name)
            ok = ~np.isnan(w)
            assert ok.sum() == ok.size - (ok.size // 11), (max_batch, name)     # only row 4 is NaN
            err = float(np.max(np.abs(g[ok] - w[ok])))
            assert err <= 1e-5, (max_batch, name, err)
        assert np.array_equal(got.prediction, want.prediction)
        assert got.samples.shape == want.samples.shape == (5, 11, 3)


def test_results_carry_input_flags_and_the_bundle_digest(bundle, data):
    ev = evaluate_sets(bundle, {"s": data}, samples=5, seed=3, progress=False)["s"]
    rt = UncertaintyRuntime(bundle)
    assert ev.result.bundle_digest is not None and ev.result.bundle_digest == rt.bundle_digest
    assert ev.result.input_flags is not None and len(ev.result.input_flags) == 11
    flagged = [i for i, f in enumerate(ev.result.input_flags) if f]
    assert flagged == [4] and "flat" in ev.result.input_flags[4]
    assert ev.flagged == 1
