"""edgecc's ONNX converters (``edgecc/frontend/ops.py``), one small model each, against NumPy.

Each test builds a one-node model, runs it through ``edgecc.backend`` (the host
pipeline and TVM's VM) and compares with a NumPy reference of the ONNX spec, or
with ONNX Runtime where NumPy has no one-liner (MaxPool's argmax). Integer and
bool results must match exactly; float results within the stated tolerances.
"""

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

import edgecc.backend

RTOL, ATOL = 1e-5, 1e-6  # float32 math that NumPy does the same way
TRAINING = "ai.onnx.preview.training"


def one_node_model(op, inputs, outputs, *, attrs=None, inits=None, domain="", opset=22):
    """A model of one ``op`` node. ``inputs``/``outputs``/``inits``: {name: array}
    (outputs give only the dtype and shape); an input named "" is left out."""
    inits = inits or {}
    names = list(inputs) + list(inits)
    node = helper.make_node(op, names, list(outputs), domain=domain, **(attrs or {}))

    def info(name, array):
        return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(array.dtype), array.shape)

    graph = helper.make_graph([node], op.lower(), [info(n, a) for n, a in inputs.items()],
                              [info(n, a) for n, a in outputs.items()],
                              [numpy_helper.from_array(a, n) for n, a in inits.items()])
    opsets = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=opsets)


def run(op, inputs, expected, **kwargs):
    """Run the one-node model through edgecc; ``expected``: {output name: reference array}."""
    model = one_node_model(op, inputs, expected, **kwargs)
    return edgecc.backend.prepare(model).run(list(inputs.values()))


def check(op, inputs, expected, rtol=RTOL, atol=ATOL, **kwargs):
    got = run(op, inputs, expected, **kwargs)
    assert len(got) == len(expected)
    for out, ref in zip(got, expected.values()):
        assert out.dtype == ref.dtype and out.shape == ref.shape
        if ref.dtype.kind == "f":
            np.testing.assert_allclose(out, ref, rtol=rtol, atol=atol)
        else:
            np.testing.assert_array_equal(out, ref)


# --- CumProd ---------------------------------------------------------------------------


def cumprod_reference(x, axis, exclusive, reverse):
    if reverse:
        x = np.flip(x, axis)
    out = np.cumprod(x, axis=axis, dtype=x.dtype)
    if exclusive:
        ones = np.ones_like(np.take(out, [0], axis=axis))
        out = np.concatenate([ones, np.take(out, range(x.shape[axis] - 1), axis=axis)], axis=axis)
    return np.flip(out, axis) if reverse else out


@pytest.mark.parametrize("exclusive", [0, 1])
@pytest.mark.parametrize("reverse", [0, 1])
@pytest.mark.parametrize("dtype, axis", [("float32", 1), ("int32", -2)])
def test_cumprod(exclusive, reverse, dtype, axis):
    x = np.arange(1, 13).reshape(3, 4).astype(dtype)
    check("CumProd", {"x": x}, {"y": cumprod_reference(x, axis, exclusive, reverse)},
          attrs={"exclusive": exclusive, "reverse": reverse}, inits={"axis": np.array(axis, np.int64)},
          opset=26)


# --- BitCast ---------------------------------------------------------------------------


@pytest.mark.parametrize("src, dst", [("float32", "int32"), ("int64", "float64"), ("int8", "uint8"),
                                      ("uint16", "float16"), ("bool", "uint8")])
def test_bitcast(src, dst):
    x = np.array([[1.0, -2.5, 3.75], [0.0, 7.0, -1.0]]).astype(src)
    expected = x.astype(np.uint8) if src == "bool" else x.view(dst)
    to = helper.np_dtype_to_tensor_dtype(np.dtype(dst))
    check("BitCast", {"x": x}, {"y": expected}, attrs={"to": to}, opset=26)


