"""Symbolic input dims left unbound: one library for any size (Relax symbolic shapes)."""

import numpy as np
import onnx
import pytest

import edgecc
from edgecc.errors import UserInputError
from edgecc.zoo import light_model

from ..conftest import mlp_model, onnxruntime_outputs, run_cli


@pytest.mark.parametrize("target", ["host", "arm"])
def test_symbolic_batch_runs_every_size(target, tmp_path):
    onnx.save(mlp_model(), str(tmp_path / "mlp.onnx"))
    proc = run_cli("build", tmp_path / "mlp.onnx", "--target", target, "-o", tmp_path / "bundle", "--verbose")
    assert proc.returncode == 0, proc.stderr
    assert "keeps symbolic dims ['batch']" in proc.stderr
    bundle = edgecc.load(tmp_path / "bundle")
    assert bundle.inputs[0]["shape"] == ["batch", 16]
    for batch in (1, 5):
        x = np.random.default_rng(batch).standard_normal((batch, 16)).astype(np.float32)
        got = bundle.run({"x": x})
        reference = onnxruntime_outputs(mlp_model(), {"x": x})
        np.testing.assert_allclose(got["probs"], reference[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got["hidden"], reference[1], rtol=1e-5, atol=1e-5)
    with pytest.raises(UserInputError, match=r"input 'x' has shape \[3, 8\], expected \['batch', 16\]"):
        bundle.run({"x": np.zeros((3, 8), np.float32)})


def test_symbolic_batch_conv_net_matches_onnxruntime():
    model = light_model("squeezenet")
    for value in (model.graph.input[0], model.graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_param = "N"
    bundle = edgecc.compile(model, target="host")
    assert bundle.inputs[0]["shape"][0] == "N"
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    name = model.graph.input[0].name
    got = bundle.run({name: x})[model.graph.output[0].name]
    np.testing.assert_allclose(got, onnxruntime_outputs(model, {name: x})[0], rtol=1e-4, atol=1e-5)
