"""INT8 matmuls from the quantization tools people use (ONNX Runtime's ``quantize_dynamic`` and
``quantize_static``, QDQ and QOperator) run as integer dot-product kernels and match ONNX
Runtime; the generated code uses the target's dot-product instruction."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
from tvm.target.codegen import target_has_features

import edgecc
from edgecc.targets import get_target
from edgecc.zoo import encoder_model, ffn_model, sample_inputs

needs_vnni = pytest.mark.skipif(not target_has_features("avx512vnni", get_target("host").tvm_target()),
                                reason="this CPU has no AVX-512 VNNI")


def _ffn():
    return ffn_model(d_model=64, hidden=256, seq=8)


class _Reader(CalibrationDataReader):
    def __init__(self, model, batches=4):
        rng = np.random.default_rng(1)
        shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
        self.batches = iter([{name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
                             for _ in range(batches)])

    def get_next(self):
        return next(self.batches, None)


def _dynamic(model, tmp_path):
    onnx.save(model, tmp_path / "fp32.onnx")
    quantize_dynamic(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", weight_type=QuantType.QInt8)
    return onnx.load(tmp_path / "int8.onnx")


def _static(model, tmp_path, quant_format, activations, per_channel):
    onnx.save(model, tmp_path / "fp32.onnx")
    quantize_static(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", _Reader(model), quant_format=quant_format,
                    activation_type=activations, weight_type=QuantType.QInt8, per_channel=per_channel)
    return onnx.load(tmp_path / "int8.onnx")


def _reference(model, inputs):
    """ONNX Runtime on the model as written (its graph optimiser would fuse further QDQ
    patterns of its own, activation x activation matmuls included)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"]).run(None, inputs)[0]


def _output_step(model) -> float:
    """The scale of the quantized value the model's output is dequantized from (1 step)."""
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    producer = {out: node for node in model.graph.node for out in node.output}
    node = producer[model.graph.output[0].name]
    return float(consts[node.input[1]]) if node.op_type == "DequantizeLinear" else 0.0


def _kernels(bundle):
    return [layer["kernel"] for layer in bundle.manifest["quantization"]["int8_layers"]]


def _output(bundle, inputs):
    return next(iter(bundle.run(inputs).values()))


@needs_vnni
@pytest.mark.parametrize("make", [_ffn, lambda: encoder_model(layers=1, d_model=64, heads=2, seq=8, ffn=256)])
def test_dynamic_quantization_runs_vnni_and_matches_onnxruntime(make, tmp_path):
    """DynamicQuantizeLinear + MatMulInteger: uint8 activations, int8 weights, float32 out."""
    model = _dynamic(make(), tmp_path)
    inputs = sample_inputs(model)
    bundle = edgecc.compile(model, "host")
    kernels = _kernels(bundle)
    assert kernels and all(k and k.startswith("int8_matmul_vnni") for k in kernels), kernels
    rules = next(p["kernels"] for p in bundle.manifest["passes"] if p["phase"] == "schedule")
    # the scale multiply, bias add and activation fused into the integer kernel
    assert any(name.startswith("fused_int8_matmul") and "add" in name for name in rules), rules
    # integer accumulation is exact: float32 rounding of the scaling only
    np.testing.assert_allclose(_output(bundle, inputs), _reference(model, inputs), rtol=1e-5, atol=1e-5)


@needs_vnni
@pytest.mark.parametrize("quant_format", [QuantFormat.QDQ, QuantFormat.QOperator])
@pytest.mark.parametrize("activations, per_channel", [(QuantType.QUInt8, False), (QuantType.QInt8, True)])
def test_static_quantization_runs_vnni_within_one_step(quant_format, activations, per_channel, tmp_path):
    """QDQ (MatMul between DequantizeLinear and QuantizeLinear, fused to QLinearMatMul) and
    QOperator (QLinearMatMul) from quantize_static, uint8 and int8 activations, per-tensor and
    per-channel weights: within one quantization step of the output."""
    model = _static(_ffn(), tmp_path, quant_format, activations, per_channel)
    inputs = sample_inputs(model)
    bundle = edgecc.compile(model, "host")
    assert len(_kernels(bundle)) == 2 and all(_kernels(bundle)), bundle.manifest["quantization"]
    want = _reference(model, inputs)
    step = _output_step(model) or 1e-5
    got = _output(bundle, inputs)
    assert np.abs(got - want).max() <= step * 1.001, (np.abs(got - want).max(), step)