# --- LpNormalization -------------------------------------------------------------------


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("axis", [0, -1])
def test_lp_normalization(p, axis):
    x = np.array([[3.0, -4.0, 0.0], [0.0, 0.0, 0.0], [1.0, 2.0, 2.0]], np.float32)
    norm = np.linalg.norm(x, ord=p, axis=axis, keepdims=True)
    with np.errstate(invalid="ignore"):
        expected = np.where(norm == 0, 0, x / norm).astype(np.float32)
    check("LpNormalization", {"x": x}, {"y": expected}, attrs={"axis": axis, "p": p})


# --- OneHot ----------------------------------------------------------------------------


def one_hot_reference(indices, depth, values, axis):
    indices = indices.astype(np.int64)
    indices = np.where(indices < 0, indices + depth, indices)
    hot = np.expand_dims(indices, axis) == np.arange(depth).reshape(
        [depth if i == axis % (indices.ndim + 1) else 1 for i in range(indices.ndim + 1)])
    return np.where(hot, values[1], values[0]).astype(values.dtype)


@pytest.mark.parametrize("indices, axis", [
    (np.array([0, 7, -3, 12, -11], np.int64), -1),  # negative and out-of-range indices
    (np.array([[1.0, 9.0], [2.0, 4.0]], np.float32), 1),  # float indices, inner axis
])
def test_one_hot_runtime_values_and_depth(indices, axis):
    depth, values = np.array(10, np.float32), np.array([2, 5], np.int32)
    check("OneHot", {"indices": indices, "depth": depth, "values": values},
          {"y": one_hot_reference(indices, 10, values, axis)}, attrs={"axis": axis})


# --- Pow -------------------------------------------------------------------------------


@pytest.mark.parametrize("xtype, ytype", [("float32", "int64"), ("float32", "uint32"), ("int64", "float32"),
                                          ("int32", "float32"), ("float16", "float32")])
def test_pow_mixed_dtypes(xtype, ytype):
    x, y = np.array([1, 2, 3, 5], xtype), np.array([4, 5, 6, 2], ytype)
    expected = np.power(x.astype(np.float64), y.astype(np.float64)).astype(xtype)
    check("Pow", {"x": x, "y": y}, {"z": expected}, rtol=1e-3)


@pytest.mark.parametrize("dtype", ["int64", "int32", "uint8"])
def test_pow_integers_exact(dtype):
    x = np.array([[1, 2, 3, 7], [0, 5, 3, 2]], dtype)
    y = np.array([4, 5, 6, 39], dtype)  # 3**39 and 7**39 wrap, as in NumPy
    check("Pow", {"x": x, "y": y}, {"z": np.power(x, y)})


def test_pow_integer_negative_exponent():
    x = np.array([1, -1, -1, 2, 0, -3], np.int64)
    y = np.array([-5, -3, -2, -1, 0, -2], np.int64)
    check("Pow", {"x": x, "y": y}, {"z": np.array([1, -1, 1, 0, 1, 0], np.int64)})


# --- ai.onnx.preview.training ----------------------------------------------------------

R, X, G, V, H = (np.array(0.1, np.float32), np.array([1.2, 2.8, -0.5], np.float32),
                 np.array([-0.94, -2.5, 0.3], np.float32), np.array([1.7, 3.6, 0.2], np.float32),
                 np.array([0.1, 0.4, 2.0], np.float32))


@pytest.mark.parametrize("step", [0, 3])
@pytest.mark.parametrize("mode", ["standard", "nesterov"])
def test_momentum(step, mode):
    alpha, beta, norm = 0.95, 0.1, 0.001
    g_reg = norm * X + G
    v_new = alpha * V + (beta if step > 0 else 1.0) * g_reg
    x_new = X - R * (g_reg + alpha * v_new if mode == "nesterov" else v_new)
    inputs = {"R": R, "T": np.array(step, np.int64), "X": X, "G": G, "V": V}
    check("Momentum", inputs, {"X_new": x_new.astype(np.float32), "V_new": v_new.astype(np.float32)},
          attrs={"alpha": alpha, "beta": beta, "norm_coefficient": norm, "mode": mode}, domain=TRAINING)


