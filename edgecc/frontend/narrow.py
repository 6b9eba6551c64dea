"""Sub-byte and 8-bit float types (float8, float4, int4, int2) as bytes TVM can compute on.

TVM has no arithmetic for ONNX's narrow types (``FLOAT8E4M3FN``, ``FLOAT8E5M2``
and their ``FNUZ`` forms, ``FLOAT4E2M1``, ``INT4``/``UINT4``, ``INT2``/``UINT2``).
:func:`lower_narrow_types` rewrites a model so that every such tensor is held
in one byte each: the bit pattern (``uint8``) for the float formats, the value
(``int8``/``uint8``) for the integer ones. ``Cast``/``CastLike``,
``QuantizeLinear`` and ``DequantizeLinear`` from and to those types become
ordinary ops on the bytes:

- decoding a float format is a lookup in its 256-entry table of values;
- encoding is round-to-nearest-even by counting the midpoints between
  representable magnitudes below ``|x|`` (ties go to the even code), with the
  codes for infinities, NaN, overflow and -0 taken from ONNX's reference
  ``Cast`` for the node's ``saturate`` setting;
- integer formats truncate and wrap, as a C cast (and the reference) does.

Ops that only move data (reshape, transpose, gather...) work on the bytes
unchanged; arithmetic on narrow tensors is rejected with the op named. The
compiled model's inputs and outputs of these types are bytes too:
:func:`to_storage` and :func:`from_storage` convert at the boundary.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, shape_inference

from edgecc.errors import UnsupportedOpError

NARROW_FLOATS = {TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E4M3FNUZ, TensorProto.FLOAT8E5M2,
                 TensorProto.FLOAT8E5M2FNUZ, TensorProto.FLOAT4E2M1}
NARROW_INTS = {TensorProto.INT4: (TensorProto.INT8, 4, True), TensorProto.UINT4: (TensorProto.UINT8, 4, False)}
for _name, _bits, _signed in (("INT2", 2, True), ("UINT2", 2, False)):
    if hasattr(TensorProto, _name):
        NARROW_INTS[getattr(TensorProto, _name)] = (TensorProto.INT8 if _signed else TensorProto.UINT8,
                                                    _bits, _signed)
NARROW = NARROW_FLOATS | set(NARROW_INTS)

# Ops that move or select elements without computing on them.
DATA_MOVEMENT = {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Concat", "Slice",
                 "Gather", "GatherElements", "GatherND", "Split", "Expand", "Tile", "Shape", "Size",
                 "DepthToSpace", "SpaceToDepth", "Compress", "Where", "ReverseSequence", "Optional"}


def storage_type(elem_type: int) -> int:
    """The one-byte ONNX type a narrow type is held in (others unchanged)."""
    if elem_type in NARROW_FLOATS:
        return TensorProto.UINT8
    if elem_type in NARROW_INTS:
        return NARROW_INTS[elem_type][0]
    return elem_type


def _np_dtype(elem_type: int):
    return helper.tensor_dtype_to_np_dtype(elem_type)


def to_storage(array: np.ndarray, elem_type: int) -> np.ndarray:
    """A narrow-typed array as the bytes the compiled model takes."""
    if elem_type in NARROW_FLOATS:
        return np.asarray(array).astype(_np_dtype(elem_type)).view(np.uint8)
    if elem_type in NARROW_INTS:
        return np.asarray(array).astype(_np_dtype(elem_type)).astype(
            np.int8 if NARROW_INTS[elem_type][2] else np.uint8)
    return array


def from_storage(array: np.ndarray, elem_type: int) -> np.ndarray:
    """The compiled model's bytes back as the narrow type the ONNX model declares."""
    if elem_type in NARROW_FLOATS:
        return np.asarray(array, dtype=np.uint8).view(_np_dtype(elem_type))
    if elem_type in NARROW_INTS:
        return np.asarray(array).astype(_np_dtype(elem_type))
    return array


