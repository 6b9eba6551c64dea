"""edgecc's own ONNX converters: where TVM's import leaves work for every inference,
and ops (or cases of ops) TVM's importer does not cover.

- ``Sum``: TVM broadcasts every input, stacks them and reduces the stack, which
  materialises an extra tensor per residual add; a chain of ``add`` fuses into
  the producing kernel instead.
- ``Dropout``: identity at inference (TVM keeps a ``dropout`` op whose mask
  output blocks fusion and layout rewrites).
- Ops TVM has no converter for: ``CumProd``, ``BitCast``, ``LpNormalization``,
  ``ReverseSequence``, ``Det``, ``TensorScatter``, the training optimizers
  (``Momentum``, ``Adagrad``, ``Adam``) and ``ai.onnx.ml``'s ``Binarizer`` and
  ``ArrayFeatureExtractor``.
- Cases TVM's converter gets wrong or refuses: ``OneHot`` with run-time values,
  ``Pow`` on integers and mixed dtypes, ``Elu``/``Celu`` on 16-bit floats,
  ``Mod`` on infinities, ``IsInf``'s sign attributes, ``ReduceMax``/``ReduceMin``
  on bool and empty sets, ``EyeLike``'s ``dtype``, ``MaxPool``'s argmax output,
  ``Split`` with empty pieces, ``BitShift`` by the width or more, ``TopK`` on uint64.
"""

from __future__ import annotations

import math

import numpy as np
import tvm
from tvm import relax, te, tirx, topi
from tvm.relax.frontend.onnx import onnx_frontend
from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter, get_constant, get_type
from tvm.ir.expr import Constant
from tvm.script import tirx as T

from .converters import register_converter

TRAINING = "ai.onnx.preview.training"
ML = "ai.onnx.ml"
OPAQUE = 8  # relax's OpPatternKind.kOpaque: a hand-written loop kernel is neither fused nor inlined


def _dtype(expr: relax.Expr) -> str:
    return str(expr.ty.dtype)


def _shape(expr: relax.Expr) -> list[int]:
    """The static shape (edgecc binds every input shape before import)."""
    return [int(d) for d in expr.ty.shape]


def _is_static(expr: relax.Expr) -> bool:
    return all(isinstance(d, tvm.tirx.IntImm) for d in expr.ty.shape)


def _constant(expr: relax.Expr, params, what: str) -> np.ndarray:
    """The value of an input that must be known at import, or a one-line error naming it."""
    expr = get_constant(expr, params)
    if not isinstance(expr, tvm.ir.GenericConst):
        raise ValueError(f"{what} must be a constant (an initializer, or an input edgecc specialises on)")
    return expr.value.numpy()


def _const(value, dtype: str) -> relax.Expr:
    return relax.const(value, dtype)


def _is_float(dtype: str) -> bool:
    return dtype.startswith(("float", "bfloat"))


def _all_tensors(inputs) -> bool:
    """Whether every input is a tensor (TVM's binary converters also fold shape values)."""
    return all(isinstance(item.ty, relax.TensorType) for item in inputs)


def _inputs(items) -> list:
    """A converter input list (``None`` past its end), as TVM's converters expect."""
    return onnx_frontend.onnx_input(items)


@register_converter("Sum")
class Sum(OnnxOpConverter):
    """Sum of any number of inputs, with broadcasting: a chain of adds."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        total = inputs[0]
        for item in inputs[1:]:
            total = bb.normalize(relax.op.add(total, item))
        return total


@register_converter("Dropout")
class Dropout(OnnxOpConverter):
    """Inference-time dropout: the input unchanged, and an all-true mask if one is asked for."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        return relax.Tuple([inputs[0], relax.op.ones_like(inputs[0], dtype="bool")])


@register_converter("CumProd")
class CumProd(OnnxOpConverter):
    """Cumulative product along a constant axis; ``reverse`` flips before and after."""

    @classmethod
    def _impl_v26(cls, bb, inputs, attr, params):
        data = inputs[0]
        axis = int(_constant(inputs[1], params, "CumProd axis").reshape(-1)[0])
        axis = axis % max(len(_shape(data)), 1)
        reverse = attr.get("reverse", 0) != 0
        if reverse:
            data = bb.normalize(relax.op.flip(data, axis))
        out = bb.normalize(relax.op.cumprod(data, axis, exclusive=attr.get("exclusive", 0) != 0))
        return relax.op.flip(out, axis) if reverse else out