def test_adagrad_two_tensors():
    decay, eps, norm, step = 0.1, 1e-5, 0.001, 2
    x2, g2, h2 = X[:2] * 2, G[:2] - 1, H[:2] + 1
    inputs = {"R": R, "T": np.array(step, np.int64), "X1": X, "X2": x2, "G1": G, "G2": g2, "H1": H, "H2": h2}
    r = R / (1 + step * decay)
    expected = {}
    for i, (x, g, h) in enumerate([(X, G, H), (x2, g2, h2)], 1):
        g_reg = norm * x + g
        expected[f"H{i}_new"] = (h + g_reg * g_reg).astype(np.float32)
        expected[f"X{i}_new"] = (x - r * g_reg / (np.sqrt(expected[f"H{i}_new"]) + eps)).astype(np.float32)
    order = ["X1_new", "X2_new", "H1_new", "H2_new"]
    check("Adagrad", inputs, {k: expected[k] for k in order}, rtol=1e-5,
          attrs={"decay_factor": decay, "epsilon": eps, "norm_coefficient": norm}, domain=TRAINING)


@pytest.mark.parametrize("step", [0, 4])
def test_adam(step):
    alpha, beta, eps, norm, post = 0.9, 0.99, 1e-7, 0.001, 0.01
    g_reg = norm * X + G
    v_new = alpha * V + (1 - alpha) * g_reg
    h_new = beta * H + (1 - beta) * g_reg * g_reg
    r = R * np.sqrt(1 - beta**step) / (1 - alpha**step) if step > 0 else R
    x_new = (1 - post) * (X - r * v_new / (np.sqrt(h_new) + eps))
    inputs = {"R": R, "T": np.array(step, np.int64), "X": X, "G": G, "V": V, "H": H}
    expected = {"X_new": x_new, "V_new": v_new, "H_new": h_new}
    check("Adam", inputs, {k: v.astype(np.float32) for k, v in expected.items()}, rtol=1e-5,
          attrs={"alpha": alpha, "beta": beta, "epsilon": eps, "norm_coefficient": norm,
                 "norm_coefficient_post": post}, domain=TRAINING)


# --- Elu / Celu on 16-bit floats -------------------------------------------------------


@pytest.mark.parametrize("op", ["Elu", "Celu"])
def test_elu_celu_float16(op):
    alpha = 2.0
    x = np.array([-3.0, -0.5, 0.0, 0.5, 3.0], np.float16)
    x32 = x.astype(np.float32)
    scale = alpha if op == "Celu" else 1.0
    expected = np.where(x32 > 0, x32, alpha * (np.exp(x32 / scale) - 1)).astype(np.float16)
    check(op, {"x": x}, {"y": expected}, rtol=1e-3, atol=1e-3, attrs={"alpha": alpha})


