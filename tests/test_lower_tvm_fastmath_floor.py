"""``fast_exp`` without ``floor`` for CPU targets whose vector unit has none (generic x86-64 =
SSE2, 32-bit ARM): which targets take it, that it computes what TVM's ``fast_exp`` computes
(against float64 ``np.exp`` and against ``topi.fast_exp``), that its softmax is still a softmax
the row schedule fits, and that the compiled code no longer calls ``floorf``."""
from __future__ import annotations

import numpy as np
import pytest
from require_extras import require_extra


def _target(name):
    from edgeuq.catalog import get_target
    from edgeuq.lower.tvm.targets import tvm_target

    return tvm_target(get_target(name), num_cores=1)


def _run(func, x, target="x86-64"):
    import tvm

    lib = tvm.compile(func, target=_target(target))
    out = tvm.runtime.tensor(np.zeros_like(x), tvm.cpu())
    lib["main"](tvm.runtime.tensor(x, tvm.cpu()), out)
    return out.numpy(), lib


@pytest.mark.parametrize("name, lacks", [("x86-64", True), ("x86-64-avx2", False), ("x86-64-avx512", False),
                                         ("cortex-a9", True), ("cortex-a72", False), ("cortex-a53", False),
                                         ("cuda-sm87", False)])
def test_targets_without_a_vector_floor(name, lacks):
    require_extra("tvm", "tvm")
    from edgeuq.lower.tvm.fastmath import lacks_vector_floor

    assert lacks_vector_floor(_target(name)) is lacks
    assert lacks_vector_floor(None) is False


def test_exp_without_floor_matches_numpy_and_tvms_fast_exp_and_calls_no_floorf():
    """Over the whole clamped range, integers and half-integers of x*log2(e) included (where a
    wrong floor would be off by a factor of 2): relative error to float64 exp <= 1e-5 (what TVM's polynomial gives), and within
    1e-6 of topi.fast_exp; below the clamp both give the clamp's value. The generic library of
    topi.fast_exp calls floorf; this one does not."""
    require_extra("tvm", "tvm")
    from tvm import te, topi

    from edgeuq.lower.tvm.fastmath import fast_exp_without_floor

    ln2 = np.log(2.0)
    v = np.concatenate([np.linspace(-87.0, 88.0, 20001), np.arange(-120, 127) * ln2,
                        (np.arange(-120, 127) + 0.5) * ln2, [0.0, -0.0, 1e-8, -1e-8]]).astype(np.float32)
    x = te.placeholder(v.shape, name="x")
    got, lib = _run(te.create_prim_func([x, fast_exp_without_floor(x)]), v)
    ref, ref_lib = _run(te.create_prim_func([x, topi.fast_exp(x)]), v)
    want = np.exp(v.astype(np.float64))
    rel = float(np.max(np.abs(got - want) / want))
    assert rel <= 1e-5, rel
    same = float(np.max(np.abs(got.astype(np.float64) - ref) / want))
    assert same <= 1e-6, same
    assert "floorf" not in lib.mod.inspect_source("asm")
    assert "floorf" in ref_lib.mod.inspect_source("asm"), "the reason for the variant: topi's calls floorf here"


@pytest.mark.parametrize("shape, axis", [((8, 4, 64), -1), ((3, 17, 5), 1)])
def test_softmax_without_floor_is_a_softmax_and_takes_the_row_schedule(shape, axis):
    require_extra("tvm", "tvm")
    from tvm import te

    from edgeuq.lower.tvm.fastmath import softmax_without_floor
    from edgeuq.lower.tvm.softmax_schedule import schedule_softmax_rows

    rng = np.random.default_rng(1)
    a = (rng.standard_normal(shape) * 6).astype(np.float32)
    x = te.placeholder(shape, name="x")
    func = te.create_prim_func([x, softmax_without_floor(x, axis)])
    z = a.astype(np.float64)
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    want = e / e.sum(axis=axis, keepdims=True)
    got, _ = _run(func, a)
    assert float(np.abs(got - want).max()) <= 2e-6
    sch = schedule_softmax_rows(func, 4)
    assert (sch is not None) is (axis in (-1, len(shape) - 1)), "the row schedule fits the last axis only"
    if sch is not None:
        got, lib = _run(sch.mod, a)
        assert float(np.abs(got - want).max()) <= 2e-6
        assert "floorf" not in lib.mod.inspect_source("asm")
    with pytest.raises(ValueError):
        softmax_without_floor(x, len(shape))


@pytest.mark.parametrize("name, floor_free", [("x86-64", True), ("x86-64-avx2", False)])
def test_the_legalization_picks_the_floor_free_softmax_only_where_the_target_lacks_a_vector_floor(name, floor_free):
    require_extra("tvm", "tvm")
    import tvm
    from tvm import relax

    from edgeuq.lower.tvm.fastmath import fast_math_legalize

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((4, 32), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.nn.softmax(x, axis=-1))
        bb.emit_func_output(out)
    with _target(name):
        mod = fast_math_legalize()(bb.get())
    tir = [f.script() for _, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert len(tir) == 1 and "T_fast_exp" in tir[0]
    assert ("T.floor(" not in tir[0]) is floor_free
