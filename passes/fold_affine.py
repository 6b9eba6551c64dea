"""Fold per-channel scale and shift chains into the convolution that feeds them.

A batch norm decomposed for inference reaches us as ``conv -> subtract(mean) ->
divide(std) -> multiply(gamma) -> add(beta)``, and a conv with a bias as
``conv -> add(bias)``. Each of those is ``y = a * conv(x, W) + b`` with ``a`` and
``b`` per output channel, which equals ``conv(x, W * a) + b``. The weights are
rescaled once here, at compile time, and the kernel's epilogue keeps one add.
"""

from __future__ import annotations

import numpy as np
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from ._util import const_array, function_pass, op_name, rebind, static_shape, use_counts

_AFFINE = ("relax.add", "relax.subtract", "relax.multiply", "relax.divide")


def _per_channel(value: np.ndarray, channels: int) -> np.ndarray | None:
    """``value`` as a vector over channel axis 1 of an NCHW tensor, if it broadcasts only there."""
    if value.ndim > 4 or value.dtype != np.float32:
        return None
    full = value.reshape((1,) * (4 - value.ndim) + value.shape)
    if full.shape[0] != 1 or full.shape[2] != 1 or full.shape[3] != 1 or full.shape[1] not in (1, channels):
        return None
    return np.broadcast_to(full[0, :, 0, 0], (channels,)).astype(np.float64)


def _step(call: relax.Call, cur, channels: int, scale: np.ndarray, shift: np.ndarray):
    """Apply one affine op to (scale, shift); None when the op is not a per-channel affine step."""
    name = op_name(call)
    if name not in _AFFINE or len(call.args) != 2:
        return None
    lhs, rhs = call.args
    if lhs.same_as(cur):
        k, cur_first = const_array(rhs), True
    elif rhs.same_as(cur) and name in ("relax.add", "relax.multiply", "relax.subtract"):
        k, cur_first = const_array(lhs), False
    else:
        return None
    k = _per_channel(k, channels) if k is not None else None
    if k is None:
        return None
    if name == "relax.add":
        return scale, shift + k
    if name == "relax.multiply":
        return scale * k, shift * k
    if name == "relax.divide":
        return scale / k, shift / k
    if cur_first:  # cur - k
        return scale, shift - k
    return -scale, k - shift  # k - cur


def _plan(func: relax.Function) -> dict:
    """Map the last var of each foldable chain to (conv call, scale, shift)."""
    counts = use_counts(func)
    bindings = [b for block in func.body.blocks for b in block.bindings if isinstance(b, relax.VarBinding)]
    consumers: dict = {}
    for b in bindings:
        for var in relax.analysis.free_vars(b.value):
            consumers.setdefault(var, []).append(b)
    plan = {}
    for b in bindings:
        call = b.value
        if op_name(call) != "relax.nn.conv2d" or call.attrs.data_layout != "NCHW" \
                or call.attrs.kernel_layout != "OIHW" or call.attrs.out_layout != "NCHW":
            continue
        weight = const_array(call.args[1])
        shape = static_shape(b.var)
        if weight is None or weight.dtype != np.float32 or shape is None or len(shape) != 4:
            continue
        channels = shape[1]
        scale, shift = np.ones(channels), np.zeros(channels)
        cur, end = b.var, None
        while counts.get(cur, 0) == 1 and len(consumers.get(cur, [])) == 1:
            nxt = consumers[cur][0]
            if static_shape(nxt.var) != shape:
                break
            step = _step(nxt.value, cur, channels, scale, shift)
            if step is None:
                break
            scale, shift = step
            cur = end = nxt.var
        if end is not None:
            plan[end] = (call, scale, shift)
    return plan


@mutator
class _Folder(PyExprMutator):
    def __init__(self, mod, plan):
        super().__init__(mod)
        self.plan = plan

    def visit_var_binding_(self, binding):
        if binding.var not in self.plan:
            super().visit_var_binding_(binding)
            return
        conv, scale, shift = self.plan[binding.var]
        weight = const_array(conv.args[1]).astype(np.float64) * scale[:, None, None, None]
        attrs = conv.attrs
        value = relax.op.nn.conv2d(
            self.visit_expr(conv.args[0]), relax.const(weight.astype(np.float32)),
            strides=attrs.strides, padding=attrs.padding, dilation=attrs.dilation, groups=attrs.groups,
            data_layout="NCHW", kernel_layout="OIHW", out_layout="NCHW", out_dtype=attrs.out_dtype)
        if np.any(shift != 0):
            value = relax.op.add(self.builder_.emit(value),
                                 relax.const(shift.astype(np.float32).reshape(1, -1, 1, 1)))
        rebind(self, binding, value)


def _rewrite(mod, func):
    plan = _plan(func)
    if not plan:
        return func
    return _Folder(mod, plan).visit_expr(func)


def FoldAffineIntoConv():  # noqa: N802 (TVM pass naming)
    """Pass: fold per-channel add/subtract/multiply/divide chains after a conv into its weights."""
    return function_pass(_rewrite, "edgecc.FoldAffineIntoConv")
