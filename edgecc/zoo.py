"""Real architectures with seeded random weights, for the demo, tests and benchmarks.

The ``onnx`` wheel ships ``backend/test/data/light/*.onnx``: real networks
(resnet50, squeezenet, ...) whose weights were replaced by ``ConstantOfShape``
nodes fed from ``<name>__SHAPE`` initializers. :func:`light_model` swaps each of
those for an initializer of seeded random values scaled for the weight's role,
so activations stay in a sane range and the outputs are worth comparing.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

LIGHT_MODELS = ("squeezenet", "shufflenet", "inception_v1", "inception_v2", "resnet50",
                "densenet121", "bvlc_alexnet", "zfnet512", "vgg19")


def light_dir() -> Path:
    import onnx.backend.test

    return Path(os.path.dirname(onnx.backend.test.__file__)) / "data" / "light"


def _role(consumers: list[tuple[onnx.NodeProto, int]]) -> str:
    """What a weight is for, from the first op that reads it (through Unsqueeze)."""
    for node, slot in consumers:
        op = node.op_type
        if op in ("Conv", "Gemm", "MatMul") and slot == 1:
            return "weight"
        if op in ("Conv", "Gemm") and slot == 2:
            return "bias"
        if op == "BatchNormalization":
            return {1: "scale", 2: "bias", 3: "mean", 4: "var"}.get(slot, "bias")
        if op == "Mul":
            return "scale"
    return "bias"


def _random_weight(shape: list[int], role: str, consumer: onnx.NodeProto | None,
                   rng: np.random.Generator) -> np.ndarray:
    if role == "weight":
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        if consumer is not None and consumer.op_type == "Gemm":
            trans_b = next((a.i for a in consumer.attribute if a.name == "transB"), 0)
            fan_in = shape[1] if trans_b else shape[0]
        return (rng.standard_normal(shape) * np.sqrt(2.0 / max(fan_in, 1))).astype(np.float32)
    if role in ("scale", "var"):
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    return (rng.standard_normal(shape) * 0.05).astype(np.float32)


def materialize_weights(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """Replace ``ConstantOfShape(<w>__SHAPE)`` weight generators by seeded random initializers.

    Parameters
    ----------
    model : onnx.ModelProto
        A model from the onnx wheel's ``light`` folder (modified copy returned).
    seed : int
        Seed of the NumPy generator; the same seed gives the same weights.

    Returns
    -------
    onnx.ModelProto
        The model with real initializers and no weight generators.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    model.ir_version = max(model.ir_version, 4)  # IR 3 wants every initializer listed as an input
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for slot, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, slot))

    def role_of(name: str) -> tuple[str, onnx.NodeProto | None]:
        uses = consumers.get(name, [])
        for node, _ in uses:
            if node.op_type == "Unsqueeze":
                return role_of(node.output[0])
        return _role(uses), (uses[0][0] if uses else None)

    rng = np.random.default_rng(seed)
    keep_nodes, new_inits, dropped = [], [], set()
    for node in graph.node:
        shape_name = node.input[0] if node.op_type == "ConstantOfShape" and node.input else None
        if shape_name in inits and shape_name.endswith("__SHAPE"):
            shape = numpy_helper.to_array(inits[shape_name]).astype(int).tolist()
            role, consumer = role_of(node.output[0])
            value = _random_weight(shape, role, consumer, rng)
            new_inits.append(numpy_helper.from_array(value, node.output[0]))
            dropped.add(shape_name)
            continue
        keep_nodes.append(node)
    del graph.node[:]
    graph.node.extend(keep_nodes)
    kept_inits = [t for t in graph.initializer if t.name not in dropped]
    del graph.initializer[:]
    graph.initializer.extend(kept_inits + new_inits)
    # Old-IR models list weights as graph inputs too; a weight is not a user input.
    weight_names = {t.name for t in graph.initializer} | dropped
    real_inputs = [i for i in graph.input if i.name not in weight_names]
    del graph.input[:]
    graph.input.extend(real_inputs)
    return model


def light_model(name: str, seed: int = 0) -> onnx.ModelProto:
    """Load ``light_<name>.onnx`` from the onnx wheel with seeded random weights."""
    path = light_dir() / f"light_{name}.onnx"
    if not path.exists():
        raise FileNotFoundError(f"no light model {name!r}; have: {', '.join(LIGHT_MODELS)}")
    return materialize_weights(onnx.load(str(path)), seed)


