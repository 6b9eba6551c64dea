"""Accumulate half-precision reductions in float32.

A ``float16`` or ``bfloat16`` matmul (or 1-D convolution) that sums in its own type loses about one
bit per doubling of the reduction length, and a half-precision softmax rounds
every exponential before the sum. ONNX Runtime and the ONNX reference keep
float32 accumulators, so edgecc does too: the inputs stay half precision (the
memory traffic is what half precision buys) and only the sum runs in float32,
rounded once to the output type.
"""

from __future__ import annotations

from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from ._util import function_pass, op_name

_HALF = ("float16", "bfloat16")


def _dtype(expr) -> str | None:
    ty = expr.ty
    return str(ty.dtype) if isinstance(ty, relax.TensorType) else None


@mutator
class _Accumulate(PyExprMutator):
    def visit_call_(self, call):
        call = super().visit_call_(call)
        name = op_name(call)
        if name == "relax.matmul":
            a, b = call.args
            dtype = _dtype(a)
            out_dtype = call.attrs.out_dtype
            if dtype in _HALF and _dtype(b) == dtype and (out_dtype is None or str(out_dtype) in ("", "void", dtype)):
                wide = self.builder_.normalize(relax.op.matmul(a, b, out_dtype="float32"))
                return relax.op.astype(wide, dtype)
        elif name == "relax.nn.conv1d":
            data, weight = call.args
            dtype, a = _dtype(data), call.attrs
            if dtype in _HALF and _dtype(weight) == dtype and str(a.out_dtype) in ("", "void", "None", dtype):
                wide = self.builder_.normalize(relax.op.nn.conv1d(
                    data, weight, strides=a.strides, padding=a.padding, dilation=a.dilation, groups=a.groups,
                    data_layout=a.data_layout, kernel_layout=a.kernel_layout, out_layout=a.out_layout,
                    out_dtype="float32"))
                return relax.op.astype(wide, dtype)
        elif name in ("relax.nn.softmax", "relax.nn.log_softmax"):
            (x,) = call.args
            dtype = _dtype(x)
            if dtype in _HALF:
                op = relax.op.nn.softmax if name == "relax.nn.softmax" else relax.op.nn.log_softmax
                wide = self.builder_.normalize(op(relax.op.astype(x, "float32"), axis=call.attrs.axis))
                return relax.op.astype(wide, dtype)
        return call


def _rewrite(mod, func):
    return _Accumulate(mod).visit_expr(func)


def AccumulateFloat32():  # noqa: N802 (TVM pass naming)
    """Pass: half-precision matmul and softmax accumulate in float32."""
    return function_pass(_rewrite, "edgecc.AccumulateFloat32")
