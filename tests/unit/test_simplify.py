"""The pre-import ONNX simplifier and narrow types, checked by running what they produce.

Each model is compiled through ``edgecc.backend`` (the full host pipeline) and
compared with ONNX's reference implementation, ONNX Runtime or ml_dtypes.
"""

import ml_dtypes
import numpy as np
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import edgecc.backend
from edgecc.frontend.converters import converter_ops
from edgecc.frontend.simplify import simplify


def _model(nodes, inputs, outputs, initializers=(), opset=21):
    graph = helper.make_graph(nodes, "t", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _run(model, *inputs):
    return edgecc.backend.prepare(model).run(list(inputs))


def _reference(model, *inputs):
    names = [i.name for i in model.graph.input]
    return ReferenceEvaluator(model).run(None, dict(zip(names, inputs)))


def test_shape_arithmetic_folds_to_a_constant_reshape():
    # x.reshape(x.shape[0], -1) written as exporters write it.
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus_one"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"]),
    ]
    inits = [helper.make_tensor("zero", TensorProto.INT64, [], [0]),
             helper.make_tensor("axes", TensorProto.INT64, [1], [0]),
             helper.make_tensor("minus_one", TensorProto.INT64, [1], [-1])]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 12])], inits)
    simplified = simplify(model, {"x": (2, 3, 4)}, {}, converter_ops())
    assert [n.op_type for n in simplified.graph.node] == ["Reshape"]
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    np.testing.assert_array_equal(_run(model, x)[0], x.reshape(2, -1))


def test_function_op_is_expanded_and_matches_the_reference():
    # NegativeLogLikelihoodLoss has no converter: its ONNX function body is imported.
    node = helper.make_node("NegativeLogLikelihoodLoss", ["x", "t", "w"], ["y"], reduction="mean",
                            ignore_index=1)
    model = _model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 5, 2]),
                            helper.make_tensor_value_info("t", TensorProto.INT64, [3, 2]),
                            helper.make_tensor_value_info("w", TensorProto.FLOAT, [5])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])])
    rng = np.random.default_rng(1)
    inputs = (rng.standard_normal((3, 5, 2)).astype(np.float32), rng.integers(0, 5, (3, 2)).astype(np.int64),
              rng.random(5).astype(np.float32))
    np.testing.assert_allclose(_run(model, *inputs)[0], _reference(model, *inputs)[0], rtol=1e-5, atol=1e-6)


def test_constant_if_is_inlined_and_scan_is_unrolled():
    then = helper.make_graph([helper.make_node("Neg", ["x"], ["a"])], "then", [],
                             [helper.make_tensor_value_info("a", TensorProto.FLOAT, [3, 4])])
    other = helper.make_graph([helper.make_node("Abs", ["x"], ["b"])], "else", [],
                              [helper.make_tensor_value_info("b", TensorProto.FLOAT, [3, 4])])
    body = helper.make_graph(
        [helper.make_node("Add", ["acc_in", "row"], ["acc_out"]), helper.make_node("Identity", ["acc_out"], ["out"])],
        "body", [helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [4]),
                 helper.make_tensor_value_info("row", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [4]),
         helper.make_tensor_value_info("out", TensorProto.FLOAT, [4])])
    nodes = [helper.make_node("If", ["cond"], ["picked"], then_branch=then, else_branch=other),
             helper.make_node("Scan", ["init", "picked"], ["total", "partial"], body=body, num_scan_inputs=1)]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
                   [helper.make_tensor_value_info("total", TensorProto.FLOAT, [4]),
                    helper.make_tensor_value_info("partial", TensorProto.FLOAT, [3, 4])],
                   [helper.make_tensor("cond", TensorProto.BOOL, [], [True]),
                    helper.make_tensor("init", TensorProto.FLOAT, [4], [0, 0, 0, 0])])
    simplified = simplify(model, {"x": (3, 4)}, {}, converter_ops())
    assert not {"If", "Scan"} & {n.op_type for n in simplified.graph.node}
    x = np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32)
    total, partial = _run(model, x)
    np.testing.assert_allclose(partial, np.cumsum(-x, axis=0), rtol=1e-6)
    np.testing.assert_allclose(total, -x.sum(axis=0), rtol=1e-6)


def test_sequences_become_tensor_lists():
    nodes = [helper.make_node("SplitToSequence", ["x"], ["seq"], axis=1, keepdims=0),
             helper.make_node("SequenceErase", ["seq", "first"], ["rest"]),
             helper.make_node("ConcatFromSequence", ["rest"], ["y"], axis=0, new_axis=1)]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2]),
                    helper.make_value_info("rest", helper.make_sequence_type_proto(
                        helper.make_tensor_type_proto(TensorProto.FLOAT, [2])))],
                   [helper.make_tensor("first", TensorProto.INT64, [], [0])])
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    y, rest = _run(model, x)
    np.testing.assert_array_equal(y, x[:, 1:].T)
    assert len(rest) == 2
    for item, column in zip(rest, (x[:, 1], x[:, 2])):
        np.testing.assert_array_equal(item, column)


def test_fractional_resize_matches_onnxruntime():
    import onnxruntime as ort

    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="linear", antialias=1)
    model = _model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 7, 9])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])],
                   [helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 0.6, 0.45])], opset=19)
    x = np.random.default_rng(3).standard_normal((1, 2, 7, 9)).astype(np.float32)
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    np.testing.assert_allclose(_run(model, x)[0], expected, rtol=1e-5, atol=1e-5)


