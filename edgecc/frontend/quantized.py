"""Quantized ONNX ops deployed models contain, imported with exact integer semantics.

Integer products accumulate in int32; a quantized output is requantized as ONNX
Runtime does (MLAS's ``MlasRequantizeOutput``): ``float32(acc) * multiplier``,
rounded half to even, plus the zero point, saturated to the output type, with the
multiplier computed in float32 in ONNX Runtime's order (``a_scale * b_scale /
y_scale``). Dequantizing is ``float32(int32(x) - int32(zero_point)) * scale``.
These are reference lowerings (everything dequantized or widened to int32);
fast kernels are a later pass's business.

- ``QLinearConv``, ``ConvInteger``, ``QLinearMatMul``, and ONNX Runtime's
  ``com.microsoft::QGemm``, ``com.microsoft::QLinearAdd`` and ``com.microsoft::MatMulNBits``.
- ``DequantizeLinear`` / ``QuantizeLinear`` with per-tensor, per-axis and blocked
  (opset 21 ``block_size``) parameters; float8 types stay with TVM's converters.
- 4-bit tensors arrive held in int8/uint8 with their values (:mod:`.narrow`).

``MatMulInteger`` stays TVM's converter, which already matches ONNX Runtime.
"""

from __future__ import annotations

import numpy as np
from tvm import relax
from tvm.relax.frontend.onnx import onnx_frontend
from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter

from .converters import register_converter


# -- helpers -----------------------------------------------------------------------------------
def _dtype(expr) -> str:
    return str(expr.ty.dtype.dtype)


def _shape(expr) -> list[int]:
    return [int(d) for d in expr.ty.shape.values]


def _cast(bb, expr, dtype: str):
    expr = bb.normalize(expr)
    return expr if _dtype(expr) == dtype else bb.normalize(relax.op.astype(expr, dtype))


def _f32(bb, expr):
    return _cast(bb, expr, "float32")


def _i32(bb, expr):
    return _cast(bb, expr, "int32")


def _centered(bb, x, zero_point):
    """``int32(x) - int32(zero_point)``; the zero point is absent (0) or broadcastable."""
    x = _i32(bb, x)
    return bb.normalize(x if zero_point is None else relax.op.subtract(x, _i32(bb, zero_point)))


def _integer_range(dtype: str) -> tuple[int, int]:
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


def _saturate(bb, value, zero_point, dtype: str):
    """``clip(value + zero_point)`` cast to ``dtype``: ``value`` is float32 and already
    rounded, so adding the zero point and clipping in float32 is exact."""
    low, high = _integer_range(dtype)
    if zero_point is not None:
        value = relax.op.add(value, _f32(bb, zero_point))
    return relax.op.astype(relax.op.clip(value, low, high), dtype)


def _requantize(bb, acc, multiplier, zero_point, dtype: str):
    """An int32 accumulator requantized as MLAS does: round-half-even(float32(acc) * multiplier)."""
    value = relax.op.round(relax.op.multiply(_f32(bb, acc), multiplier))
    return bb.normalize(_saturate(bb, value, zero_point, dtype))


def _as_scalar(bb, param):
    """A one-element parameter as a scalar, so it broadcasts against any rank."""
    if param is None or _shape(param) == []:
        return param
    return bb.normalize(relax.op.reshape(param, []))


def _per_row(bb, param):
    """A per-row parameter ([M]) of a matrix operand, shaped [M, 1]; one element: a scalar."""
    if param is None:
        return None
    shape = _shape(param)
    if int(np.prod(shape)) == 1:
        return _as_scalar(bb, param)
    return bb.normalize(relax.op.expand_dims(param, -1)) if len(shape) == 1 else param


def _per_channel(bb, param, ndim: int, axis: int = 1):
    """A per-channel parameter ([C]) shaped to broadcast along ``axis`` of a rank-``ndim``
    tensor; one element: a scalar."""
    if param is None:
        return None
    shape = _shape(param)
    if int(np.prod(shape)) == 1:
        return _as_scalar(bb, param)
    if len(shape) != 1:
        return param
    target = [1] * ndim
    target[axis] = -1
    return bb.normalize(relax.op.reshape(param, target))


