"""Quantized ONNX ops (edgecc.frontend.quantized) against ONNX Runtime.

Each test builds a small model with seeded random data, compiles it for the host
through ``edgecc.backend`` and runs ONNX Runtime's CPU provider on the same
inputs: integer outputs must be equal bit for bit; float outputs agree within
the rtol/atol stated at each check. Weights are initializers, as in deployed
models, and activations runtime inputs, so the quantized ops reach edgecc's
converters rather than being folded before import (constant DequantizeLinear
weights are kept from folding where a test says so).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgecc.backend
from edgecc.frontend import simplify

from ..conftest import onnxruntime_outputs

MS = "com.microsoft"


def _model(nodes, inputs, outputs, weights, opset=21, contrib=False) -> onnx.ModelProto:
    """A graph over ``inputs`` (name -> array, runtime) and ``weights`` (name -> array,
    initializers), with ``outputs`` as (name, ONNX type, shape)."""
    graph = helper.make_graph(
        nodes, "quantized",
        [helper.make_tensor_value_info(name, _onnx_type(a.dtype), a.shape)
         for name, a in inputs.items()],
        [helper.make_tensor_value_info(name, dtype, shape) for name, dtype, shape in outputs],
        initializer=[numpy_helper.from_array(np.asarray(a), name) for name, a in weights.items()])
    opsets = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(MS, 1)] if contrib else [])
    return helper.make_model(graph, opset_imports=opsets, ir_version=10)


def _check(model, inputs, rtol=0.0, atol=0.0):
    """Run edgecc and ONNX Runtime; integer outputs equal, float ones within rtol/atol.
    Returns edgecc's outputs."""
    ours = edgecc.backend.prepare(model).run(dict(inputs))
    theirs = onnxruntime_outputs(model, dict(inputs))
    assert len(ours) == len(theirs)
    for got, want in zip(ours, theirs):
        assert got.dtype == want.dtype and got.shape == want.shape
        if want.dtype.kind in "iub":
            np.testing.assert_array_equal(got, want)
        else:
            np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
    return ours


def _ints(rng, dtype, shape):
    info = np.iinfo(dtype)
    return rng.integers(info.min, int(info.max) + 1, size=shape, dtype=dtype)


def _onnx_type(dtype) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def _scalar(value, dtype):
    return np.array(value, dtype=dtype)


