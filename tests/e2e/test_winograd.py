"""Winograd F(4, 3) for 3x3 convs: outputs against ONNX Runtime, which convs take it, and the
choice per conv that tuning logs make.

Winograd reassociates each 3x3 sum through its transforms (coefficients up to 8 and 1/24),
so outputs differ from a direct sum by a few float32 ulps of the largest partial sums:
compared at rtol = atol = 1e-4 with weights scaled by 1/sqrt(fan-in) (outputs of order 1).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgecc
from edgecc.schedules import winograd
from edgecc.tuning import tune

from ..conftest import onnxruntime_outputs

TOL = dict(rtol=1e-4, atol=1e-4)


def conv_net(c_in, c_out, hw, pad=(1, 1, 1, 1), batch=1, residual=False, concat=False, seed=0,
             final=None) -> onnx.ModelProto:
    """3x3 conv (bias) -> Relu, optionally + the input (residual) before the Relu, or
    concatenated with a 1x1 conv of the same input (squeezenet's fire module)."""
    rng = np.random.default_rng(seed)

    def weight(name, shape, fan_in):
        return numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32), name)

    inits = [weight("w", (c_out, c_in, 3, 3), 9 * c_in), weight("b", (c_out,), 1)]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv3x3", pads=list(pad))]
    last = "c"
    if residual:
        nodes.append(helper.make_node("Add", ["c", "x"], ["s"], name="residual"))
        last = "s"
    nodes.append(helper.make_node("Relu", [last], ["r"], name="relu"))
    last = "r"
    if concat:
        inits += [weight("w1", (c_out, c_in, 1, 1), c_in)]
        nodes += [helper.make_node("Conv", ["x", "w1"], ["e"], name="conv1x1"),
                  helper.make_node("Relu", ["e"], ["er"], name="relu1x1"),
                  helper.make_node("Concat", ["er", "r"], ["cat"], axis=1, name="concat")]
        last = "cat"
    if final is not None:
        inits += [weight("w2", (final, c_out * (2 if concat else 1), 3, 3), 9 * c_out)]
        nodes.append(helper.make_node("Conv", [last, "w2"], ["y"], name="conv_next", pads=[1, 1, 1, 1]))
    else:
        nodes.append(helper.make_node("Identity", [last], ["y"], name="out"))
    graph = helper.make_graph(nodes, "wino", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                               [batch, c_in, hw, hw])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


CASES = {
    "16to32-14x14": lambda: conv_net(16, 32, 14),                        # 3.5 tiles a side
    "32to16-13x13": lambda: conv_net(32, 16, 13),                        # a partial tile at each edge
    "16to16-16x16-valid": lambda: conv_net(16, 16, 16, pad=(0, 0, 0, 0)),  # no padding: 14x14 out
    "16to16-asymmetric-pad": lambda: conv_net(16, 16, 10, pad=(0, 1, 1, 0)),
    "batch2-residual": lambda: conv_net(16, 16, 9, batch=2, residual=True),
    "fire-concat-then-conv": lambda: conv_net(16, 32, 11, concat=True, final=16),
}


def _inputs(model, seed=0):
    rng = np.random.default_rng(seed)
    return {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
            for i in model.graph.input}


def _rules(bundle) -> dict[str, str]:
    return next(p for p in bundle.manifest["passes"] if p["phase"] == "schedule")["kernels"]


def _check(bundle, model, seed=0):
    inputs = _inputs(model, seed)
    got = list(bundle.run(inputs).values())
    for ours, theirs in zip(got, onnxruntime_outputs(model, inputs), strict=True):
        np.testing.assert_allclose(ours, theirs, **TOL)


@pytest.mark.parametrize("case", sorted(CASES))
def test_winograd_matches_onnxruntime(case):
    model = CASES[case]()
    bundle = edgecc.compile(model, "host")
    rules = _rules(bundle)
    assert not [k for k, rule in rules.items() if rule.startswith("fallback")], rules
    assert "winograd-transform[winograd_input]" in rules.values(), rules
    assert "tiled-reduction[winograd_gemm]" in rules.values(), rules
    assert any(k.startswith("fused_winograd_output") and rule == "winograd-transform[winograd_output]"
               for k, rule in rules.items()), rules  # the epilogue (bias, relu) fused into the output transform
    _check(bundle, model)


def test_no_direct_3x3_kernel_left_when_winograd_applies():
    rules = _rules(edgecc.compile(CASES["batch2-residual"](), "host"))
    assert not [k for k in rules if "conv2d" in k], rules
    # bias, residual add and relu all went into the output transform: three kernels in all
    output = [k for k in rules if k.startswith("fused_winograd_output")]
    assert len(output) == 1 and "add" in output[0] and "relu" in output[0], rules


