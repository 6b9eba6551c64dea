"""Default schedules, op family by op family: every kernel gets a rule, and the outputs match.

Each case is a small ONNX graph built here with seeded weights, compiled for the
host with edgecc's rules and compared with ONNX Runtime at rtol = atol = 1e-4
(float32 sums over at most a few thousand terms). Shapes are picked to hit the
awkward paths: channel counts that are not a multiple of the vector width,
widths that do not divide the register tile, strides, groups, dilation,
asymmetric padding, a GEMV and a batched attention matmul. A few run on arm and
riscv under qemu as well.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgecc
from edgecc.zoo import encoder_model

from ..conftest import onnxruntime_outputs, run_cli

TOL = dict(rtol=1e-4, atol=1e-4)


def _graph(nodes, inputs, outputs, inits, opset=17):
    graph = helper.make_graph(nodes, "case", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def _value(name, shape):
    if shape is None:  # filled in by shape inference
        return helper.make_empty_tensor_value_info(name)
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def conv_model(c_in, c_out, hw, kernel, stride=1, pad=(0, 0, 0, 0), group=1, dilation=1, bn=False,
               epilogue="Relu", seed=0):
    """Conv (+ BatchNormalization) (+ epilogue) on x[1, c_in, hw, hw]."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((c_out, c_in // group, kernel, kernel)) / np.sqrt(c_in * kernel)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(rng.standard_normal(c_out).astype(np.float32), "b")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", strides=[stride, stride],
                              pads=list(pad), group=group, dilations=[dilation, dilation])]
    last = "c"
    if bn:
        for name, value in (("scale", rng.uniform(0.5, 1.5, c_out)), ("shift", rng.standard_normal(c_out)),
                            ("mean", rng.standard_normal(c_out)), ("var", rng.uniform(0.5, 1.5, c_out))):
            inits.append(numpy_helper.from_array(value.astype(np.float32), name))
        nodes.append(helper.make_node("BatchNormalization", [last, "scale", "shift", "mean", "var"], ["bn"], name="bn"))
        last = "bn"
    if epilogue:
        nodes.append(helper.make_node(epilogue, [last], ["y"], name="act"))
    else:
        nodes.append(helper.make_node("Identity", [last], ["y"], name="out"))
    return _graph(nodes, [_value("x", [1, c_in, hw, hw])], [_value("y", None)], inits)


def pool_model(kind, c, hw, kernel=3, stride=2, pad=(1, 1, 1, 1)):
    """Conv 1x1 then a pooling op (so the pool runs on a channels-last tensor)."""
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array((rng.standard_normal((c, c, 1, 1)) / np.sqrt(c)).astype(np.float32), "w")
    attrs = {} if kind.startswith("Global") else dict(kernel_shape=[kernel, kernel], strides=[stride, stride],
                                                      pads=list(pad))
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node(kind, ["c"], ["y"], name="pool", **attrs)]
    return _graph(nodes, [_value("x", [1, c, hw, hw])], [_value("y", None)], [w])


def residual_concat_model():
    """Two convs from one input, a residual add, a concat and a channel shuffle (shufflenet-style)."""
    rng = np.random.default_rng(2)
    w1 = numpy_helper.from_array((rng.standard_normal((24, 24, 3, 3)) / 15).astype(np.float32), "w1")
    w2 = numpy_helper.from_array((rng.standard_normal((24, 24, 1, 1)) / 5).astype(np.float32), "w2")
    shape5 = numpy_helper.from_array(np.array([1, 3, 16, 9, 9], np.int64), "s5")
    shape4 = numpy_helper.from_array(np.array([1, 48, 9, 9], np.int64), "s4")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="c1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["ar"], name="r1"),
             helper.make_node("Conv", ["ar", "w2"], ["b"], name="c2"),
             helper.make_node("Add", ["b", "x"], ["res"], name="res"),
             helper.make_node("Concat", ["res", "ar"], ["cat"], name="cat", axis=1),
             helper.make_node("Reshape", ["cat", "s5"], ["g"], name="split"),
             helper.make_node("Transpose", ["g"], ["gt"], name="shuffle", perm=[0, 2, 1, 3, 4]),
             helper.make_node("Reshape", ["gt", "s4"], ["y"], name="merge")]
    return _graph(nodes, [_value("x", [1, 24, 9, 9])], [_value("y", [1, 48, 9, 9])], [w1, w2, shape5, shape4])


