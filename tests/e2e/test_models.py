"""Real architectures (onnx wheel's light models, seeded random weights) compiled and run.

host: compared with ONNX Runtime. arm / riscv: run under qemu-user, compared with
the host build's outputs. Tolerances: rtol = atol = 1e-4 (the outputs are softmax
probabilities over 1000 classes); cross-arch results differ only by FMA
contraction and summation order. RVV under qemu runs about 100x slower than
native code, so riscv runs the two smaller networks (between them: 1x1, 3x3,
strided, grouped and depthwise convs, max/avg pooling, concat, FC); arm runs all.
"""

import numpy as np
import pytest

from ..conftest import onnxruntime_outputs

MODELS = ["squeezenet", "shufflenet", "inception_v1", "resnet50"]
CROSS = [(name, "arm") for name in MODELS] + [("squeezenet", "riscv"), ("shufflenet", "riscv")]
TOL = dict(rtol=1e-4, atol=1e-4)
_host_outputs = {}


def host_outputs(bundles, name):
    if name not in _host_outputs:
        _host_outputs[name] = bundles.bundle(name, "host").run(bundles.model(name)[1])
    return _host_outputs[name]


@pytest.mark.parametrize("name", MODELS)
def test_host_matches_onnxruntime(name, bundles):
    model, inputs = bundles.model(name)
    reference = onnxruntime_outputs(model, inputs)
    got = list(host_outputs(bundles, name).values())
    assert len(got) == len(reference)
    for ours, theirs in zip(got, reference):
        assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
        np.testing.assert_allclose(ours, theirs, **TOL)
    assert got[0].argmax() == reference[0].argmax()


@pytest.mark.parametrize("name,target", CROSS)
def test_cross_target_under_qemu_matches_host(name, target, bundles):
    bundle = bundles.bundle(name, target)
    assert bundle.command()[0] == {"arm": "qemu-aarch64", "riscv": "qemu-riscv64"}[target]
    outputs = bundle.run(bundles.model(name)[1])
    expected = host_outputs(bundles, name)
    assert list(outputs) == list(expected)
    for key in outputs:
        np.testing.assert_allclose(outputs[key], expected[key], **TOL)
