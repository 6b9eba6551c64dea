"""4-bit weight-only models: MatMulNBits and blocked int4 DequantizeLinear run by INT4 kernels
and match ONNX Runtime; ``--quantize int4`` on an fp32 model; arm and riscv under qemu."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tvm.target.codegen import target_has_features

import edgecc
from edgecc.quantize import quantize_int4
from edgecc.targets import get_target
from edgecc.zoo import encoder_model, ffn_model, sample_inputs
from tests.conftest import run_cli

# Weight-only int4 computes in float32 like ONNX Runtime's MatMulNBits at accuracy level 0:
# the same dequantized products summed in another order, so fp32 rounding only.
RTOL, ATOL = 1e-5, 1e-4


def _reference(model, inputs):
    """ONNX Runtime with graph optimisations off: its optimiser fuses DequantizeLinear + MatMul
    into MatMulNBits at accuracy level 4 (int8 activations), which is not the model's math."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, inputs)[0]


def _output(bundle, inputs):
    return next(iter(bundle.run(inputs).values()))


def _kernels(bundle):
    return [layer["kernel"] for layer in bundle.manifest["quantization"]["int4_layers"]]


def _matmul_nbits(k, n, block, zero_points, rows=1, bias=False, seed=0):
    """One MatMulNBits, as ONNX Runtime documents it: ``B`` [N, K / block, block / 2]."""
    rng = np.random.default_rng(seed)
    blocks = k // block
    codes = rng.integers(0, 16, (n, k)).astype(np.uint8)
    packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).reshape(n, blocks, block // 2)
    inits = [numpy_helper.from_array(packed, "B"),
             numpy_helper.from_array((rng.random(n * blocks) * 0.05 + 0.01).astype(np.float32), "scales")]
    inputs = ["x", "B", "scales"]
    if zero_points:
        zeros = rng.integers(0, 16, (n, blocks + blocks % 2)).astype(np.uint8)
        inits.append(numpy_helper.from_array((zeros[:, 0::2] | (zeros[:, 1::2] << 4)).reshape(-1), "zp"))
        inputs.append("zp")
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "bias"))
        inputs += [""] * (4 - len(inputs)) + ["", "bias"]
    node = helper.make_node("MatMulNBits", inputs, ["y"], domain="com.microsoft", K=k, N=n, bits=4, block_size=block)
    graph = helper.make_graph([node], "nbits", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, rows, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, rows, n])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


@pytest.mark.parametrize("k, n, block, zero_points, rows, bias", [
    (128, 64, 32, True, 1, False),    # decoding
    (256, 128, 16, False, 1, True),   # symmetric (zero point 8), bias fused
    (512, 96, 128, True, 5, False),   # several rows: passes of 3 and 2
    (96, 32, 32, True, 1, False),     # an odd number of blocks: zero points padded to whole bytes
])
def test_matmul_nbits_runs_int4_and_matches_onnxruntime(k, n, block, zero_points, rows, bias):
    model = _matmul_nbits(k, n, block, zero_points, rows, bias)
    inputs = sample_inputs(model)
    bundle = edgecc.compile(model, "host")
    assert _kernels(bundle) == ["int4_matmul"]
    rules = next(p["kernels"] for p in bundle.manifest["passes"] if p["phase"] == "schedule")
    assert list(rules.values()) == ["int4-matmul"], rules  # one kernel, the bias inside
    np.testing.assert_allclose(_output(bundle, inputs), _reference(model, inputs), rtol=RTOL, atol=ATOL)


def _with_accuracy_level(model, level):
    for node in model.graph.node:
        node.attribute.append(helper.make_attribute("accuracy_level", level))
    return model


@pytest.mark.skipif(not target_has_features("avx512vnni", get_target("host").tvm_target()),
                    reason="this CPU has no AVX-512 VNNI")
@pytest.mark.parametrize("k, n, block, rows", [(256, 64, 32, 1), (512, 128, 128, 4)])
def test_accuracy_level_4_runs_int8_activations_like_onnxruntime(k, n, block, rows):
    """MatMulNBits allowing int8 activations: edgecc's VNNI kernel quantizes them as ONNX
    Runtime's level 4 does (per block, max|x| / 127, round to nearest), so the two agree to
    float32 rounding of the per-block scaling; both differ from float32 math by more."""
    model = _with_accuracy_level(_matmul_nbits(k, n, block, True, rows), 4)
    inputs = sample_inputs(model)
    bundle = edgecc.compile(model, "host")
    (layer,) = bundle.manifest["quantization"]["int4_layers"]
    assert layer["kernel"] == "int4_matmul_vnni" and layer["activations"] == "int8", layer
    got = _output(bundle, inputs)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(got, session.run(None, inputs)[0], rtol=1e-4, atol=1e-4)
    exact = _reference(_with_accuracy_level(_matmul_nbits(k, n, block, True, rows), 0), inputs)
    assert not np.allclose(got, exact, rtol=1e-4, atol=1e-4)  # really int8 activations


