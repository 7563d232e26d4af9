"""The hand-written row schedule for the CPU softmax (:mod:`edgeuq.lower.tvm.softmax_schedule`):
what it fits, that the scheduled kernel still computes softmax (against NumPy in float64), that
it is the schedule it claims (row-wise, vectorized, reductions split into vector lanes), and
where the lowering applies it (only to softmax kernels no tuning record scheduled, CPU only)."""
from __future__ import annotations

import re

import numpy as np
import pytest
from require_extras import require_extra


def _softmax_func(shape, axis=-1, fast=True, dtype="float32"):
    from tvm import te, topi

    x = te.placeholder(shape, name="x", dtype=dtype)
    y = (topi.nn.fast_softmax if fast else topi.nn.softmax)(x, axis)
    return te.create_prim_func([x, y])


def _target(name):
    from edgeuq.catalog import get_target
    from edgeuq.lower.tvm.targets import tvm_target

    return tvm_target(get_target(name), num_cores=1)


def _run(mod, target, x):
    import tvm

    lib = tvm.compile(mod, target=target)
    out = tvm.runtime.tensor(np.zeros_like(x), tvm.cpu())
    lib["main"](tvm.runtime.tensor(x, tvm.cpu()), out)
    return out.numpy()


def _reference(x):
    z = x.astype(np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("name, lanes", [("x86-64-avx512", 16), ("x86-64-avx2", 8), ("x86-64", 4),
                                         ("cortex-a72", 4)])
def test_float32_lanes_follow_the_targets_isa_level(name, lanes):
    require_extra("tvm", "tvm")
    from edgeuq.lower.tvm.softmax_schedule import float32_lanes

    assert float32_lanes(_target(name)) == lanes


@pytest.mark.parametrize("shape, fast, lanes", [
    ((16, 4, 64, 64), True, 16),      # the demo head's attention softmax
    ((3, 5, 24), True, 16),           # 24 is not a multiple of 16: 8 lanes
    ((2, 40), True, 8),
    ((4, 3, 12), False, 4),           # topi.nn.softmax (the C library's expf)
])
def test_scheduled_softmax_matches_numpy_on_every_row(shape, fast, lanes):
    """Rows with large spreads (x 8) and one row of equal values; error bound: fast_exp's relative
    error (~1e-7) plus float32 rounding of the sum, far below a wrong row (>= 1e-2)."""
    require_extra("tvm", "tvm")
    from edgeuq.lower.tvm.softmax_schedule import schedule_softmax_rows

    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape) * 8).astype(np.float32)
    x.reshape(-1, shape[-1])[0] = 3.0
    sch = schedule_softmax_rows(_softmax_func(shape, fast=fast), lanes)
    assert sch is not None
    got = _run(sch.mod, _target("x86-64"), x)
    err = float(np.abs(got - _reference(x)).max())
    assert err <= 2e-6, err
    rows = got.reshape(-1, shape[-1]).astype(np.float64).sum(axis=1)
    assert float(np.abs(rows - 1).max()) <= 1e-5


def test_the_schedule_is_row_wise_vectorized_and_splits_both_reductions_into_lanes():
    """What makes it fast, checked on the scheduled TIR: every stage sits inside one loop over
    the rows, the max and the sum each have a partial (rfactor) block over ``lanes`` lanes, and
    the exponentials, the division and both partial reductions are vectorized ``lanes`` wide."""
    require_extra("tvm", "tvm")
    import tvm
    from tvm.s_tir import Schedule

    from edgeuq.lower.tvm.softmax_schedule import schedule_softmax_rows

    sch = schedule_softmax_rows(_softmax_func((2, 3, 64)), 16)
    assert isinstance(sch, Schedule)
    top = sch.mod["main"].body.block.body              # the root block's body: the loops over rows
    assert isinstance(top, tvm.tirx.For) and int(top.extent) == 2
    assert isinstance(top.body, tvm.tirx.For) and int(top.body.extent) == 3, "every stage inside the row loops"
    stages = top.body.body
    assert isinstance(stages, tvm.tirx.SeqStmt) and len(stages) >= 5, "max, exp, sum and division per row"
    script = sch.mod.script()
    blocks = set(re.findall(r'sblock\("(\w+)"\)', script))
    assert {"T_softmax_maxelem_rf", "T_softmax_expsum_rf", "T_fast_exp", "T_softmax_norm"} <= blocks
    assert "T_softmax_delta" not in blocks, "the subtraction is inlined into the exponential"
    vectorized = re.findall(r"T\.vectorized\((?:T\.int64\()?(\d+)\)", script)
    assert vectorized == ["16"] * 4, vectorized        # max partials, exp, sum partials, division


@pytest.mark.parametrize("case", ["not the last axis", "odd row", "symbolic row", "not a softmax"])
def test_functions_the_schedule_does_not_fit_are_left_alone(case):
    require_extra("tvm", "tvm")
    from tvm import te, tirx, topi

    from edgeuq.lower.tvm.softmax_schedule import schedule_softmax_rows

    if case == "not the last axis":
        func = _softmax_func((4, 32, 8), axis=1)
    elif case == "odd row":
        func = _softmax_func((4, 7))
    elif case == "symbolic row":
        func = _softmax_func((4, tirx.Var("n", "int64")))
    else:
        x = te.placeholder((4, 32), name="x")
        func = te.create_prim_func([x, topi.exp(x)])
    assert schedule_softmax_rows(func, 16) is None
    with pytest.raises(ValueError):
        schedule_softmax_rows(func, 0)


def test_a_symbolic_batch_still_gets_the_row_schedule():
    """The dynamic-batch lowering: rows = (batch x heads x queries), the row length static."""
    require_extra("tvm", "tvm")
    from tvm import tirx

    from edgeuq.lower.tvm.softmax_schedule import schedule_softmax_rows

    assert schedule_softmax_rows(_softmax_func((tirx.Var("b", "int64"), 4, 32)), 8) is not None


def test_the_pass_schedules_only_unscheduled_softmax_kernels_on_cpu_targets():
    """In a module with a softmax, a softmax a tuning record already scheduled and an exp: only the
    first changes on a CPU target; on a CUDA target nothing does."""
    require_extra("tvm", "tvm")
    import tvm
    from tvm import te, topi

    from tvm_ffi import structural_equal

    from edgeuq.lower.tvm.softmax_schedule import softmax_rows_pass

    x = te.placeholder((4, 32), name="x")
    mod = tvm.IRModule({
        "soft": _softmax_func((4, 32)),
        "done": _softmax_func((4, 32)).with_attr("tirx.is_scheduled", True),
        "exp": te.create_prim_func([x, topi.exp(x)]),
    })
    with _target("x86-64-avx2"):
        out = softmax_rows_pass()(mod)
    assert out["soft"].attrs["tirx.is_scheduled"]
    assert "T_softmax_maxelem_rf" in out["soft"].script()
    assert structural_equal(out["done"], mod["done"])
    assert structural_equal(out["exp"], mod["exp"])
    from edgeuq.catalog import get_target
    from edgeuq.lower.tvm.targets import tvm_target

    with tvm_target(get_target("cuda-sm87")):
        gpu = softmax_rows_pass()(mod)
    assert structural_equal(gpu["soft"], mod["soft"])