@register_converter("BitCast")
class BitCast(OnnxOpConverter):
    """Reinterpret the bits as another dtype of the same width (bool is one byte of 0 or 1)."""

    @classmethod
    def _impl_v26(cls, bb, inputs, attr, params):
        data, to = inputs[0], get_type(attr["to"])
        if _dtype(data) == to:
            return data
        if "bool" in (_dtype(data), to):  # TVM's bool is one bit wide, so no reinterpret
            return relax.op.astype(data, to)
        return bb.emit_te(topi.reinterpret, data, to)


@register_converter("LpNormalization")
class LpNormalization(OnnxOpConverter):
    """x / ||x||_p along ``axis`` (p is 1 or 2); a zero norm gives zeros, as ONNX's reference."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        data = inputs[0]
        axis, p = attr.get("axis", -1), attr.get("p", 2)
        if p == 1:
            norm = relax.op.sum(relax.op.abs(data), axis, keepdims=True)
        elif p == 2:
            norm = relax.op.sqrt(relax.op.sum(relax.op.multiply(data, data), axis, keepdims=True))
        else:
            raise ValueError(f"LpNormalization supports p = 1 or 2, got p = {p}")
        norm = bb.normalize(norm)
        zero = _const(0, _dtype(data))
        return relax.op.where(relax.op.equal(norm, zero), zero, relax.op.divide(data, norm))


@register_converter("OneHot")
class OneHot(OnnxOpConverter):
    """One-hot along ``axis`` with a constant depth and ``values`` known only at run time.

    TVM's converter wants ``values`` constant; comparing the indices with a range and
    selecting between the two values takes them as tensors. Negative indices count
    from ``depth``; indices out of range give an all-off row.
    """

    @classmethod
    def _impl_v9(cls, bb, inputs, attr, params):
        indices, values = inputs[0], inputs[2]
        depth = int(_constant(inputs[1], params, "OneHot depth").reshape(-1)[0])
        rank = len(_shape(indices)) + 1
        axis = attr.get("axis", -1) % rank
        if not _dtype(indices).startswith(("int", "uint")):
            indices = bb.normalize(relax.op.astype(indices, "int64"))
        itype = _dtype(indices)
        if not itype.startswith("uint"):
            indices = relax.op.where(relax.op.less(indices, _const(0, itype)),
                                     relax.op.add(indices, _const(depth, itype)), indices)
        positions = relax.op.reshape(relax.op.arange(0, depth, 1, itype),
                                     [depth if i == axis else 1 for i in range(rank)])
        hot = relax.op.equal(relax.op.expand_dims(indices, axis), positions)
        off = relax.op.take(values, _const(0, "int64"), axis=0)
        on = relax.op.take(values, _const(1, "int64"), axis=0)
        return relax.op.where(hot, on, off)


def _integer_power_kernel(size: int, dtype: str, exponent_dtype: str):
    """base ** exponent on ``size`` integers by square-and-multiply, wrapping like NumPy.

    Multiplies in the unsigned type of the base's width, where overflow is defined,
    without branches so the loop vectorizes. A negative exponent truncates like C's
    ``pow``: 1 for a base of 1, +-1 for -1, else 0.
    """
    udtype = f"uint{tvm.runtime.DataType(dtype).bits}"
    size = T.int64(size)  # relax's shapes are int64: a kernel that may fuse must match
    minus_one = -1 if not dtype.startswith("uint") else 1  # unsigned: no -1 (1 is matched first)

    @T.prim_func(private=True, s_tir=True)
    def integer_power(base: T.Buffer((size,), dtype), exponent: T.Buffer((size,), exponent_dtype),
                      out: T.Buffer((size,), dtype)):
        # One accumulator per element: a loop over elements may run as vector lanes.
        acc = T.alloc_buffer((size,), udtype)
        square = T.alloc_buffer((size,), udtype)
        for i in range(size):
            with T.sblock("integer_power"):
                v = T.axis.spatial(size, i)
                T.reads(base[v], exponent[v])
                T.writes(out[v], acc[v], square[v])
                # No scalar lets: they miscompile when TVM vectorizes this loop.
                acc[v] = T.Cast(udtype, 1)
                square[v] = T.Cast(udtype, base[v])
                for bit in range(63):
                    acc[v] = T.Select(
                        T.bitwise_and(T.shift_right(T.Cast("int64", exponent[v]), T.Cast("int64", bit)),
                                      T.int64(1)) == T.int64(1),
                        acc[v] * square[v], acc[v])
                    square[v] = square[v] * square[v]
                out[v] = T.Select(
                    T.Cast("int64", exponent[v]) >= T.int64(0), T.Cast(dtype, acc[v]),
                    T.Select(base[v] == T.Cast(dtype, 1), T.Cast(dtype, 1),
                             T.Select(base[v] == T.Cast(dtype, minus_one),
                                      T.Select(T.Cast("int64", exponent[v]) % T.int64(2) == T.int64(0),
                                               T.Cast(dtype, 1), base[v]),
                                      T.Cast(dtype, 0))))

    return integer_power.with_attr("op_pattern", OPAQUE)


@register_converter("Pow")
class Pow(onnx_frontend.Pow):
    """x ** y with the result in x's dtype, for any mix of float and integer dtypes.

    TVM's power is float-only and wants both dtypes equal: an integer base with a
    float exponent goes through float64, two integers use exact square-and-multiply.
    """

    @classmethod
    def _impl_v7(cls, bb, inputs, attr, params):
        if not _all_tensors(inputs):
            return super()._impl_v7(bb, inputs, attr, params)
        x, y = inputs[0], inputs[1]
        xtype, ytype = _dtype(x), _dtype(y)
        if _is_float(xtype):
            if ytype != xtype:
                y = relax.op.astype(y, xtype)
            return relax.op.power(x, y)
        if _is_float(ytype):
            result = relax.op.power(relax.op.astype(x, "float64"), relax.op.astype(y, "float64"))
            return relax.op.astype(result, xtype)
        shape = list(np.broadcast_shapes(tuple(_shape(x)), tuple(_shape(y))))
        size = int(np.prod(shape, dtype=np.int64))
        flat_x, flat_y = (bb.normalize(relax.op.reshape(relax.op.broadcast_to(v, shape), [size]))
                          for v in (x, y))
        gv = bb.add_func(_integer_power_kernel(size, xtype, ytype), "integer_power")
        out = bb.emit(relax.call_tir(gv, [flat_x, flat_y], relax.TensorType([size], xtype)))
        return relax.op.reshape(out, shape)


def _optimizer_groups(inputs, groups: int) -> list[list]:
    """Split an optimizer's tensors (after R and T) into ``groups`` lists, one per role."""
    tensors = list(inputs[2:])
    count = len(tensors) // groups
    return [tensors[i * count:(i + 1) * count] for i in range(groups)]


