"""QDQ to QOperator: ``Q(DQ(a) @ DQ(W)) -> QLinearMatMul(a, W)`` before import.

Static quantization (ONNX Runtime's ``quantize_static``, QDQ format) writes a quantized matmul
as float ops between ``DequantizeLinear`` and ``QuantizeLinear``. Run as written, that is a
float32 matmul on dequantized values. :func:`fuse_qdq` rewrites each ``MatMul`` whose inputs
are ``DequantizeLinear`` outputs (activations per tensor, a constant 2-D weight per tensor or
per column) and whose only reader is a per-tensor ``QuantizeLinear`` into one
``QLinearMatMul``: integer products accumulated exactly in int32 and requantized once, which
is what ONNX Runtime runs too. The result differs from the float32 chain only in that
rounding (within one quantization step of the output).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def _const(model_consts: dict, name: str):
    tensor = model_consts.get(name)
    return None if tensor is None else numpy_helper.to_array(tensor)


def fuse_qdq(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with its QDQ matmuls as ``QLinearMatMul`` (the model itself when
    there are none)."""
    graph = model.graph
    consts = {t.name: t for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}

    def dequantize(name, weight: bool):
        node = producer.get(name)
        if node is None or node.op_type != "DequantizeLinear" or node.domain not in ("", "ai.onnx"):
            return None
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("block_size", 0):
            return None
        scale = _const(consts, node.input[1])
        if scale is None or scale.dtype != np.float32:
            return None
        if weight:
            value = _const(consts, node.input[0])
            if value is None or value.ndim != 2 or value.dtype not in (np.int8, np.uint8):
                return None
            if scale.size != 1 and not (scale.ndim == 1 and scale.size == value.shape[1]
                                        and attrs.get("axis", 1) % 2 == 1):
                return None  # per column only (axis 1 of [K, N])
        elif scale.size != 1:
            return None
        return node

    fused, drop = {}, set()
    for node in graph.node:
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or node.output[0] in outputs:
            continue
        a, w = dequantize(node.input[0], False), dequantize(node.input[1], True)
        after = readers.get(node.output[0], [])
        if a is None or w is None or len(after) != 1 or after[0].op_type != "QuantizeLinear":
            continue
        quantize = after[0]
        q_attrs = {x.name: helper.get_attribute_value(x) for x in quantize.attribute}
        y_scale = _const(consts, quantize.input[1])
        if y_scale is None or y_scale.size != 1 or q_attrs.get("block_size", 0) or q_attrs.get("output_dtype", 0) \
                or len(quantize.input) < 3 or not quantize.input[2]:
            continue

        def parts(dq):
            zero = dq.input[2] if len(dq.input) > 2 and dq.input[2] else None
            return [dq.input[0], dq.input[1], zero]

        a_parts, w_parts = parts(a), parts(w)
        if a_parts[2] is None or w_parts[2] is None:
            continue  # QLinearMatMul needs both zero points (absent ones are rare in QDQ models)
        fused[id(node)] = helper.make_node(
            "QLinearMatMul", a_parts + w_parts + [quantize.input[1], quantize.input[2]], [quantize.output[0]],
            name=f"{node.name or 'matmul'}.qlinear")
        drop.add(id(quantize))
    if not fused:
        return model
    model = onnx.ModelProto.FromString(model.SerializeToString())
    nodes = []
    for original, copy in zip(graph.node, model.graph.node):
        if id(original) in drop:
            continue
        nodes.append(fused.get(id(original), copy))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model
