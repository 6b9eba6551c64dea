"""edgecc's graph passes: what they leave in the graph (numerics are in e2e/test_schedules.py)."""

import re

import tvm

from edgecc.frontend import import_onnx
from edgecc.passes import graph_passes
from edgecc.targets import get_target

from ..e2e.test_schedules import CASES


def _ops_after_graph_phase(case: str, target: str = "host") -> list[str]:
    mod, _, _ = import_onnx(CASES[case]())
    mod = tvm.transform.Sequential(graph_passes(get_target(target)))(mod)
    return re.findall(r"R\.([a-z_.0-9]+)\(", mod["main"].script(show_meta=False))


def test_batch_norm_and_bias_fold_into_the_conv_weights():
    ops = _ops_after_graph_phase("conv3x3-bn-relu")
    assert ops.count("nn.conv2d") == 1 and ops.count("add") == 1  # one bias add left
    assert not {"subtract", "divide", "multiply"} & set(ops)


def test_channels_last_transposes_only_at_the_graph_edges():
    # conv, relu, conv, residual add, concat and a channel shuffle all stay NHWC
    ops = _ops_after_graph_phase("residual-concat-shuffle")
    assert ops.count("permute_dims") == 3  # input to NHWC, the shuffle itself, output to NCHW
    assert ops.count("reshape") == 2


def test_gpu_targets_keep_nchw():
    ops = _ops_after_graph_phase("residual-concat-shuffle", "cuda")
    assert ops.count("permute_dims") == 1  # the shuffle only
