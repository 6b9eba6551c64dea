"""``--quantize int4`` and ``--quantize int8``: quantizing an fp32 ONNX model.

INT4 (:func:`quantize_int4`): group-wise 4-bit weight-only quantization.

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

INT8 (:func:`quantize_int8`): static quantization, written as QDQ (``QuantizeLinear`` /
``DequantizeLinear`` pairs, the format ONNX Runtime's ``quantize_static`` writes):

- weights of ``MatMul``, ``Gemm`` and ``Conv``: int8, symmetric, one scale per output channel
  (``scale = max|w| / 127``, zero point 0; one per tensor for opsets 10 to 12, which have no
  per-axis ``DequantizeLinear``; a model older than opset 10 is converted to opset 13 first);
- the activations they read, and each ``MatMul``'s and ``Conv``'s output (after the ``Relu``
  that alone reads a conv, if one does): uint8, one scale per tensor from the range seen on
  calibration data (``scale = (max - min) / 255`` over a range stretched to include 0,
  ``zero = round(-min / scale)``);
- a ``Gemm`` (``alpha = beta = 1``, no ``transA``) becomes ``MatMul`` + ``Add`` first, and a
  ``BatchNormalization`` that alone reads a constant-weight ``Conv`` is folded into it.

The calibration runs the fp32 model (compiled by edgecc for this machine) on the samples and
records those tensors' ranges. ``MatMul`` and ``Conv`` then run as INT8 kernels (their QDQ
patterns become ``QLinearMatMul`` and ``QLinearConv``, see :mod:`edgecc.frontend.qdq`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnx.version_converter
from onnx import helper, numpy_helper

from edgecc.errors import UserInputError

QUANTIZE_MODES = (None, "int4", "int8")
CALIBRATION_SAMPLES = 8  # seeded random samples when no calibration data is given
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
    original, model = model, onnx.ModelProto.FromString(model.SerializeToString())
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
    _keep_output_shapes(model, original, [n for n in nodes if n.op_type == "MatMulNBits"])
    return model, done


def _keep_output_shapes(model: onnx.ModelProto, original: onnx.ModelProto, nodes) -> None:
    """Record the shapes ``nodes``' outputs had in ``original`` in ``model``: ONNX's shape
    inference does not know ``com.microsoft`` ops, and without them the shapes computed
    downstream (``Shape`` of an attention's query, ...) stay unknown until run time."""
    try:
        inferred = onnx.shape_inference.infer_shapes(original, strict_mode=False).graph.value_info
    except Exception:  # noqa: BLE001 -- a model ONNX cannot infer: nothing to keep
        return
    known = {v.name for v in model.graph.value_info}
    wanted = {out for node in nodes for out in node.output} - known
    model.graph.value_info.extend(v for v in inferred if v.name in wanted)


# -- INT8 ---------------------------------------------------------------------------------------
def load_calibration(folder, inputs: list) -> list[dict[str, np.ndarray]]:
    """Calibration samples from ``folder``: for a one-input model, every ``*.npy`` file is one
    sample; for several inputs, every subfolder is one sample holding ``<input name>.npy``
    per input. ``inputs`` are the model's input specs (``name``, ``shape``, ``dtype``)."""
    from pathlib import Path

    folder = Path(folder)
    if not folder.is_dir():
        raise UserInputError(f"--calibration: {folder} is not a folder of .npy files")
    if len(inputs) == 1:
        samples = [{inputs[0].name: path} for path in sorted(folder.glob("*.npy"))]
    else:
        samples = [{spec.name: sub / f"{spec.name}.npy" for spec in inputs} for sub in sorted(folder.iterdir())
                   if sub.is_dir()]
    if not samples:
        layout = "*.npy files" if len(inputs) == 1 else "subfolders with " + ", ".join(f"{i.name}.npy" for i in inputs)
        raise UserInputError(f"--calibration: no samples in {folder} (expected {layout})")
    loaded = []
    for sample in samples:
        arrays = {}
        for spec in inputs:
            path = sample[spec.name]
            try:
                array = np.load(path)
            except (OSError, ValueError) as err:
                raise UserInputError(f"--calibration: cannot read {path}: {err}") from None
            if list(array.shape) != list(spec.shape) or str(array.dtype) != spec.dtype:
                raise UserInputError(f"--calibration: {path} is {array.dtype}{list(array.shape)}, input "
                                     f"'{spec.name}' is {spec.dtype}{list(spec.shape)}")
            arrays[spec.name] = array
        loaded.append(arrays)
    return loaded


def random_calibration(inputs: list, count: int = CALIBRATION_SAMPLES, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Seeded standard-normal samples (integer inputs: zeros) for a model with no calibration data."""
    rng = np.random.default_rng(seed)
    return [{spec.name: (rng.standard_normal(spec.shape) if spec.dtype.startswith("float") else
                         np.zeros(spec.shape)).astype(spec.dtype) for spec in inputs} for _ in range(count)]


def _gemm_as_matmul(model: onnx.ModelProto) -> None:
    """``Gemm`` (alpha = beta = 1, no transA, constant 2-D B) as ``MatMul`` + ``Add``, in place."""
    graph = model.graph
    consts = {t.name: t for t in graph.initializer}
    nodes = []
    for index, node in enumerate(graph.node):
        weight = _weight_kn(node, consts) if node.op_type == "Gemm" else None
        if weight is None:
            nodes.append(node)
            continue
        name = node.name or f"gemm{index}"
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight), f"{name}.weight_kn"))
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        product = f"{name}.product" if bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], f"{name}.weight_kn"], [product], name=name))
        if bias:
            nodes.append(helper.make_node("Add", [product, bias], [node.output[0]], name=f"{name}.bias"))
    del graph.node[:]
    graph.node.extend(nodes)


def _fold_batch_norms(model: onnx.ModelProto) -> None:
    """``BatchNormalization`` (inference form) that alone reads a ``Conv`` with constant float32
    weights, folded into the conv's weights and bias, in place."""
    graph = model.graph
    consts = {t.name: t for t in graph.initializer}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    producer = {out: node for node in graph.node for out in node.output}
    outputs = {o.name for o in graph.output}
    drop, changed = set(), {}
    for bn in graph.node:
        if bn.op_type != "BatchNormalization" or len(bn.output) != 1 or len(bn.input) != 5:
            continue
        conv = producer.get(bn.input[0])
        if conv is None or conv.op_type != "Conv" or readers.get(conv.output[0]) != 1 or conv.output[0] in outputs \
                or len(conv.input) < 2 or conv.input[1] not in consts or readers.get(conv.input[1]) != 1 \
                or any(name not in consts for name in bn.input[1:]):
            continue
        weight = numpy_helper.to_array(consts[conv.input[1]])
        if weight.dtype != np.float32:
            continue
        gamma, beta, mean, var = (numpy_helper.to_array(consts[n]).astype(np.float64) for n in bn.input[1:])
        factor = gamma / np.sqrt(var + _attr(bn, "epsilon", 1e-5))
        bias = numpy_helper.to_array(consts[conv.input[2]]).astype(np.float64) \
            if len(conv.input) > 2 and conv.input[2] else np.zeros(weight.shape[0])
        name = conv.name or conv.output[0]
        folded_w = (weight * factor.reshape([-1] + [1] * (weight.ndim - 1))).astype(np.float32)
        folded_b = ((bias - mean) * factor + beta).astype(np.float32)
        graph.initializer.extend([numpy_helper.from_array(folded_w, f"{name}.bn_weight"),
                                  numpy_helper.from_array(folded_b, f"{name}.bn_bias")])
        copy = onnx.NodeProto()
        copy.CopyFrom(conv)
        del copy.input[:]
        copy.input.extend([conv.input[0], f"{name}.bn_weight", f"{name}.bn_bias"])
        copy.output[0] = bn.output[0]
        changed[id(conv)] = copy
        drop.add(id(bn))
    if changed:
        nodes = [changed.get(id(n), n) for n in graph.node if id(n) not in drop]
        del graph.node[:]
        graph.node.extend(nodes)


def _int8_targets(model: onnx.ModelProto):
    """``[(node, weight name, weight array)]`` for MatMul (constant 2-D float32 B) and Conv
    (constant float32 W)."""
    consts = {t.name: t for t in model.graph.initializer}
    found = []
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Conv") or node.domain not in ("", "ai.onnx") or len(node.input) < 2 \
                or node.input[1] not in consts:
            continue
        weight = numpy_helper.to_array(consts[node.input[1]])
        if weight.dtype != np.float32 or (node.op_type == "MatMul" and weight.ndim != 2) \
                or (node.op_type == "Conv" and weight.ndim < 3):
            continue
        found.append((node, node.input[1], weight))
    return found


def _ranges(model: onnx.ModelProto, names: list[str], samples) -> dict[str, tuple[float, float]]:
    """Min and max of each named float tensor over the samples, running the model compiled
    for this machine with those tensors as extra outputs."""
    import edgecc

    probe = onnx.ModelProto.FromString(model.SerializeToString())
    known = {o.name for o in probe.graph.output}
    for name in names:
        if name not in known and name not in samples[0]:  # model inputs are read from the samples
            probe.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    bundle = edgecc.compile(probe, "host", sparsity="off")
    ranges: dict[str, list[float]] = {}
    for sample in samples:
        outputs = {**bundle.run(sample), **sample}
        for name in names:
            value = outputs[name]
            low, high = float(value.min(initial=0.0)), float(value.max(initial=0.0))
            old = ranges.get(name, [low, high])
            ranges[name] = [min(old[0], low), max(old[1], high)]
    return {name: (low, high) for name, (low, high) in ranges.items()}


def _activation_params(low: float, high: float) -> tuple[np.ndarray, np.ndarray]:
    """uint8 scale and zero point for a range (stretched to include 0)."""
    low, high = min(low, 0.0), max(high, 0.0)
    scale = (high - low) / 255.0 or 1.0
    zero = int(np.clip(np.round(-low / scale), 0, 255))
    return np.array(scale, np.float32), np.array(zero, np.uint8)


def quantize_int8(model: onnx.ModelProto, samples: list[dict[str, np.ndarray]]) -> tuple[onnx.ModelProto, list[Quantized]]:
    """A copy of ``model`` statically quantized to int8 as QDQ, calibrated on ``samples``."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 10:  # no QuantizeLinear: move the model to opset 13 (per-axis DequantizeLinear)
        try:
            model = onnx.version_converter.convert_version(model, 13)
        except Exception as err:  # noqa: BLE001 -- ONNX raises several types
            raise UserInputError(f"--quantize int8 needs ONNX opset 10 or later, and converting this opset-{opset} "
                                 f"model to opset 13 failed: {str(err).strip().splitlines()[-1]}") from None
        opset = 13
    per_channel = opset >= 13  # DequantizeLinear's axis
    model = onnx.ModelProto.FromString(model.SerializeToString())
    _gemm_as_matmul(model)
    _fold_batch_norms(model)
    graph = model.graph
    targets = _int8_targets(model)
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    model_outputs = {o.name for o in graph.output}

    def quantized_output(node) -> str:
        """The tensor whose quantization the op's output gets: a conv's lone ``Relu``'s output
        (a range from 0, the conv's kernel clamps at the zero point), else its own."""
        after = readers.get(node.output[0], [])
        if node.op_type == "Conv" and len(after) == 1 and after[0].op_type == "Relu" \
                and node.output[0] not in model_outputs:
            return after[0].output[0]
        return node.output[0]

    activations = []
    for node, _, _ in targets:
        for name in (node.input[0], quantized_output(node)):
            if name not in activations:
                activations.append(name)
    ranges = _ranges(model, activations, samples) if targets else {}
    new_inits, renamed, done = [], {}, []
    qdq_after: dict[str, list] = {}  # tensor -> nodes writing its quantize/dequantize pair

    def qdq(name: str) -> str:
        """``name`` through a calibrated uint8 QuantizeLinear/DequantizeLinear pair."""
        if name in renamed:
            return renamed[name]
        scale, zero = _activation_params(*ranges[name])
        base = f"{name}.int8"
        new_inits.extend([numpy_helper.from_array(scale, f"{base}.scale"), numpy_helper.from_array(zero, f"{base}.zero")])
        qdq_after[name] = [helper.make_node("QuantizeLinear", [name, f"{base}.scale", f"{base}.zero"], [f"{base}.q"],
                                            name=f"{base}.quantize"),
                           helper.make_node("DequantizeLinear", [f"{base}.q", f"{base}.scale", f"{base}.zero"],
                                            [f"{base}.dq"], name=f"{base}.dequantize")]
        renamed[name] = f"{base}.dq"
        return renamed[name]

    nodes, skip = [], set()
    for node in graph.node:
        if id(node) in skip:
            continue
        target = next(((w, a) for n, w, a in targets if n is node), None)
        if target is None:
            nodes.append(node)
            continue
        weight_name, weight = target
        axis = 1 if node.op_type == "MatMul" else 0  # output channels: MatMul's N, Conv's O
        reduce_axes = tuple(i for i in range(weight.ndim) if i != axis or not per_channel)
        scale = (np.abs(weight).max(axis=reduce_axes) / 127.0).astype(np.float32)
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        shape = [1] * weight.ndim
        if per_channel:
            shape[axis] = -1
        codes = np.clip(np.round(weight / scale.reshape(shape)), -127, 127).astype(np.int8)
        base = f"{weight_name}.int8"
        new_inits.extend([numpy_helper.from_array(codes, f"{base}.q"), numpy_helper.from_array(scale, f"{base}.scale"),
                          numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{base}.zero")])
        nodes.append(helper.make_node("DequantizeLinear", [f"{base}.q", f"{base}.scale", f"{base}.zero"], [f"{base}.dq"],
                                      name=f"{base}.dequantize", **({"axis": axis} if per_channel else {})))
        inputs = [qdq(node.input[0]), f"{base}.dq"] + list(node.input[2:])
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        del copy.input[:]
        copy.input.extend(inputs)
        # The output quantized too (QDQ MatMul -> QLinearMatMul, Conv [-> Relu] -> QLinearConv).
        output = quantized_output(node)
        nodes.extend(qdq_after.pop(node.input[0], []))
        nodes.append(copy)
        if output != node.output[0]:  # the conv's Relu comes next, then the quantization
            relu = onnx.NodeProto()
            relu.CopyFrom(readers[node.output[0]][0])
            skip.add(id(readers[node.output[0]][0]))
            relu.output[0] = f"{output}.float"
            nodes.append(relu)
        else:
            copy.output[0] = f"{output}.float"
        scale_y, zero_y = _activation_params(*ranges[output])
        new_inits.extend([numpy_helper.from_array(scale_y, f"{output}.int8.scale"),
                          numpy_helper.from_array(zero_y, f"{output}.int8.zero")])
        nodes.append(helper.make_node("QuantizeLinear", [f"{output}.float", f"{output}.int8.scale",
                                                         f"{output}.int8.zero"], [f"{output}.int8.q"]))
        nodes.append(helper.make_node("DequantizeLinear", [f"{output}.int8.q", f"{output}.int8.scale",
                                                           f"{output}.int8.zero"], [output]))
        renamed[output] = output  # already quantized: a reader quantizing it again reuses the pair
        done.append(Quantized(node.name or node.op_type, list(weight.shape), 0))
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(new_inits)
    used = {name for node in graph.node for name in node.input}
    for tensor in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(tensor)
    del graph.value_info[:]
    return model, done