# --- Mod -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_mod_float_edge_cases(dtype):
    inf = np.inf
    x = np.array([0.0, -0.0, -3, 3, -1, 1, inf, 1, 5.5, -5.5, 7], dtype)
    y = np.array([-2.0, 2, inf, inf, -inf, -inf, 2, 0, -2, 2, 2.5], dtype)
    got = run("Mod", {"x": x, "y": y}, {"z": x}, attrs={"fmod": 0})[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = np.mod(x, y)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(np.signbit(got), np.signbit(expected))  # signed zeros too


def test_mod_integers():
    x, y = np.array([-7, 7, -7, 7], np.int32), np.array([3, -3, -3, 3], np.int32)
    check("Mod", {"x": x, "y": y}, {"z": np.mod(x, y)})
    check("Mod", {"x": x, "y": y}, {"z": np.fmod(x, y)}, attrs={"fmod": 1})


# --- IsInf -----------------------------------------------------------------------------


@pytest.mark.parametrize("positive, negative", [(1, 1), (1, 0), (0, 1), (0, 0)])
def test_isinf_sign_attributes(positive, negative):
    x = np.array([-1.7, np.nan, np.inf, 3.6, -np.inf, np.inf], np.float32)
    expected = (positive & (x == np.inf)) | (negative & (x == -np.inf))
    check("IsInf", {"x": x}, {"y": expected.astype(bool)},
          attrs={"detect_positive": positive, "detect_negative": negative})


# --- ReduceMax / ReduceMin -------------------------------------------------------------


@pytest.mark.parametrize("op, np_op", [("ReduceMax", np.max), ("ReduceMin", np.min)])
def test_reduce_extreme_bool(op, np_op):
    x = np.array([[True, True], [True, False], [False, True], [False, False]])
    check(op, {"x": x}, {"y": np_op(x, axis=1, keepdims=True)}, inits={"axes": np.array([1], np.int64)})


@pytest.mark.parametrize("op, fill", [("ReduceMax", -np.inf), ("ReduceMin", np.inf)])
@pytest.mark.parametrize("dtype", ["float32", "int32", "bool"])
def test_reduce_extreme_empty_set(op, fill, dtype):
    x = np.zeros((2, 0, 4), dtype)
    if dtype == "bool":
        fill = op == "ReduceMin"
    elif dtype == "int32":
        fill = np.iinfo(np.int32).min if op == "ReduceMax" else np.iinfo(np.int32).max
    check(op, {"x": x}, {"y": np.full((2, 1, 4), fill, dtype)}, inits={"axes": np.array([1], np.int64)})


# --- EyeLike, ReverseSequence, Det -----------------------------------------------------


@pytest.mark.parametrize("k", [0, 1, -2])
def test_eye_like_dtype(k):
    x = np.zeros((3, 4), np.int32)
    check("EyeLike", {"x": x}, {"y": np.eye(3, 4, k, dtype=np.float64)}, attrs={"dtype": 11, "k": k})


@pytest.mark.parametrize("batch_axis, time_axis", [(0, 1), (1, 0)])
def test_reverse_sequence(batch_axis, time_axis):
    x = np.arange(20, dtype=np.float32).reshape(4, 5) if batch_axis == 0 else \
        np.arange(20, dtype=np.float32).reshape(5, 4)
    lens = np.array([1, 5, 3, 0], np.int64)
    expected = x.copy()
    for b, n in enumerate(lens):
        idx = [slice(None)] * 2
        idx[batch_axis], idx[time_axis] = b, slice(0, n)
        expected[tuple(idx)] = x[tuple(idx)][::-1]
    check("ReverseSequence", {"x": x, "lens": lens}, {"y": expected},
          attrs={"batch_axis": batch_axis, "time_axis": time_axis})


def test_det_batched():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 4, 4)).astype(np.float32)  # 8 matrices: the loop runs as vector lanes
    x[0, 0, 0] = 0.0  # needs a row swap
    x[1, 2, 3] = x[1, 2, 1]  # singular
    check("Det", {"x": x}, {"y": np.linalg.det(x.astype(np.float64)).astype(np.float32)},
          rtol=1e-4, atol=1e-5)


def test_det_single_matrix():
    x = np.array([[0.0, 1.0], [2.0, 3.0]], np.float32)
    check("Det", {"x": x}, {"y": np.array(-2.0, np.float32)})


# --- TensorScatter ---------------------------------------------------------------------


def tensor_scatter_reference(cache, update, write_indices, axis, circular):
    out = cache.copy()
    for prefix in np.ndindex(cache.shape[:axis]):
        for i in range(update.shape[axis]):
            pos = write_indices[prefix[0]] + i
            pos = pos % cache.shape[axis] if circular else pos
            out[(*prefix, pos)] = update[(*prefix, i)]
    return out


@pytest.mark.parametrize("mode", ["linear", "circular"])
def test_tensor_scatter(mode):
    rng = np.random.default_rng(1)
    cache = rng.standard_normal((3, 2, 6, 4)).astype(np.float32)
    update = rng.standard_normal((3, 2, 3, 4)).astype(np.float32)
    write_indices = np.array([0, 3, 5 if mode == "circular" else 2], np.int64)
    expected = tensor_scatter_reference(cache, update, write_indices, 2, mode == "circular")
    check("TensorScatter", {"cache": cache, "update": update, "write_indices": write_indices},
          {"present": expected}, attrs={"mode": mode}, opset=24)


# --- MaxPool with argmax ---------------------------------------------------------------


