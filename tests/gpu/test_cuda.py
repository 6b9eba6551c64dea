"""CUDA targets: builds work anywhere (nvcc embeds a fatbin); running needs a GPU.

The run tests are skipped, with the reason printed, on machines without an
NVIDIA GPU; everything else runs everywhere nvcc is installed.
"""

import struct

import numpy as np
import pytest

import edgecc
from edgecc.bundle import gpu_present
from edgecc.cuda import FATBIN_MAGIC
from edgecc.errors import DeviceError

from ..conftest import onnxruntime_outputs, run_cli

needs_gpu = pytest.mark.skipif(not gpu_present(), reason="no NVIDIA GPU on this machine")


def embedded_cuda_module(library):
    """The packed CUDA module's bytes, found in the library's module blob (stored as is)."""
    data = library.read_bytes()
    kind = struct.pack("<Q", 4) + b"cuda"
    start = data.find(kind)
    assert start >= 0 and data.find(kind, start + 1) < 0, "expected exactly one packed CUDA module"
    size = struct.unpack_from("<Q", data, start + len(kind))[0]
    begin = start + len(kind) + 8
    return data[begin:begin + size]


# shufflenet's input is "gpu_0/data_0": kernel parameters must still be valid CUDA C names.
@pytest.mark.parametrize("name, target, cuda_arch, arch", [
    ("squeezenet", "cuda", None, "x86_64"), ("squeezenet", "cuda", "sm_90", "x86_64"),
    ("squeezenet", "jetson-orin", None, "aarch64"), ("shufflenet", "cuda", None, "x86_64")])
def test_cuda_build_embeds_device_code(name, target, cuda_arch, arch, bundles, tmp_path):
    model, _ = bundles.model(name)
    bundle = edgecc.compile(model, target, cuda_arch=cuda_arch)
    path = bundle.save(tmp_path / "bundle")
    assert bundle.target["arch"] == arch and bundle.target["device"] == "cuda"
    payload = embedded_cuda_module(path / "model.so")
    assert payload[:14] == struct.pack("<Q", 6) + b"fatbin"
    assert FATBIN_MAGIC in payload and b"__global__" not in payload  # machine code, not source
    assert b"fused_conv2d" in payload and b"_kernel" in payload  # kernel names live in the cubin
    assert (cuda_arch or "sm_87").encode() in payload
    rules = next(p for p in bundle.manifest["passes"] if p["phase"] == "schedule")["kernels"]
    assert rules and all(rule.startswith(("dlight.", "edgecc.")) for rule in rules.values()), rules
    if name == "shufflenet":  # depthwise and grouped convs: edgecc's rule, not a cross-thread reduction
        convs = {k: r for k, r in rules.items() if "conv2d" in k}
        assert sum(r == "edgecc.direct-reduction" for r in convs.values()) >= len(convs) - 1, convs


@pytest.mark.skipif(gpu_present(), reason="this machine has a GPU; the no-GPU message cannot appear")
def test_run_without_gpu_says_so(bundles, tmp_path):
    model, inputs = bundles.model("squeezenet")
    edgecc.compile(model, "cuda").save(tmp_path / "b")
    with pytest.raises(DeviceError, match="no GPU is present"):
        edgecc.load(tmp_path / "b").run(inputs)
    np.save(tmp_path / "x.npy", inputs["data_0"])
    proc = run_cli("run", tmp_path / "b", "--input", f"data_0={tmp_path / 'x.npy'}")
    assert proc.returncode == 3 and "no GPU is present" in proc.stderr


@needs_gpu
@pytest.mark.parametrize("name", ["squeezenet", "shufflenet", "resnet50"])
def test_cuda_outputs_match_onnxruntime(name, bundles, tmp_path):
    model, inputs = bundles.model(name)  # logits
    bundle = edgecc.compile(model, "cuda", cuda_arch=_local_sm())
    bundle.save(tmp_path / name)
    reference = onnxruntime_outputs(model, inputs)
    outputs = list(bundle.run(inputs).values())
    np.testing.assert_allclose(outputs[0], reference[0], rtol=1e-3, atol=1e-3 * np.abs(reference[0]).max())


def _local_sm():
    import subprocess

    cap = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
                         capture_output=True, text=True, check=True).stdout.split()[0]
    return "sm_" + cap.replace(".", "")


def _quantized_ffn(tmp_path):
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from edgecc.zoo import ffn_model, sample_inputs

    onnx.save(ffn_model(d_model=36, hidden=100, seq=5), tmp_path / "fp32.onnx")
    quantize_dynamic(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", weight_type=QuantType.QInt8)
    model = onnx.load(tmp_path / "int8.onnx")
    return model, sample_inputs(model)


def test_int8_matmuls_compile_to_dp4a(tmp_path, monkeypatch):
    """Quantized matmuls on CUDA: edgecc's __dp4a kernel (K = 36, N = 100: padded and ragged),
    in the source nvcc compiles."""
    import edgecc.cuda

    sources = []
    compile_source = edgecc.cuda.nvcc_fatbin
    monkeypatch.setattr(edgecc.cuda, "nvcc_fatbin", lambda source, arch: sources.append(source)
                        or compile_source(source, arch))
    model, _ = _quantized_ffn(tmp_path)
    bundle = edgecc.compile(model, "cuda")
    layers = bundle.manifest["quantization"]["int8_layers"]
    assert [layer["kernel"] for layer in layers] == ["int8_matmul_dp4a", "int8_matmul_dp4a1"], layers
    assert sum(source.count("__dp4a(") for source in sources) == 2


@needs_gpu
def test_int8_dp4a_matches_onnxruntime(tmp_path):
    model, inputs = _quantized_ffn(tmp_path)
    bundle = edgecc.compile(model, "cuda", cuda_arch=_local_sm())
    reference = onnxruntime_outputs(model, inputs)
    np.testing.assert_allclose(list(bundle.run(inputs).values())[0], reference[0], rtol=1e-5, atol=1e-5)
