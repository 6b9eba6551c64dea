"""State-space scans written as ONNX ``Scan`` loops, recognised and rewritten to scan kernels.

An exporter without a scan op writes Mamba's recurrence as a ``Scan`` over time whose body is

    h_next = h_prev * a_t + b_t            (elementwise, h [D, N]; Mul/Add in either order)
    y_t    = ReduceSum(h_next * c_t, axes=[-1], keepdims=0)     (c_t [N])

with ``a = exp(dt * A)`` and ``b = dt * x * B`` computed for every step before the loop. Left
alone, edgecc would unroll it (one copy of the body per step, up to
:data:`edgecc.frontend.simplify.UNROLL_LIMIT`), and ONNX Runtime runs it as a loop of tiny ops.
:func:`rewrite_scan` turns such a node into ``ai.edgecc::DiagonalScan`` (edgecc-internal:
inputs ``h0, a, b, c``, outputs ``h_last, y``), which lowers to one
:func:`edgecc.schedules.ssm.diagonal_scan` kernel. The match is structural, on the body's
dataflow, so op order and operand order do not matter; anything else is left to unrolling.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

DOMAIN = "ai.edgecc"
DIAGONAL_SCAN = "DiagonalScan"


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _body_constant(body: onnx.GraphProto, producers: dict, name: str) -> np.ndarray | None:
    for init in body.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    node = producers.get(name)
    if node is not None and node.op_type == "Constant":
        return numpy_helper.to_array(_attrs(node)["value"])
    return None


def match_diagonal_recurrence(body: onnx.GraphProto) -> tuple[int, int, int] | None:
    """For a ``Scan`` body with one state and three scan inputs: ``(a, b, c)``, the positions
    (0-2) among the scan inputs of the decay, the drive and the readout, when the body computes
    ``h * a + b`` and ``sum(h_next * c, -1)``; else None."""
    if len(body.input) != 4 or len(body.output) != 2:
        return None
    producers = {}
    for node in body.node:
        for out in node.output:
            producers[out] = node

    def through_identity(name):
        while name in producers and producers[name].op_type == "Identity":
            name = producers[name].input[0]
        return name

    state, scans = body.input[0].name, [v.name for v in body.input[1:]]
    h_next = through_identity(body.output[0].name)
    add = producers.get(h_next)
    if add is None or add.op_type != "Add":
        return None
    for mul_name, drive in (add.input, add.input[::-1]):
        mul = producers.get(through_identity(mul_name))
        drive = through_identity(drive)
        if mul is None or mul.op_type != "Mul" or drive not in scans:
            continue
        operands = [through_identity(n) for n in mul.input]
        if state not in operands:
            continue
        decay = operands[1 - operands.index(state)]
        if decay not in scans or decay == drive:
            continue
        readout = _readout(body, producers, through_identity, h_next, scans)
        if readout is None or readout in (decay, drive):
            continue
        return scans.index(decay), scans.index(drive), scans.index(readout)
    return None


def _readout(body, producers, through_identity, h_next, scans) -> str | None:
    """The scan input ``c`` of ``y_t = ReduceSum(h_next * c, axes=[-1], keepdims=0)``."""
    reduce = producers.get(through_identity(body.output[1].name))
    if reduce is None or reduce.op_type != "ReduceSum":
        return None
    attrs = _attrs(reduce)
    if attrs.get("keepdims", 1) != 0:
        return None
    axes = attrs.get("axes")
    if axes is None and len(reduce.input) > 1:
        axes = _body_constant(body, producers, reduce.input[1])
    if axes is None or [int(a) for a in np.asarray(axes).reshape(-1)] not in ([-1], [1]):
        return None
    mul = producers.get(through_identity(reduce.input[0]))
    if mul is None or mul.op_type != "Mul":
        return None
    operands = [through_identity(n) for n in mul.input]
    if h_next not in operands:
        return None
    readout = operands[1 - operands.index(h_next)]
    return readout if readout in scans else None


def rewrite_scan(node: onnx.NodeProto, shapes: dict) -> list[onnx.NodeProto] | None:
    """``node`` (a ``Scan``) as one ``DiagonalScan`` node when its body is a diagonal
    recurrence over a ``[D, N]`` state, forward in time along axis 0, with static shapes
    (``shapes``: name -> list of ints); else None."""
    attrs = _attrs(node)
    body = attrs.get("body")
    if body is None or attrs.get("num_scan_inputs") != 3 or len(node.input) != 4 or len(node.output) != 2:
        return None
    for key in ("scan_input_axes", "scan_input_directions", "scan_output_axes", "scan_output_directions"):
        if any(int(v) != 0 for v in attrs.get(key, [])):
            return None
    roles = match_diagonal_recurrence(body)
    if roles is None:
        return None
    h0, scan_inputs = node.input[0], list(node.input[1:])
    a, b, c = (scan_inputs[i] for i in roles)
    state, sa, sb, sc = (shapes.get(n) for n in (h0, a, b, c))
    if state is None or len(state) != 2 or sa is None or sb is None or sc is None:
        return None
    steps = sa[0]
    if list(sa) != [steps, *state] or list(sb) != [steps, *state] or list(sc) != [steps, state[1]]:
        return None
    return [helper.make_node(DIAGONAL_SCAN, [h0, a, b, c], list(node.output), name=node.name or "diagonal_scan",
                             domain=DOMAIN)]