@needs_vnni
def test_host_library_uses_vpdpbusd(tmp_path):
    bundle = edgecc.compile(_dynamic(_ffn(), tmp_path), "host")
    code = subprocess.run(["objdump", "-d", str(bundle.path / "model.so")], capture_output=True, text=True).stdout
    assert "vpdpbusd" in code


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-objdump") is None, reason="no aarch64 binutils")
def test_arm_a76_uses_sdot_and_matches_host_under_qemu(tmp_path):
    model = _dynamic(_ffn(), tmp_path)
    inputs = sample_inputs(model)
    bundle = edgecc.compile(model, "arm-a76")
    assert all(k and k.startswith("int8_matmul_sdot") for k in _kernels(bundle)), _kernels(bundle)
    code = subprocess.run(["aarch64-linux-gnu-objdump", "-d", str(bundle.path / "model.so")],
                          capture_output=True, text=True).stdout
    assert "sdot" in code
    np.testing.assert_allclose(_output(bundle, inputs), _reference(model, inputs), rtol=1e-5, atol=1e-5)


@needs_vnni
@pytest.mark.parametrize("target", ["host", "arm-a76"])
def test_column_counts_off_the_simd_width_run_the_kernel_too(target, tmp_path):
    """N = 200 and 40 (not multiples of 16 or 64): the weight is padded to whole tiles and the
    extra columns are not stored; the numbers match ONNX Runtime."""
    model = _dynamic(ffn_model(d_model=40, hidden=200, seq=5), tmp_path)
    inputs = sample_inputs(model)
    bundle = edgecc.compile(model, target)
    assert len(_kernels(bundle)) == 2 and all(_kernels(bundle)), _kernels(bundle)
    np.testing.assert_allclose(_output(bundle, inputs), _reference(model, inputs), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-objdump") is None, reason="no aarch64 binutils")
@pytest.mark.parametrize("how", ["dynamic", "QDQ int8"])
def test_i8mm_matmuls_use_smmla_and_match_under_qemu(how, tmp_path):
    """``--mattr +i8mm``: matmuls as 2x8 by 8x2 matrix products (odd rows, K and N not
    multiples of 8 or 16), exact in int32 under qemu."""
    from edgecc.targets import get_target

    fp32 = ffn_model(d_model=36, hidden=100, seq=5)
    model = _dynamic(fp32, tmp_path) if how == "dynamic" else _static(fp32, tmp_path, QuantFormat.QDQ,
                                                                          QuantType.QInt8, True)
    inputs = sample_inputs(model)
    bundle = edgecc.compile(model, get_target("arm-a76", mattr=["+i8mm"]))
    assert all(k and k.startswith("int8_matmul_smmla") for k in _kernels(bundle)), _kernels(bundle)
    assert _kernel_ops(bundle, "aarch64-linux-gnu-objdump", r"int8_matmul\w*_compute_$", r"\bsmmla\s") > 0
    np.testing.assert_allclose(_output(bundle, inputs), _reference(model, inputs), rtol=1e-5, atol=1e-5)


def _kernel_ops(bundle, objdump, pattern, ops) -> int:
    """How many instructions matching ``ops`` the library's kernels named ``pattern`` hold."""
    from tests.e2e.test_vectorize import kernel_ranges

    library = bundle.path / "model.so"
    total = 0
    for start, stop in kernel_ranges(library, objdump, pattern).values():
        text = subprocess.run([objdump, "-d", f"--start-address={start:#x}", f"--stop-address={stop:#x}",
                               str(library)], capture_output=True, text=True, check=True).stdout
        total += len(re.findall(ops, text))
    return total


@pytest.mark.parametrize("target, objdump, ops", [
    ("arm", "aarch64-linux-gnu-objdump", r"\bsmlal2?\s"),  # NEON without dotprod: widening multiply-adds
    ("riscv", "riscv64-linux-gnu-objdump", r"\bvwmacc\.v[vx]\s"),  # RVV widening multiply-accumulate
])
def test_without_dot_products_widening_multiply_accumulates_match(target, objdump, ops, tmp_path):
    """Targets with no dot-product instruction run the same kernels on widening vector
    multiply-accumulates: exact integer results under qemu (matmuls and convs, uint8 and int8
    activations, ragged widths)."""
    if shutil.which(objdump) is None:
        pytest.skip(f"no {objdump}")
    model = _dynamic(ffn_model(d_model=40, hidden=200, seq=5), tmp_path)
    inputs = sample_inputs(model)
    bundle = edgecc.compile(model, target)
    assert len(_kernels(bundle)) == 2 and all(k.startswith("int8_matmul_") for k in _kernels(bundle))
    np.testing.assert_allclose(_output(bundle, inputs), _reference(model, inputs), rtol=1e-5, atol=1e-5)
    assert _kernel_ops(bundle, objdump, r"int8_matmul\w*_compute_$", ops) > 0
    for signed in (False, True):
        convs = _qlinear_convs(signed=signed)
        images = _image(convs, np.int8 if signed else np.uint8)
        bundle = edgecc.compile(convs, target)
        assert len(_conv_kernels(bundle)) == 3 and all(_conv_kernels(bundle)), _conv_kernels(bundle)
        np.testing.assert_array_equal(_output(bundle, images), _reference(convs, images))
    assert _kernel_ops(bundle, objdump, r"int8_conv\w*_compute_$", ops) > 0


# -- --quantize int8 -------------------------------------------------------------------------
def _max_step(model) -> float:
    """The largest activation scale in a quantized model: one step of its coarsest tensor."""
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    return max(float(consts[n.input[1]].max()) for n in model.graph.node
               if n.op_type == "QuantizeLinear" and n.input[1] in consts)


def _cosine(a, b):
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@needs_vnni
def test_quantize_int8_runs_int8_kernels_and_stays_close_to_fp32():
    from edgecc.frontend.loader import graph_inputs
    from edgecc.quantize import quantize_int8, random_calibration

    model = _ffn()
    samples = random_calibration(graph_inputs(model), 4, seed=5)
    bundle = edgecc.compile(model, "host", quantize="int8", calibration=samples)
    quantization = bundle.manifest["quantization"]
    assert quantization["mode"] == "int8" and quantization["weights_quantized"] == 2
    assert all(k and k.startswith("int8_matmul_vnni") for k in _kernels(bundle))
    inputs = sample_inputs(model)
    got = _output(bundle, inputs)
    quantized, _ = quantize_int8(model, samples)  # the same QDQ model, for ONNX Runtime
    assert np.abs(got - _reference(quantized, inputs)).max() <= _max_step(quantized)
    fp32 = _reference(model, inputs)
    assert _cosine(got, fp32) > 0.999 and not np.allclose(got, fp32, atol=1e-4)


@needs_vnni
def test_quantize_int8_convs_match_onnxruntime_on_the_same_model():
    """Convs (batch norms folded in) and the classifier quantized as QDQ: the stem and the 1x1
    convs run as VNNI kernels, the depthwise ones as edgecc's depthwise kernel on the int8
    input, within one step of ONNX Runtime on the same quantized model."""
    from edgecc.frontend.loader import graph_inputs
    from edgecc.quantize import quantize_int8, random_calibration
    from edgecc.zoo import mobilenet_model

    model = mobilenet_model(resolution=32, blocks=((64, 1), (128, 2)), classes=10)
    samples = random_calibration(graph_inputs(model), 2, seed=6)
    bundle = edgecc.compile(model, "host", quantize="int8", calibration=samples)
    assert bundle.manifest["quantization"]["weights_quantized"] == 6  # stem, 2 x (dw + pw), classifier
    assert _conv_kernels(bundle) == ["int8_conv_vnni", "depthwise_conv2d_int8", "int8_conv_vnni1",
                                     "depthwise_conv2d_int81", "int8_conv_vnni2"]
    inputs = sample_inputs(model)
    quantized, _ = quantize_int8(model, samples)
    assert not any(n.op_type == "BatchNormalization" for n in quantized.graph.node)
    assert np.abs(_output(bundle, inputs) - _reference(quantized, inputs)).max() <= _max_step(quantized)
    assert _cosine(_output(bundle, inputs), _reference(model, inputs)) > 0.999


def test_calibration_folder_from_the_command_line(tmp_path):
    from tests.conftest import run_cli

    model = _ffn()
    onnx.save(model, tmp_path / "ffn.onnx")
    (tmp_path / "calib").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        np.save(tmp_path / "calib" / f"{i}.npy", rng.standard_normal((1, 8, 64)).astype(np.float32))
    result = run_cli("build", tmp_path / "ffn.onnx", "--quantize", "int8", "--calibration", tmp_path / "calib",
                     "-o", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert "int8: 2 weights quantized" in result.stdout and "warning" not in result.stderr
    result = run_cli("build", tmp_path / "ffn.onnx", "--quantize", "int8", "-o", tmp_path / "out2")
    assert result.returncode == 0 and "no --calibration data" in result.stderr


@pytest.mark.parametrize("setup, args, message", [
    ("empty", ["--quantize", "int8", "--calibration", "{calib}"], "no samples in"),
    ("wrong", ["--quantize", "int8", "--calibration", "{calib}"], "input 'x' is float32[1, 8, 64]"),
    ("none", ["--calibration", "{calib}"], "--calibration needs --quantize int8"),
])
def test_bad_calibration_is_one_line(tmp_path, setup, args, message):
    from tests.conftest import run_cli

    onnx.save(_ffn(), tmp_path / "ffn.onnx")
    calib = tmp_path / "calib"
    calib.mkdir()
    if setup == "wrong":
        np.save(calib / "0.npy", np.zeros((1, 8, 32), np.float32))
    result = run_cli("build", tmp_path / "ffn.onnx", *[a.format(calib=calib) for a in args], "-o", tmp_path / "out")
    assert result.returncode != 0 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


# -- INT8 convolutions ------------------------------------------------------------------------
def _qlinear_convs(c=8, h=12, layers=((16, 3, 1, 1), (24, 1, 1, 0), (40, 3, 2, 1)), signed=False, seed=0):
    """A chain of QLinearConvs ``(out channels, kernel, stride, pad)`` with int32 biases (the
    second conv on reads the first's channels-last output, uint8 or int8 throughout)."""
    rng = np.random.default_rng(seed)
    dtype, low, high = (np.int8, -128, 128) if signed else (np.uint8, 0, 256)
    proto = onnx.TensorProto.INT8 if signed else onnx.TensorProto.UINT8
    inits, nodes, x, channels = [], [], "x", c

    def const(name, value):
        inits.append(onnx.numpy_helper.from_array(np.asarray(value), name))
        return name

    for i, (oc, k, s, p) in enumerate(layers):
        w = rng.integers(-127, 128, (oc, channels, k, k)).astype(np.int8)
        names = [x, const(f"xs{i}", np.float32(0.05)), const(f"xz{i}", np.array(rng.integers(low, high), dtype)),
                 const(f"w{i}", w), const(f"ws{i}", (rng.random(oc) * 0.004 + 0.001).astype(np.float32)),
                 const(f"wz{i}", np.zeros(oc, np.int8)), const(f"ys{i}", np.float32(0.05 * 8)),
                 const(f"yz{i}", np.array(rng.integers(low, high), dtype)),
                 const(f"b{i}", rng.integers(-2000, 2000, oc).astype(np.int32))]
        nodes.append(onnx.helper.make_node("QLinearConv", names, [f"y{i}"], kernel_shape=[k, k], strides=[s, s],
                                           pads=[p] * 4))
        x, channels = f"y{i}", oc
    graph = onnx.helper.make_graph(nodes, "qconvs", [onnx.helper.make_tensor_value_info("x", proto, [1, c, h, h])],
                                   [onnx.helper.make_tensor_value_info(x, proto, None)], inits)
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])


