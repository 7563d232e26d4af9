"""Vectorizable transcendental functions for CPU kernels (softmax, GELU's erf, exp).

TVM's default legalization turns ``exp`` and ``erf`` into calls of the C library's scalar
``expf`` / ``erff``, which LLVM cannot vectorize. Measured on the demo head (16 rows,
AVX-512 host, untuned kernels of the same shape): ``softmax`` 1.57 ms vs 0.51 ms with
``topi.nn.fast_softmax``, ``erf`` 3.7 ms vs 0.07 ms with ``topi.fast_erf``, ``exp`` 0.73
vs 0.08 ms with ``topi.fast_exp`` (see ``docs/targets.md``); after tuning, the scalar
calls are what is left of these kernels' time. The fast versions are polynomial
approximations (TVM's ``fast_exp`` / ``fast_erf``, float32 only), well inside the
numerical check against ONNX Runtime (which uses its own approximations).

:func:`fast_math_legalize` legalizes every operator of a Relax module, these three
through the fast versions (float32; other dtypes keep TVM's default).
"""
from __future__ import annotations

from typing import Any

__all__ = ["fast_math_legalize", "FAST_OPS"]

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
    return bb.call_te(topi.fast_exp, call.args[0], primfunc_name_hint="tir_exp")


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