@register_converter("Momentum", domain=TRAINING)
class Momentum(OnnxOpConverter):
    """One step of SGD with standard or Nesterov momentum, per the ONNX spec's pseudo code."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        rate, step = inputs[0], inputs[1]
        alpha, beta = attr["alpha"], attr["beta"]
        norm, nesterov = attr["norm_coefficient"], attr["mode"] == b"nesterov"
        new_x, new_v = [], []
        for x, g, v in zip(*_optimizer_groups(inputs, 3)):
            dtype = _dtype(x)
            g_reg = relax.op.add(relax.op.multiply(_const(norm, dtype), x), g)
            beta_adjusted = relax.op.where(relax.op.greater(step, _const(0, _dtype(step))),
                                           _const(beta, dtype), _const(1, dtype))
            v_next = bb.normalize(relax.op.add(relax.op.multiply(_const(alpha, dtype), v),
                                               relax.op.multiply(beta_adjusted, g_reg)))
            direction = relax.op.add(g_reg, relax.op.multiply(_const(alpha, dtype), v_next)) \
                if nesterov else v_next
            new_x.append(bb.normalize(relax.op.subtract(x, relax.op.multiply(rate, direction))))
            new_v.append(v_next)
        return relax.Tuple(new_x + new_v)


@register_converter("Adagrad", domain=TRAINING)
class Adagrad(OnnxOpConverter):
    """One step of Adagrad, per the ONNX spec's pseudo code."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        rate, step = inputs[0], inputs[1]
        decay, epsilon = attr.get("decay_factor", 0.0), attr.get("epsilon", 1e-6)
        norm = attr.get("norm_coefficient", 0.0)
        new_x, new_h = [], []
        for x, g, h in zip(*_optimizer_groups(inputs, 3)):
            dtype = _dtype(x)
            r = relax.op.divide(rate, relax.op.add(_const(1, dtype), relax.op.multiply(
                relax.op.astype(step, dtype), _const(decay, dtype))))
            g_reg = bb.normalize(relax.op.add(relax.op.multiply(_const(norm, dtype), x), g))
            h_next = bb.normalize(relax.op.add(h, relax.op.multiply(g_reg, g_reg)))
            adaptive = relax.op.add(relax.op.sqrt(h_next), _const(epsilon, dtype))
            new_x.append(bb.normalize(relax.op.subtract(
                x, relax.op.divide(relax.op.multiply(r, g_reg), adaptive))))
            new_h.append(h_next)
        return relax.Tuple(new_x + new_h)