def _fire_net(seed=0):
    """A SqueezeNet-style float network: a 3-channel stride-2 stem, max pooling, a fire module
    (1x1 squeeze, 1x1 and 3x3 expands concatenated), a 1x1 classifier conv to 10 classes
    (not a multiple of the SIMD width) and global average pooling."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def conv(x, name, c_in, c_out, k, stride=1, relu=True):
        w = onnx.numpy_helper.from_array((rng.standard_normal((c_out, c_in, k, k)) * np.sqrt(2 / (c_in * k * k)))
                                         .astype(np.float32), f"{name}.w")
        b = onnx.numpy_helper.from_array((rng.standard_normal(c_out) * 0.1).astype(np.float32), f"{name}.b")
        inits.extend([w, b])
        nodes.append(onnx.helper.make_node("Conv", [x, w.name, b.name], [f"{name}.conv"], kernel_shape=[k, k],
                                           strides=[stride, stride], pads=[k // 2] * 4))
        if not relu:
            return f"{name}.conv"
        nodes.append(onnx.helper.make_node("Relu", [f"{name}.conv"], [f"{name}.out"]))
        return f"{name}.out"

    x = conv("x", "stem", 3, 32, 3, 2)
    nodes.append(onnx.helper.make_node("MaxPool", [x], ["pool"], kernel_shape=[3, 3], strides=[2, 2]))
    squeeze = conv("pool", "squeeze", 32, 16, 1)
    nodes.append(onnx.helper.make_node("Concat", [conv(squeeze, "e1", 16, 32, 1), conv(squeeze, "e3", 16, 32, 3)],
                                       ["fire"], axis=1))
    logits = conv("fire", "classifier", 64, 10, 1, relu=False)
    nodes.append(onnx.helper.make_node("GlobalAveragePool", [logits], ["y"]))
    graph = onnx.helper.make_graph(nodes, "fire", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT,
                                                                                      [1, 3, 32, 32])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 10, 1, 1])],
                                   inits)
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])


def _conv_kernels(bundle):
    return [layer["kernel"] for layer in bundle.manifest["quantization"]["int8_layers"] if layer.get("op") == "conv2d"]


def _image(model, dtype, seed=1):
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    info = np.iinfo(dtype)
    return {"x": np.random.default_rng(seed).integers(info.min, info.max + 1, shape).astype(dtype)}


@needs_vnni
@pytest.mark.parametrize("signed", [False, True])
def test_qlinear_convs_run_vnni_and_equal_onnxruntime(signed):
    """3x3 padded, 1x1 read in place (channels-last), strided, a ragged channel count (40):
    the integer results are exact, so the requantized outputs equal ONNX Runtime's."""
    model = _qlinear_convs(signed=signed)
    bundle = edgecc.compile(model, "host")
    assert _conv_kernels(bundle) == ["int8_conv_vnni", "int8_conv_vnni1", "int8_conv_vnni2"], _conv_kernels(bundle)
    inputs = _image(model, np.int8 if signed else np.uint8)
    np.testing.assert_array_equal(_output(bundle, inputs), _reference(model, inputs))


