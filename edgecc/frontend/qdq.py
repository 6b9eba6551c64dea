"""QDQ to QOperator: ``Q(DQ(a) @ DQ(W)) -> QLinearMatMul`` and ``Q(Conv(DQ(x), DQ(W), DQ(b)))
-> QLinearConv`` before import.

Static quantization (ONNX Runtime's ``quantize_static``, QDQ format) writes a quantized matmul
or conv as a float op between ``DequantizeLinear`` and ``QuantizeLinear``. Run as written,
that is float32 arithmetic on dequantized values. :func:`fuse_qdq` rewrites each such op into
its QOperator form, integer products accumulated exactly in int32 and requantized once, which
is what ONNX Runtime runs too:

- ``MatMul`` whose inputs are ``DequantizeLinear`` outputs (activations per tensor, a constant
  2-D weight per tensor or per column) into ``QLinearMatMul``;
- ``Gemm`` (``alpha = beta = 1``, no ``transA``) of the same operands into ONNX Runtime's
  ``com.microsoft.QGemm``, with its bias as for convs below;
- ``Conv`` of a per-tensor dequantized input and a constant weight dequantized per tensor or
  per output channel (axis 0), with a bias that is either absent, an int32 ``DequantizeLinear``
  (zero point 0), or a float constant, into ``QLinearConv``. The bias is requantized to the
  int32 scale ``x_scale * w_scale`` where its own scale differs (float biases: rounded to it).
  A ``Relu`` alone between the conv and its ``QuantizeLinear`` becomes a clamp at the output's
  zero point (``Q(relu(x)) = max(Q(x), zero point)``; nothing when that is the type's minimum).

Each op's only reader must be a per-tensor ``QuantizeLinear`` with a zero point. The result
differs from the float32 chain only in that rounding (within one quantization step of the
output).

Ops that only move or select values (``MaxPool``, ``Concat``, ``Reshape``, ``Transpose``, ...,
``Dropout`` at inference) between ``DequantizeLinear`` and ``QuantizeLinear`` run on the
quantized values instead: exactly the same result, a quarter of the bytes. An input whose
scale or zero point differs from the output's is requantized to it first (``Concat`` of
branches quantized apart).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def _const(model_consts: dict, name: str):
    tensor = model_consts.get(name)
    return None if tensor is None else numpy_helper.to_array(tensor)


# Ops that move or select values without arithmetic: on quantized values they give exactly the
# quantization of their float result. MOVE_FIRST_INPUT ones take further (shape/axes) inputs as is.
MOVES = ("MaxPool", "Concat", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Dropout", "Identity")
MOVE_FIRST_INPUT = ("Reshape", "Squeeze", "Unsqueeze", "Dropout")


def _attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def fuse_qdq(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with its QDQ matmuls as ``QLinearMatMul`` and its QDQ convs as
    ``QLinearConv`` (the model itself when there are none)."""
    graph = model.graph
    consts = {t.name: t for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    added: list[onnx.TensorProto] = []

    def dequantize(name, weight_rank: int = 0, channel_axis: int = 1):
        """The ``DequantizeLinear`` producing ``name``: per tensor for activations
        (``weight_rank`` 0); for a constant weight of that rank per tensor or along
        ``channel_axis``."""
        node = producer.get(name)
        if node is None or node.op_type != "DequantizeLinear" or node.domain not in ("", "ai.onnx"):
            return None
        attrs = _attrs(node)
        if attrs.get("block_size", 0):
            return None
        scale = _const(consts, node.input[1])
        if scale is None or scale.dtype != np.float32:
            return None
        if weight_rank:
            value = _const(consts, node.input[0])
            if value is None or value.ndim != weight_rank or value.dtype not in (np.int8, np.uint8):
                return None
            if scale.size != 1 and not (scale.ndim == 1 and scale.size == value.shape[channel_axis]
                                        and attrs.get("axis", 1) % weight_rank == channel_axis):
                return None
        elif scale.size != 1:
            return None
        return node

    def parts(dq):
        zero = dq.input[2] if len(dq.input) > 2 and dq.input[2] else None
        return [dq.input[0], dq.input[1], zero]

    def relu_after(node):
        """The ``Relu`` that alone reads ``node``'s output, or None."""
        after = readers.get(node.output[0], [])
        if node.output[0] in outputs or len(after) != 1 or after[0].op_type != "Relu":
            return None
        return after[0]

    def quantize_after(node):
        """The per-tensor ``QuantizeLinear`` that alone reads ``node``'s output, or None."""
        after = readers.get(node.output[0], [])
        if node.output[0] in outputs or len(after) != 1 or after[0].op_type != "QuantizeLinear":
            return None
        quantize = after[0]
        q_attrs = _attrs(quantize)
        y_scale = _const(consts, quantize.input[1])
        if y_scale is None or y_scale.size != 1 or q_attrs.get("block_size", 0) or q_attrs.get("output_dtype", 0) \
                or len(quantize.input) < 3 or not quantize.input[2]:
            return None
        return quantize

    def int32_bias(name, x_dq, w_dq):
        """The name of an int32 bias at scale ``x_scale * w_scale`` equal to the bias ``name``
        (a DQ of int32 with zero point 0 or a float constant), or None."""
        scale = (_const(consts, x_dq.input[1]).astype(np.float32).reshape(())
                 * _const(consts, w_dq.input[1]).astype(np.float32).reshape(-1))
        node = producer.get(name)
        if node is not None and node.op_type == "DequantizeLinear":
            values, own = _const(consts, node.input[0]), _const(consts, node.input[1])
            zero = _const(consts, node.input[2]) if len(node.input) > 2 and node.input[2] else None
            if values is None or own is None or values.dtype != np.int32 or values.ndim != 1 or \
                    (zero is not None and np.any(zero != 0)):
                return None
            if np.array_equal(np.broadcast_to(own, scale.shape), scale):
                return node.input[0]
            real = values.astype(np.float64) * own.astype(np.float64)
        else:
            real = _const(consts, name)
            if real is None or real.dtype != np.float32 or real.ndim != 1:
                return None
            real = real.astype(np.float64)
        if np.any(scale == 0):
            return None
        quantized = np.round(real / scale.astype(np.float64))
        if np.abs(quantized).max(initial=0) >= 2 ** 31 - 1:
            return None
        tensor = numpy_helper.from_array(quantized.astype(np.int32), f"{name}.int32")
        added.append(tensor)
        return tensor.name

    def same_parameters(dq, q) -> bool:
        if len(dq.input) < 3 or not dq.input[2]:
            return False
        pairs = [(_const(consts, dq.input[i]), _const(consts, q.input[i])) for i in (1, 2)]
        return all(a is not None and b is not None and a.dtype == b.dtype and a.shape == b.shape
                   and np.array_equal(a, b) for a, b in pairs)

    def quantized_op(node, quantize):
        """``node`` rewritten to read the quantized tensors behind its ``DequantizeLinear``
        inputs and write ``quantize``'s output (inputs quantized differently are requantized
        to it), or None."""
        moved = node.input[:1] if node.op_type in MOVE_FIRST_INPUT else node.input
        if node.op_type == "MaxPool" and (len(node.output) > 1 and node.output[1]):
            return None
        if not moved or any(dequantize(name) is None for name in moved):
            return None
        inputs, extra = [], []
        for index, name in enumerate(moved):
            dq = dequantize(name)
            if same_parameters(dq, quantize):
                inputs.append(dq.input[0])
            else:
                requantized = f"{quantize.output[0]}.in{index}"
                extra.append(helper.make_node("QuantizeLinear", [name, quantize.input[1], quantize.input[2]],
                                              [requantized], name=f"{node.name or node.op_type}.requantize{index}"))
                inputs.append(requantized)
        if node.op_type in ("Dropout", "Identity"):
            return extra + [helper.make_node("Identity", inputs, [quantize.output[0]],
                                             name=f"{node.name or node.op_type}.quantized")]
        return extra + [helper.make_node(node.op_type, inputs + list(node.input[len(moved):]), [quantize.output[0]],
                                         name=f"{node.name or node.op_type}.quantized", **_attrs(node))]

    fused, drop = {}, set()
    for node in graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in ("MatMul", "Gemm", "Conv") + tuple(MOVES):
            continue
        if node.op_type in MOVES and any(out in outputs for out in node.output[1:]):
            continue
        relu = relu_after(node) if node.op_type == "Conv" else None
        quantize = quantize_after(relu if relu is not None else node)
        if quantize is None:
            continue
        if node.op_type in MOVES:
            nodes = quantized_op(node, quantize)
            if nodes is None:
                continue
            fused[id(node)] = nodes
        elif node.op_type == "Gemm":
            attrs = _attrs(node)
            trans_b = attrs.get("transB", 0)
            if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
                continue
            a, w = dequantize(node.input[0]), dequantize(node.input[1], 2, 0 if trans_b else 1)
            if a is None or w is None or parts(a)[2] is None or parts(w)[2] is None:
                continue
            bias = ""
            if len(node.input) > 2 and node.input[2]:
                bias = int32_bias(node.input[2], a, w)
                if bias is None:
                    continue
            fused[id(node)] = helper.make_node(
                "QGemm", parts(a) + parts(w) + [bias, quantize.input[1], quantize.input[2]], [quantize.output[0]],
                name=f"{node.name or 'gemm'}.qlinear", domain="com.microsoft", transB=trans_b)
        elif node.op_type == "MatMul":
            a, w = dequantize(node.input[0]), dequantize(node.input[1], 2, 1)
            if a is None or w is None:
                continue
            a_parts, w_parts = parts(a), parts(w)
            if a_parts[2] is None or w_parts[2] is None:
                continue  # QLinearMatMul needs both zero points (absent ones are rare in QDQ models)
            fused[id(node)] = helper.make_node(
                "QLinearMatMul", a_parts + w_parts + [quantize.input[1], quantize.input[2]], [quantize.output[0]],
                name=f"{node.name or 'matmul'}.qlinear")
        else:
            weight = producer.get(node.input[1])
            rank = _const(consts, weight.input[0]).ndim if weight is not None and weight.input[0] in consts else 0
            x, w = dequantize(node.input[0]), dequantize(node.input[1], rank, 0) if rank >= 3 else None
            if x is None or w is None:
                continue
            x_parts, w_parts = parts(x), parts(w)
            if x_parts[2] is None or w_parts[2] is None:
                continue
            bias = []
            if len(node.input) > 2 and node.input[2]:
                name = int32_bias(node.input[2], x, w)
                if name is None:
                    continue
                bias = [name]
            zero = _const(consts, quantize.input[2])
            clamp = relu is not None and int(zero) > np.iinfo(zero.dtype).min  # Q(relu(x)) = max(Q(x), zero)
            conv = helper.make_node(
                "QLinearConv", x_parts + w_parts + [quantize.input[1], quantize.input[2]] + bias,
                [f"{quantize.output[0]}.unclamped" if clamp else quantize.output[0]],
                name=f"{node.name or 'conv'}.qlinear", **{k: v for k, v in _attrs(node).items()})
            fused[id(node)] = [conv] + ([helper.make_node("Max", [conv.output[0], quantize.input[2]],
                                                          [quantize.output[0]], name=f"{conv.name}.relu")]
                                        if clamp else [])
            if relu is not None:
                drop.add(id(relu))
        drop.add(id(quantize))
    if not fused:
        return model
    model = onnx.ModelProto.FromString(model.SerializeToString())
    nodes = []
    for original, copy in zip(graph.node, model.graph.node):
        if id(original) in drop:
            continue
        replacement = fused.get(id(original), copy)
        nodes.extend(replacement if isinstance(replacement, list) else [replacement])
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(added)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model
