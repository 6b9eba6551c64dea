"""Pruned models built with sparse kernels: same numbers as the dense build and ONNX Runtime,
on the host and on arm and riscv under qemu; the manifest and ``edgecc prune``."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import edgecc
from edgecc.prune import prune_model
from edgecc.zoo import encoder_model, ffn_model, mobilenet_model, sample_inputs
from tests.conftest import run_cli

# Sparse and dense kernels sum the same products in different orders: fp32 rounding only.
RTOL, ATOL = 1e-5, 1e-5


def _ffn(sparsity=0.9, block=(1, 1)):
    model, pruned = prune_model(ffn_model(d_model=64, hidden=256, seq=32), sparsity, block)
    assert len(pruned) == 2
    return model


def _mobilenet(sparsity=0.85):
    model, _ = prune_model(mobilenet_model(resolution=32, blocks=((64, 1), (128, 2), (128, 1)), classes=10),
                           sparsity, (1, 1))
    return model


def _reference(model, inputs):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, inputs)[0]


def _output(bundle, inputs):
    return next(iter(bundle.run(inputs).values()))


def _sparse_rules(bundle):
    rules = next(p["kernels"] for p in bundle.manifest["passes"] if p["phase"] == "schedule")
    return {name: rule for name, rule in rules.items() if rule == "sparse-bsr"}


@pytest.mark.parametrize("sparsity, block, expected_block", [(0.9, (1, 1), "1x1"), (0.8, (4, 1), "4x1")])
def test_pruned_ffn_sparse_equals_dense_and_onnxruntime(sparsity, block, expected_block):
    model = _ffn(sparsity, block)
    inputs = sample_inputs(model)
    sparse = edgecc.compile(model, "host")
    dense = edgecc.compile(model, "host", sparsity="off")
    got, want = _output(sparse, inputs), _output(dense, inputs)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got, _reference(model, inputs), rtol=RTOL, atol=ATOL)

    layers = sparse.manifest["sparsity"]["layers"]
    assert sparse.manifest["sparsity"]["mode"] == "auto"
    assert [(layer["op"], layer["weight"], layer["block"], layer["converted"]) for layer in layers] == [
        ("matmul", [256, 64], expected_block, True), ("matmul", [64, 256], expected_block, True)]
    assert all(abs(layer["sparsity"] - sparsity) < 0.02 and layer["kernel"] for layer in layers)
    assert dense.manifest["sparsity"] == {"mode": "off", "layers": []}
    assert not _sparse_rules(dense)


def test_sparse_layer_is_one_kernel_with_its_epilogue():
    bundle = edgecc.compile(_ffn(), "host")
    rules = _sparse_rules(bundle)
    # first layer: matmul + bias + Gelu in one kernel; second: matmul + bias
    assert sorted(rules) == ["fused_sparse_bsr1_add1", "fused_sparse_bsr_add_fast_gelu"], rules
    # the whole block is four kernels: the residual add rides on the layout change back
    every = next(p["kernels"] for p in bundle.manifest["passes"] if p["phase"] == "schedule")
    assert every == {**rules, "to_channels_first": "transpose-tiled",
                     "fused_from_channels_first1_add2": "transpose-tiled"}, every


def _rules(bundle):
    return next(p["kernels"] for p in bundle.manifest["passes"] if p["phase"] == "schedule")


def test_pruned_mobilenet_runs_channels_first_between_sparse_layers():
    """Every 1x1 conv sparse; the depthwise convs after the first sparse one run channels-first
    (stride 1 and 2), so no layout change runs between the first sparse layer and the pooling."""
    model = _mobilenet()
    inputs = sample_inputs(model)
    sparse = edgecc.compile(model, "host")
    layers = sparse.manifest["sparsity"]["layers"]
    converted = [layer["weight"] for layer in layers if layer["converted"]]
    assert converted == [[64, 32], [128, 64], [128, 128]], layers
    classifier = layers[-1]  # one image: one row, nothing to vectorise over
    assert not classifier["converted"] and "rows <" in classifier["reason"], classifier
    rules = _rules(sparse)
    assert sum(rule == "depthwise-chw" for rule in rules.values()) == 2, rules  # the 2nd and 3rd block's
    transposes = [name for name, rule in rules.items() if rule == "transpose-tiled"]
    assert len(transposes) == 2, transposes  # into the first sparse layer, out of the last
    got = _output(sparse, inputs)
    np.testing.assert_allclose(got, _output(edgecc.compile(model, "host", sparsity="off"), inputs),
                               rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got, _reference(model, inputs), rtol=RTOL, atol=ATOL)


def test_pruned_encoder_attention_projections_and_erf_gelu():
    """Q/K/V/output projections and an FFN whose GELU is written out (Div, Erf, Add, Mul, Mul)."""
    model, _ = prune_model(encoder_model(layers=1, d_model=64, heads=2, seq=32, ffn=256), 0.9, (1, 1))
    inputs = sample_inputs(model)
    bundle = edgecc.compile(model, "host")
    assert [layer["converted"] for layer in bundle.manifest["sparsity"]["layers"]] == [True] * 6
    # the written-out GELU fused into the first FFN layer's sparse kernel
    assert any("erf" in name and "multiply" in name for name in _sparse_rules(bundle)), _sparse_rules(bundle)
    np.testing.assert_allclose(_output(bundle, inputs), _reference(model, inputs), rtol=1e-4, atol=1e-4)


def test_weight_below_threshold_stays_dense():
    bundle = edgecc.compile(_ffn(0.3), "host")
    layers = bundle.manifest["sparsity"]["layers"]
    assert layers and not any(layer["converted"] for layer in layers)
    assert all("> threshold" in layer["reason"] for layer in layers)
    assert not _sparse_rules(bundle)


@pytest.mark.parametrize("target", ["arm", "riscv"])
def test_sparse_kernels_under_qemu_match_host(target):
    model = _ffn(0.8, (4, 1))
    inputs = sample_inputs(model)
    bundle = edgecc.compile(model, target)
    assert len(_sparse_rules(bundle)) == 2
    np.testing.assert_allclose(_output(bundle, inputs), _output(edgecc.compile(model, "host"), inputs),
                               rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("target", ["arm", "riscv"])
def test_mobilenet_under_qemu_matches_onnxruntime(target):
    model = _mobilenet()
    inputs = sample_inputs(model)
    bundle = edgecc.compile(model, target)
    assert _sparse_rules(bundle) and "depthwise-chw" in _rules(bundle).values()
    np.testing.assert_allclose(_output(bundle, inputs), _reference(model, inputs), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("target", ["host", "arm"])
def test_pruned_int8_matmuls_run_sparse_with_the_requantization_fused(target, tmp_path):
    """A pruned FFN quantized by ONNX Runtime's quantize_static (QDQ): the int8 matmuls run as
    int32 sparse kernels, the requantization, bias and GELU fused after them; integer sums
    make them equal to the dense int8 build exactly."""
    from onnxruntime.quantization import QuantFormat, QuantType

    from tests.e2e.test_int8 import _output_step, _reference as _exact, _static

    model = _static(prune_model(ffn_model(d_model=64, hidden=256, seq=32), 0.97)[0], tmp_path, QuantFormat.QDQ,
                    QuantType.QUInt8, True)
    inputs = sample_inputs(model)
    bundle = edgecc.compile(model, target)
    layers = bundle.manifest["sparsity"]["layers"]
    assert [(layer["op"], layer["converted"]) for layer in layers] == [("matmul_int8", True)] * 2, layers
    fused = [name for name in _sparse_rules(bundle) if "round" in name and "clip" in name]
    assert len(fused) == 2, _sparse_rules(bundle)
    got = _output(bundle, inputs)
    np.testing.assert_array_equal(got, _output(edgecc.compile(model, target, sparsity="off"), inputs))
    assert np.abs(got - _exact(model, inputs)).max() <= _output_step(model) * 1.001


# -- the command line ---------------------------------------------------------------------------

def test_prune_then_build_from_the_command_line(tmp_path):
    dense = tmp_path / "ffn.onnx"
    onnx.save(ffn_model(d_model=64, hidden=256, seq=32), dense)
    pruned = tmp_path / "ffn-pruned.onnx"
    result = run_cli("prune", dense, "--sparsity", "0.9", "--block", "4x1", "-o", pruned)
    assert result.returncode == 0, result.stderr
    assert "ff1.w (MatMul [64, 256]): 90.0% zeros" in result.stdout
    assert "accuracy" in result.stdout

    weights = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(pruned).graph.initializer}
    blocks = weights["ff1.w"].T.reshape(64, 4, 64)  # [N/4, 4, K]: a 4x1 block is 4 outputs at one input
    assert np.all(np.all(blocks == 0, axis=1) | np.all(blocks != 0, axis=1))
    assert np.count_nonzero(weights["ff1.b"]) == 256  # biases are left alone

    out = tmp_path / "bundle"
    result = run_cli("build", pruned, "-o", out, "--verbose")
    assert result.returncode == 0, result.stderr
    assert "4x1 blocks, sparse" in result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert [layer["block"] for layer in manifest["sparsity"]["layers"]] == ["4x1", "4x1"]


@pytest.mark.parametrize("args, message", [
    (["--sparsity", "1.5"], "--sparsity must be in [0, 1)"),
    (["--sparsity", "0.5", "--block", "4by1"], "--block must be RxC"),
    (["--sparsity", "0.5", "--min-size", "100000000"], "no prunable weight"),
])
def test_prune_bad_arguments_are_one_line(tmp_path, args, message):
    model = tmp_path / "ffn.onnx"
    onnx.save(ffn_model(d_model=64, hidden=256, seq=32), model)
    result = run_cli("prune", model, *args, "-o", tmp_path / "out.onnx")
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out.onnx").exists()


def test_unknown_sparsity_mode_is_refused():
    with pytest.raises(edgecc.errors.UserInputError, match="valid: auto, off"):
        edgecc.compile(_ffn(), "host", sparsity="always")