FLOAT8 = [(TensorProto.FLOAT8E4M3FN, ml_dtypes.float8_e4m3fn), (TensorProto.FLOAT8E4M3FNUZ, ml_dtypes.float8_e4m3fnuz),
          (TensorProto.FLOAT8E5M2, ml_dtypes.float8_e5m2), (TensorProto.FLOAT8E5M2FNUZ, ml_dtypes.float8_e5m2fnuz),
          (TensorProto.FLOAT4E2M1, ml_dtypes.float4_e2m1fn)]


def _cast_probe_values(np_type) -> np.ndarray:
    """Every representable value, every midpoint between neighbours (ties), their
    neighbours, and the specials: what rounding can get wrong."""
    codes = np.arange(16 if np_type == ml_dtypes.float4_e2m1fn else 256, dtype=np.uint8)
    values = np.unique(codes.view(np_type).astype(np.float32))
    values = values[np.isfinite(values)]
    mids = (values[:-1] + values[1:]) / 2
    near = np.concatenate([np.nextafter(mids, np.inf), np.nextafter(mids, -np.inf)])
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e9, -1e9, values.max() * 1.04], np.float32)
    return np.concatenate([values, mids, near, specials]).astype(np.float32)


@pytest.mark.parametrize("onnx_type,np_type", FLOAT8, ids=[t[1].__name__ for t in FLOAT8])
@pytest.mark.parametrize("saturate", [1, 0])
def test_cast_to_narrow_float_is_bit_exact(onnx_type, np_type, saturate):
    x = _cast_probe_values(np_type)
    model = _model([helper.make_node("Cast", ["x"], ["y"], to=onnx_type, saturate=saturate)],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, [x.size])],
                   [helper.make_tensor_value_info("y", onnx_type, [x.size])], opset=23)
    got = _run(model, x)[0]
    expected = _reference(model, x)[0]
    assert got.dtype == np_type
    np.testing.assert_array_equal(got.view(np.uint8), np.asarray(expected).view(np.uint8))


@pytest.mark.parametrize("onnx_type,np_type", FLOAT8, ids=[t[1].__name__ for t in FLOAT8])
def test_cast_from_narrow_float_decodes_every_code(onnx_type, np_type):
    codes = np.arange(16 if np_type == ml_dtypes.float4_e2m1fn else 256, dtype=np.uint8).view(np_type)
    model = _model([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)],
                   [helper.make_tensor_value_info("x", onnx_type, [codes.size])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [codes.size])], opset=23)
    np.testing.assert_array_equal(_run(model, codes)[0], codes.astype(np.float32))


def test_int4_casts_wrap_and_dequantize():
    x = np.array([-9.7, -8.5, -1.5, 7.5, 8.2, 15.9, 100.0, 0.5], np.float32)
    model = _model([helper.make_node("Cast", ["x"], ["q"], to=TensorProto.INT4),
                    helper.make_node("DequantizeLinear", ["q", "scale"], ["y"])],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8])],
                   [helper.make_tensor_value_info("q", TensorProto.INT4, [8]),
                    helper.make_tensor_value_info("y", TensorProto.FLOAT, [8])],
                   [helper.make_tensor("scale", TensorProto.FLOAT, [], [0.5])])
    q, y = _run(model, x)
    expected = x.astype(ml_dtypes.int4)  # truncate, wrap modulo 16 (the reference's cast)
    np.testing.assert_array_equal(q.astype(np.int8), expected.astype(np.int8))
    np.testing.assert_array_equal(y, expected.astype(np.float32) * 0.5)


def test_half_precision_matmul_accumulates_in_float32():
    rng = np.random.default_rng(4)
    a = rng.random((4, 512)).astype(np.float16)
    b = rng.random((512, 4)).astype(np.float16)
    model = _model([helper.make_node("MatMul", ["a", "b"], ["y"])],
                   [helper.make_tensor_value_info("a", TensorProto.FLOAT16, [4, 512]),
                    helper.make_tensor_value_info("b", TensorProto.FLOAT16, [512, 4])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [4, 4])])
    exact = (a.astype(np.float64) @ b.astype(np.float64)).astype(np.float16)  # one rounding
    got = _run(model, a, b)[0]
    # A float16 accumulator drifts by many ulps over 512 terms; float32 stays within one.
    ulp = np.spacing(exact.astype(np.float16)).astype(np.float64)
    assert np.all(np.abs(got.astype(np.float64) - exact.astype(np.float64)) <= ulp)


def test_fully_masked_row_reduces_to_negative_infinity():
    model = _model([helper.make_node("ReduceMax", ["x"], ["y"], keepdims=0)],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])], opset=13)
    x = np.full((2, 3), -np.inf, np.float32)
    assert _run(model, x)[0] == -np.inf


def test_shape_deciding_inputs_are_specialised_per_value():
    model = _model([helper.make_node("Reshape", ["x", "shape"], ["y"])],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6]),
                    helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b"])])
    rep = edgecc.backend.prepare(model)
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    for target in ([3, 4], [4, 3], [-1, 2]):
        np.testing.assert_array_equal(rep.run([x, np.array(target, np.int64)])[0], x.reshape(target))
