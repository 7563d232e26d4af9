"""The one fixed-batch loop (edgeuq_runtime.batching): every call sees exactly ``batch`` rows,
padded rows never reach the outputs, and results equal one row-at-a-time reference."""
import numpy as np
import pytest

from edgeuq_runtime.batching import run_fixed_batch


def _graph(batch, seen):
    w = np.arange(12, dtype=np.float32).reshape(3, 4)

    def call(arrays):
        x, y = arrays
        seen.append(x.shape[0])
        if batch is not None:
            assert x.shape[0] == y.shape[0] == batch
        return [x @ w + y[:, :1], (x * x).sum(axis=1)]

    return call


@pytest.mark.parametrize("n,batch", [(1, 1), (7, 3), (9, 3), (5, 8), (6, None)])
def test_outputs_equal_a_row_by_row_reference_for_any_batch(n, batch):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, 3)).astype(np.float32)
    y = rng.standard_normal((n, 2)).astype(np.float32)
    seen = []
    got = run_fixed_batch(_graph(batch, seen), [x, y], batch)
    ref = [np.concatenate(v) for v in zip(*[_graph(None, [])([x[i:i + 1], y[i:i + 1]]) for i in range(n)])]
    assert [g.shape for g in got] == [r.shape for r in ref]
    for g, r in zip(got, ref):
        err = float(np.max(np.abs(g - r)))
        assert err <= 1e-5, err
    assert len(seen) == (1 if batch is None else -(-n // batch))


def test_bad_batch_and_no_rows_are_refused():
    with pytest.raises(ValueError, match="batch"):
        run_fixed_batch(_graph(None, []), [np.zeros((2, 3), np.float32)] * 2, 0)
    with pytest.raises(ValueError, match="no rows"):
        run_fixed_batch(_graph(2, []), [np.zeros((0, 3), np.float32)] * 2, 2)


def test_planned_buckets_equal_the_row_by_row_reference_and_refuse_a_plan_that_misses_rows():
    from edgeuq_runtime.batching import run_planned

    rng = np.random.default_rng(3)
    x = rng.standard_normal((11, 3)).astype(np.float32)
    y = rng.standard_normal((11, 2)).astype(np.float32)
    calls = []

    def call(arrays, key):
        calls.append((key, arrays[0].shape[0]))
        return _graph(None, [])(arrays)

    plan = [("b8", 8, 8), ("b4", 4, 3)]
    got = run_planned(call, [x, y], plan)
    ref = [np.concatenate(v) for v in zip(*[_graph(None, [])([x[i:i + 1], y[i:i + 1]]) for i in range(11)])]
    assert calls == [("b8", 8), ("b4", 4)]
    for g, r in zip(got, ref):
        err = float(np.max(np.abs(g - r)))
        assert err <= 1e-5, err
    with pytest.raises(ValueError, match="covers 10 rows"):
        run_planned(call, [x, y], [("b8", 8, 8), ("b4", 4, 2)])
    with pytest.raises(ValueError, match="cannot hold"):
        run_planned(call, [x, y], [("b4", 4, 11)])