def grouped_shuffle_model():
    """Shufflenet's unit core: a grouped 1x1 conv with groups of 68 channels, ReLU, a channel
    shuffle of 4 groups, a depthwise 3x3 conv."""
    rng = np.random.default_rng(4)
    w1 = numpy_helper.from_array((rng.standard_normal((272, 68, 1, 1)) / 8).astype(np.float32), "w1")
    w2 = numpy_helper.from_array((rng.standard_normal((272, 1, 3, 3)) / 3).astype(np.float32), "w2")
    shape5 = numpy_helper.from_array(np.array([1, 4, 68, 6, 6], np.int64), "s5")
    shape4 = numpy_helper.from_array(np.array([1, 272, 6, 6], np.int64), "s4")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="gconv", group=4),
             helper.make_node("Relu", ["a"], ["ar"], name="relu"),
             helper.make_node("Reshape", ["ar", "s5"], ["g"], name="split"),
             helper.make_node("Transpose", ["g"], ["gt"], name="shuffle", perm=[0, 2, 1, 3, 4]),
             helper.make_node("Reshape", ["gt", "s4"], ["s"], name="merge"),
             helper.make_node("Conv", ["s", "w2"], ["y"], name="dw", group=272, pads=[1, 1, 1, 1])]
    return _graph(nodes, [_value("x", [1, 272, 6, 6])], [_value("y", [1, 272, 6, 6])], [w1, w2, shape5, shape4])


def gemm_model(m, k, n, trans_b=0):
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((n, k) if trans_b else (k, n)) / np.sqrt(k)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "b")]
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["g"], name="gemm", transB=trans_b),
             helper.make_node("Softmax", ["g"], ["y"], name="softmax", axis=-1)]
    return _graph(nodes, [_value("x", [m, k])], [_value("y", [m, n])], inits)


CASES = {
    "conv3x3-bn-relu": lambda: conv_model(16, 32, 14, 3, pad=(1, 1, 1, 1), bn=True),  # Winograd
    "conv3x3-bn-relu-direct": lambda: conv_model(8, 24, 14, 3, pad=(1, 1, 1, 1), bn=True),  # too narrow for it
    "conv1x1-odd-channels": lambda: conv_model(24, 40, 13, 1, epilogue=None),
    "conv-first-layer-strided": lambda: conv_model(3, 64, 33, 7, stride=2, pad=(3, 3, 3, 3)),
    "conv-1000-classes": lambda: conv_model(32, 1000, 5, 1),
    # an RGB stem with 24 outputs (shufflenet's): the padded copy of 3 channels is read in place,
    # the tile is 2 vectors wide and its first 24 channels are written from registers
    "conv-rgb-stem-sliced": lambda: conv_model(3, 24, 17, 3, stride=2, pad=(1, 1, 1, 1), bn=True),
    "conv-asymmetric-pad": lambda: conv_model(8, 16, 10, 3, pad=(0, 1, 1, 0), epilogue="Sigmoid"),
    "conv-dilated": lambda: conv_model(16, 16, 12, 3, pad=(2, 2, 2, 2), dilation=2),
    "conv-grouped": lambda: conv_model(24, 48, 10, 1, group=3, bn=True),
    # groups of 34 channels: padded to whole vectors per group, then sliced (x86 and arm)
    "conv-grouped-padded": lambda: conv_model(136, 136, 9, 1, group=4, bn=True),
    # groups of 68 channels (shufflenet's): padded to 80 on AVX-512 and RVV, exact on NEON
    "conv-grouped-wide": lambda: conv_model(272, 272, 7, 1, group=4, bn=True),
    # groups of 12 channels on 16 lanes: tiles straddle two groups (banded weight)
    "conv-grouped-banded": lambda: conv_model(24, 24, 8, 3, pad=(1, 1, 1, 1), group=2),
    "conv-depthwise-strided": lambda: conv_model(32, 32, 15, 3, stride=2, pad=(1, 1, 1, 1), group=32, bn=True,
                                                 epilogue=None),
    "maxpool": lambda: pool_model("MaxPool", 24, 15),
    "avgpool": lambda: pool_model("AveragePool", 16, 12, kernel=2, stride=2, pad=(0, 0, 0, 0)),
    "global-avgpool": lambda: pool_model("GlobalAveragePool", 40, 7),
    "residual-concat-shuffle": residual_concat_model,
    "grouped-conv-shuffle": grouped_shuffle_model,
    # weights of 2.4 MB and 2 MB: the reduction split around the row tiles, weights prefetched
    "conv3x3-weight-heavy": lambda: conv_model(256, 256, 7, 3, pad=(1, 1, 1, 1)),
    "gemm-weight-heavy": lambda: gemm_model(20, 1024, 512),
    "gemv-transposed": lambda: gemm_model(1, 200, 1000, trans_b=1),
    "gemm": lambda: gemm_model(37, 64, 48),
    "encoder": lambda: encoder_model(layers=1, d_model=64, heads=2, seq=24, ffn=128),
}


