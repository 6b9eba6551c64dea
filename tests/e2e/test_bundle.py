"""The bundle folder, its manifest, atomic saves, and input checking at run time."""

import json

import numpy as np
import onnx
import pytest

import edgecc
from edgecc.bundle import sha256
from edgecc.errors import UserInputError

from ..conftest import mlp_model, onnxruntime_outputs, run_cli


@pytest.fixture(scope="module")
def mlp_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlp")
    onnx.save(mlp_model(), str(root / "mlp.onnx"))
    proc = run_cli("build", root / "mlp.onnx", "--target", "host", "--input-shape", "x=2,16",
                   "-o", root / "bundle", "--verbose")
    assert proc.returncode == 0, proc.stderr
    assert "phase legalize" in proc.stderr and f"built {root / 'bundle'}" in proc.stdout
    return root


def test_bundle_layout_and_manifest(mlp_bundle):
    folder = mlp_bundle / "bundle"
    runtime = {p.name for p in (folder / "runtime").iterdir()}
    assert {"libtvm_runtime.so", "libtvm_ffi.so", "edgecc-run"} <= runtime
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["inputs"] == [{"name": "x", "shape": [2, 16], "dtype": "float32"}]
    assert manifest["outputs"] == [{"name": "probs", "shape": [2, 8], "dtype": "float32"},
                                   {"name": "hidden", "shape": [2, 32], "dtype": "float32"}]
    assert manifest["model_sha256"] == sha256(folder / "model.so")
    assert manifest["target"]["name"] == "host" and manifest["target"]["arch"] == "x86_64"
    assert manifest["versions"]["tvm"] == "0.27.0.post1" and manifest["versions"]["tvm_ffi"] == "0.1.14.post1"
    assert [p["phase"] for p in manifest["passes"]] == ["graph", "legalize", "schedule", "lower"]
    assert "FoldConstant" in manifest["passes"][0]["passes"]


def test_cli_run_writes_named_outputs_matching_onnxruntime(mlp_bundle, tmp_path):
    x = np.random.default_rng(1).standard_normal((2, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    proc = run_cli("run", mlp_bundle / "bundle", "--input", f"x={tmp_path / 'x.npy'}",
                   "--output-dir", tmp_path / "out", "--repeat", "3")
    assert proc.returncode == 0, proc.stderr
    assert "median" in proc.stdout
    reference = onnxruntime_outputs(mlp_model(), {"x": x})
    np.testing.assert_allclose(np.load(tmp_path / "out" / "probs.npy"), reference[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.load(tmp_path / "out" / "hidden.npy"), reference[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("inputs, message", [
    ({"y": np.zeros((2, 16), np.float32)}, "unknown input 'y'; the model's inputs are: x"),
    ({}, r"missing input 'x' \(shape \[2, 16\], float32\)"),
    ({"x": np.zeros((3, 16), np.float32)}, r"input 'x' has shape \[3, 16\], expected \[2, 16\]"),
    ({"x": np.zeros((2, 16), np.float64)}, "input 'x' has dtype float64, expected float32"),
])
def test_run_checks_inputs_against_manifest(mlp_bundle, inputs, message):
    bundle = edgecc.load(mlp_bundle / "bundle")
    with pytest.raises(UserInputError, match=message):
        bundle.run(inputs)


def test_cli_run_bad_inputs_are_one_line(mlp_bundle, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((2, 15), np.float32))
    proc = run_cli("run", mlp_bundle / "bundle", "--input", f"x={tmp_path / 'x.npy'}")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "edgecc: error: input 'x' has shape [2, 15], expected [2, 16]"
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    proc = run_cli("run", mlp_bundle / "bundle", "--input", f"x={tmp_path / 'bad.npy'}")
    assert proc.returncode == 2 and "cannot read input 'x'" in proc.stderr
    proc = run_cli("run", mlp_bundle / "bundle", "--input", "x")
    assert proc.returncode == 2 and "expected NAME=FILE.npy" in proc.stderr


def test_load_refuses_tampered_library(mlp_bundle, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(mlp_bundle / "bundle", copy)
    with open(copy / "model.so", "ab") as f:
        f.write(b"\0")
    with pytest.raises(UserInputError, match="does not match the manifest"):
        edgecc.load(copy)
    with pytest.raises(UserInputError, match="not an edgecc bundle"):
        edgecc.load(tmp_path)


def test_failed_build_keeps_the_previous_bundle_intact(mlp_bundle, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(mlp_bundle / "bundle", out)
    before = sorted(p.name for p in out.rglob("*"))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(mlp_model().SerializeToString()[:100])
    proc = run_cli("build", bad, "-o", out)
    assert proc.returncode == 2
    assert sorted(p.name for p in out.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_save_failure_leaves_no_half_bundle(mlp_bundle, tmp_path, monkeypatch):
    import edgecc.bundle

    bundle = edgecc.load(mlp_bundle / "bundle")

    def broken_copy(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(edgecc.bundle, "_link_or_copy", broken_copy)
    with pytest.raises(OSError):
        bundle.save(tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_save_refuses_to_replace_a_non_bundle(mlp_bundle, tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(UserInputError, match="not an edgecc bundle"):
        edgecc.load(mlp_bundle / "bundle").save(tmp_path)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


@pytest.mark.parametrize("target, vlen_flag", [("riscv-vlen128", "vlen=128"), ("riscv", "vlen=512"),
                                               ("arm-a55", None), ("arm-a76", None)])
def test_presets_run_under_qemu_with_their_settings(target, vlen_flag, tmp_path):
    x = np.random.default_rng(3).standard_normal((2, 16)).astype(np.float32)
    options = {"vlen": 512} if vlen_flag == "vlen=512" else {}
    bundle = edgecc.compile(mlp_model(), target, input_shapes={"x": [2, 16]}, **options)
    bundle.save(tmp_path / target)
    command = " ".join(bundle.command())
    if vlen_flag:
        assert f"-cpu rv64,v=true,{vlen_flag}" in command  # the emulated VLEN is the target's
    reference = onnxruntime_outputs(mlp_model(), {"x": x})
    outputs = bundle.run({"x": x})
    np.testing.assert_allclose(outputs["probs"], reference[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outputs["hidden"], reference[1], rtol=1e-5, atol=1e-5)