def logits_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its final Softmax removed, so it outputs logits.

    With random weights a classifier's logits spread wide and its softmax is close to
    one-hot (resnet50's top probability is 1.0), which would hide wrong numbers; tests
    compare the logits instead."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    output = graph.output[0].name
    last = next((n for n in graph.node if output in n.output), None)
    if last is None or last.op_type != "Softmax":
        return model
    graph.node.remove(last)
    graph.output[0].name = last.input[0]
    del graph.output[0].type.tensor_type.shape.dim[:]
    graph.output[0].type.tensor_type.ClearField("shape")
    return model


def sample_inputs(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded random inputs matching the model's (static) input shapes and dtypes."""
    rng = np.random.default_rng(seed)
    inputs = {}
    for value in model.graph.input:
        ttype = value.type.tensor_type
        shape = [d.dim_value if d.dim_value > 0 else 1 for d in ttype.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(ttype.elem_type)
        inputs[value.name] = rng.standard_normal(shape).astype(dtype)
    return inputs


def encoder_model(layers: int = 4, d_model: int = 256, heads: int = 4, seq: int = 128,
                  ffn: int = 1024, seed: int = 0) -> onnx.ModelProto:
    """A post-norm transformer encoder as exporters write it (opset 17), seeded random weights.

    Each layer: Q/K/V MatMul+Add, Reshape/Transpose into heads, MatMul with K transposed,
    scale, Softmax, MatMul with V, merge heads, output projection, residual Add,
    LayerNormalization, a GELU feed-forward (Erf form) and a second residual + LayerNorm.
    Input ``x[1, seq, d_model]``, output ``y[1, seq, d_model]``.
    """
    rng = np.random.default_rng(seed)
    head = d_model // heads
    nodes, inits = [], []

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def weight(name, shape, fan_in):
        return const(name, (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32))

    def node(op, inputs, name, **attrs):
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def linear(x, prefix, d_in, d_out):
        y = node("MatMul", [x, weight(f"{prefix}.w", [d_in, d_out], d_in)], f"{prefix}.mm")
        return node("Add", [y, weight(f"{prefix}.b", [d_out], 16 * d_out)], f"{prefix}.out")

    def layer_norm(x, prefix):
        scale = const(f"{prefix}.g", rng.uniform(0.8, 1.2, d_model).astype(np.float32))
        bias = const(f"{prefix}.beta", (rng.standard_normal(d_model) * 0.05).astype(np.float32))
        return node("LayerNormalization", [x, scale, bias], f"{prefix}.out", axis=-1, epsilon=1e-5)

    split_shape = const("split_shape", np.array([1, seq, heads, head], np.int64))
    merge_shape = const("merge_shape", np.array([1, seq, d_model], np.int64))
    scale = const("attn_scale", np.array(1.0 / np.sqrt(head), np.float32))
    half, one = const("half", np.array(0.5, np.float32)), const("one", np.array(1.0, np.float32))
    sqrt2 = const("sqrt2", np.array(np.sqrt(2.0), np.float32))
    x = "x"
    for i in range(layers):
        p = f"l{i}"
        q, k, v = (linear(x, f"{p}.{n}", d_model, d_model) for n in "qkv")
        q, k, v = (node("Reshape", [t, split_shape], f"{t}.heads") for t in (q, k, v))
        q = node("Transpose", [q], f"{p}.qT", perm=[0, 2, 1, 3])
        k = node("Transpose", [k], f"{p}.kT", perm=[0, 2, 3, 1])
        v = node("Transpose", [v], f"{p}.vT", perm=[0, 2, 1, 3])
        scores = node("Mul", [node("MatMul", [q, k], f"{p}.qk"), scale], f"{p}.scaled")
        probs = node("Softmax", [scores], f"{p}.probs", axis=-1)
        ctx = node("Transpose", [node("MatMul", [probs, v], f"{p}.ctx")], f"{p}.ctxT", perm=[0, 2, 1, 3])
        ctx = node("Reshape", [ctx, merge_shape], f"{p}.merged")
        x = layer_norm(node("Add", [x, linear(ctx, f"{p}.o", d_model, d_model)], f"{p}.res1"), f"{p}.ln1")
        h = linear(x, f"{p}.ff1", d_model, ffn)
        erf = node("Erf", [node("Div", [h, sqrt2], f"{p}.ff1.div")], f"{p}.erf")
        h = node("Mul", [node("Mul", [h, node("Add", [erf, one], f"{p}.erf1")], f"{p}.gelu0"), half], f"{p}.gelu")
        x = layer_norm(node("Add", [x, linear(h, f"{p}.ff2", ffn, d_model)], f"{p}.res2"), f"{p}.ln2")
    nodes.append(helper.make_node("Identity", [x], ["y"], name="output"))
    graph = helper.make_graph(
        nodes, f"encoder_{layers}x{d_model}",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, seq, d_model])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, seq, d_model])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def ffn_model(d_model: int = 768, hidden: int = 3072, seq: int = 128, seed: int = 0) -> onnx.ModelProto:
    """A transformer feed-forward block (BERT-base sizes by default), seeded random weights:
    ``y = x + Gelu(x @ W1 + b1) @ W2 + b2`` (opset 20 ``Gelu``). Input ``x[1, seq, d_model]``."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((d_model, hidden)) / np.sqrt(d_model)).astype(np.float32)
    w2 = (rng.standard_normal((hidden, d_model)) / np.sqrt(hidden)).astype(np.float32)
    b1 = (rng.standard_normal(hidden) * 0.1).astype(np.float32)
    b2 = (rng.standard_normal(d_model) * 0.1).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "ff1.w"], ["ff1.mm"], name="ff1.mm"),
             helper.make_node("Add", ["ff1.mm", "ff1.b"], ["ff1.out"], name="ff1.out"),
             helper.make_node("Gelu", ["ff1.out"], ["gelu"], name="gelu"),
             helper.make_node("MatMul", ["gelu", "ff2.w"], ["ff2.mm"], name="ff2.mm"),
             helper.make_node("Add", ["ff2.mm", "ff2.b"], ["ff2.out"], name="ff2.out"),
             helper.make_node("Add", ["x", "ff2.out"], ["y"], name="residual")]
    inits = [numpy_helper.from_array(value, name)
             for name, value in (("ff1.w", w1), ("ff1.b", b1), ("ff2.w", w2), ("ff2.b", b2))]
    graph = helper.make_graph(
        nodes, f"ffn_{d_model}x{hidden}",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, seq, d_model])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, seq, d_model])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


MOBILENET_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1))
# MobileNet v1's thirteen blocks (Howard et al., 2017, table 1), at 224x224 its full network
MOBILENET_V1_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)) + ((512, 1),) * 5 \
    + ((1024, 2), (1024, 1))


def mobilenet_model(resolution: int = 112, blocks=MOBILENET_BLOCKS, classes: int = 1000,
                    seed: int = 0) -> onnx.ModelProto:
    """A MobileNet-v1-style network, seeded random weights: a 3x3 stride-2 stem to 32
    channels, then per ``(channels, stride)`` of ``blocks`` a depthwise 3x3 conv and a 1x1
    conv, each with BatchNormalization and ReLU6 (``Clip``), global average pooling and a
    ``Gemm`` classifier. Input ``x[1, 3, resolution, resolution]``, output ``logits``."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    def conv_bn_relu6(x, name, c_in, c_out, kernel, stride, group):
        fan_in = c_in // group * kernel * kernel
        w = const(f"{name}.w", rng.standard_normal((c_out, c_in // group, kernel, kernel)) * np.sqrt(2.0 / fan_in))
        nodes.append(helper.make_node("Conv", [x, w], [f"{name}.conv"], name=f"{name}.conv", group=group,
                                      kernel_shape=[kernel, kernel], strides=[stride, stride],
                                      pads=[kernel // 2] * 4))
        bn = [const(f"{name}.{p}", v) for p, v in (
            ("scale", rng.uniform(0.8, 1.2, c_out)), ("bias", rng.standard_normal(c_out) * 0.1),
            ("mean", rng.standard_normal(c_out) * 0.1), ("var", rng.uniform(0.8, 1.2, c_out)))]
        nodes.append(helper.make_node("BatchNormalization", [f"{name}.conv", *bn], [f"{name}.bn"],
                                      name=f"{name}.bn", epsilon=1e-5))
        nodes.append(helper.make_node("Clip", [f"{name}.bn", "zero", "six"], [f"{name}.out"], name=f"{name}.relu6"))
        return f"{name}.out"

    const("zero", np.array(0.0)), const("six", np.array(6.0))
    x, channels = conv_bn_relu6("x", "stem", 3, 32, 3, 2, 1), 32
    for i, (c_out, stride) in enumerate(blocks):
        x = conv_bn_relu6(x, f"b{i}.dw", channels, channels, 3, stride, channels)
        x, channels = conv_bn_relu6(x, f"b{i}.pw", channels, c_out, 1, 1, 1), c_out
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pool"], name="pool"))
    nodes.append(helper.make_node("Flatten", ["pool"], ["flat"], name="flat"))
    fc_w = const("fc.w", rng.standard_normal((classes, channels)) / np.sqrt(channels))
    fc_b = const("fc.b", rng.standard_normal(classes) * 0.1)
    nodes.append(helper.make_node("Gemm", ["flat", fc_w, fc_b], ["logits"], name="fc", transB=1))
    graph = helper.make_graph(
        nodes, "mobilenet_1x1",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, resolution, resolution])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [1, classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