def _multiplier(bb, *scales, divisor=None):
    """The requantization multiplier in float32, multiplied left to right then divided
    (ONNX Runtime's order; float scales of other types are widened first)."""
    product = _f32(bb, scales[0])
    for scale in scales[1:]:
        product = relax.op.multiply(product, _f32(bb, scale))
    if divisor is not None:
        product = relax.op.divide(product, _f32(bb, divisor))
    return bb.normalize(product)


def _convert(op_type: str, opset: int, bb, inputs, attr, params):
    """Another op's converter from the (edgecc-extended) map, as the importer would call it."""
    converter = onnx_frontend._get_convert_map()[op_type].get_converter(opset)
    return converter(bb, inputs, dict(attr), params)


def _integer_conv(bb, x, x_zero_point, w, w_zero_point, attr, params):
    """``conv(int32(x) - x_zp, int32(w) - w_zp)`` in int32 (padding is then the zero point,
    as ONNX Runtime pads). ``w_zp`` is per tensor or per output channel."""
    ndim = len(_shape(w))
    x = _centered(bb, x, _as_scalar(bb, x_zero_point))
    w = _centered(bb, w, _per_channel(bb, w_zero_point, ndim, axis=0))
    return bb.normalize(_convert("Conv", 11, bb, [x, w, None], attr, params))


def _is_float_type(expr) -> bool:
    return _dtype(expr).startswith(("float", "bfloat"))


# -- convolutions and products -----------------------------------------------------------------
@register_converter("ConvInteger")
class ConvInteger(OnnxOpConverter):
    """``conv(x - x_zero_point, w - w_zero_point)`` with an int32 output."""

    @classmethod
    def _impl_v10(cls, bb, inputs, attr, params):
        x, w, x_zero_point, w_zero_point = inputs[0], inputs[1], inputs[2], inputs[3]
        return _integer_conv(bb, x, x_zero_point, w, w_zero_point, attr, params)


@register_converter("QLinearConv")
class QLinearConv(OnnxOpConverter):
    """Quantized conv: an int32 conv plus the int32 bias, requantized to ``y_zero_point``'s type."""

    @classmethod
    def _impl_v10(cls, bb, inputs, attr, params):
        x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, bias = inputs[:9]
        ndim = len(_shape(w))
        acc = _integer_conv(bb, x, x_zero_point, w, w_zero_point, attr, params)
        if bias is not None:
            acc = bb.normalize(relax.op.add(acc, _per_channel(bb, _i32(bb, bias), ndim)))
        multiplier = _multiplier(bb, _as_scalar(bb, x_scale), _per_channel(bb, w_scale, ndim),
                                 divisor=_as_scalar(bb, y_scale))
        return _requantize(bb, acc, multiplier, _as_scalar(bb, y_zero_point), _dtype(y_zero_point))


@register_converter("QLinearMatMul")
class QLinearMatMul(OnnxOpConverter):
    """Quantized matmul: an int32 matmul requantized to ``y_zero_point``'s type. ``a``'s
    parameters are per tensor or per row, ``b``'s per tensor or per column."""

    @classmethod
    def _impl_v10(cls, bb, inputs, attr, params):
        a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point = inputs[:8]
        acc = relax.op.matmul(_centered(bb, a, _per_row(bb, a_zero_point)),
                              _centered(bb, b, _as_scalar_or_self(bb, b_zero_point)), out_dtype="int32")
        multiplier = _multiplier(bb, _per_row(bb, a_scale), _as_scalar_or_self(bb, b_scale),
                                 divisor=_as_scalar(bb, y_scale))
        return _requantize(bb, acc, multiplier, _as_scalar(bb, y_zero_point), _dtype(y_zero_point))


def _as_scalar_or_self(bb, param):
    """A column parameter ([N], or [..., 1, N]) already broadcasts; one element: a scalar."""
    if param is None or int(np.prod(_shape(param))) != 1:
        return param
    return _as_scalar(bb, param)