def test_columns_not_whole_vectors_stay_float32_and_match():
    model = _matmul_nbits(64, 40, 32, True)  # 40 is not a multiple of 2 x 16 lanes
    inputs = sample_inputs(model)
    bundle = edgecc.compile(model, "host")
    (layer,) = bundle.manifest["quantization"]["int4_layers"]
    assert layer["kernel"] is None and "not a multiple" in layer["reason"]
    np.testing.assert_allclose(_output(bundle, inputs), _reference(model, inputs), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("zero_point", [True, False])
def test_blocked_int4_dequantize_linear_runs_int4(signed, zero_point):
    """DequantizeLinear (opset 21) of an int4/uint4 [K, N] initializer blocked along K, then MatMul."""
    rng = np.random.default_rng(int(signed) * 2 + int(zero_point))
    k, n, block = 128, 64, 32
    elem, low, high = (TensorProto.INT4, -8, 8) if signed else (TensorProto.UINT4, 0, 16)
    inits = [helper.make_tensor("w", elem, [k, n], rng.integers(low, high, (k, n)).reshape(-1).tolist()),
             numpy_helper.from_array((rng.random((k // block, n)) * 0.05 + 0.01).astype(np.float32), "s")]
    if zero_point:
        inits.append(helper.make_tensor("z", elem, [k // block, n], rng.integers(low, high, (k // block, n)).reshape(-1).tolist()))
    nodes = [helper.make_node("DequantizeLinear", [i.name for i in inits], ["wd"], axis=0, block_size=block),
             helper.make_node("MatMul", ["x", "wd"], ["y"])]
    graph = helper.make_graph(nodes, "dq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    inputs = sample_inputs(model)
    bundle = edgecc.compile(model, "host")
    assert _kernels(bundle) == ["int4_matmul"]
    np.testing.assert_allclose(_output(bundle, inputs), _reference(model, inputs), rtol=RTOL, atol=ATOL)


def _cosine(a, b):
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_quantize_int4_encoder_matches_onnxruntime_and_stays_close_to_fp32():
    model = encoder_model(layers=1, d_model=64, heads=2, seq=8, ffn=256)
    inputs = sample_inputs(model)
    bundle = edgecc.compile(model, "host", quantize="int4", group_size=32)
    quantization = bundle.manifest["quantization"]
    assert quantization["mode"] == "int4" and quantization["weights_quantized"] == 6  # Q, K, V, out, 2 FFN
    assert all(_kernels(bundle)), quantization
    got = _output(bundle, inputs)
    quantized, _ = quantize_int4(model, 32)
    np.testing.assert_allclose(got, _reference(quantized, inputs), rtol=1e-4, atol=1e-4)
    fp32 = _reference(model, inputs)
    assert _cosine(got, fp32) > 0.995, _cosine(got, fp32)  # 4-bit weights: close, not equal
    assert not np.allclose(got, fp32, atol=1e-4)  # and really quantized


@pytest.mark.parametrize("target", ["arm", "riscv"])
def test_int4_kernels_under_qemu_match_host(target):
    model, _ = quantize_int4(ffn_model(d_model=64, hidden=256, seq=4), 32)
    inputs = sample_inputs(model)
    bundle = edgecc.compile(model, target)
    assert all(_kernels(bundle)) and len(_kernels(bundle)) == 2
    np.testing.assert_allclose(_output(bundle, inputs), _output(edgecc.compile(model, "host"), inputs),
                               rtol=RTOL, atol=ATOL)


def test_build_quantize_int4_from_the_command_line(tmp_path):
    path = tmp_path / "ffn.onnx"
    onnx.save(ffn_model(d_model=64, hidden=256, seq=1), path)
    result = run_cli("build", str(path), "--quantize", "int4", "--group-size", "64", "-o", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert "int4: 2 weights quantized in groups of 64, 2 run by INT4 kernels" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--quantize", "int4", "--group-size", "24"], "--group-size must be one of 16, 32, 64, 128, 256, got 24"),
    (["--quantize", "int2"], "invalid choice: 'int2'"),
    (["--int8-activations"], "--int8-activations needs --quantize int4"),
])
def test_bad_quantize_arguments_are_one_line(tmp_path, args, message):
    path = tmp_path / "ffn.onnx"
    onnx.save(ffn_model(d_model=64, hidden=256, seq=1), path)
    result = run_cli("build", str(path), *args, "-o", str(tmp_path / "out"))
    assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