def test_winograd_on_arm_under_qemu_matches_onnxruntime():
    model = CASES["32to16-13x13"]()
    bundle = edgecc.compile(model, "arm")
    assert "tiled-reduction[winograd_gemm]" in _rules(bundle).values()
    _check(bundle, model)


def test_riscv_keeps_direct_convs():
    rules = _rules(edgecc.compile(CASES["16to32-14x14"](), "riscv"))
    assert not [k for k in rules if "winograd" in k], rules


@pytest.mark.parametrize("shape, out_channels, expected", [
    ((1, 56, 56, 64), 64, True),     # resnet50 stage 1: 196 tiles, 576 KiB transformed weight
    ((1, 13, 13, 64), 256, True),    # squeezenet fire9: 16 tiles, 2.3 MiB
    ((1, 7, 7, 512), 512, False),    # resnet50 stage 4: 4 tiles, 36 MiB: streams from memory
])
def test_untuned_choice_follows_weight_bytes_per_tile(shape, out_channels, expected):
    assert winograd.preferred(shape, out_channels, (1, 1, 1, 1)) is expected


def test_ineligible_convs_stay_direct():
    lanes = 16
    assert not winograd.eligible((32, 16, 3, 3), (2, 2), (1, 1), 1, 16, lanes)  # strided
    assert not winograd.eligible((32, 16, 3, 3), (1, 1), (2, 2), 1, 16, lanes)  # dilated
    assert not winograd.eligible((32, 8, 3, 3), (1, 1), (1, 1), 2, 16, lanes)   # grouped
    assert not winograd.eligible((24, 16, 3, 3), (1, 1), (1, 1), 1, 16, lanes)  # 24 outputs: not whole vectors
    assert not winograd.eligible((32, 16, 1, 1), (1, 1), (1, 1), 1, 16, lanes)  # 1x1
    assert winograd.eligible((32, 16, 3, 3), (1, 1), (1, 1), 1, 16, lanes)


# -- tuning decides per conv -------------------------------------------------------------


@pytest.fixture(scope="module")
def tuned_choice(tmp_path_factory):
    """A two-conv model tuned briefly: each eligible conv measured both ways."""
    model = conv_net(16, 32, 14, final=16, seed=3)
    path = tmp_path_factory.mktemp("wino") / "log.jsonl"
    progress = []
    summary = tune(model, "host", log=path, trials=8, progress=progress.append)
    return model, path, summary, progress


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()[1:] if line.strip()]


def _rewrite(path, slower: str):
    """The log with every kernel of one alternative (``winograd`` or ``direct``) made 1000x slower."""
    lines = path.read_text().splitlines()
    out = [lines[0]]
    for line in lines[1:]:
        record = json.loads(line)
        is_winograd = "winograd" in record["kernel"]
        if is_winograd == (slower == "winograd"):
            record["latency_us"] = record["latency_us"] * 1000
            record["default_us"] = max(record["default_us"], record["latency_us"])
        out.append(json.dumps(record))
    target = path.with_name(f"{slower}-slower.jsonl")
    target.write_text("\n".join(out) + "\n")
    return target


def test_tune_measures_each_conv_both_ways(tuned_choice):
    _, path, summary, progress = tuned_choice
    kernels = {r["kernel"] for r in _records(path)}
    # both convs: three Winograd kernels each (transforms measured at their default), and the direct kernel
    assert sum(k.startswith("winograd_input") for k in kernels) == 2, kernels
    assert sum(k.startswith("winograd_gemm") for k in kernels) == 2, kernels
    assert sum("winograd_output" in k for k in kernels) == 2, kernels
    assert sum("conv2d" in k for k in kernels) == 2, kernels
    assert len(summary.convs) == 2
    for conv, choice in summary.convs.items():
        faster = "winograd" if choice["winograd_us"] < choice["direct_us"] else "direct"
        assert choice["chosen"] == faster
        assert any(line.startswith(f"conv {conv}: {faster}") for line in progress), progress


@pytest.mark.parametrize("slower", ["winograd", "direct"])
def test_build_takes_the_faster_alternative_in_the_log(tuned_choice, slower):
    model, path, _, _ = tuned_choice
    log = _rewrite(path, slower)
    bundle = edgecc.compile(model, "host", tuning_log=[log])
    chosen = bundle.manifest["tuning_records"]["conv_algorithms"]
    assert len(chosen) == 2 and {c["chosen"] for c in chosen.values()} == \
        {"direct" if slower == "winograd" else "winograd"}
    rules = _rules(bundle)
    has_winograd = any("winograd" in k for k in rules)
    assert has_winograd == (slower == "direct"), rules
    from_log = bundle.manifest["tuning_records"]["kernels"]
    assert all(k in from_log for k in rules if "conv2d" in k or "winograd" in k), (rules, from_log)
    _check(bundle, model)
