"""``--quantize int4``: group-wise 4-bit weight-only quantization of an fp32 ONNX model.

Every ``MatMul`` whose ``B`` is a constant 2-D float32 weight ``[K, N]`` (and every ``Gemm``
with ``transA=0``, ``alpha=beta=1`` and a constant 2-D ``B``) with ``K`` a multiple of the
group size becomes ONNX Runtime's ``com.microsoft.MatMulNBits`` (bits 4, ``block_size`` the
group size), so the quantized model is one ONNX Runtime can run too. Per column ``n`` and
group ``g`` of ``group_size`` consecutive inputs, asymmetric round-to-nearest:

    scale = (max - min) / 15      (min <= 0 <= max: zero is exact)
    zero  = clip(round(-min / scale), 0, 15)
    q     = clip(round(w / scale) + zero, 0, 15)        w ~ (q - zero) * scale

Weights narrower than 16 inputs or not a multiple of the group size stay float32. The error
this costs is the model's: ``bench/int4.py`` reports it against fp32 for a transformer block.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgecc.errors import UserInputError

QUANTIZE_MODES = (None, "int4")
GROUP_SIZES = (16, 32, 64, 128, 256)
DEFAULT_GROUP_SIZE = 32


@dataclasses.dataclass
class Quantized:
    """One weight quantized: the node, its ``[K, N]`` and the group size."""

    node: str
    weight: list[int]
    group_size: int


def check_group_size(group_size: int) -> int:
    if group_size not in GROUP_SIZES:
        raise UserInputError(f"--group-size must be one of {', '.join(map(str, GROUP_SIZES))}, got {group_size}")
    return group_size


def quantize_weight(weight_kn: np.ndarray, group_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(codes [N, K] uint8, scales [N, G] float32, zeros [N, G] uint8)`` of a ``[K, N]`` weight."""
    k, n = weight_kn.shape
    groups = weight_kn.T.reshape(n, k // group_size, group_size).astype(np.float64)
    low = np.minimum(groups.min(axis=2), 0.0)
    high = np.maximum(groups.max(axis=2), 0.0)
    scale = (high - low) / 15.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    zero = np.clip(np.round(-low / scale), 0, 15)
    codes = np.clip(np.round(groups / scale[:, :, None]) + zero[:, :, None], 0, 15)
    return codes.reshape(n, k).astype(np.uint8), scale, zero.astype(np.uint8)


def _pack_pairs(values: np.ndarray) -> np.ndarray:
    """uint8 codes ``[..., 2m]`` as bytes ``[..., m]``, the first of each pair in the low nibble."""
    if values.shape[-1] % 2:
        values = np.concatenate([values, np.zeros(values.shape[:-1] + (1,), np.uint8)], axis=-1)
    return (values[..., 0::2] | (values[..., 1::2] << 4)).astype(np.uint8)


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _weight_kn(node, initializers) -> np.ndarray | None:
    """The node's constant ``[K, N]`` float32 weight when the node can become MatMulNBits."""
    if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2 or node.input[1] not in initializers:
        return None
    value = numpy_helper.to_array(initializers[node.input[1]])
    if value.dtype != np.float32 or value.ndim != 2:
        return None
    if node.op_type == "Gemm":
        if _attr(node, "transA", 0) or _attr(node, "alpha", 1.0) != 1.0 or _attr(node, "beta", 1.0) != 1.0:
            return None
        if len(node.input) > 2 and node.input[2] and (node.input[2] not in initializers or numpy_helper.to_array(
                initializers[node.input[2]]).ndim != 1):
            return None  # MatMulNBits' bias is a constant [N]
        return value.T if _attr(node, "transB", 0) else value
    return value


def quantize_int4(model: onnx.ModelProto, group_size: int = DEFAULT_GROUP_SIZE,
                  int8_activations: bool = False) -> tuple[onnx.ModelProto, list[Quantized]]:
    """A copy of ``model`` with its eligible weights as 4-bit ``MatMulNBits`` nodes;
    ``int8_activations`` sets their ``accuracy_level`` to 4 (activations may be quantized to
    int8 per group at run time: faster, less exact), else it is left at 0 (float32 math)."""
    check_group_size(group_size)
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    done: list[Quantized] = []
    nodes = []
    for index, node in enumerate(graph.node):
        weight = _weight_kn(node, initializers)
        if weight is None or weight.shape[0] % group_size or weight.shape[0] < 16:
            nodes.append(node)
            continue
        k, n = weight.shape
        codes, scales, zeros = quantize_weight(weight, group_size)
        prefix = f"{node.name or node.op_type + str(index)}.int4"
        blocks = k // group_size
        tensors = [numpy_helper.from_array(_pack_pairs(codes.reshape(n, blocks, group_size)), f"{prefix}.B"),
                   numpy_helper.from_array(scales.reshape(-1), f"{prefix}.scales"),
                   numpy_helper.from_array(_pack_pairs(zeros).reshape(-1), f"{prefix}.zero_points")]
        graph.initializer.extend(tensors)
        inputs = [node.input[0]] + [t.name for t in tensors]
        if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]:
            inputs += ["", "", node.input[2]]  # g_idx absent, then bias
        extra = {"accuracy_level": 4} if int8_activations else {}
        nodes.append(helper.make_node("MatMulNBits", inputs, list(node.output), name=node.name or prefix,
                                      domain="com.microsoft", K=k, N=n, bits=4, block_size=group_size, **extra))
        done.append(Quantized(node.name or prefix, [k, n], group_size))
        readers[node.input[1]] -= 1
    del graph.node[:]
    graph.node.extend(nodes)
    unused = [t for t in graph.initializer if readers.get(t.name, 1) == 0]
    for tensor in unused:
        graph.initializer.remove(tensor)
    if done and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model, done
