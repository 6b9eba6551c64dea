"""edgecc's vision and classic-ML converters (``edgecc/frontend/vision.py``), one-node
models checked against ONNX Runtime, ``onnx.reference`` or NumPy.

Float results match within RTOL/ATOL below (float32 sums in another order);
index and integer results match exactly.
"""

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import edgecc.backend

RTOL, ATOL = 1e-4, 1e-5
ML = "ai.onnx.ml"


def one_node_model(op, inputs, outputs, *, initializers=(), opset=22, domain="", **attrs):
    """A model of one node. ``inputs``/``outputs``: (name, elem type, shape); initializers: arrays by name."""
    inits = [numpy_helper.from_array(value, name) for name, value in initializers]
    names = [name for name, _, _ in inputs] + [name for name, _ in initializers]
    node = helper.make_node(op, names, [name for name, _, _ in outputs], domain=domain, **attrs)
    graph = helper.make_graph([node], op, [helper.make_tensor_value_info(*i) for i in inputs],
                              [helper.make_tensor_value_info(*o) for o in outputs], inits)
    opsets = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(domain, 5)] if domain else [])
    return helper.make_model(graph, opset_imports=opsets, ir_version=10)


def run_ort(model, feeds: dict):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def run_both(model, feeds: dict):
    """(edgecc's outputs, ONNX Runtime's outputs) for the same feeds."""
    got = edgecc.backend.prepare(model).run(list(feeds.values()))
    return [np.asarray(g) for g in got], run_ort(model, feeds)


def assert_outputs(got, expected, rtol=RTOL, atol=ATOL):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape and g.dtype == e.dtype
        np.testing.assert_allclose(g, e, rtol=rtol, atol=atol)


def test_batchnorm_training_mode_uses_batch_statistics():
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 2.0, (2, 3, 4, 5)).astype(np.float32)
    scale, bias = rng.uniform(0.5, 1.5, 3).astype(np.float32), rng.normal(size=3).astype(np.float32)
    mean, var = rng.normal(size=3).astype(np.float32), rng.uniform(0.5, 2, 3).astype(np.float32)
    model = one_node_model("BatchNormalization", [("x", TensorProto.FLOAT, x.shape)],
                           [("y", TensorProto.FLOAT, x.shape), ("rm", TensorProto.FLOAT, [3]),
                            ("rv", TensorProto.FLOAT, [3])],
                           initializers=[("s", scale), ("b", bias), ("m", mean), ("v", var)],
                           opset=15, training_mode=1, momentum=0.8, epsilon=1e-3)
    got = edgecc.backend.prepare(model).run([x])
    batch_mean, batch_var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))

    def channel(v):
        return v.reshape(1, 3, 1, 1)

    y = (x - channel(batch_mean)) / np.sqrt(channel(batch_var) + 1e-3) * channel(scale) + channel(bias)
    expected = [y, 0.8 * mean + 0.2 * batch_mean, 0.8 * var + 0.2 * batch_var]
    assert_outputs([np.asarray(g) for g in got], expected)


def test_batchnorm_inference_mode_uses_running_statistics():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 3, 4)).astype(np.float32)
    stats = [rng.uniform(0.5, 1.5, 3).astype(np.float32) for _ in range(4)]
    model = one_node_model("BatchNormalization", [("x", TensorProto.FLOAT, x.shape)],
                           [("y", TensorProto.FLOAT, x.shape)],
                           initializers=list(zip(("s", "b", "m", "v"), stats)), opset=15)
    got, expected = run_both(model, {"x": x})
    assert_outputs(got, expected)


@pytest.mark.parametrize("attrs", [{}, {"strides": [2, 1], "pads": [1, 0, 1, 2], "dilations": [1, 2]}])
def test_col2im_matches_onnxruntime(attrs):
    image, block = np.array([5, 6]), np.array([2, 3])
    strides, dilations = attrs.get("strides", [1, 1]), attrs.get("dilations", [1, 1])
    pads = attrs.get("pads", [0, 0, 0, 0])
    blocks = [(image[d] + pads[d] + pads[d + 2] - dilations[d] * (block[d] - 1) - 1) // strides[d] + 1
              for d in range(2)]
    x = np.random.default_rng(2).normal(size=(2, 3 * 6, int(np.prod(blocks)))).astype(np.float32)
    model = one_node_model("Col2Im", [("x", TensorProto.FLOAT, x.shape)],
                           [("y", TensorProto.FLOAT, [2, 3, 5, 6])],
                           initializers=[("image", image), ("block", block)], opset=18, **attrs)
    got, expected = run_both(model, {"x": x})
    assert_outputs(got, expected)