def _inputs(model):
    rng = np.random.default_rng(0)
    return {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
            for i in model.graph.input}


def _kernel_rules(bundle) -> dict[str, str]:
    schedule = next(p for p in bundle.manifest["passes"] if p["phase"] == "schedule")
    return schedule["kernels"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_host_matches_onnxruntime_and_every_kernel_is_scheduled(case):
    model = CASES[case]()
    inputs = _inputs(model)
    bundle = edgecc.compile(model, "host")
    rules = _kernel_rules(bundle)
    assert rules and not [k for k, rule in rules.items() if rule.startswith("fallback")], rules
    got = list(bundle.run(inputs).values())
    for ours, theirs in zip(got, onnxruntime_outputs(model, inputs)):
        np.testing.assert_allclose(ours, theirs, **TOL)


@pytest.mark.parametrize("target", ["arm", "riscv"])
@pytest.mark.parametrize("case", ["conv-depthwise-strided", "conv-grouped-padded", "conv-grouped-wide",
                                  "residual-concat-shuffle", "grouped-conv-shuffle", "encoder",
                                  "gemv-transposed", "gemm-weight-heavy"])
def test_cross_target_matches_onnxruntime(case, target):
    model = CASES[case]()
    inputs = _inputs(model)
    bundle = edgecc.compile(model, target)
    assert not [k for k, rule in _kernel_rules(bundle).items() if rule.startswith("fallback")]
    got = list(bundle.run(inputs).values())
    for ours, theirs in zip(got, onnxruntime_outputs(model, inputs)):
        np.testing.assert_allclose(ours, theirs, **TOL)


def test_conv_kernels_use_the_packed_nhwc_rule_and_batch_norm_is_folded():
    bundle = edgecc.compile(CASES["conv3x3-bn-relu-direct"](), "host")
    rules = _kernel_rules(bundle)
    conv = [k for k in rules if "conv2d" in k]
    assert len(conv) == 1 and rules[conv[0]] == "tiled-reduction[conv2d_nhwc]"
    # BN's subtract/divide/multiply went into the weights: one add (bias) and the relu remain.
    assert conv[0].startswith("fused_conv2d") and "subtract" not in conv[0] and "divide" not in conv[0]


def test_verbose_build_names_the_rule_of_every_kernel(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(CASES["residual-concat-shuffle"](), str(path))
    proc = run_cli("build", path, "--target", "host", "-o", tmp_path / "out", "--verbose")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    rules = next(p for p in manifest["passes"] if p["phase"] == "schedule")["kernels"]
    for kernel, rule in rules.items():
        assert f"{kernel}: {rule}" in proc.stderr
    assert any(rule.startswith("tiled-reduction[conv2d_nhwc]") for rule in rules.values())


def test_a_channel_shuffle_is_copied_as_an_interleave_and_other_copies_are_not():
    from tvm import te
    from tvm.s_tir import Schedule

    from edgecc.schedules import cpu

    def factor(compute, *inputs):
        sch = Schedule(te.create_prim_func([*inputs, compute]))
        return cpu._interleave_factor(sch, sch.get_sblock(compute.op.name))

    x = te.placeholder((1, 5, 5, 272), name="x")
    nchw = te.placeholder((1, 272, 5, 5), name="nchw")
    assert factor(te.compute(x.shape, lambda n, h, w, j: x[n, h, w, j % 4 * 68 + j // 4], name="shuffle"), x) == 4
    assert factor(te.compute(x.shape, lambda *i: x(*i), name="copy"), x) is None
    assert factor(te.compute(x.shape, lambda n, h, w, c: nchw[n, c, h, w], name="to_nhwc"), nchw) is None
    assert factor(te.compute(x.shape, lambda n, h, w, c: x[n, h, w, 271 - c], name="reverse"), x) is None


def test_weight_heavy_kernels_split_the_reduction_and_prefetch_the_weight():
    rules = _kernel_rules(edgecc.compile(CASES["conv3x3-weight-heavy"](), "host"))
    assert [rule for rule in rules.values() if rule.endswith("+ weight prefetch")], rules
    rules = _kernel_rules(edgecc.compile(CASES["conv3x3-bn-relu-direct"](), "host"))
    assert not [rule for rule in rules.values() if "prefetch" in rule], rules  # 7 KB of weights


def _legalized(model):
    from edgecc.frontend import import_onnx
    from edgecc.pipeline import run_phases
    from edgecc.targets import get_target

    preset = get_target("host")
    mod, _, _ = import_onnx(model, None)
    legalized, _ = run_phases(mod, preset, preset.tvm_target(), until="legalize")
    return preset, legalized


@pytest.mark.parametrize("hw", [5, 7])
def test_every_loop_order_tuning_may_pick_computes_the_same_conv(hw):
    """Each loop-order variant of the tiled rule, at its default tile, against variant 0 (exact
    up to summation order). On a 5x5 map the row tile of the fused h*w rows (variant 3) must not
    straddle two image rows: its writeback would copy the part of the next not yet computed."""
    import tvm
    from tvm.s_tir import Schedule

    from edgecc.schedules import cpu, fp32_lanes, schedule_cpu

    preset, mod = _legalized(conv_model(256, 256, hw, 3, pad=(1, 1, 1, 1)))
    (name, func), = [(gv.name_hint, f) for gv, f in mod.functions_items() if "conv2d" in gv.name_hint]
    rng = np.random.default_rng(0)
    args = [rng.uniform(-1, 1, [int(d) for d in p.ty.shape]).astype(np.float32) for p in func.params]
    outputs = {}
    for variant in range(cpu.TILED_VARIANTS):
        sch = Schedule(func)
        if schedule_cpu(sch, fp32_lanes(preset), True, cpu.Choices(variant=variant)) is None:
            continue
        lib = tvm.compile(tvm.IRModule({"main": sch.mod["main"].with_attr("global_symbol", "main")}),
                          target=preset.tvm_target())
        tensors = [tvm.runtime.tensor(a) for a in args]
        lib["main"](*tensors)
        outputs[variant] = tensors[-1].numpy()
    assert {0, 3, 4} <= set(outputs), sorted(outputs)
    for variant, out in outputs.items():
        np.testing.assert_allclose(out, outputs[0], rtol=1e-4, atol=1e-4, err_msg=f"variant {variant}")