@register_converter("Adam", domain=TRAINING)
class Adam(OnnxOpConverter):
    """One step of Adam, per the ONNX spec's pseudo code."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        rate, step = inputs[0], inputs[1]
        alpha, beta = attr.get("alpha", 0.9), attr.get("beta", 0.999)
        epsilon, norm = attr.get("epsilon", 1e-6), attr.get("norm_coefficient", 0.0)
        norm_post = attr.get("norm_coefficient_post", 0.0)
        new_x, new_v, new_h = [], [], []
        for x, g, v, h in zip(*_optimizer_groups(inputs, 4)):
            dtype = _dtype(x)
            one, t = _const(1, dtype), relax.op.astype(step, dtype)
            g_reg = bb.normalize(relax.op.add(relax.op.multiply(_const(norm, dtype), x), g))
            v_next = bb.normalize(relax.op.add(relax.op.multiply(_const(alpha, dtype), v),
                                               relax.op.multiply(_const(1 - alpha, dtype), g_reg)))
            h_next = bb.normalize(relax.op.add(
                relax.op.multiply(_const(beta, dtype), h),
                relax.op.multiply(_const(1 - beta, dtype), relax.op.multiply(g_reg, g_reg))))
            h_sqrt = relax.op.add(relax.op.sqrt(h_next), _const(epsilon, dtype))
            adjusted = relax.op.divide(
                relax.op.multiply(rate, relax.op.sqrt(relax.op.subtract(
                    one, relax.op.power(_const(beta, dtype), t)))),
                relax.op.subtract(one, relax.op.power(_const(alpha, dtype), t)))
            r = relax.op.where(relax.op.greater(step, _const(0, _dtype(step))), adjusted, rate)
            x_next = relax.op.subtract(x, relax.op.divide(relax.op.multiply(r, v_next), h_sqrt))
            new_x.append(bb.normalize(relax.op.multiply(_const(1 - norm_post, dtype), x_next)))
            new_v.append(v_next)
            new_h.append(h_next)
        return relax.Tuple(new_x + new_v + new_h)


def _in_float32(bb, data, compute):
    """``compute(data)`` in float32 for 16-bit floats (their math lowers poorly), else as is."""
    dtype = _dtype(data)
    if dtype in ("float16", "bfloat16"):
        out = compute(bb.normalize(relax.op.astype(data, "float32")), "float32")
        return relax.op.astype(bb.normalize(out), dtype)
    return compute(data, dtype)


def _elu(x, alpha: float, dtype: str):
    negative = relax.op.multiply(_const(alpha, dtype), relax.op.subtract(relax.op.exp(x), _const(1, dtype)))
    return relax.op.where(relax.op.greater(x, _const(0, dtype)), x, negative)


@register_converter("Elu")
class Elu(OnnxOpConverter):
    """ELU with its constants in the input's dtype (TVM's are float32 whatever the input)."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        alpha = float(attr.get("alpha", 1.0))
        return _in_float32(bb, inputs[0], lambda x, dtype: _elu(x, alpha, dtype))


@register_converter("Clip")
class Clip(onnx_frontend.Clip):
    """Clip as Relax ``maximum``/``minimum`` ops rather than TVM's prebuilt TE calls, so graph
    passes see a ReLU6 as elementwise: the channels-last pass keeps it in NHWC and fuses it
    into the conv before it, instead of transposing around every activation."""

    @classmethod
    def _bounded(cls, bb, x, bound, for_min: bool):
        dtype = str(x.ty.dtype)
        value = bound.value.numpy() if isinstance(bound, Constant) else None
        if value is not None:
            if np.issubdtype(value.dtype, np.floating) and np.isnan(value).any():
                value = np.where(np.isnan(value), -np.inf if for_min else np.inf, value)
            bound = relax.const(value.astype(dtype), dtype)
        else:
            bound = cls._sanitize_nan_clip_bound(bb, bound, for_min=for_min)
        return relax.op.maximum(x, bound) if for_min else relax.op.minimum(x, bound)

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        dtype = str(inputs[0].ty.dtype)
        x = inputs[0]
        for name, default, for_min in (("min", -np.inf, True), ("max", np.inf, False)):
            x = bb.normalize(cls._bounded(bb, x, relax.const(float(attr.get(name, default)), dtype), for_min))
        return x

    @classmethod
    def _impl_v13(cls, bb, inputs, attr, params):
        x = inputs[0]
        for bound, for_min in ((inputs[1], True), (inputs[2], False)):
            if bound is not None:
                x = bb.normalize(cls._bounded(bb, x, bound, for_min))
        return x


@register_converter("Celu")
class Celu(OnnxOpConverter):
    """CELU: alpha * elu(x / alpha), in the input's dtype."""

    @classmethod
    def _impl_v12(cls, bb, inputs, attr, params):
        alpha = float(attr.get("alpha", 1.0))

        def celu(x, dtype):
            scaled = relax.op.divide(x, _const(alpha, dtype))
            return relax.op.multiply(_const(alpha, dtype), _elu(scaled, 1.0, dtype))

        return _in_float32(bb, inputs[0], celu)


