"""Real architectures (onnx wheel's light models, seeded random weights) compiled and run.

host: compared with ONNX Runtime. arm / riscv: run under qemu-user, compared with
the host build's outputs. The models output logits (their final Softmax is cut:
with random weights it is nearly one-hot and would hide wrong numbers).
Tolerance: rtol = 1e-4 and atol = 1e-4 x the largest |logit| (float32 sums of
thousands of terms, in a different order); cross-arch results differ only by FMA
contraction and summation order. RVV under qemu runs about 100x slower than
native code, so riscv runs the two smaller networks (between them: 1x1, 3x3,
strided, grouped and depthwise convs, max/avg pooling, concat, FC); arm runs all.
"""

import numpy as np
import pytest

from ..conftest import onnxruntime_outputs

MODELS = ["squeezenet", "shufflenet", "inception_v1", "resnet50"]
CROSS = [(name, "arm") for name in MODELS] + [("squeezenet", "riscv"), ("shufflenet", "riscv")]
RTOL = 1e-4


def assert_close(ours, reference):
    np.testing.assert_allclose(ours, reference, rtol=RTOL, atol=RTOL * float(np.abs(reference).max()))
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
        assert_close(ours, theirs)
    assert got[0].argmax() == reference[0].argmax()


@pytest.mark.parametrize("name,target", CROSS)
def test_cross_target_under_qemu_matches_host(name, target, bundles):
    bundle = bundles.bundle(name, target)
    assert bundle.command()[0] == {"arm": "qemu-aarch64", "riscv": "qemu-riscv64"}[target]
    outputs = bundle.run(bundles.model(name)[1])
    expected = host_outputs(bundles, name)
    assert list(outputs) == list(expected)
    for key in outputs:
        assert_close(outputs[key], expected[key])