def _static_convnet(tmp_path):
    return _static(_fire_net(), tmp_path, QuantFormat.QDQ, QuantType.QUInt8, True)


@needs_vnni
def test_qdq_convnet_runs_int8_convs_within_one_step(tmp_path):
    """quantize_static's QDQ convs (per-channel weights, int32 biases) fuse to QLinearConv and
    run as VNNI kernels; max pooling and the concat run on the quantized values."""
    model = _static_convnet(tmp_path)
    bundle = edgecc.compile(model, "host")
    assert len(_conv_kernels(bundle)) == 5 and all(_conv_kernels(bundle)), bundle.manifest["quantization"]
    inputs = sample_inputs(model)
    got, want = _output(bundle, inputs), _reference(model, inputs)
    assert np.abs(got - want).max() <= _output_step(model) * 1.001, (np.abs(got - want).max(), _output_step(model))
    assert _cosine(got, _reference(_fire_net(), inputs)) > 0.99
    code = subprocess.run(["objdump", "-d", str(bundle.path / "model.so")], capture_output=True, text=True).stdout
    assert "vpdpbusd" in code


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-objdump") is None, reason="no aarch64 binutils")
def test_arm_a76_convs_use_sdot_and_match_under_qemu(tmp_path):
    model = _static_convnet(tmp_path)
    bundle = edgecc.compile(model, "arm-a76")
    assert all(k and k.startswith("int8_conv_sdot") for k in _conv_kernels(bundle)), _conv_kernels(bundle)
    code = subprocess.run(["aarch64-linux-gnu-objdump", "-d", str(bundle.path / "model.so")],
                          capture_output=True, text=True).stdout
    assert "sdot" in code
    inputs = sample_inputs(model)
    assert np.abs(_output(bundle, inputs) - _reference(model, inputs)).max() <= _output_step(model) * 1.001
    qconvs = _qlinear_convs()
    images = _image(qconvs, np.uint8)
    np.testing.assert_array_equal(_output(edgecc.compile(qconvs, "arm-a76"), images), _reference(qconvs, images))


