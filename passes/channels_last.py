"""Run the convolutional part of a graph channels-last (NHWC) on CPUs.

CPU kernels vectorise across channels: a conv's output channels are the SIMD
lanes and each input value is broadcast. That needs channels innermost in
memory, so this pass rewrites conv2d to NHWC and carries the layout through
the ops around it (elementwise epilogues, pooling, concat, per-axis reductions,
channel shuffles), transposing constants here at compile time. A tensor goes
back to NCHW only where an op that is not layout-aware reads it: each converted
value also gets a transposed NCHW twin, which dead-code elimination drops when
nothing reads it.

The layout of a value is tracked as a permutation ``perm`` of its original axes:
the stored tensor is ``transpose(original, perm)``.
"""

from __future__ import annotations

import numpy as np
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from ._util import const_array, function_pass, op_name, rebind, static_shape

NHWC = (0, 2, 3, 1)
UNARY = {"relax.nn.relu", "relax.sigmoid", "relax.tanh", "relax.clip", "relax.exp", "relax.sqrt",
         "relax.rsqrt", "relax.negative", "relax.abs", "relax.nn.gelu", "relax.nn.gelu_tanh",
         "relax.nn.silu", "relax.erf", "relax.log", "relax.square", "relax.nn.leakyrelu",
         "relax.nn.relu6", "relax.hardswish", "relax.nn.prelu_scalar", "relax.astype", "relax.round",
         "relax.floor", "relax.ceil"}
BINARY = {"relax.add", "relax.subtract", "relax.multiply", "relax.divide", "relax.power",
          "relax.maximum", "relax.minimum"}
REDUCE = {"relax.mean", "relax.sum", "relax.max", "relax.min"}


def _inverse(perm) -> tuple[int, ...]:
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return tuple(inv)