@register_converter("Mod")
class Mod(onnx_frontend.Mod):
    """Integer and float remainder with the sign of the divisor (``fmod=0``) or dividend.

    TVM's float floor-mod computes ``x - floor(x / y) * y``, which is NaN for an
    infinite divisor; NumPy's rule corrects C's fmod instead.
    """

    @classmethod
    def _impl_v10(cls, bb, inputs, attr, params):
        if not _all_tensors(inputs):
            return super()._impl_v10(bb, inputs, attr, params)
        x, y = inputs[0], inputs[1]
        dtype = _dtype(x)
        if attr.get("fmod", 0) == 1:
            return relax.op.mod(x, y)
        if not _is_float(dtype):
            return relax.op.floor_mod(x, y)
        zero = _const(0, dtype)
        rem = bb.normalize(relax.op.mod(x, y))
        differ = relax.op.logical_xor(relax.op.less(rem, zero), relax.op.less(y, zero))
        fix = relax.op.logical_and(relax.op.not_equal(rem, zero), differ)
        rem = relax.op.where(fix, relax.op.add(rem, y), rem)
        signed_zero = relax.op.where(relax.op.less(y, zero), _const(-0.0, dtype), zero)
        return relax.op.where(relax.op.equal(rem, zero), signed_zero, rem)


@register_converter("IsInf")
class IsInf(OnnxOpConverter):
    """isinf, restricted to +inf or -inf by ``detect_positive`` / ``detect_negative``."""

    @classmethod
    def _impl_v10(cls, bb, inputs, attr, params):
        x = inputs[0]
        positive, negative = attr.get("detect_positive", 1), attr.get("detect_negative", 1)
        if positive and negative:
            return relax.op.isinf(x)
        if not positive and not negative:
            return relax.op.zeros_like(x, "bool")
        inf = _const(math.inf if positive else -math.inf, _dtype(x))
        return relax.op.equal(x, inf)


class _ReduceExtreme:
    """ReduceMax / ReduceMin around TVM's converter: bool (which TVM's max/min reject)
    through uint8, and an empty reduction as its identity (-inf / +inf, the dtype's
    extremes, false / true): TVM's kernel leaves it uninitialised for some dtypes."""

    largest = True

    @classmethod
    def _identity(cls, dtype: str):
        if dtype == "bool":
            return not cls.largest
        if _is_float(dtype):
            return -math.inf if cls.largest else math.inf
        info = np.iinfo(dtype)
        return info.min if cls.largest else info.max

    @classmethod
    def _reduce(cls, impl, bb, inputs, attr, params):
        data = inputs[0]
        dtype = _dtype(data)
        if dtype == "bool":
            as_bytes = bb.normalize(relax.op.astype(data, "uint8"))
            out = bb.normalize(impl(bb, _inputs([as_bytes, *list(inputs)[1:]]), attr, params))
            out = bb.normalize(relax.op.astype(out, "bool"))
        else:
            out = bb.normalize(impl(bb, inputs, attr, params))
        if _is_static(data) and _is_static(out) and 0 in _shape(data) and 0 not in _shape(out):
            return relax.op.broadcast_to(_const(cls._identity(dtype), dtype), _shape(out))
        return out


@register_converter("ReduceMax")
class ReduceMax(_ReduceExtreme, onnx_frontend.ReduceMax):
    """ReduceMax, also on bool and over empty sets."""

    @classmethod
    def _impl_v11(cls, bb, inputs, attr, params):
        return cls._reduce(onnx_frontend.ReduceMax._impl_v11, bb, inputs, attr, params)

    @classmethod
    def _impl_v18(cls, bb, inputs, attr, params):
        return cls._reduce(onnx_frontend.ReduceMax._impl_v18, bb, inputs, attr, params)


@register_converter("ReduceMin")
class ReduceMin(_ReduceExtreme, onnx_frontend.ReduceMin):
    """ReduceMin, also on bool and over empty sets."""

    largest = False

    @classmethod
    def _impl_v11(cls, bb, inputs, attr, params):
        return cls._reduce(onnx_frontend.ReduceMin._impl_v11, bb, inputs, attr, params)

    @classmethod
    def _impl_v18(cls, bb, inputs, attr, params):
        return cls._reduce(onnx_frontend.ReduceMin._impl_v18, bb, inputs, attr, params)