@pytest.mark.parametrize("attrs", [
    {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]},
    {"kernel_shape": [2, 2], "strides": [2, 2], "storage_order": 1},
    {"kernel_shape": [2, 3], "strides": [2, 1], "ceil_mode": 1},
    {"kernel_shape": [3, 3], "auto_pad": "SAME_UPPER", "strides": [2, 2]},
])
def test_max_pool_argmax_matches_onnxruntime(attrs):
    x = np.random.default_rng(2).standard_normal((2, 3, 7, 6)).astype(np.float32)
    x[0, 0, :2, :2] = 5.0  # ties: the first index wins
    probe = one_node_model("MaxPool", {"x": x}, {"y": x, "i": x.astype(np.int64)}, attrs=attrs)
    probe.graph.ClearField("output")
    probe.graph.output.extend([helper.make_empty_tensor_value_info(n) for n in ("y", "i")])
    values, indices = ort.InferenceSession(probe.SerializeToString(),
                                           providers=["CPUExecutionProvider"]).run(None, {"x": x})
    check("MaxPool", {"x": x}, {"y": values, "i": indices}, attrs=attrs)


# --- Split, BitShift, TopK -------------------------------------------------------------


def test_split_zero_size_pieces():
    x = np.arange(5, dtype=np.float32)
    expected = {"a": x[:0], "b": x[0:2], "c": x[2:2], "d": x[2:5]}
    check("Split", {"x": x}, expected, inits={"split": np.array([0, 2, 0, 3], np.int64)}, opset=18)


@pytest.mark.parametrize("direction", ["LEFT", "RIGHT"])
@pytest.mark.parametrize("dtype, shifts", [
    ("int32", [32, 33, 100]),  # the width or more: what hardware shifts mask differently
    ("int32", [-1, -32, -64]),
    ("int32", [32, -1, 1, 0, 2, 31]),
    ("uint8", [8, 9, 200, 1, 0, 7]),
])
def test_bitshift_out_of_range(direction, dtype, shifts):
    bits = np.dtype(dtype).itemsize * 8
    y = np.array(shifts, dtype)
    x = np.resize(np.array([-8, 4, -1, 5, 6, 7]) if dtype == "int32" else np.array([8, 4, 255, 5, 6, 7]),
                  y.shape).astype(dtype)
    valid = (y.astype(np.int64) >= 0) & (y.astype(np.int64) < bits)
    shift = np.where(valid, y, 0).astype(dtype)
    shifted = np.left_shift(x, shift) if direction == "LEFT" else np.right_shift(x, shift)
    fill = np.where(x < 0, -1, 0).astype(dtype) if direction == "RIGHT" and dtype == "int32" else 0
    check("BitShift", {"x": x, "y": y}, {"z": np.where(valid, shifted, fill).astype(dtype)},
          attrs={"direction": direction})


@pytest.mark.parametrize("largest", [1, 0])
def test_top_k_uint64(largest):
    x = np.array([[0, 2**64 - 1, 2**63, 5, 2**63 - 1], [7, 3, 9, 1, 2**62]], np.uint64)
    order = np.argsort(-x.astype(np.float64) if largest else x, axis=1, kind="stable")[:, :3]
    check("TopK", {"x": x, "k": np.array([3], np.int64)},
          {"values": np.take_along_axis(x, order, 1), "indices": order.astype(np.int64)},
          attrs={"axis": 1, "largest": largest})


# --- ai.onnx.ml ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype, threshold", [("float32", 1.0), ("int64", -1.5)])
def test_binarizer(dtype, threshold):
    x = np.array([[0.5, 1.0, 1.5], [-2.0, 3.0, -1.0]]).astype(dtype)
    check("Binarizer", {"x": x}, {"y": (x > threshold).astype(dtype)}, attrs={"threshold": threshold},
          domain="ai.onnx.ml")


@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 4), (4,)])
def test_array_feature_extractor(shape):
    x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    indices = np.array([3, 0, 3], np.int64)
    expected = np.take(x, indices, axis=-1)
    check("ArrayFeatureExtractor", {"x": x, "indices": indices},
          {"z": expected.reshape(1, -1) if x.ndim == 1 else expected}, domain="ai.onnx.ml")