@pytest.mark.parametrize("group, offset_group, mask, bias", [(1, 1, False, False), (2, 2, False, True),
                                                            (2, 1, True, True)])
def test_deform_conv_matches_onnxruntime(group, offset_group, mask, bias):
    rng = np.random.default_rng(3)
    n, c, oc, h, w, k = 2, 4, 6, 6, 7, 3
    strides, pads = [2, 1], [1, 1, 1, 0]
    oh, ow = (h + 2 - k) // 2 + 1, (w + 1 - k) + 1
    x = rng.normal(size=(n, c, h, w)).astype(np.float32)
    weight = rng.normal(size=(oc, c // group, k, k)).astype(np.float32)
    # Offsets up to two pixels, so some samples fall partly or wholly outside the image.
    offset = rng.uniform(-2, 2, (n, offset_group * k * k * 2, oh, ow)).astype(np.float32)
    feeds = {"x": x, "w": weight, "offset": offset}
    if bias:
        feeds["b"] = rng.normal(size=oc).astype(np.float32)
    if mask:
        feeds["mask"] = rng.uniform(0, 1, (n, offset_group * k * k, oh, ow)).astype(np.float32)
    model = one_node_model("DeformConv", [(name, TensorProto.FLOAT, v.shape) for name, v in feeds.items()],
                           [("y", TensorProto.FLOAT, [n, oc, oh, ow])], group=group,
                           offset_group=offset_group, strides=strides, pads=pads, kernel_shape=[k, k])
    got, expected = run_both(model, feeds)
    assert_outputs(got, expected, rtol=1e-4, atol=1e-4)


def convtranspose_model(output_shape, bias: bool):
    rng = np.random.default_rng(4)
    weight = rng.normal(size=(2, 3, 3, 3)).astype(np.float32)
    initializers = [("w", weight)] + ([("b", rng.normal(size=3).astype(np.float32))] if bias else [])
    return one_node_model("ConvTranspose", [("x", TensorProto.FLOAT, [1, 2, 3, 3])],
                          [("y", TensorProto.FLOAT, [1, 3] + output_shape)], initializers=initializers,
                          strides=[3, 2], output_shape=output_shape)


@pytest.mark.parametrize("output_shape, bias", [([10, 8], False), ([7, 5], True)])
def test_convtranspose_output_shape_matches_onnxruntime(output_shape, bias):
    # Total paddings -1/-1 (one zero row and column past the taps) and 2/2 (cropped evenly):
    # cases where the spec and ONNX Runtime agree.
    x = np.random.default_rng(5).normal(size=(1, 2, 3, 3)).astype(np.float32)
    got, expected = run_both(convtranspose_model(output_shape, bias), {"x": x})
    assert_outputs(got, expected)


def test_convtranspose_output_shape_past_the_taps_pads_both_sides():
    # The taps reach 9 x 7; total paddings -3/-4 put zero rows 1 above and 2 below, zero
    # columns 2 left and 2 right per the spec (ONNX Runtime puts them all at the end); bias everywhere.
    x = np.random.default_rng(5).normal(size=(1, 2, 3, 3)).astype(np.float32)
    got = np.asarray(edgecc.backend.prepare(convtranspose_model([12, 11], True)).run([x])[0])
    reach = convtranspose_model([9, 7], True)
    inner = run_ort(reach, {"x": x})[0]
    bias = numpy_helper.to_array(reach.graph.initializer[1]).reshape(1, 3, 1, 1)
    assert_outputs([got], [np.pad(inner - bias, [(0, 0), (0, 0), (1, 2), (2, 2)]) + bias])


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_space_to_depth_modes(mode):
    x = np.arange(2 * 3 * 4 * 6, dtype=np.float32).reshape(2, 3, 4, 6)
    model = one_node_model("SpaceToDepth", [("x", TensorProto.FLOAT, x.shape)],
                           [("y", TensorProto.FLOAT, [2, 12, 2, 3])], opset=28, blocksize=2, mode=mode)
    got, expected = run_both(model, {"x": x})
    np.testing.assert_array_equal(got[0], expected[0])


def tree_ensemble_model(aggregate: int):
    """Two trees over 3 features and 2 targets, with <=, >, MEMBER and a NaN that goes true."""
    modes = np.array([0, 6, 3, 0], np.uint8)
    attrs = dict(
        nodes_featureids=[0, 1, 2, 1], nodes_modes=numpy_helper.from_array(modes, "modes"),
        nodes_splits=numpy_helper.from_array(np.array([0.5, 0, 1.5, -0.2], np.float32), "splits"),
        membership_values=numpy_helper.from_array(np.array([1, 3, 4, np.nan], np.float32), "members"),
        nodes_truenodeids=[1, 0, 0, 3], nodes_trueleafs=[0, 1, 1, 1],
        nodes_falsenodeids=[2, 1, 1, 4], nodes_falseleafs=[0, 1, 1, 1],
        nodes_missing_value_tracks_true=[0, 0, 1, 0],
        leaf_targetids=[0, 1, 0, 1, 1], tree_roots=[0, 3], n_targets=2, aggregate_function=aggregate,
        leaf_weights=numpy_helper.from_array(np.array([1, 10, 100, 1000, 3], np.float32), "weights"))
    return one_node_model("TreeEnsemble", [("x", TensorProto.FLOAT, [6, 3])],
                          [("y", TensorProto.FLOAT, [6, 2])], domain=ML, **attrs)


@pytest.mark.parametrize("aggregate", [0, 1, 2, 3])
def test_tree_ensemble_matches_reference(aggregate):
    x = np.array([[0, 1, 0], [0, 2, 0], [1, 0, 2], [1, 0, np.nan], [0.2, 3, 1], [2, -1, 1]], np.float32)
    model = tree_ensemble_model(aggregate)
    got = [np.asarray(g) for g in edgecc.backend.prepare(model).run([x])]
    assert_outputs(got, ReferenceEvaluator(model).run(None, {"x": x}))
    if aggregate in (0, 1):  # MIN/MAX of an unreached target: ORT and the reference disagree
        assert_outputs(got, run_both(model, {"x": x})[1])


@pytest.mark.parametrize("keys, values, default", [
    (np.array([3, 7, -1], np.int64), np.array([0.5, 1.5, 2.5], np.float32), np.array([9.0], np.float32)),
    (np.array([0.5, 2.0, np.nan], np.float32), np.array([1, 2, 3], np.int64), None),
])
def test_label_encoder_numeric_matches_onnxruntime(keys, values, default):
    x = np.array([[3, 0, -1], [7, 7, 5]], keys.dtype) if keys.dtype.kind == "i" else \
        np.array([0.5, 1.0, np.nan, 2.0], np.float32)
    attrs = {"keys_tensor": numpy_helper.from_array(keys, "keys"),
             "values_tensor": numpy_helper.from_array(values, "values")}
    if default is not None:
        attrs["default_tensor"] = numpy_helper.from_array(default, "default")
    elem = {np.dtype(np.int64): TensorProto.INT64, np.dtype(np.float32): TensorProto.FLOAT}
    model = one_node_model("LabelEncoder", [("x", elem[keys.dtype], x.shape)],
                           [("y", elem[values.dtype], x.shape)], domain=ML, **attrs)
    model.opset_import[1].version = 4
    got, expected = run_both(model, {"x": x})
    np.testing.assert_array_equal(got[0], expected[0])


@pytest.mark.parametrize("threshold", [None, 0.0, 1 / 7, 0.1])
def test_non_max_suppression_threshold_is_strict(threshold):
    # The two boxes' IoU is 0.25 / 1.75 = 1/7: kept at a threshold of exactly 1/7, dropped below it.
    boxes = np.array([[[0, 0, 1, 1], [0.5, 0.5, 1.5, 1.5]]], np.float32)
    scores = np.array([[[0.9, 0.8]]], np.float32)
    initializers = [("max_out", np.array([3], np.int64))]
    if threshold is not None:
        initializers.append(("iou", np.array([threshold], np.float32)))
    model = one_node_model("NonMaxSuppression", [("boxes", TensorProto.FLOAT, boxes.shape),
                                                 ("scores", TensorProto.FLOAT, scores.shape)],
                           [("selected", TensorProto.INT64, [None, 3])], initializers=initializers, opset=11)
    got, expected = run_both(model, {"boxes": boxes, "scores": scores})
    np.testing.assert_array_equal(got[0], expected[0])
