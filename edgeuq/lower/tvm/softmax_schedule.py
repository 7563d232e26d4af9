"""A hand-written CPU schedule for the row softmax (the attention's softmax over its last axis).

Why: TVM's default schedule of ``topi.nn.fast_softmax`` runs each of its five stages over the
whole tensor, and the two row reductions (max, sum) as scalar chains of dependent adds. On the
demo head (16 x 4 x 64 x 64, one thread, Intel Xeon) it took 0.60 ms against 0.25 ms for ONNX
Runtime's softmax of the same shape, and MetaSchedule could not tune it here (its candidates took
more than 20 s each to build). dlight's CPU ``Reduction`` rule gave 0.51 ms.

What: one row at a time, the maximum, the exponentials, their sum and the division all computed
inside the loop over rows; the exponentials and the division vectorized over the row; each
reduction split into ``lanes`` partial results (``rfactor``) that are vectorized, then combined.
Timed alone on that shape with MetaSchedule's in-process runner: 0.24 ms AVX-512, 0.23 ms AVX2
(default 0.45 ms), 0.62-0.74 ms generic x86-64 (see docs/targets.md; the whole-graph effect is in
``bench/backends.py``'s paired tables and kernel table).

:func:`schedule_softmax_rows` returns the schedule, or None for any function that is not exactly
this softmax (other block names, another axis, a row of odd or symbolic length; a row that is not
a multiple of ``lanes`` takes the widest power-of-two fraction of it that divides the row).
:func:`softmax_rows_pass` applies it to the functions of a Relax module that no tuning record
scheduled; :mod:`.shipped` also times it as a candidate record per softmax task, so a vendor's
tuning database keeps it only where it measured fastest.
"""
from __future__ import annotations

from typing import Any, Optional

__all__ = ["schedule_softmax_rows", "softmax_rows_pass", "float32_lanes", "SOFTMAX_BLOCKS"]

#: The blocks of ``topi.nn.fast_softmax`` (``T_softmax_delta`` may also be there: it is inlined);
#: ``topi.nn.softmax`` has ``T_softmax_exp`` (the C library's ``expf``) in place of ``T_fast_exp``.
SOFTMAX_BLOCKS = ("T_softmax_maxelem", "T_fast_exp", "T_softmax_expsum", "T_softmax_norm")
_DELTA = "T_softmax_delta"
_EXP_BLOCKS = ("T_fast_exp", "T_softmax_exp")

# float32 lanes of one vector register by x86-64 ISA level (the targets' ``mcpu``); others 4
# (SSE, NEON).
_X86_LANES = {"x86-64-v4": 16, "x86-64-v3": 8}


def float32_lanes(target: Any) -> int:
    """float32 values per vector register of a TVM CPU target (16 AVX-512, 8 AVX2, else 4)."""
    mcpu = str(target.attrs.get("mcpu", "") or "") if target is not None else ""
    return _X86_LANES.get(mcpu, 4)


def _static(extent: Any) -> Optional[int]:
    value = getattr(extent, "value", extent)
    return int(value) if isinstance(value, int) else None


def schedule_softmax_rows(func: Any, lanes: int) -> Optional[Any]:
    """The row schedule of ``func`` (a PrimFunc or an IRModule with ``main``) with ``lanes``-wide
    vectors, or None when ``func`` is not a last-axis ``fast_softmax`` this schedule fits."""
    import tvm
    from tvm.s_tir import Schedule, ScheduleError

    if lanes < 1:
        raise ValueError(f"lanes must be >= 1, got {lanes}")
    mod = func if isinstance(func, tvm.IRModule) else tvm.IRModule({"main": func})
    try:
        sch = Schedule(mod)
        names = {sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))}
        exp_name = next((n for n in _EXP_BLOCKS if n in names), None)
        if exp_name is None or names - {_DELTA, exp_name} != set(SOFTMAX_BLOCKS) - {"T_fast_exp"}:
            return None
        norm = sch.get_sblock("T_softmax_norm")
        loops = sch.get_loops(norm)
        axis = sch.get(norm).annotations.get("axis")
        row_len = _static(sch.get(loops[-1]).extent)
        if axis is None or int(axis) != len(loops) - 1 or len(loops) < 2 or row_len is None:
            return None
        while row_len % lanes:          # narrower vectors for a row that is not a multiple of the lanes
            lanes //= 2
        if lanes < 2:
            return None
        if _DELTA in names:
            sch.compute_inline(sch.get_sblock(_DELTA))
        reductions = []
        for name in ("T_softmax_maxelem", "T_softmax_expsum"):
            block = sch.get_sblock(name)
            _, inner = sch.split(sch.get_loops(block)[-1], [None, lanes])
            reductions.append((block, sch.rfactor(inner, 0)))
        loops = sch.get_loops(norm)
        row = loops[-2]        # the innermost loop over rows (not fused: a symbolic batch would not stay affine)
        sch.vectorize(sch.split(loops[-1], [None, lanes])[1])
        exp = sch.get_sblock(exp_name)
        (mx, mx_rf), (es, es_rf) = reductions
        for block in (es, es_rf, exp, mx, mx_rf):     # consumers first: each lands inside the row loop
            sch.compute_at(block, row)
        sch.vectorize(sch.split(sch.get_loops(exp)[-1], [None, lanes])[1])
        for rf in (mx_rf, es_rf):                      # (partial lane, step) -> (step, partial lane)
            lane, step = sch.get_loops(rf)[-2:]
            sch.reorder(step, lane)
            sch.vectorize(lane)
        return sch
    except ScheduleError:
        return None


def softmax_rows_pass() -> Any:
    """A module pass: every PrimFunc not yet scheduled (no tuning record applied) that
    :func:`schedule_softmax_rows` fits gets the row schedule, with the current target's lanes
    (run it inside the target's context)."""
    from tvm.s_tir import dlight as dl

    class SoftmaxRows(dl.ScheduleRule):
        def apply(self, func: Any, target: Any, _tunable: bool) -> Any:
            if target is None or target.kind.name != "llvm":
                return None
            return schedule_softmax_rows(func, float32_lanes(target))

    return dl.ApplyDefaultSchedule(SoftmaxRows())
