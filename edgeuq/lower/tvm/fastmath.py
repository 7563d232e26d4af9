"""Vectorizable transcendental functions for CPU kernels (softmax, GELU's erf, exp).

TVM's default legalization turns ``exp`` and ``erf`` into calls of the C library's scalar
``expf`` / ``erff``, which LLVM cannot vectorize. Measured on the demo head (16 rows,
AVX-512 host, untuned kernels of the same shape): ``softmax`` 1.57 ms vs 0.51 ms with
``topi.nn.fast_softmax``, ``erf`` 3.7 ms vs 0.07 ms with ``topi.fast_erf``, ``exp`` 0.73
vs 0.08 ms with ``topi.fast_exp`` (see ``docs/targets.md``); after tuning, the scalar
calls are what is left of these kernels' time. The fast versions are polynomial
approximations (TVM's ``fast_exp`` / ``fast_erf``, float32 only), well inside the
numerical check against ONNX Runtime (which uses its own approximations). On targets whose
vector unit has no ``floor`` (generic x86-64: SSE2; 32-bit ARM), ``fast_exp``'s ``floor`` would
be a ``floorf`` call per element: there softmax and exp use the same polynomial with a floor
built from truncation and a compare (:func:`fast_exp_without_floor`).

:func:`fast_math_legalize` legalizes every operator of a Relax module, these three
through the fast versions (float32; other dtypes keep TVM's default).
"""
from __future__ import annotations

from typing import Any

__all__ = ["fast_math_legalize", "FAST_OPS", "lacks_vector_floor", "fast_exp_without_floor", "softmax_without_floor"]

FAST_OPS = ("relax.nn.softmax", "relax.erf", "relax.exp")


def _default(bb: Any, call: Any) -> Any:
    import tvm

    return tvm.ir.Op.get(call.op.name).get_attr("FLegalize")(bb, call)


def _float32(call: Any) -> bool:
    arg = call.args[0]
    info = getattr(arg, "struct_info", None) or getattr(arg, "ty", None)
    return str(getattr(info, "dtype", getattr(arg, "dtype", ""))) == "float32"


def _softmax(bb: Any, call: Any) -> Any:
    from tvm import topi

    if not _float32(call):
        return _default(bb, call)
    if lacks_vector_floor(_current_target()):
        return bb.call_te(softmax_without_floor, call.args[0], int(call.attrs.axis), primfunc_name_hint="softmax")
    return bb.call_te(topi.nn.fast_softmax, call.args[0], int(call.attrs.axis), primfunc_name_hint="softmax")


def _erf(bb: Any, call: Any) -> Any:
    from tvm import topi

    if not _float32(call):
        return _default(bb, call)
    return bb.call_te(topi.fast_erf, call.args[0], primfunc_name_hint="erf")


def _exp(bb: Any, call: Any) -> Any:
    from tvm import topi

    if not _float32(call):
        return _default(bb, call)
    if lacks_vector_floor(_current_target()):
        return bb.call_te(fast_exp_without_floor, call.args[0], primfunc_name_hint="tir_exp")
    return bb.call_te(topi.fast_exp, call.args[0], primfunc_name_hint="tir_exp")


def _current_target() -> Any:
    import tvm

    return tvm.target.Target.current(allow_none=True)


#: x86-64 ISA levels (``mcpu``) with SSE4.1's ``roundps``; ``mattr`` entries that add it.
_X86_FLOOR_LEVELS = ("x86-64-v2", "x86-64-v3", "x86-64-v4")
_X86_FLOOR_ATTRS = ("+sse4.1", "+sse4.2", "+avx", "+avx2", "+avx512f")


def lacks_vector_floor(target: Any) -> bool:
    """True for CPU targets whose vector unit has no ``floor``: generic x86-64 (SSE2; ``roundps``
    came with SSE4.1) and 32-bit ARM (NEON's ``vrintm`` came with ARMv8). LLVM then calls the C
    library's ``floorf`` once per element of ``fast_exp``."""
    if target is None or target.kind.name != "llvm":
        return False
    triple = str(target.attrs.get("mtriple", "") or "")
    mcpu = str(target.attrs.get("mcpu", "") or "")
    mattr = [str(a) for a in (target.attrs.get("mattr", None) or [])]
    if triple.startswith("x86_64"):
        return mcpu not in _X86_FLOOR_LEVELS and not any(a in _X86_FLOOR_ATTRS for a in mattr)
    return triple.startswith("arm") and not any(a.startswith("+v8") or a == "+fp-armv8" for a in mattr)