@register_converter("EyeLike")
class EyeLike(OnnxOpConverter):
    """Identity-like matrix of the input's shape, in the ``dtype`` attribute if given."""

    @classmethod
    def _impl_v9(cls, bb, inputs, attr, params):
        dtype = get_type(attr["dtype"]) if "dtype" in attr else _dtype(inputs[0])
        rows, cols = _shape(inputs[0])
        return relax.op.eye(rows, cols, attr.get("k", 0), dtype)


@register_converter("ReverseSequence")
class ReverseSequence(OnnxOpConverter):
    """Reverse the first ``sequence_lens[b]`` steps of each batch entry."""

    @classmethod
    def _impl_v10(cls, bb, inputs, attr, params):
        return relax.op.reverse_sequence(inputs[0], inputs[1], seq_axis=attr.get("time_axis", 0),
                                         batch_axis=attr.get("batch_axis", 1))


def _det_kernel(batch: int, n: int, dtype: str):
    """Determinants of ``batch`` n x n matrices: Gaussian elimination with partial pivoting."""
    batch, n = T.int64(batch), T.int64(n)  # relax's shapes are int64: a kernel that may fuse must match

    @T.prim_func(private=True, s_tir=True)
    def det(a: T.Buffer((batch, n, n), dtype), out: T.Buffer((batch,), dtype)):
        # Scratch per matrix: the loop over matrices may run in parallel or as vector lanes.
        lu = T.alloc_buffer((batch, n, n), dtype)
        acc = T.alloc_buffer((batch,), dtype)
        pivot = T.alloc_buffer((batch,), "int64")
        swap = T.alloc_buffer((batch,), dtype)
        for b in range(batch):
            with T.sblock("det"):
                v = T.axis.spatial(batch, b)
                T.reads(a[v, 0:n, 0:n])
                T.writes(out[v], lu[v, 0:n, 0:n], acc[v], pivot[v], swap[v])
                for i, j in T.grid(n, n):
                    lu[v, i, j] = a[v, i, j]
                acc[v] = T.Cast(dtype, 1)
                for k in range(n):
                    pivot[v] = k
                    for i in range(k + 1, n):
                        if T.abs(lu[v, i, k]) > T.abs(lu[v, pivot[v], k]):
                            pivot[v] = i
                    if pivot[v] != k:
                        acc[v] = -acc[v]
                        for j in range(n):
                            swap[v] = lu[v, k, j]
                            lu[v, k, j] = lu[v, pivot[v], j]
                            lu[v, pivot[v], j] = swap[v]
                    acc[v] = acc[v] * lu[v, k, k]
                    if lu[v, k, k] != T.Cast(dtype, 0):
                        for i in range(k + 1, n):
                            for j in range(k + 1, n):
                                lu[v, i, j] = lu[v, i, j] - lu[v, i, k] / lu[v, k, k] * lu[v, k, j]
                out[v] = acc[v]

    return det.with_attr("op_pattern", OPAQUE)


@register_converter("Det")
class Det(OnnxOpConverter):
    """Determinant of the trailing n x n matrices (16-bit floats computed in float32)."""

    @classmethod
    def _impl_v11(cls, bb, inputs, attr, params):
        data = inputs[0]
        *lead, n, _ = _shape(data)
        batch = int(np.prod(lead, dtype=np.int64))

        def det(x, dtype):
            gv = bb.add_func(_det_kernel(batch, n, dtype), "det")
            flat = bb.normalize(relax.op.reshape(x, [batch, n, n]))
            out = bb.emit(relax.call_tir(gv, [flat], relax.TensorType([batch], dtype)))
            return relax.op.reshape(out, lead)

        return _in_float32(bb, data, det)


def _tensor_scatter(cache: te.Tensor, update: te.Tensor, write_indices: te.Tensor, axis: int,
                    circular: bool) -> te.Tensor:
    """The cache with each batch entry's update written at its write index along ``axis``."""
    max_len, seq_len = int(cache.shape[axis]), int(update.shape[axis])

    def element(*index):
        pos = index[axis].astype("int64") - write_indices(index[0])
        if circular:
            pos = tirx.floormod(pos, tirx.const(max_len, "int64"))
        inside = tirx.all(pos >= 0, pos < seq_len)
        source = list(index)
        source[axis] = tirx.Select(inside, pos, tirx.const(0, "int64")).astype(str(index[axis].ty))
        return tirx.if_then_else(inside, update(*source), cache(*index))

    return te.compute(cache.shape, element, name="tensor_scatter")