def _decode_table(elem_type: int) -> np.ndarray:
    codes = 16 if elem_type == TensorProto.FLOAT4E2M1 else 256
    return np.arange(codes, dtype=np.uint8).view(_np_dtype(elem_type)).astype(np.float32)


def _reference_codes(elem_type: int, values, saturate: bool) -> list[int]:
    from onnx.reference import ReferenceEvaluator

    node = helper.make_node("Cast", ["x"], ["y"], to=elem_type, saturate=int(saturate))
    out = ReferenceEvaluator(node).run(None, {"x": np.array(values, dtype=np.float32)})[0]
    return [int(c) for c in np.asarray(out).view(np.uint8)]


class _Builder:
    """Appends nodes and constants to a graph under fresh names."""

    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph
        self.nodes: list[onnx.NodeProto] = []
        self.count = 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{hint}__n{self.count}"

    def const(self, value, hint="c") -> str:
        name = self.name(hint)
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], out: str | None = None, **attrs) -> str:
        out = out or self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out


def _decode(b: _Builder, bits: str, elem_type: int) -> str:
    """float32 values of narrow-float codes held in uint8."""
    table = b.const(_decode_table(elem_type), "f8table")
    index = b.op("Cast", [bits], to=TensorProto.INT64)
    return b.op("Gather", [table, index], axis=0)


def _encode(b: _Builder, x32: str, elem_type: int, saturate: bool, out: str | None = None) -> str:
    """uint8 codes of float32 values in a narrow float format (see the module doc)."""
    table = _decode_table(elem_type)
    sign_mask = 8 if elem_type == TensorProto.FLOAT4E2M1 else 128
    positive = table[:sign_mask]
    finite = int(np.argmax(~np.isfinite(positive))) if not np.isfinite(positive).all() else len(positive)
    magnitudes = positive[:finite]  # codes 0..finite-1, increasing in value
    top_step = magnitudes[-1] - magnitudes[-2]
    mids = np.append((magnitudes[:-1] + magnitudes[1:]) / 2, magnitudes[-1] + top_step / 2).astype(np.float32)
    inf, ninf, nan, big, nbig, nzero = _reference_codes(
        elem_type, [np.inf, -np.inf, np.nan, 1e30, -1e30, -0.0], saturate)

    last = b.const(np.array([-1], dtype=np.int64), "axes")
    a = b.op("Unsqueeze", [b.op("Abs", [x32]), last])
    above = b.op("Cast", [b.op("Greater", [a, b.const(mids, "mids")])], to=TensorProto.INT64)
    k = b.op("ReduceSum", [above, last], keepdims=0)
    tie = b.op("Cast", [b.op("Equal", [a, b.const(mids, "mids")])], to=TensorProto.INT64)
    tie = b.op("ReduceSum", [tie, last], keepdims=0)
    odd = b.op("Mod", [k, b.const(np.array(2, dtype=np.int64))])
    k = b.op("Add", [k, b.op("Mul", [tie, odd])])
    overflow = b.op("GreaterOrEqual", [k, b.const(np.array(finite, dtype=np.int64))])
    zero = b.const(np.array(0.0, dtype=np.float32))
    negative = b.op("Or", [b.op("Less", [x32, zero]),
                           b.op("Less", [b.op("Reciprocal", [x32]), zero])])  # -0 has 1/x = -inf
    signed = b.op("Where", [b.op("Equal", [k, b.const(np.array(0, dtype=np.int64))]),
                            b.const(np.array(nzero, dtype=np.int64)),
                            b.op("Add", [k, b.const(np.array(sign_mask, dtype=np.int64))])])
    code = b.op("Where", [negative, signed, k])
    code = b.op("Where", [overflow, b.op("Where", [negative, b.const(np.array(nbig, dtype=np.int64)),
                                                  b.const(np.array(big, dtype=np.int64))]), code])
    is_inf = b.op("IsInf", [x32], detect_negative=0)
    is_ninf = b.op("IsInf", [x32], detect_positive=0)
    code = b.op("Where", [is_inf, b.const(np.array(inf, dtype=np.int64)), code])
    code = b.op("Where", [is_ninf, b.const(np.array(ninf, dtype=np.int64)), code])
    code = b.op("Where", [b.op("IsNaN", [x32]), b.const(np.array(nan, dtype=np.int64)), code])
    return b.op("Cast", [code], out, to=TensorProto.UINT8)