# TVM's fast_exp (topi ``fast_exp_float32``): clamp, 2**n by range reduction, a degree-7 polynomial.
_EXP_HI, _EXP_LO = 88.3762626647950, -88.3762626647949
_LOG2E, _LN2 = 1.44269504088896341, 0.6931471805599453
_EXP_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)


def _exp_without_floor(v: Any) -> Any:
    """TVM's ``fast_exp`` of one float32 value, with ``floor(m)`` computed as ``t - (t > m)`` for
    ``t = trunc(m)`` (exact for |m| < 2**31; here |m| <= 128): truncation and compare vectorize on
    SSE2 and ARMv7 NEON, ``floor`` does not."""
    from tvm import tirx

    f32 = "float32"
    c = tirx.max(tirx.min(v, tirx.const(_EXP_HI, f32)), tirx.const(_EXP_LO, f32))
    m = c * tirx.const(_LOG2E, f32) + tirx.const(0.5, f32)
    t = tirx.Cast(f32, tirx.Cast("int32", m))
    n = tirx.Select(t > m, t - tirx.const(1.0, f32), t)
    r = c - n * tirx.const(_LN2, f32)
    y = tirx.const(_EXP_POLY[0], f32)
    for coef in _EXP_POLY[1:]:
        y = y * r + tirx.const(coef, f32)
    y = y * r * r + r + tirx.const(1.0, f32)
    scale = tirx.call_intrin(f32, "tirx.reinterpret",
                             tirx.shift_left(tirx.Cast("int32", n + tirx.const(127.0, f32)), tirx.const(23, "int32")))
    return tirx.max(scale * y, v)


def fast_exp_without_floor(x: Any) -> Any:
    """``topi.fast_exp`` for targets without a vector floor (:func:`lacks_vector_floor`); same
    block name (``T_fast_exp``), same polynomial."""
    from tvm import te, topi

    return te.compute(x.shape, lambda *i: _exp_without_floor(x(*i)), name="T_fast_exp", tag=topi.tag.ELEMWISE)


def softmax_without_floor(x: Any, axis: int) -> Any:
    """``topi.nn.fast_softmax`` with :func:`fast_exp_without_floor`: the same stages and block
    names (``T_softmax_maxelem``, ``T_softmax_delta``, ``T_fast_exp``, ``T_softmax_expsum``,
    ``T_softmax_norm``), so :mod:`.softmax_schedule` fits it too."""
    from tvm import te

    shape = list(x.shape)
    axis = axis + len(shape) if axis < 0 else axis
    if not 0 <= axis < len(shape):
        raise ValueError(f"softmax axis {axis} out of range for a {len(shape)}-d tensor")
    k1, k2 = te.reduce_axis((0, shape[axis]), name="k"), te.reduce_axis((0, shape[axis]), name="k")
    rest = lambda idx: tuple(v for j, v in enumerate(idx) if j != axis)      # noqa: E731
    with_k = lambda idx, k: tuple(idx[:axis]) + (k,) + tuple(idx[axis:])     # noqa: E731
    reduced = [d for j, d in enumerate(shape) if j != axis]
    maxelem = te.compute(reduced, lambda *i: te.max(x[with_k(i, k1)], axis=k1), name="T_softmax_maxelem")
    delta = te.compute(shape, lambda *i: x[i] - maxelem[rest(i)], name="T_softmax_delta")
    exp = fast_exp_without_floor(delta)
    expsum = te.compute(reduced, lambda *i: te.sum(exp[with_k(i, k2)], axis=k2), name="T_softmax_expsum")
    return te.compute(shape, lambda *i: exp[i] / expsum[rest(i)], name="T_softmax_norm", attrs={"axis": axis})


def fast_math_legalize() -> Any:
    """A pass: ``DecomposeOpsForInference`` then ``LegalizeOps`` with the fast versions of
    :data:`FAST_OPS` (run it inside the target's context, before the compile pipeline)."""
    import tvm
    from tvm import relax

    return tvm.transform.Sequential([
        relax.transform.DecomposeOpsForInference(),
        relax.transform.LegalizeOps(customize_legalize_map={"relax.nn.softmax": _softmax, "relax.erf": _erf,
                                                            "relax.exp": _exp}),
    ])
