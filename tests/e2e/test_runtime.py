"""The per-arch runtime (edgecc.runtime) and the edgecc-run runner, end to end.

For each arch (x86_64, aarch64, riscv64) small ONNX models are imported with
TVM's importer, compiled for that arch, run by that arch's ``edgecc-run``
(under qemu-user off the host arch) and compared with onnxruntime. The
riscv64 runtime is built from source with edgecc's shim headers, so these
tests are also what proves the shim reads what the compiler writes.

The runtimes are built in the user cache (``$EDGECC_CACHE_DIR`` ...) and
reused; the first run builds riscv64 from source (about a minute on 2 cores).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecc.errors import ToolchainError, UserInputError
from edgecc.runtime import ARCHES, RUNNER, emulator_prefix, ensure_runtime, host_arch
from edgecc.targets import get_target
from edgecc.targets.base import find_cxx

RTOL = ATOL = 1e-4

# The presets' own LLVM dicts; x86_64 spelled out because "host" adds the detected mcpu.
TARGETS = {
    "x86_64": {"kind": "llvm", "mtriple": "x86_64-linux-gnu"},
    "aarch64": get_target("arm").llvm,
    "riscv64": get_target("riscv").llvm,
}


# ------------------------------------------------------------------ models


def _model(nodes, inputs, outputs, initializers=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def convnet() -> onnx.ModelProto:
    """Conv + Relu + Reshape + MatMul + Softmax, seeded weights; 1 input, 1 output."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b"),
             numpy_helper.from_array(np.array([1, 8 * 8 * 8], np.int64), "flat"),
             numpy_helper.from_array((rng.standard_normal((512, 10)) * 0.1).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Reshape", ["r", "flat"], ["f"]),
             helper.make_node("MatMul", ["f", "w2"], ["m"]),
             helper.make_node("Softmax", ["m"], ["y"], axis=-1)]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)


def two_outputs() -> onnx.ModelProto:
    """Two inputs (order matters), three outputs incl. an int64 one."""
    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array(rng.standard_normal((6, 4)).astype(np.float32), "w")]
    nodes = [helper.make_node("MatMul", ["a", "w"], ["aw"]),
             helper.make_node("Sub", ["aw", "b"], ["d"]),
             helper.make_node("Tanh", ["d"], ["y0"]),
             helper.make_node("Sigmoid", ["a"], ["y1"]),
             helper.make_node("ArgMax", ["d"], ["y2"], axis=1, keepdims=0)]
    return _model(nodes,
                  [helper.make_tensor_value_info("a", TensorProto.FLOAT, [3, 6]),
                   helper.make_tensor_value_info("b", TensorProto.FLOAT, [3, 4])],
                  [helper.make_tensor_value_info("y0", TensorProto.FLOAT, [3, 4]),
                   helper.make_tensor_value_info("y1", TensorProto.FLOAT, [3, 6]),
                   helper.make_tensor_value_info("y2", TensorProto.INT64, [3])],
                  inits)


def mixed_dtypes() -> onnx.ModelProto:
    """float16, int32, uint8 and bool through the .npy reader and writer."""
    nodes = [helper.make_node("Cast", ["h"], ["h32"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["h32", "h32"], ["sq"]),
             helper.make_node("Cast", ["sq"], ["y0"], to=TensorProto.FLOAT16),
             helper.make_node("Add", ["i", "i"], ["y1"]),
             helper.make_node("Not", ["m"], ["y2"]),
             helper.make_node("Cast", ["u"], ["y3"], to=TensorProto.INT32)]
    return _model(nodes,
                  [helper.make_tensor_value_info("h", TensorProto.FLOAT16, [2, 5]),
                   helper.make_tensor_value_info("i", TensorProto.INT32, [7]),
                   helper.make_tensor_value_info("m", TensorProto.BOOL, [2, 2]),
                   helper.make_tensor_value_info("u", TensorProto.UINT8, [4])],
                  [helper.make_tensor_value_info("y0", TensorProto.FLOAT16, [2, 5]),
                   helper.make_tensor_value_info("y1", TensorProto.INT32, [7]),
                   helper.make_tensor_value_info("y2", TensorProto.BOOL, [2, 2]),
                   helper.make_tensor_value_info("y3", TensorProto.INT32, [4])])


MODELS = {"convnet": convnet, "two_outputs": two_outputs, "mixed_dtypes": mixed_dtypes}


def nested_tuple_module():
    """A Relax ``main`` returning ``((2x, x*x), -x)``: the runner flattens it in order."""
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, 3), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            a = bb.emit(relax.op.add(x, x))
            b = bb.emit(relax.op.multiply(x, x))
            c = bb.emit(relax.op.negative(x))
            out = bb.emit_output(relax.Tuple([relax.Tuple([a, b]), c]))
        bb.emit_func_output(out)
    return bb.get()