@pytest.mark.parametrize("x_type,w_type", [(np.uint8, np.uint8), (np.uint8, np.int8), (np.int8, np.int8)])
@pytest.mark.parametrize("group", [1, 2])
def test_qlinearconv(x_type, w_type, group):
    rng = np.random.default_rng(0)
    x = _ints(rng, x_type, (1, 4, 9, 9))
    weights = {
        "x_scale": _scalar(0.05, np.float32), "x_zp": _scalar(3 if x_type == np.uint8 else -2, x_type),
        "w": _ints(rng, w_type, (6, 4 // group, 3, 3)),
        "w_scale": rng.uniform(0.002, 0.02, 6).astype(np.float32),  # per output channel
        "w_zp": np.zeros(6, dtype=w_type) if w_type == np.int8 else np.full(6, 128, dtype=w_type),
        "y_scale": _scalar(0.7, np.float32), "y_zp": _scalar(100 if x_type == np.uint8 else 5, x_type),
        "bias": rng.integers(-2000, 2000, 6).astype(np.int32),
    }
    node = helper.make_node("QLinearConv", ["x", "x_scale", "x_zp", "w", "w_scale", "w_zp", "y_scale", "y_zp",
                                            "bias"], ["y"], pads=[1, 0, 1, 2], strides=[2, 1], group=group)
    model = _model([node], {"x": x}, [("y", _onnx_type(x_type), [1, 6, 5, 8])], weights, opset=10)
    _check(model, {"x": x})


def test_qlinearconv_saturates():
    """A small output scale drives most outputs past the uint8 range: both ends saturate."""
    rng = np.random.default_rng(1)
    x = _ints(rng, np.uint8, (1, 2, 6, 6))
    weights = {"x_scale": _scalar(0.1, np.float32), "x_zp": _scalar(128, np.uint8),
               "w": _ints(rng, np.int8, (3, 2, 2, 2)), "w_scale": _scalar(0.05, np.float32),
               "w_zp": _scalar(0, np.int8), "y_scale": _scalar(0.01, np.float32), "y_zp": _scalar(128, np.uint8)}
    node = helper.make_node("QLinearConv", ["x", "x_scale", "x_zp", "w", "w_scale", "w_zp", "y_scale", "y_zp"],
                            ["y"], auto_pad="SAME_UPPER")
    model = _model([node], {"x": x}, [("y", TensorProto.UINT8, [1, 3, 6, 6])], weights, opset=10)
    _check(model, {"x": x})


@pytest.mark.parametrize("opset,scale_type", [(10, np.float32), (21, np.float32), (21, np.float16)])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_qlinearmatmul(opset, scale_type, dtype):
    rng = np.random.default_rng(2)
    a = _ints(rng, dtype, (2, 5, 16))
    weights = {"a_scale": _scalar(0.03, scale_type), "a_zp": _scalar(7, dtype), "b": _ints(rng, dtype, (16, 8)),
               "b_scale": rng.uniform(0.01, 0.03, 8).astype(scale_type),  # per column
               "b_zp": _scalar(0 if dtype == np.int8 else 120, dtype),
               "y_scale": _scalar(0.5, scale_type), "y_zp": _scalar(10, dtype)}
    node = helper.make_node("QLinearMatMul", ["a", "a_scale", "a_zp", "b", "b_scale", "b_zp", "y_scale", "y_zp"],
                            ["y"])
    model = _model([node], {"a": a}, [("y", _onnx_type(dtype), [2, 5, 8])], weights, opset)
    _check(model, {"a": a})


def test_qlinearmatmul_rounds_half_to_even():
    """A multiplier of exactly 0.5 over every uint8 value: each odd value is a tie."""
    a = np.arange(256, dtype=np.uint8).reshape(16, 16)
    weights = {"a_scale": _scalar(0.5, np.float32), "a_zp": _scalar(0, np.uint8),
               "b": np.eye(16, dtype=np.uint8), "b_scale": _scalar(1.0, np.float32),
               "b_zp": _scalar(0, np.uint8), "y_scale": _scalar(1.0, np.float32), "y_zp": _scalar(3, np.uint8)}
    node = helper.make_node("QLinearMatMul", ["a", "a_scale", "a_zp", "b", "b_scale", "b_zp", "y_scale", "y_zp"],
                            ["y"])
    model = _model([node], {"a": a}, [("y", TensorProto.UINT8, [16, 16])], weights, opset=10)
    got = _check(model, {"a": a})[0]
    np.testing.assert_array_equal(got, np.rint(a / 2) + 3)  # before the zero point 3: 1->0, 3->2, 5->2


def test_convinteger():
    rng = np.random.default_rng(3)
    x = _ints(rng, np.uint8, (2, 3, 7, 7))
    weights = {"w": _ints(rng, np.uint8, (4, 3, 3, 3)), "x_zp": _scalar(9, np.uint8),
               "w_zp": _scalar(131, np.uint8)}
    node = helper.make_node("ConvInteger", ["x", "w", "x_zp", "w_zp"], ["y"], pads=[1, 1, 1, 1],
                            dilations=[1, 2])
    model = _model([node], {"x": x}, [("y", TensorProto.INT32, [2, 4, 7, 5])], weights, opset=10)
    _check(model, {"x": x})


def test_matmulinteger():
    """TVM's own converter, kept: per-column zero points on B."""
    rng = np.random.default_rng(4)
    a = _ints(rng, np.uint8, (3, 12))
    weights = {"b": _ints(rng, np.int8, (12, 5)), "a_zp": _scalar(17, np.uint8),
               "b_zp": _ints(rng, np.int8, (5,))}
    node = helper.make_node("MatMulInteger", ["a", "b", "a_zp", "b_zp"], ["y"])
    model = _model([node], {"a": a}, [("y", TensorProto.INT32, [3, 5])], weights, opset=10)
    _check(model, {"a": a})


@pytest.mark.parametrize("quantized_output", [False, True])
def test_qgemm(quantized_output):
    rng = np.random.default_rng(5)
    a = _ints(rng, np.uint8, (4, 24))
    weights = {"a_scale": _scalar(0.02, np.float32), "a_zp": _scalar(100, np.uint8),
               "b": _ints(rng, np.int8, (10, 24)),  # transB: [N, K]
               "b_scale": rng.uniform(0.005, 0.02, 10).astype(np.float32), "b_zp": np.zeros(10, dtype=np.int8),
               "c": rng.integers(-5000, 5000, 10).astype(np.int32)}
    names = ["a", "a_scale", "a_zp", "b", "b_scale", "b_zp", "c"]
    out_type = TensorProto.FLOAT
    if quantized_output:
        weights |= {"y_scale": _scalar(0.25, np.float32), "y_zp": _scalar(131, np.uint8)}
        names += ["y_scale", "y_zp"]
        out_type = TensorProto.UINT8
    node = helper.make_node("QGemm", names, ["y"], domain=MS, transB=1, alpha=0.75)
    model = _model([node], {"a": a}, [("y", out_type, [4, 10])], weights, opset=17, contrib=True)
    _check(model, {"a": a}, rtol=1e-6, atol=1e-6)  # float output: float32(acc) * scale, as ONNX Runtime


@pytest.mark.parametrize("weight_type", [np.int8, np.uint8])
def test_blocked_dequantize_linear_converter(weight_type, monkeypatch):
    """Blocked DequantizeLinear feeding a MatMul, kept in the graph (no folding) so that
    edgecc's converter computes it; K = 20 is not a multiple of the block size."""
    monkeypatch.setattr(simplify, "FOLD_LIMIT", 0)
    _check_blocked_dequantize(weight_type)


@pytest.mark.parametrize("weight_type", ["int4", "uint4"])
def test_blocked_dequantize_linear_int4(weight_type):
    """4-bit weights: what a 4-bit exporter writes (folded to float weights before import
    when small, as here)."""
    _check_blocked_dequantize(weight_type)


def test_blocked_dequantize_linear_int4_converter(monkeypatch):
    monkeypatch.setattr(simplify, "FOLD_LIMIT", 0)
    _check_blocked_dequantize("int4")


def _check_blocked_dequantize(weight_type):
    rng = np.random.default_rng(6)
    k, n, block = 20, 6, 8
    low, high = {"int4": (-8, 8), "uint4": (0, 16), np.int8: (-128, 128), np.uint8: (0, 256)}[weight_type]
    codes = rng.integers(low, high, (k, n))
    zero = rng.integers(low, high, (-(-k // block), n))
    elem = {"int4": TensorProto.INT4, "uint4": TensorProto.UINT4}.get(weight_type)
    if elem is None:
        w, zp = codes.astype(weight_type), zero.astype(weight_type)
        w_init, zp_init = numpy_helper.from_array(w, "w"), numpy_helper.from_array(zp, "w_zp")
    else:
        w_init = helper.make_tensor("w", elem, codes.shape, codes.flatten().tolist())
        zp_init = helper.make_tensor("w_zp", elem, zero.shape, zero.flatten().tolist())
    scale = rng.uniform(0.01, 0.1, zero.shape).astype(np.float32)
    x = rng.standard_normal((3, k)).astype(np.float32)
    nodes = [helper.make_node("DequantizeLinear", ["w", "w_scale", "w_zp"], ["wf"], axis=0, block_size=block),
             helper.make_node("MatMul", ["x", "wf"], ["y"])]
    graph = helper.make_graph(nodes, "blocked", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, n])],
                              initializer=[w_init, zp_init, numpy_helper.from_array(scale, "w_scale")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    _check(model, {"x": x}, rtol=1e-5, atol=1e-5)  # float32 matmuls summing in different orders


def _pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Codes [rows, count] packed ``8 // bits`` to a byte, low bits first (count padded with 0)."""
    per_byte = 8 // bits
    codes = np.pad(codes, [(0, 0), (0, -codes.shape[1] % per_byte)]).astype(np.uint8)
    fields = codes.reshape(codes.shape[0], -1, per_byte)
    return np.bitwise_or.reduce(fields << (np.arange(per_byte, dtype=np.uint8) * bits), axis=-1).astype(np.uint8)


@pytest.mark.parametrize("with_zero_points,with_bias", [(False, False), (True, False), (True, True)])
def test_matmul_nbits(with_zero_points, with_bias):
    """4-bit weights, K = 40 over blocks of 16 (the last block padded), A of rank 3."""
    rng = np.random.default_rng(7)
    k, n, block, bits = 40, 12, 16, 4
    n_blocks = -(-k // block)
    codes = rng.integers(0, 16, (n, n_blocks * block))
    weights = {"b": _pack(codes, bits).reshape(n, n_blocks, block * bits // 8),
               "scales": rng.uniform(0.01, 0.1, n * n_blocks).astype(np.float32)}
    names = ["a", "b", "scales"]
    if with_zero_points:
        weights["zp"] = _pack(rng.integers(0, 16, (n, n_blocks)), bits).reshape(-1)
        names.append("zp")
    if with_bias:
        weights["bias"] = rng.standard_normal(n).astype(np.float32)
        names += ["", "bias"]
    a = rng.standard_normal((2, 3, k)).astype(np.float32)
    node = helper.make_node("MatMulNBits", names, ["y"], domain=MS, K=k, N=n, bits=bits, block_size=block)
    model = _model([node], {"a": a}, [("y", TensorProto.FLOAT, [2, 3, n])], weights, opset=21, contrib=True)
    _check(model, {"a": a}, rtol=1e-4, atol=1e-4)  # ONNX Runtime's float32 kernels sum in blocks