@needs_vnni
def test_qdq_conv_relu_with_a_nonzero_output_zero_point_clamps_there():
    """Q(Relu(Conv(DQ, DQ))) with the output's zero point above 0: QLinearConv then a clamp at
    the zero point, equal to ONNX Runtime on the float chain within one step."""
    rng = np.random.default_rng(3)
    h = onnx.helper
    inits = [onnx.numpy_helper.from_array(v, n) for n, v in (
        ("xs", np.float32(0.02)), ("xz", np.uint8(120)), ("ys", np.float32(0.03)), ("yz", np.uint8(40)),
        ("w", rng.integers(-127, 128, (16, 4, 3, 3)).astype(np.int8)),
        ("ws", (rng.random(16) * 0.01 + 0.002).astype(np.float32)), ("wz", np.zeros(16, np.int8)),
        ("b", (rng.standard_normal(16) * 0.1).astype(np.float32)))]
    nodes = [h.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             h.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             h.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=0),
             h.make_node("Conv", ["xd", "wd", "b"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             h.make_node("Relu", ["c"], ["r"]),
             h.make_node("QuantizeLinear", ["r", "ys", "yz"], ["rq"]),
             h.make_node("DequantizeLinear", ["rq", "ys", "yz"], ["y"])]
    model = h.make_model(h.make_graph(nodes, "conv_relu", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT,
                                                                                    [1, 4, 10, 10])],
                                      [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits),
                         opset_imports=[h.make_opsetid("", 13)])
    bundle = edgecc.compile(model, "host")
    assert _conv_kernels(bundle) == ["int8_conv_vnni"]
    inputs = {"x": rng.standard_normal((1, 4, 10, 10)).astype(np.float32)}
    got, want = _output(bundle, inputs), _reference(model, inputs)
    assert got.min() == want.min() == 0.0  # clamped at the zero point: many outputs are exactly 0
    assert np.abs(got - want).max() <= 0.03 * 1.001


