"""edgecc.passes.ssm: which Scan bodies are diagonal recurrences, and the rewrite."""

from __future__ import annotations

import numpy as np
import pytest
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


# -- LinearAttention-shaped bodies: state [H, d_k, d_v], steps q, k [H, d_k], v [H, d_v], g [H, 1]
H, DK, DV = 2, 4, 3


def _la_body(nodes, inputs=("s", "q", "k", "v", "g"), out="o"):
    value = helper.make_tensor_value_info
    shapes = {"s": [H, DK, DV], "q": [H, DK], "k": [H, DK], "v": [H, DV], "g": [H, 1]}
    return helper.make_graph(
        nodes, "body", [value(n, TensorProto.FLOAT, shapes[n]) for n in inputs],
        [value("s_next", TensorProto.FLOAT, [H, DK, DV]), value(out, TensorProto.FLOAT, [H, DV])],
        [numpy_helper.from_array(np.array([-1], np.int64), "last")])


def _gated(decay="factor3", read="s_next", extra=()):
    return [helper.make_node("Exp", ["g"], ["factor"]), helper.make_node("Unsqueeze", ["factor", "last"], ["factor3"]),
            helper.make_node("Mul", ["s", decay], ["kept"]),
            helper.make_node("Einsum", ["k", "v"], ["written"], equation="hk,hv->hkv"),
            helper.make_node("Add", ["kept", "written"], ["s_next"]),
            helper.make_node("Einsum", [read, "q"], ["o"], equation="hkv,hk->hv"), *extra]


def _match(body, scans=([H, DK], [H, DK], [H, DV], [H, 1]), scale_of=lambda name: None):
    return ssm.match_linear_attention(body, [H, DK, DV], [list(s) for s in scans], scale_of, {"": 17})


def test_linear_attention_body_matches_with_its_roles_and_scale():
    match = _match(_la_body(_gated()))
    assert (match["rule"], match["roles"]) == ("gated", {"q": 0, "k": 1, "v": 2, "decay": 3})
    assert match["scale"] == pytest.approx(1.0)
    swapped = _match(_la_body(_gated(), inputs=("s", "k", "q", "v", "g")))  # k first among the steps
    assert swapped["roles"] == {"q": 1, "k": 0, "v": 2, "decay": 3}
    scaled = _la_body([*_gated()[:-1], helper.make_node("Einsum", ["s_next", "q"], ["read"], equation="hkv,hk->hv"),
                       helper.make_node("Mul", ["read", "half"], ["o"])])
    half = {"half": np.array(0.5, np.float32)}  # an outer-scope constant
    assert _match(scaled, scale_of=half.get)["scale"] == pytest.approx(0.5)
    assert _match(scaled) is None  # the outer value is unknown: no match


def test_other_linear_attention_like_bodies_are_left_alone():
    assert _match(_la_body(_gated(decay="g"))) is None          # decays by g, not exp(g)
    assert _match(_la_body(_gated(read="s"))) is None           # reads the state before the update
    relu = _la_body(_gated(extra=[helper.make_node("Relu", ["o"], ["o_relu"])]), out="o_relu")
    assert _match(relu) is None                                 # not an analytic op: not matched by value
    assert _match(_la_body(_gated()), scans=([H, DK], [H, DK], [H, DV], [H, 2])) is None  # no decay shape
