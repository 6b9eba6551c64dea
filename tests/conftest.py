"""Shared helpers: run the CLI as a user would, build small ONNX models in memory."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper


def run_cli(*args, env=None, cwd=None) -> subprocess.CompletedProcess:
    """``edgecc ARGS`` in a subprocess; returns the finished process (text mode)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "edgecc.cli", *map(str, args)],
                          capture_output=True, text=True, env=full_env, cwd=cwd)


def tiny_model(op_type="Relu", domain="", opset=17, shape=(1, 4), extra_opsets=()) -> onnx.ModelProto:
    """One-node model ``y = op(x)`` (with a made-up op or domain to test the support check)."""
    node = helper.make_node(op_type, ["x"], ["y"], name="node0", domain=domain)
    graph = helper.make_graph([node], "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    opsets = [helper.make_opsetid("", opset), *[helper.make_opsetid(d, v) for d, v in extra_opsets]]
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)


def mlp_model(seed=0, batch=2) -> onnx.ModelProto:
    """MatMul + Add + Relu + MatMul + Softmax with seeded weights; two outputs."""
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.standard_normal((16, 32)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "b1")
    w2 = numpy_helper.from_array(rng.standard_normal((32, 8)).astype(np.float32), "w2")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h0"], name="mm1"),
             helper.make_node("Add", ["h0", "b1"], ["h1"], name="add1"),
             helper.make_node("Relu", ["h1"], ["hidden"], name="relu1"),
             helper.make_node("MatMul", ["hidden", "w2"], ["logits"], name="mm2"),
             helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=-1)]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 8]),
         helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", 32])],
        initializer=[w1, b1, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def onnxruntime_outputs(model: onnx.ModelProto, inputs: dict) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, inputs)


@pytest.fixture
def tiny_path(tmp_path):
    path = tmp_path / "tiny.onnx"
    onnx.save(tiny_model(), str(path))
    return path


class BundleCache:
    """Compile each (light model, target) once per test session and keep the saved bundle.
    The models end at their logits (final Softmax removed)."""

    def __init__(self, root):
        self.root = root
        self._bundles = {}
        self._models = {}

    def model(self, name):
        from edgecc import zoo

        if name not in self._models:
            model = zoo.logits_model(zoo.light_model(name, seed=0))  # softmax would hide errors
            self._models[name] = (model, zoo.sample_inputs(model, seed=0))
        return self._models[name]

    def bundle(self, name, target):
        import edgecc

        key = (name, target)
        if key not in self._bundles:
            bundle = edgecc.compile(self.model(name)[0], target)
            bundle.save(self.root / f"{name}-{target}")
            self._bundles[key] = bundle
        return self._bundles[key]


@pytest.fixture(scope="session")
def bundles(tmp_path_factory):
    return BundleCache(tmp_path_factory.mktemp("bundles"))