@needs_vnni
def test_qdq_gemm_classifier_fuses_to_an_int8_kernel(tmp_path):
    """quantize_static's QDQ Gemm (transB, per-channel weights, int32 bias) becomes QGemm and
    runs as the VNNI matmul (10 classes: a ragged column count), within one step of ONNX Runtime."""
    from edgecc.zoo import mobilenet_model

    fp32 = mobilenet_model(resolution=16, blocks=((32, 1),), classes=10)
    model = _static(fp32, tmp_path, QuantFormat.QDQ, QuantType.QUInt8, True)
    assert any(n.op_type == "Gemm" for n in model.graph.node)
    bundle = edgecc.compile(model, "host")
    matmuls = [layer for layer in bundle.manifest["quantization"]["int8_layers"] if layer.get("op") != "conv2d"]
    assert [layer["weight"] for layer in matmuls] == [[32, 10]] and matmuls[0]["kernel"], matmuls
    inputs = sample_inputs(model)
    assert np.abs(_output(bundle, inputs) - _reference(model, inputs)).max() <= _output_step(model) * 1.001


@pytest.mark.parametrize("batch, pads, strides", [(2, [1, 1, 1, 1], [1, 1]), (3, [0, 1, 2, 0], [2, 1]),
                                                   (1, [2, 0, 0, 1], [1, 2])])