def sample_inputs(name: str) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    if name == "convnet":
        return [rng.standard_normal((1, 3, 8, 8)).astype(np.float32)]
    if name == "two_outputs":
        return [rng.standard_normal((3, 6)).astype(np.float32),
                rng.standard_normal((3, 4)).astype(np.float32)]
    return [rng.standard_normal((2, 5)).astype(np.float16),
            rng.integers(-1000, 1000, 7).astype(np.int32),
            rng.integers(0, 2, (2, 2)).astype(bool),
            rng.integers(0, 256, 4).astype(np.uint8)]


def reference(model: onnx.ModelProto, inputs: list[np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session.run(None, dict(zip(names, inputs)))


# ------------------------------------------------------------------ fixtures


def _require_tools(arch: str) -> None:
    """Skip (with the reason) only when this machine truly lacks the arch's tools."""
    try:
        emulator_prefix(arch)
        find_cxx(arch, f"the {arch} runtime")
    except ToolchainError as err:
        print(f"skipping {arch}: {err}")
        pytest.skip(f"{arch} toolchain absent: {err}")


@pytest.fixture(scope="module", params=ARCHES)
def arch(request) -> str:
    _require_tools(request.param)
    return request.param


@pytest.fixture(scope="module")
def runtime(arch) -> Path:
    try:
        return ensure_runtime(arch, log=lambda line: print(line, flush=True))
    except ToolchainError as err:
        pytest.skip(f"{arch} toolchain absent: {err}")


_compiled: dict[tuple[str, str], Path] = {}


@pytest.fixture(scope="module")
def compiled(arch, tmp_path_factory):
    """compiled(model_name) -> path of model.so for this arch (compiled once)."""

    def get(name: str) -> Path:
        key = (arch, name)
        if key not in _compiled:
            import tvm
            import tvm.relax.frontend.onnx
            from tvm.support.cc import cross_compiler

            if name == "nested_tuple":
                mod = nested_tuple_module()
            else:
                mod = tvm.relax.frontend.onnx.from_onnx(MODELS[name]())
            executable = tvm.compile(mod, target=tvm.target.Target(TARGETS[arch]))
            out = tmp_path_factory.mktemp(f"{arch}-{name}") / "model.so"
            fcompile = cross_compiler(find_cxx(arch, "test")) if arch != host_arch() else None
            executable.export_library(str(out), fcompile=fcompile)
            _compiled[key] = out
        return _compiled[key]

    return get


def run_runner(runtime: Path, arch: str, model: Path, inputs: list[np.ndarray], work: Path,
               *extra: str) -> subprocess.CompletedProcess:
    work.mkdir(parents=True, exist_ok=True)
    argv = [*emulator_prefix(arch), str(runtime / RUNNER), str(model), "--output-dir", str(work / "out")]
    for index, array in enumerate(inputs):
        np.save(work / f"in{index}.npy", array)
        argv += ["--input", str(work / f"in{index}.npy")]
    return subprocess.run(argv + list(extra), capture_output=True, text=True, timeout=600)


def assert_error_line(proc: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("edgecc-run: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert proc.stdout == ""


# ------------------------------------------------------------------ tests


def test_runtime_folder(arch, runtime):
    for name in ("libtvm_runtime.so", "libtvm_ffi.so", RUNNER, "BUILD_INFO.json"):
        assert (runtime / name).is_file(), name
    assert os.access(runtime / RUNNER, os.X_OK)
    info = json.loads((runtime / "BUILD_INFO.json").read_text())
    assert info["arch"] == arch
    import importlib.metadata as md

    assert runtime.name == f"{arch}-tvm{md.version('apache-tvm')}-ffi{md.version('apache-tvm-ffi')}"
    # ELF machine of the runner matches the arch (e_machine at offset 18).
    machine = int.from_bytes((runtime / RUNNER).read_bytes()[18:20], "little")
    assert machine == {"x86_64": 62, "aarch64": 183, "riscv64": 243}[arch]
    # Cached: a second call returns at once without rebuilding.
    stamp = (runtime / "BUILD_INFO.json").stat().st_mtime_ns
    start = time.perf_counter()
    assert ensure_runtime(arch) == runtime
    assert time.perf_counter() - start < 5
    assert (runtime / "BUILD_INFO.json").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("name", list(MODELS))
def test_model_matches_onnxruntime(arch, runtime, compiled, name, tmp_path):
    inputs = sample_inputs(name)
    expected = reference(MODELS[name](), inputs)
    proc = run_runner(runtime, arch, compiled(name), inputs, tmp_path,
                      "--repeat", "3", "--warmup", "1", "--threads", "2")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    timing = json.loads(lines[0])
    assert timing["runs"] == 3 and timing["outputs"] == len(expected)
    assert 0 < timing["min_ms"] <= timing["median_ms"]
    assert timing["mean_ms"] >= timing["min_ms"]
    for index, want in enumerate(expected):
        got = np.load(tmp_path / "out" / f"output_{index}.npy")
        assert got.dtype == want.dtype, (index, got.dtype, want.dtype)
        assert got.shape == want.shape, (index, got.shape, want.shape)
        if want.dtype.kind == "f":
            np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64),
                                       rtol=RTOL, atol=ATOL)
        else:
            np.testing.assert_array_equal(got, want)
    assert not (tmp_path / "out" / f"output_{len(expected)}.npy").exists()


def test_nested_tuple_outputs_are_flattened(arch, runtime, compiled, tmp_path):
    x = np.random.default_rng(3).standard_normal((2, 3)).astype(np.float32)
    proc = run_runner(runtime, arch, compiled("nested_tuple"), [x], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["outputs"] == 3
    for index, want in enumerate([x + x, x * x, -x]):
        np.testing.assert_allclose(np.load(tmp_path / "out" / f"output_{index}.npy"), want,
                                   rtol=RTOL, atol=ATOL)


def test_input_order_is_positional(arch, runtime, compiled, tmp_path):
    a, b = sample_inputs("two_outputs")
    swapped = [b.reshape(3, 4), a]  # wrong order: shapes no longer fit
    proc = run_runner(runtime, arch, compiled("two_outputs"), swapped, tmp_path)
    assert_error_line(proc, 2, "param[0]")


def test_wrong_input_count(arch, runtime, compiled, tmp_path):
    proc = run_runner(runtime, arch, compiled("two_outputs"), sample_inputs("two_outputs")[:1], tmp_path)
    assert_error_line(proc, 2, "main expects 2 input(s) (a, b) but 1 --input given")


def test_corrupt_npy(arch, runtime, compiled, tmp_path):
    good = tmp_path / "good.npy"
    np.save(good, sample_inputs("convnet")[0])
    cases = {"truncated.npy": good.read_bytes()[:-8], "garbage.npy": b"not an npy file at all",
             "short_header.npy": good.read_bytes()[:40]}
    expect = {"truncated.npy": "does not match shape", "garbage.npy": "bad magic",
              "short_header.npy": "truncated .npy header"}
    for file_name, payload in cases.items():
        (tmp_path / file_name).write_bytes(payload)
        argv = [*emulator_prefix(arch), str(runtime / RUNNER), str(compiled("convnet")),
                "--input", str(tmp_path / file_name), "--output-dir", str(tmp_path / "out")]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        assert_error_line(proc, 2, file_name, expect[file_name])


def test_wrong_shape_and_dtype(arch, runtime, compiled, tmp_path):
    x = sample_inputs("convnet")[0]
    proc = run_runner(runtime, arch, compiled("convnet"), [x[:, :, :, :7]], tmp_path / "shape")
    assert_error_line(proc, 2, "param[0]")
    proc = run_runner(runtime, arch, compiled("convnet"), [x.astype(np.float64)], tmp_path / "dtype")
    assert_error_line(proc, 2, "float32", "float64")


def test_missing_model_and_bad_option(arch, runtime, tmp_path):
    proc = subprocess.run([*emulator_prefix(arch), str(runtime / RUNNER), str(tmp_path / "nope.so")],
                          capture_output=True, text=True, timeout=600)
    assert_error_line(proc, 2, "nope.so")
    proc = subprocess.run([*emulator_prefix(arch), str(runtime / RUNNER), "m.so", "--repeat", "0"],
                          capture_output=True, text=True, timeout=600)
    assert_error_line(proc, 2, "--repeat")


def _gpu_present() -> bool:
    return os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/nvidia0")


def test_cuda_absent_exits_3(tmp_path):
    """--device cuda without a GPU/driver: exit 3 and a clear line (host arch only)."""
    if _gpu_present():
        pytest.skip("a GPU is present; the no-GPU path cannot be checked here")
    arch = host_arch()
    if arch not in ARCHES:
        pytest.skip(f"host arch {arch} is not one edgecc targets")
    runtime = ensure_runtime(arch)
    import tvm
    import tvm.relax.frontend.onnx

    executable = tvm.compile(tvm.relax.frontend.onnx.from_onnx(convnet()),
                             target=tvm.target.Target(TARGETS[arch]))
    executable.export_library(str(tmp_path / "model.so"))
    proc = run_runner(runtime, arch, tmp_path / "model.so", sample_inputs("convnet"), tmp_path,
                      "--device", "cuda")
    assert_error_line(proc, 3, "no CUDA runtime/GPU present")


def test_bundle_folder_is_relocatable(arch, runtime, compiled, tmp_path):
    """The runner finds the libraries beside it ($ORIGIN), wherever the folder goes."""
    import shutil

    moved = tmp_path / "board" / "runtime"
    shutil.copytree(runtime, moved)
    shutil.copy2(compiled("convnet"), tmp_path / "board" / "model.so")
    inputs = sample_inputs("convnet")
    np.save(tmp_path / "x.npy", inputs[0])
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    proc = subprocess.run([*emulator_prefix(arch), str(moved / RUNNER), "model.so",
                           "--input", str(tmp_path / "x.npy"), "--output-dir", "out"],
                          capture_output=True, text=True, timeout=600, env=env,
                          cwd=tmp_path / "board")
    assert proc.returncode == 0, proc.stderr
    expected = reference(convnet(), inputs)[0]
    np.testing.assert_allclose(np.load(tmp_path / "board" / "out" / "output_0.npy"), expected,
                               rtol=RTOL, atol=ATOL)


# ------------------------------------------------------------------ arch independent


def test_emulator_prefix():
    host = host_arch()
    assert emulator_prefix(host) == []
    if host != "aarch64" and not _missing("qemu-aarch64", "/usr/aarch64-linux-gnu"):
        assert emulator_prefix("aarch64") == ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"]
    if host != "riscv64" and not _missing("qemu-riscv64", "/usr/riscv64-linux-gnu"):
        prefix = emulator_prefix("riscv64", 512)
        assert prefix[:4] == ["qemu-riscv64", "-L", "/usr/riscv64-linux-gnu", "-cpu"]
        assert prefix[4].startswith("rv64,v=true,vlen=512")
        assert "vlen=256" in emulator_prefix("riscv64")[4]
        with pytest.raises(UserInputError):
            emulator_prefix("riscv64", 100)
    with pytest.raises(UserInputError):
        emulator_prefix("mips")


def test_emulator_missing_names_package(monkeypatch):
    other = "riscv64" if host_arch() != "riscv64" else "aarch64"
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ToolchainError, match="qemu-user"):
        emulator_prefix(other)


def test_missing_cross_compiler_names_package(monkeypatch, tmp_path):
    other = "riscv64" if host_arch() != "riscv64" else "aarch64"
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv("EDGECC_CACHE_DIR", str(tmp_path))
    package = {"riscv64": "g++-riscv64-linux-gnu", "aarch64": "g++-aarch64-linux-gnu"}[other]
    with pytest.raises(ToolchainError, match=re.escape(package)):
        ensure_runtime(other)
    assert not any((tmp_path / "runtime").glob(f"{other}-*/"))


def test_concurrent_builds_share_one_cache(tmp_path):
    """Two processes asking at once: one builds, the other waits and reuses it."""
    arch = host_arch()
    if arch not in ARCHES:
        pytest.skip(f"host arch {arch} is not one edgecc targets")
    code = ("import sys, edgecc.runtime as r; "
            f"print(r.ensure_runtime({arch!r}, log=lambda s: print('LOG', s)))")
    env = {**os.environ, "EDGECC_CACHE_DIR": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    paths = {out.strip().splitlines()[-1] for out in outs}
    assert len(paths) == 1
    builds = sum("LOG building" in out for out in outs)
    assert builds == 1, outs
    root = tmp_path / "runtime"
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == [Path(paths.pop()).name]


def _missing(program: str, sysroot: str) -> bool:
    import shutil

    return shutil.which(program) is None or not os.path.isdir(sysroot)