def _wrap_int(b: _Builder, x: str, src: int, elem_type: int, out: str | None = None) -> str:
    """Values cast to a narrow integer type: truncate toward zero, wrap modulo 2**bits."""
    storage, bits, signed = NARROW_INTS[elem_type]
    low = -(1 << (bits - 1)) if signed else 0
    v = b.op("Cast", [x], to=TensorProto.INT64)
    v = b.op("Sub", [v, b.const(np.array(low, dtype=np.int64))])
    v = b.op("Mod", [v, b.const(np.array(1 << bits, dtype=np.int64))])
    v = b.op("Add", [v, b.const(np.array(low, dtype=np.int64))])
    return b.op("Cast", [v], out, to=storage)


def _to_float32(b: _Builder, x: str, src: int) -> str:
    if src in NARROW_FLOATS:
        return _decode(b, x, src)
    if src == TensorProto.FLOAT:
        return x
    return b.op("Cast", [x], to=TensorProto.FLOAT)


def _cast(b: _Builder, x: str, src: int, dst: int, saturate: bool, out: str) -> None:
    if dst in NARROW_FLOATS:
        _encode(b, _to_float32(b, x, src), dst, saturate, out)
    elif dst in NARROW_INTS:
        value = _to_float32(b, x, src) if src in NARROW_FLOATS else x
        if src in NARROW_INTS:
            value = b.op("Cast", [x], to=TensorProto.INT64)
        _wrap_int(b, value, src, dst, out)
    elif src in NARROW_FLOATS:
        b.op("Cast", [_decode(b, x, src)], out, to=dst)
    else:  # narrow int -> wide
        b.op("Cast", [x], out, to=dst)


def _along(b: _Builder, param: str, rank: int, axis: int, param_rank: int) -> str:
    """A per-axis (1-D) quantization parameter reshaped to broadcast along ``axis``."""
    if param_rank != 1 or rank <= 1:
        return param
    shape = [1] * rank
    shape[axis % rank] = -1
    return b.op("Reshape", [param, b.const(np.array(shape, dtype=np.int64), "shape")])