@register_converter("QGemm", domain="com.microsoft")
class QGemm(OnnxOpConverter):
    """ONNX Runtime's quantized Gemm: ``alpha * a_scale * b_scale * ((A - a_zp)(B - b_zp) + C)``,
    float32 without ``y_zero_point``, else requantized (divided by ``y_scale`` where given).
    ``C`` is int32 in the accumulator's scale; ``b``'s parameters are per tensor or per column."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        a, a_scale, a_zero_point, b, b_scale, b_zero_point = inputs[:6]
        c, y_scale, y_zero_point = inputs[6], inputs[7], inputs[8]
        a = _centered(bb, a, _as_scalar(bb, a_zero_point))
        if attr.get("transA", 0):
            a = relax.op.permute_dims(a)
        b_zero_point = _as_scalar_or_self(bb, b_zero_point)
        if attr.get("transB", 0):  # b is [N, K]: a per-column parameter is per row here
            b = relax.op.permute_dims(_centered(bb, b, _per_row(bb, b_zero_point)))
        else:
            b = _centered(bb, b, b_zero_point)
        acc = relax.op.matmul(a, b, out_dtype="int32")
        if c is not None:
            acc = relax.op.add(acc, _i32(bb, c))
        alpha = relax.const(float(attr.get("alpha", 1.0)), "float32")
        multiplier = _multiplier(bb, alpha, _as_scalar(bb, a_scale), _as_scalar_or_self(bb, b_scale),
                                 divisor=_as_scalar(bb, y_scale))
        if y_zero_point is None:
            return relax.op.multiply(_f32(bb, acc), multiplier)
        return _requantize(bb, acc, multiplier, _as_scalar(bb, y_zero_point), _dtype(y_zero_point))


@register_converter("QLinearAdd", domain="com.microsoft")
class QLinearAdd(OnnxOpConverter):
    """ONNX Runtime's quantized Add: ``Q(DQ(A) + DQ(B))`` into ``C``'s parameters, computed in
    float32 as MLAS does (per-tensor parameters; a broadcast ``B``, e.g. a bias)."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        a, a_scale, a_zero_point, b, b_scale, b_zero_point, c_scale, c_zero_point = inputs[:8]

        def dequantized(x, scale, zero_point):
            return relax.op.multiply(_f32(bb, _centered(bb, x, _as_scalar(bb, zero_point))), _as_scalar(bb, _f32(bb, scale)))

        total = relax.op.add(dequantized(a, a_scale, a_zero_point), dequantized(b, b_scale, b_zero_point))
        value = relax.op.round(relax.op.divide(total, _as_scalar(bb, _f32(bb, c_scale))))
        dtype = _dtype(c_zero_point) if c_zero_point is not None else _dtype(a)
        return bb.normalize(_saturate(bb, value, _as_scalar(bb, c_zero_point), dtype))