@pytest.mark.parametrize("target", ["host", "arm"])
def test_int8_conv_batches_uneven_pads_and_strides_are_exact(batch, pads, strides, target):
    """Batches, asymmetric padding and unequal strides on a 9 x 11 image, 5 -> 20 channels."""
    if target == "host" and not target_has_features("avx512vnni", get_target("host").tvm_target()):
        pytest.skip("this CPU has no AVX-512 VNNI")
    rng = np.random.default_rng(batch)
    h = onnx.helper
    inits = [onnx.numpy_helper.from_array(v, n) for n, v in (
        ("xs", np.float32(0.05)), ("xz", np.uint8(100)), ("ys", np.float32(0.3)), ("yz", np.uint8(7)),
        ("w", rng.integers(-127, 128, (20, 5, 3, 3)).astype(np.int8)),
        ("ws", (rng.random(20) * 0.01 + 0.001).astype(np.float32)), ("wz", np.zeros(20, np.int8)))]
    node = h.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"], kernel_shape=[3, 3],
                       strides=strides, pads=pads)
    model = h.make_model(h.make_graph([node], "conv", [h.make_tensor_value_info("x", onnx.TensorProto.UINT8,
                                                                               [batch, 5, 9, 11])],
                                      [h.make_tensor_value_info("y", onnx.TensorProto.UINT8, None)], inits),
                         opset_imports=[h.make_opsetid("", 13)])
    bundle = edgecc.compile(model, target)
    assert len(_conv_kernels(bundle)) == 1 and _conv_kernels(bundle)[0], _conv_kernels(bundle)
    inputs = {"x": rng.integers(0, 256, (batch, 5, 9, 11)).astype(np.uint8)}
    np.testing.assert_array_equal(_output(bundle, inputs), _reference(model, inputs))


@pytest.mark.parametrize("target", ["host", "arm", "riscv"])
def test_quantized_depthwise_convs_run_the_depthwise_kernel(target, tmp_path):
    """A QDQ MobileNet: its depthwise convs run edgecc's depthwise kernel (int32 products read
    straight from the int8 input, vectorised across channels) rather than TVM's generic conv;
    the whole network equals ONNX Runtime on the quantized model here."""
    from edgecc.zoo import mobilenet_model

    model = _static(mobilenet_model(resolution=32, blocks=((64, 1), (128, 2)), classes=10), tmp_path,
                    QuantFormat.QDQ, QuantType.QUInt8, True)
    bundle = edgecc.compile(model, target)
    rules = next(p for p in bundle.manifest["passes"] if p["phase"] == "schedule")["kernels"]
    depthwise = {k: r for k, r in rules.items() if "depthwise" in k}
    assert len(depthwise) == 2 and all(r == "tiled-reduction[depthwise_conv2d_nhwc]" for r in depthwise.values()), rules
    inputs = sample_inputs(model)
    assert np.abs(_output(bundle, inputs) - _reference(model, inputs)).max() <= _output_step(model) * 1.001
