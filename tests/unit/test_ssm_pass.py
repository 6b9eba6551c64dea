"""edgecc.passes.ssm: which Scan bodies are diagonal recurrences, and the rewrite."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from edgecc.passes import ssm

D, N = 4, 8


def _body(nodes, inputs=("h", "a", "b", "c")):
    value = helper.make_tensor_value_info
    shapes = {"h": [D, N], "a": [D, N], "b": [D, N], "c": [N]}
    return helper.make_graph(
        nodes, "body", [value(n, TensorProto.FLOAT, shapes[n]) for n in inputs],
        [value("h_next", TensorProto.FLOAT, [D, N]), value("y", TensorProto.FLOAT, [D])],
        [numpy_helper.from_array(np.array([-1], np.int64), "axes")])


def _reduce(h="h_next", c="c"):
    return [helper.make_node("Mul", [c, h], ["hc"]), helper.make_node("ReduceSum", ["hc", "axes"], ["y"], keepdims=0)]


def test_matches_in_any_operand_order():
    forward = _body([helper.make_node("Mul", ["h", "a"], ["ha"]), helper.make_node("Add", ["ha", "b"], ["h_next"]),
                     *_reduce()])
    assert ssm.match_diagonal_recurrence(forward) == (0, 1, 2)
    swapped = _body([helper.make_node("Mul", ["b", "h"], ["hb"]), helper.make_node("Add", ["a", "hb"], ["h_next"]),
                     *_reduce()])
    assert ssm.match_diagonal_recurrence(swapped) == (1, 0, 2)


def test_other_bodies_are_left_alone():
    cumulative = _body([helper.make_node("Add", ["h", "b"], ["h_next"]), *_reduce()])  # no decay
    assert ssm.match_diagonal_recurrence(cumulative) is None
    kept = _body([helper.make_node("Mul", ["h", "a"], ["ha"]), helper.make_node("Add", ["ha", "b"], ["h_next"]),
                  helper.make_node("Mul", ["c", "h_next"], ["hc"]),
                  helper.make_node("ReduceSum", ["hc", "axes"], ["y"], keepdims=1)])  # keepdims: another shape
    assert ssm.match_diagonal_recurrence(kept) is None
    reads_old_state = _body([helper.make_node("Mul", ["h", "a"], ["ha"]), helper.make_node("Add", ["ha", "b"], ["h_next"]),
                             *_reduce(h="h")])  # y from h_{t-1}: not the recurrence's readout
    assert ssm.match_diagonal_recurrence(reads_old_state) is None


def test_rewrite_needs_a_forward_scan_over_static_shapes():
    body = _body([helper.make_node("Mul", ["h", "a"], ["ha"]), helper.make_node("Add", ["ha", "b"], ["h_next"]),
                  *_reduce()])
    scan = helper.make_node("Scan", ["h0", "A", "B", "C"], ["last", "ys"], num_scan_inputs=3, body=body)
    shapes = {"h0": [D, N], "A": [5, D, N], "B": [5, D, N], "C": [5, N]}
    [node] = ssm.rewrite_scan(scan, shapes)
    assert (node.domain, node.op_type, list(node.input), list(node.output)) == \
        (ssm.DOMAIN, ssm.DIAGONAL_SCAN, ["h0", "A", "B", "C"], ["last", "ys"])
    backward = helper.make_node("Scan", ["h0", "A", "B", "C"], ["last", "ys"], num_scan_inputs=3, body=body,
                                scan_input_directions=[1, 1, 1])
    assert ssm.rewrite_scan(backward, shapes) is None
    assert ssm.rewrite_scan(scan, {**shapes, "C": [5, D, N]}) is None