@register_converter("MatMulNBits", domain="com.microsoft")
class MatMulNBits(OnnxOpConverter):
    """ONNX Runtime's block-quantized matmul ``A @ dequant(B)^T + bias``.

    ``B`` is uint8 ``[N, n_blocks, blob_size]``: each block's ``block_size`` codes of
    ``bits`` bits packed low bits first. A code dequantizes to ``(q - zp) * scale`` with
    one scale per (column, block); zero points are packed like ``B`` (uint8), or
    unpacked in the scales' float type, or absent (``2 ** (bits - 1)``). ``g_idx``
    maps each of the K rows to its block (act-order); without it row k is in block
    ``k // block_size``. Computed in float32, the result cast to ``A``'s type. A constant
    4-bit ``B`` becomes :func:`_four_bit` (an INT4 kernel on CPU targets; with
    ``accuracy_level`` 4, one that may quantize ``A`` to int8 as ONNX Runtime does).
    """

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        a, b, scales, zero_points = inputs[0], inputs[1], inputs[2], inputs[3]
        g_idx, bias = inputs[4], inputs[5]
        k, n, bits, block_size = attr["K"], attr["N"], attr.get("bits", 4), attr["block_size"]
        if bits not in (2, 4, 8):
            raise ValueError(f"MatMulNBits: bits={bits} is not supported (2, 4 or 8)")
        four_bit = _four_bit_weight(bb, b, scales, zero_points, g_idx, k, n, bits, block_size,
                                    int(attr.get("accuracy_level", 0)))
        if four_bit is not None:
            out = relax.op.matmul(_f32(bb, a), relax.op.permute_dims(four_bit))
            if bias is not None:
                out = relax.op.add(out, _f32(bb, bias))
            out = bb.normalize(out)
            return out if _dtype(a) == "float32" else relax.op.astype(out, _dtype(a))
        n_blocks = -(-k // block_size)
        codes = _unpack_bits(bb, relax.op.reshape(b, [n, -1]), bits)  # [N, n_blocks * block_size]
        scale = relax.op.reshape(_f32(bb, scales), [n, n_blocks])
        if zero_points is None:
            zero = relax.const(float(2 ** (bits - 1)), "float32")
        elif _is_float_type(zero_points):
            zero = relax.op.reshape(_f32(bb, zero_points), [n, n_blocks])
        else:
            zero = _unpack_bits(bb, relax.op.reshape(zero_points, [n, -1]), bits)
            zero = _f32(bb, relax.op.strided_slice(zero, axes=[1], begin=[0], end=[n_blocks]))
        blocks = None if g_idx is None else _i32(bb, g_idx)
        codes = relax.op.strided_slice(codes, axes=[1], begin=[0], end=[k])  # the last block's padding
        scale = _per_row_of_block(bb, scale, blocks, block_size, k)
        if zero_points is not None:
            zero = _per_row_of_block(bb, zero, blocks, block_size, k)
        weight = relax.op.multiply(relax.op.subtract(_f32(bb, codes), zero), scale)  # [N, K]
        out = relax.op.matmul(_f32(bb, a), relax.op.permute_dims(bb.normalize(weight)))
        if bias is not None:
            out = relax.op.add(out, _f32(bb, bias))
        out = bb.normalize(out)
        return out if _dtype(a) == "float32" else relax.op.astype(out, _dtype(a))


def _constant(expr) -> np.ndarray | None:
    from tvm.ir.expr import Constant

    return expr.value.numpy() if isinstance(expr, Constant) else None


def _nibbles(packed: np.ndarray) -> np.ndarray:
    """uint8 ``[rows, bytes]`` as its 4-bit codes ``[rows, 2 * bytes]``, low nibble first."""
    return np.stack([packed & 15, packed >> 4], axis=-1).reshape(packed.shape[0], -1)


def _four_bit(bb, codes_nk: np.ndarray, scales_ng: np.ndarray, zeros_ng: np.ndarray, group: int,
              accuracy_level: int = 0):
    """A 4-bit weight ``[N, K]`` as :func:`edgecc.schedules.int4.dequantize` of its constant codes
    (0..15), scales and zero points: the form :mod:`edgecc.passes.quantize` lowers to an INT4
    kernel (constant folding makes it float32 elsewhere). ``accuracy_level`` is MatMulNBits'
    (4: the activations may be quantized to int8)."""
    from edgecc.schedules import int4

    return bb.emit(bb.call_te(
        int4.dequantize, relax.const(np.ascontiguousarray(codes_nk, dtype=np.uint8)),
        relax.const(np.ascontiguousarray(scales_ng, dtype=np.float32)),
        relax.const(np.ascontiguousarray(zeros_ng, dtype=np.uint8)), group,
        primfunc_name_hint="dequantize_int4",
        primfunc_attrs={int4.DEQUANTIZE_ATTR: group, int4.ACCURACY_ATTR: accuracy_level}))


def _four_bit_weight(bb, b, scales, zero_points, g_idx, k: int, n: int, bits: int, block_size: int,
                     accuracy_level: int):
    """MatMulNBits' constant 4-bit ``B`` as :func:`_four_bit` ``[N, K]``; None when it is not
    one (other bits, act-order ``g_idx``, float zero points, ``K`` not whole blocks)."""
    packed, scale = _constant(b), _constant(scales)
    if bits != 4 or g_idx is not None or packed is None or scale is None or k % block_size \
            or scale.dtype != np.float32:
        return None
    blocks = k // block_size
    codes = _nibbles(packed.reshape(n, -1))[:, :k]
    if zero_points is None:
        zeros = np.full((n, blocks), 8, np.uint8)
    else:
        zeros = _constant(zero_points)
        if zeros is None or zeros.dtype != np.uint8:
            return None
        zeros = _nibbles(zeros.reshape(n, -1))[:, :blocks]
    return _four_bit(bb, codes, scale.reshape(n, blocks), zeros, block_size, accuracy_level)


def _blocked_four_bit(bb, x, scale, zero_point, axis: int, block_size: int):
    """A constant 2-D DequantizeLinear input with 4-bit values (int4/uint4 held in bytes),
    blocked along one axis, as :func:`_four_bit` (transposed back when blocked along axis 0);
    None otherwise."""
    values, scales = _constant(x), _constant(scale)
    zeros = None if zero_point is None else _constant(zero_point)
    if values is None or scales is None or values.ndim != 2 or not block_size or scales.dtype != np.float32 \
            or values.shape[axis] % block_size or (zero_point is not None and zeros is None):
        return None
    low, high = (-8, 7) if values.dtype == np.int8 else (0, 15)
    if values.dtype not in (np.int8, np.uint8) or values.min(initial=0) < low or values.max(initial=0) > high:
        return None
    offset = -low  # signed codes as unsigned: q + 8 and z + 8 leave q - z as it is
    if zeros is None:
        zeros = np.zeros(scales.shape, np.int32)
    if axis == 0:  # [K, N] blocked along K (MatMul's B): as [N, K]
        values, scales, zeros = values.T, scales.T, zeros.T
    codes = (values.astype(np.int32) + offset).astype(np.uint8)
    weight = _four_bit(bb, codes, scales, (zeros.astype(np.int32) + offset).astype(np.uint8), block_size)
    return bb.normalize(relax.op.permute_dims(weight)) if axis == 0 else weight


def _per_row_of_block(bb, param, blocks, block_size: int, k: int):
    """A per-(column, block) parameter ``[N, n_blocks]`` expanded to ``[N, K]``: by the
    row-to-block map ``blocks`` where given, else each block repeated ``block_size`` times."""
    if blocks is not None:
        return bb.normalize(relax.op.take(param, blocks, axis=1))
    expanded = relax.op.repeat(param, block_size, axis=1)
    return bb.normalize(relax.op.strided_slice(expanded, axes=[1], begin=[0], end=[k]))


def _unpack_bits(bb, packed, bits: int):
    """uint8 ``[rows, bytes]`` holding ``8 // bits`` codes a byte, low bits first, as int32
    ``[rows, bytes * 8 // bits]``."""
    packed = _i32(bb, packed)
    if bits == 8:
        return packed
    mask = relax.const((1 << bits) - 1, "int32")
    fields = [bb.normalize(relax.op.bitwise_and(relax.op.right_shift(packed, relax.const(shift, "int32")),
                                                mask)) for shift in range(0, 8, bits)]
    stacked = bb.normalize(relax.op.stack(fields, axis=2))  # [rows, bytes, codes a byte]
    return bb.normalize(relax.op.reshape(stacked, [_shape(packed)[0], -1]))


# -- QuantizeLinear / DequantizeLinear ---------------------------------------------------------
def _block_param(bb, param, x_shape: list[int], axis: int, block_size: int):
    """A quantization parameter broadcastable against ``x``: per tensor (one element), per
    axis (1-D along ``axis``) or blocked (``x``'s rank, each entry repeated over its block
    of ``block_size`` along ``axis``, the last block cut to ``x``'s extent)."""
    if param is None:
        return None
    if block_size:
        expanded = relax.op.repeat(param, block_size, axis=axis)
        return bb.normalize(relax.op.strided_slice(expanded, axes=[axis], begin=[0], end=[x_shape[axis]]))
    if int(np.prod(_shape(param))) == 1:
        return _as_scalar(bb, param)
    return _per_channel(bb, param, len(x_shape), axis)


def _axis(attr, x_shape: list[int]) -> int:
    rank = max(len(x_shape), 1)
    return attr.get("axis", 1) % rank


@register_converter("DequantizeLinear")
class DequantizeLinear(OnnxOpConverter):
    """``(int32(x) - int32(zero_point)) * scale`` in float32, cast to the output type (the
    scale's from opset 19, ``output_dtype`` from 23); float8 inputs go to TVM's converter."""

    @classmethod
    def _dequantize(cls, bb, inputs, attr, params, opset: int):
        x, scale, zero_point = inputs[0], inputs[1], inputs[2]
        if _is_float_type(x):
            return onnx_frontend.DequantizeLinear.get_converter(opset)(bb, inputs, attr, params)
        x_shape = _shape(x)
        axis, block_size = _axis(attr, x_shape), attr.get("block_size", 0)
        out_dtype = "float32" if opset < 19 else _dtype(scale)
        if attr.get("output_dtype", 0):
            out_dtype = onnx_frontend.get_type(attr["output_dtype"])
        four_bit = _blocked_four_bit(bb, x, scale, zero_point, axis, block_size) if out_dtype == "float32" else None
        if four_bit is not None:
            return four_bit
        zero_point = _block_param(bb, zero_point, x_shape, axis, block_size)
        scale = _block_param(bb, scale, x_shape, axis, block_size)
        value = relax.op.multiply(_f32(bb, _centered(bb, x, zero_point)), _f32(bb, scale))
        return value if out_dtype == "float32" else relax.op.astype(value, out_dtype)

    @classmethod
    def _impl_v10(cls, bb, inputs, attr, params):
        return cls._dequantize(bb, inputs, attr, params, 10)

    @classmethod
    def _impl_v19(cls, bb, inputs, attr, params):
        return cls._dequantize(bb, inputs, attr, params, 19)

    @classmethod
    def _impl_v21(cls, bb, inputs, attr, params):
        return cls._dequantize(bb, inputs, attr, params, 21)

    @classmethod
    def _impl_v23(cls, bb, inputs, attr, params):
        return cls._dequantize(bb, inputs, attr, params, 23)


@register_converter("QuantizeLinear")
class QuantizeLinear(OnnxOpConverter):
    """``saturate(round_half_even(float32(x) / scale) + zero_point)`` into the output type
    (``output_dtype``, else the zero point's, else uint8), as MLAS computes it in float32
    for float and float16 inputs. Other outputs (float8) go to TVM's converter."""

    @classmethod
    def _quantize(cls, bb, inputs, attr, params, opset: int):
        x, scale, zero_point = inputs[0], inputs[1], inputs[2]
        if attr.get("output_dtype", 0):
            out_dtype = onnx_frontend.get_type(attr["output_dtype"])
        else:
            out_dtype = "uint8" if zero_point is None else _dtype(zero_point)
        if not out_dtype.startswith(("int", "uint")):
            return onnx_frontend.QuantizeLinear.get_converter(opset)(bb, inputs, attr, params)
        x_shape = _shape(x)
        axis, block_size = _axis(attr, x_shape), attr.get("block_size", 0)
        scale = _block_param(bb, scale, x_shape, axis, block_size)
        zero_point = _block_param(bb, zero_point, x_shape, axis, block_size)
        value = relax.op.round(relax.op.divide(_f32(bb, x), _f32(bb, scale)))
        return _saturate(bb, value, zero_point, out_dtype)

    @classmethod
    def _impl_v10(cls, bb, inputs, attr, params):
        return cls._quantize(bb, inputs, attr, params, 10)

    @classmethod
    def _impl_v19(cls, bb, inputs, attr, params):
        return cls._quantize(bb, inputs, attr, params, 19)

    @classmethod
    def _impl_v21(cls, bb, inputs, attr, params):
        return cls._quantize(bb, inputs, attr, params, 21)

    @classmethod
    def _impl_v23(cls, bb, inputs, attr, params):
        return cls._quantize(bb, inputs, attr, params, 23)