@register_converter("TensorScatter")
class TensorScatter(OnnxOpConverter):
    """KV-cache style update: write ``update`` into ``past_cache`` at per-batch indices."""

    @classmethod
    def _impl_v24(cls, bb, inputs, attr, params):
        cache, update, write_indices = inputs[0], inputs[1], inputs[2]
        axis = attr.get("axis", -2) % len(_shape(cache))
        if write_indices is None:
            write_indices = relax.const(np.zeros(_shape(cache)[0], "int64"))
        elif _dtype(write_indices) != "int64":
            write_indices = bb.normalize(relax.op.astype(write_indices, "int64"))
        circular = attr.get("mode", b"linear") == b"circular"
        return bb.emit_te(_tensor_scatter, cache, update, write_indices, axis, circular)


def _pool_geometry(in_spatial, attr):
    """(kernel, strides, dilations, pads before, output sizes) of a MaxPool node."""
    kernel = list(attr["kernel_shape"])
    dims = len(kernel)
    strides = list(attr.get("strides", [1] * dims))
    dilations = list(attr.get("dilations", [1] * dims))
    auto_pad = attr.get("auto_pad", b"NOTSET").decode()
    pads = list(attr.get("pads", [0] * (2 * dims)))
    ceil_mode = attr.get("ceil_mode", 0)
    begin, out = [], []
    for i in range(dims):
        extent = (kernel[i] - 1) * dilations[i] + 1
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            size = -(-in_spatial[i] // strides[i])
            total = max((size - 1) * strides[i] + extent - in_spatial[i], 0)
            begin.append(total // 2 if auto_pad == "SAME_UPPER" else total - total // 2)
        elif auto_pad == "VALID":
            size = (in_spatial[i] - extent) // strides[i] + 1
            begin.append(0)
        else:
            span = in_spatial[i] + pads[i] + pads[i + dims] - extent
            size = (-(-span // strides[i]) if ceil_mode else span // strides[i]) + 1
            if ceil_mode and (size - 1) * strides[i] >= in_spatial[i] + pads[i]:
                size -= 1  # the last window may not start in the end padding
            begin.append(pads[i])
        out.append(size)
    return kernel, strides, dilations, begin, out


def _max_pool_argmax(data: te.Tensor, kernel, strides, dilations, begin, out_spatial, column_major: bool):
    """Max pooling and the flat input index of each maximum (the first on ties)."""
    batch, channels, *spatial = (int(d) for d in data.shape)
    dtype = str(data.dtype)
    lowest = tirx.const(-math.inf, dtype) if _is_float(dtype) else tirx.min_value(dtype)
    never = tirx.const(np.iinfo(np.int64).max, "int64")

    def combine(lhs, rhs):
        take_rhs = tirx.any(rhs[1] > lhs[1], tirx.all(rhs[1] == lhs[1], rhs[0] < lhs[0]))
        return tirx.Select(take_rhs, rhs[0], lhs[0]), tirx.Select(take_rhs, rhs[1], lhs[1])

    argmax = te.comm_reducer(combine, lambda index_t, value_t: (never, lowest), name="argmax")
    window = [te.reduce_axis((0, k), name=f"k{i}") for i, k in enumerate(kernel)]
    order = list(range(len(spatial)))[::-1] if column_major else list(range(len(spatial)))

    def element(n, c, *o):
        pos = [o[i] * strides[i] - begin[i] + window[i] * dilations[i] for i in range(len(spatial))]
        inside = tirx.all(*[tirx.all(p >= 0, p < spatial[i]) for i, p in enumerate(pos)])
        flat = (n * channels + c).astype("int64")
        for i in order:
            flat = flat * spatial[i] + pos[i].astype("int64")
        value = tirx.if_then_else(inside, data(n, c, *pos), lowest)
        return argmax((tirx.Select(inside, flat, never), value), axis=window)

    index, value = te.compute([batch, channels, *out_spatial], element, name="max_pool_argmax")
    return [value, index]


@register_converter("MaxPool")
class MaxPool(onnx_frontend.MaxPool):
    """MaxPool; with a second output, also the flat index of each maximum (TE kernel)."""

    @classmethod
    def _impl_v8(cls, bb, inputs, attr, params):
        if attr["tvm_custom"]["num_outputs"] < 2:
            return super()._impl_v1(bb, inputs, attr, params)
        data = inputs[0]
        kernel, strides, dilations, begin, out = _pool_geometry(_shape(data)[2:], attr)
        result = bb.emit_te(_max_pool_argmax, data, kernel, strides, dilations, begin, out,
                            attr.get("storage_order", 0) == 1)
        return relax.Tuple([bb.emit(relax.TupleGetItem(result, 0)), bb.emit(relax.TupleGetItem(result, 1))])


@register_converter("Split")
class Split(onnx_frontend.Split):
    """Split; with an empty piece, one slice per output (relax's split wants increasing cuts)."""

    @classmethod
    def _pieces(cls, bb, data, sizes, axis):
        axis = axis % len(_shape(data))
        outputs, start = [], 0
        for size in sizes:
            outputs.append(bb.emit(relax.op.strided_slice(data, [axis], [start], [start + size])))
            start += size
        return relax.Tuple(outputs)

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        sizes = attr.get("split")
        if sizes is not None and 0 in sizes:
            return cls._pieces(bb, inputs[0], list(sizes), attr.get("axis", 0))
        return super()._impl_v1(bb, inputs, attr, params)

    @classmethod
    def _impl_v13(cls, bb, inputs, attr, params):
        if inputs[1] is not None:
            sizes = get_constant(inputs[1], params)
            if isinstance(sizes, tvm.ir.GenericConst) and 0 in sizes.value.numpy():
                return cls._pieces(bb, inputs[0], sizes.value.numpy().tolist(), attr.get("axis", 0))
        return super()._impl_v13(bb, inputs, attr, params)


@register_converter("BitShift")
class BitShift(onnx_frontend.BitShift):
    """Shift with ONNX's result for a negative shift or one of the type's width or more:
    the sign fill (-1 for a right shift of a negative signed value), else 0."""

    @classmethod
    def _impl_v11(cls, bb, inputs, attr, params):
        if not _all_tensors(inputs):
            return super()._impl_v11(bb, inputs, attr, params)
        x, y = inputs[0], inputs[1]
        dtype, ytype = _dtype(x), _dtype(y)
        right = attr.get("direction", b"LEFT") == b"RIGHT"
        shifted = bb.normalize(relax.op.right_shift(x, y) if right else relax.op.left_shift(x, y))
        bits = tvm.runtime.DataType(dtype).bits
        out_of_range = relax.op.greater_equal(y, _const(bits, ytype))
        if not ytype.startswith("uint"):
            out_of_range = relax.op.logical_or(out_of_range, relax.op.less(y, _const(0, ytype)))
        zero = _const(0, dtype)
        fill = relax.op.where(relax.op.less(x, zero), _const(-1, dtype), zero) \
            if right and not dtype.startswith("uint") else zero
        return relax.op.where(out_of_range, fill, shifted)


@register_converter("TopK")
class TopK(onnx_frontend.TopK):
    """TopK; uint64 (which TVM's topk rejects) sorts an order-preserving int64 image."""

    @classmethod
    def _impl_v11(cls, bb, inputs, attr, params):
        data = inputs[0]
        if _dtype(data) != "uint64":
            return super()._impl_v11(bb, inputs, attr, params)
        flipped = bb.normalize(relax.op.bitwise_xor(data, relax.const(np.uint64(1 << 63), "uint64")))
        image = bb.emit_te(topi.reinterpret, flipped, "int64")
        result = bb.normalize(super()._impl_v11(bb, _inputs([image, *list(inputs)[1:]]), attr, params))
        indices = bb.emit(relax.TupleGetItem(result, 1))
        axis = attr.get("axis", -1) % len(_shape(data))
        return relax.Tuple([bb.emit(relax.op.gather_elements(data, indices, axis)), indices])


@register_converter("Binarizer", domain=ML)
class Binarizer(OnnxOpConverter):
    """1 where the input exceeds ``threshold``, else 0, in the input's dtype."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        x = inputs[0]
        dtype = _dtype(x)
        threshold = attr.get("threshold", 0.0)
        if not _is_float(dtype):  # for integers, x > t exactly when x > floor(t)
            threshold = math.floor(threshold)
        above = relax.op.greater(x, _const(threshold, dtype))
        return relax.op.where(above, _const(1, dtype), _const(0, dtype))


@register_converter("ArrayFeatureExtractor", domain=ML)
class ArrayFeatureExtractor(OnnxOpConverter):
    """Pick entries of the last axis by index; a 1-D input gives a [1, k] result."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        x, indices = inputs[0], inputs[1]
        if len(_shape(indices)) != 1:
            indices = relax.op.reshape(indices, [-1])
        if len(_shape(x)) == 1:
            x = relax.op.expand_dims(x, 0)
        return relax.op.take(x, indices, axis=-1)


@register_converter("Slice")
class Slice(OnnxOpConverter):
    """Opsets 1-9 give starts/ends/axes as attributes; TVM's converter only reads inputs."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        bounds = [relax.const(np.asarray(attr[k], "int64"), "int64") if k in attr else None
                  for k in ("starts", "ends", "axes")]
        return onnx_frontend.Slice._impl_v13(bb, onnx_frontend.onnx_input([inputs[0], *bounds, None]), attr, params)

    @classmethod
    def _impl_v10(cls, bb, inputs, attr, params):
        return onnx_frontend.Slice._impl_v13(bb, inputs, attr, params)