@mutator
class _ChannelsLast(PyExprMutator):
    def __init__(self, mod):
        super().__init__(mod)
        self.stored: dict = {}  # original Var -> (Var in stored layout, perm)

    # -- arguments in a given layout ---------------------------------------------------
    def _tracked(self, expr, perm=None):
        entry = self.stored.get(expr) if isinstance(expr, relax.Var) else None
        if entry is None or (perm is not None and entry[1] != perm):
            return None
        return entry[0]

    def _arg(self, expr, perm):
        """``expr`` transposed by ``perm`` (rank-padded on the left like broadcasting); None if
        that would need a runtime transpose of something smaller than the output."""
        stored = self._tracked(expr, perm)
        if stored is not None:
            return stored
        value = const_array(expr)
        if value is not None:
            if value.ndim == 0:
                return expr
            if value.ndim > len(perm):
                return None
            value = value.reshape((1,) * (len(perm) - value.ndim) + value.shape)
            return relax.const(np.ascontiguousarray(value.transpose(perm)), str(value.dtype))
        shape = static_shape(expr)
        if shape is None or len(shape) != len(perm):
            return None if shape != () else self.visit_expr(expr)
        stored = self.builder_.emit(relax.op.permute_dims(self.visit_expr(expr), list(perm)))
        if isinstance(expr, relax.Var):  # every later reader shares this transposed copy
            self.stored[expr] = (stored, perm)
        return stored

    # -- per-op rewrites; each returns (expr in stored layout, perm) or None -----------
    def _conv2d(self, call):
        attrs = call.attrs
        if (attrs.data_layout, attrs.kernel_layout, attrs.out_layout) != ("NCHW", "OIHW", "NCHW"):
            return None
        if const_array(call.args[1]) is None or static_shape(call) is None:
            return None
        data = self._arg(call.args[0], NHWC)
        if data is None:
            return None
        return relax.op.nn.conv2d(data, call.args[1], strides=attrs.strides, padding=attrs.padding,
                                  dilation=attrs.dilation, groups=attrs.groups, data_layout="NHWC",
                                  kernel_layout="OIHW", out_layout="NHWC",
                                  out_dtype=attrs.out_dtype), NHWC

    def _pool2d(self, call, name):
        attrs = call.attrs
        data = self._tracked(call.args[0], NHWC)
        if data is None or attrs.layout != "NCHW" or attrs.out_layout != "NCHW":
            return None
        if name == "relax.nn.adaptive_avg_pool2d":
            return relax.op.nn.adaptive_avg_pool2d(data, attrs.output_size, layout="NHWC",
                                                   out_layout="NHWC"), NHWC
        make = relax.op.nn.max_pool2d if name == "relax.nn.max_pool2d" else relax.op.nn.avg_pool2d
        return make(data, attrs.pool_size, attrs.strides, attrs.padding, attrs.dilation,
                    attrs.ceil_mode, attrs.count_include_pad, layout="NHWC", out_layout="NHWC"), NHWC

    def _elementwise(self, call, name):
        tensors = [a for a in call.args if isinstance(a.ty, relax.TensorType)]
        perms = {self.stored[a][1] for a in tensors if self._tracked(a) is not None}
        out_shape = static_shape(call)
        if len(perms) != 1 or out_shape is None:
            return None
        perm = perms.pop()
        if len(out_shape) != len(perm):
            return None
        args = []
        for a in call.args:
            if isinstance(a.ty, relax.TensorType):
                a = self._arg(a, perm)
                if a is None:
                    return None
            args.append(a)
        return relax.Call(call.op, args, call.attrs, call.ty_args), perm

    def _concat(self, call):
        fields = call.args[0].fields if isinstance(call.args[0], relax.Tuple) else None
        if fields is None or not any(self._tracked(f) is not None for f in fields):
            return None
        perm = next(self.stored[f][1] for f in fields if self._tracked(f) is not None)
        args = [self._arg(f, perm) for f in fields]
        if any(a is None for a in args):
            return None
        axis = int(call.attrs.axis) % len(perm)
        return relax.op.concat(args, axis=_inverse(perm)[axis]), perm

    def _reduce(self, call, name):
        data = self._tracked(call.args[0])
        attrs = call.attrs
        if data is None or not attrs.keepdims or attrs.axis is None:
            return None
        perm = self.stored[call.args[0]][1]
        inv = _inverse(perm)
        axes = [inv[int(a) % len(perm)] for a in attrs.axis]
        make = {"relax.mean": relax.op.mean, "relax.sum": relax.op.sum,
                "relax.max": relax.op.max, "relax.min": relax.op.min}[name]
        return make(data, axes, keepdims=True), perm

    def _permute(self, call):
        data = self._tracked(call.args[0])
        if data is None or call.attrs.axes is None:
            return None
        perm = self.stored[call.args[0]][1]
        inv = _inverse(perm)
        axes = [int(a) for a in call.attrs.axes]
        new_axes = [inv[axes[perm[i]]] for i in range(len(perm))]
        if new_axes == list(range(len(perm))):
            return data, perm
        return relax.op.permute_dims(data, new_axes), perm

    def _reshape(self, call):
        """Channel shuffles: [N,C,H,W] <-> [N,g,C/g,H,W] keeping the spatial dims last."""
        data = self._tracked(call.args[0])
        src, dst = static_shape(call.args[0]), static_shape(call)
        if data is None or src is None or dst is None:
            return None
        perm = self.stored[call.args[0]][1]
        split = (0, 3, 4, 1, 2)
        if perm == NHWC and len(dst) == 5 and dst[0] == src[0] and dst[3:] == src[2:] \
                and dst[1] * dst[2] == src[1]:
            return relax.op.reshape(data, [dst[0], dst[3], dst[4], dst[1], dst[2]]), split
        if perm == split and len(dst) == 4 and dst[0] == src[0] and dst[2:] == src[3:] \
                and dst[1] == src[1] * src[2]:
            return relax.op.reshape(data, [dst[0], dst[2], dst[3], dst[1]]), NHWC
        return None

    def _convert(self, call):
        name = op_name(call)
        if name is None:
            return None
        if name == "relax.nn.conv2d":
            return self._conv2d(call)
        if name in ("relax.nn.max_pool2d", "relax.nn.avg_pool2d", "relax.nn.adaptive_avg_pool2d"):
            return self._pool2d(call, name)
        if name in UNARY or name in BINARY:
            return self._elementwise(call, name)
        if name == "relax.concat":
            return self._concat(call)
        if name in REDUCE:
            return self._reduce(call, name)
        if name == "relax.permute_dims":
            return self._permute(call)
        if name == "relax.reshape":
            return self._reshape(call)
        return None

    def visit_dataflow_block_(self, block):
        self.stored = {}  # stored copies are dataflow vars: they do not outlive their block
        return super().visit_dataflow_block_(block)

    def visit_var_binding_(self, binding):
        value = binding.value
        if isinstance(value, relax.Var) and value in self.stored:
            self.stored[binding.var] = self.stored[value]
            super().visit_var_binding_(binding)
            return
        converted = self._convert(value) if isinstance(value, relax.Call) else None
        if converted is None:
            super().visit_var_binding_(binding)
            return
        expr, perm = converted
        new = expr if isinstance(expr, relax.Var) else self.builder_.emit(expr)
        self.stored[binding.var] = (new, perm)
        rebind(self, binding, relax.op.permute_dims(new, list(_inverse(perm))))


def _rewrite(mod, func):
    return _ChannelsLast(mod).visit_expr(func)


def ChannelsLast():  # noqa: N802 (TVM pass naming)
    """Pass: NCHW conv regions to NHWC, with NCHW copies only where a consumer needs them."""
    return function_pass(_rewrite, "edgecc.ChannelsLast")