def _attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def lower_narrow_types(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with narrow-typed tensors held in bytes (see the module doc); unchanged
    (the same object) when it has none."""
    inferred = shape_inference.infer_shapes(model, strict_mode=False)
    graph = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(graph.input) + list(graph.value_info) + list(graph.output) if v.type.HasField("tensor_type")}
    types.update({t.name: t.data_type for t in graph.initializer})
    if not any(t in NARROW for t in types.values()) and not any(
            n.op_type in ("Cast", "QuantizeLinear") and any(
                a.name in ("to", "output_dtype") and a.i in NARROW for a in n.attribute) for n in graph.node):
        return model

    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    del graph.value_info[:]
    for value in list(graph.input) + list(graph.output):
        ttype = value.type.tensor_type
        ttype.elem_type = storage_type(ttype.elem_type)
    for tensor in graph.initializer:
        if tensor.data_type in NARROW:
            stored = to_storage(numpy_helper.to_array(tensor), tensor.data_type)
            tensor.CopyFrom(numpy_helper.from_array(stored, tensor.name))

    def rank(name):
        value = next((v for v in list(inferred.graph.input) + list(inferred.graph.value_info)
                      + list(inferred.graph.output) if v.name == name), None)
        if value is not None and value.type.tensor_type.HasField("shape"):
            return len(value.type.tensor_type.shape.dim)
        tensor = next((t for t in inferred.graph.initializer if t.name == name), None)
        return len(tensor.dims) if tensor is not None else 0

    b = _Builder(graph)
    for node in graph.node:
        ins = [types.get(n) for n in node.input]
        outs = [types.get(n) for n in node.output]
        attrs = _attrs(node)
        if node.op_type in ("Cast", "CastLike") and (ins[0] in NARROW or outs[0] in NARROW):
            _cast(b, node.input[0], ins[0], outs[0], bool(attrs.get("saturate", 1)), node.output[0])
        elif node.op_type == "DequantizeLinear" and ins[0] in NARROW_INTS:
            b.nodes.append(node)  # the bytes hold the values: an int8/uint8 dequantize
        elif node.op_type == "DequantizeLinear" and ins[0] in NARROW:
            x_rank, axis = rank(node.input[0]), attrs.get("axis", 1)
            if attrs.get("block_size", 0):
                raise UnsupportedOpError(f"blocked DequantizeLinear of {TensorProto.DataType.Name(ins[0])} "
                                         f"tensors (node '{node.name}')")
            x = _to_float32(b, node.input[0], ins[0])
            if len(node.input) > 2 and node.input[2]:
                zp = _to_float32(b, node.input[2], ins[2])
                x = b.op("Sub", [x, _along(b, zp, x_rank, axis, rank(node.input[2]))])
            scale = b.op("Cast", [node.input[1]], to=TensorProto.FLOAT)
            y = b.op("Mul", [x, _along(b, scale, x_rank, axis, rank(node.input[1]))])
            b.op("Cast", [y], node.output[0], to=outs[0] or types.get(node.input[1]))
        elif node.op_type == "QuantizeLinear" and outs[0] in NARROW_INTS:
            # Quantize to the byte type (saturating there), then saturate to the narrow range.
            storage, bits, signed = NARROW_INTS[outs[0]]
            low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
            wide = onnx.NodeProto.FromString(node.SerializeToString())
            wide.output[0] = b.name("quantized")
            for attr in wide.attribute:
                if attr.name == "output_dtype":
                    attr.i = storage
            b.nodes.append(wide)
            np_storage = helper.tensor_dtype_to_np_dtype(storage)
            b.op("Clip", [wide.output[0], b.const(np.array(low, dtype=np_storage)),
                          b.const(np.array(high, dtype=np_storage))], node.output[0])
        elif node.op_type == "QuantizeLinear" and outs[0] in NARROW_FLOATS:
            x_rank, axis = rank(node.input[0]), attrs.get("axis", 1)
            if attrs.get("block_size", 0):
                raise UnsupportedOpError(f"blocked QuantizeLinear to {TensorProto.DataType.Name(outs[0])} "
                                         f"(node '{node.name}')")
            x = b.op("Cast", [node.input[0]], to=TensorProto.FLOAT)
            scale = b.op("Cast", [node.input[1]], to=TensorProto.FLOAT)
            y = b.op("Div", [x, _along(b, scale, x_rank, axis, rank(node.input[1]))])
            zp = None
            if len(node.input) > 2 and node.input[2]:
                zp = _along(b, _to_float32(b, node.input[2], ins[2]), x_rank, axis, rank(node.input[2]))
            if zp is not None:
                y = b.op("Add", [y, zp])
            _encode(b, y, outs[0], bool(attrs.get("saturate", 1)), node.output[0])
        elif any(t in NARROW for t in ins + outs) and node.op_type not in DATA_MOVEMENT:
            kind = TensorProto.DataType.Name(next(t for t in ins + outs if t in NARROW))
            raise UnsupportedOpError(f"{node.op_type} on {kind} tensors (node '{node.name or node.op_type}'): "
                                     "edgecc computes on narrow types only through Cast, QuantizeLinear "
                                     "and DequantizeLinear")
        else:
            b.nodes.append(node)
    del graph.node[:]
    graph.node.extend(b.nodes)
    return model


def narrow_io(model: onnx.ModelProto) -> tuple[dict[str, int], dict[str, int]]:
    """``({input: narrow type}, {output: narrow type})`` for the model's narrow-typed I/O."""
    def pick(values):
        return {v.name: v.type.tensor_type.elem_type for v in values
                if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type in NARROW}

    return pick(model.graph.input), pick(model.graph.output)
