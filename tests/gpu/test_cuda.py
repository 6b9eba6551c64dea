"""CUDA targets: builds work anywhere (nvcc embeds a fatbin); running needs a GPU.

The run tests are skipped, with the reason printed, on machines without an
NVIDIA GPU; everything else runs everywhere nvcc is installed.
"""

import numpy as np
import pytest

import edgecc
from edgecc.bundle import gpu_present
from edgecc.cuda import FATBIN_MAGIC, parse_blob
from edgecc.errors import DeviceError

from ..conftest import onnxruntime_outputs, run_cli

needs_gpu = pytest.mark.skipif(not gpu_present(), reason="no NVIDIA GPU on this machine")


def embedded_cuda_module(library):
    """The packed CUDA module's bytes, read back from the library's blob symbol."""
    import subprocess

    data = library.read_bytes()
    # The blob starts with its u64 length right at the __tvm_ffi__library_bin symbol.
    for objdump in ("objdump", "aarch64-linux-gnu-objdump"):
        table = subprocess.run([objdump, "-t", "-h", str(library)], capture_output=True, text=True).stdout
        if "__tvm_ffi__library_bin" in table:
            break
    sections = {}
    for line in table.splitlines():
        parts = line.split()
        if len(parts) >= 6 and parts[0].isdigit():
            sections[parts[1]] = (int(parts[3], 16), int(parts[5], 16))  # VMA, file offset
    symbol = next(l for l in table.splitlines() if l.rstrip().endswith("__tvm_ffi__library_bin"))
    address, section = int(symbol.split()[0], 16), symbol.split()[-3]
    vma, offset = sections[section]
    start = address - vma + offset
    size = int.from_bytes(data[start:start + 8], "little") + 8
    groups = parse_blob(data[start:start + size])[2]
    return dict(groups)[b"cuda"]


@pytest.mark.parametrize("target, arch", [("cuda", "x86_64"), ("jetson-orin", "aarch64"), ("cuda-sm90", "x86_64")])
def test_cuda_build_embeds_device_code(target, arch, bundles, tmp_path):
    options = {"cuda_arch": "sm_90"} if target == "cuda-sm90" else {}
    model, _ = bundles.model("squeezenet")
    bundle = edgecc.compile(model, target.replace("-sm90", ""), **options)
    bundle.save(tmp_path / target)
    assert bundle.target["arch"] == arch and bundle.target["device"] == "cuda"
    payload = embedded_cuda_module(tmp_path / target / "model.so")
    fmt_len = int.from_bytes(payload[:8], "little")
    assert payload[8:8 + fmt_len] == b"fatbin"
    assert FATBIN_MAGIC in payload
    assert b"fused_conv2d_add_relu_kernel" in payload  # kernel names live in the cubin
    sm = options.get("cuda_arch", "sm_87").encode()
    assert sm in payload


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
@pytest.mark.parametrize("name", ["squeezenet", "resnet50"])
def test_cuda_outputs_match_onnxruntime(name, bundles, tmp_path):
    model, inputs = bundles.model(name)
    bundle = edgecc.compile(model, "cuda", cuda_arch=_local_sm())
    bundle.save(tmp_path / name)
    reference = onnxruntime_outputs(model, inputs)
    outputs = list(bundle.run(inputs).values())
    np.testing.assert_allclose(outputs[0], reference[0], rtol=1e-3, atol=1e-4)


def _local_sm():
    import subprocess

    cap = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
                         capture_output=True, text=True, check=True).stdout.split()[0]
    return "sm_" + cap.replace(".", "")
