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
dataflow, so op order and operand order do not matter.

Mamba-2 and the other linear-attention recurrences carry a matrix state per head instead
(``LinearAttention``'s own function body is such a ``Scan``); those are matched by value (see
:func:`match_linear_attention`) and become ``ai.edgecc::LinearAttention``, the ONNX op under
edgecc's domain, which lowers to :func:`edgecc.schedules.ssm.linear_attention`. Anything else
is left to unrolling.
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


def rewrite_scan(node: onnx.NodeProto, shapes: dict, constant=lambda name: None, fresh=None,
                 opsets: dict | None = None) -> list[onnx.NodeProto] | None:
    """``node`` (a ``Scan``, forward in time along axis 0, static shapes; ``shapes``: name ->
    list of ints) as scan-kernel nodes when its body is a recurrence edgecc has a kernel for:
    one ``DiagonalScan``, or a ``LinearAttention`` (in :data:`DOMAIN`) between reshapes;
    else None. ``constant(name)``: an outer-scope constant's value (or None); ``fresh(hint)``:
    an unused value name; ``opsets``: the model's opset versions."""
    attrs = _attrs(node)
    body = attrs.get("body")
    if body is None:
        return None
    for key in ("scan_input_axes", "scan_input_directions", "scan_output_axes", "scan_output_directions"):
        if any(int(v) != 0 for v in attrs.get(key, [])):
            return None
    if attrs.get("num_scan_inputs") == 3 and len(node.input) == 4 and len(node.output) == 2:
        diagonal = _rewrite_diagonal(node, body, shapes)
        if diagonal is not None:
            return diagonal
    if fresh is None:
        return None
    return _rewrite_linear_attention(node, body, attrs["num_scan_inputs"], shapes, constant, fresh,
                                     opsets or {"": 27})


def _rewrite_diagonal(node: onnx.NodeProto, body: onnx.GraphProto, shapes: dict) -> list[onnx.NodeProto] | None:
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


# -- LinearAttention-shaped scans ------------------------------------------------------------
#
# ``LinearAttention``'s own ONNX function body, and an exporter writing the same recurrence,
# carry a matrix state ``S`` [.., H, d_k, d_v] through a ``Scan`` whose body is, per step,
#
#     S = S * exp(g_t)[.., None]                       (gated rules)
#     S = S + k_t^T (beta_t * (v_t - S^T k_t))         (delta rules; else S + k_t^T v_t)
#     o_t = scale * q_t S                              (GQA: a query head reads S of head // group)
#
# written in any of many op spellings (MatMul of unsqueezed vectors, Einsum, Mul + ReduceSum,
# transposes). Matching those spellings node by node would be brittle, so the match is by
# value: a body built only from real-analytic ops (:data:`ANALYTIC_OPS`) that agrees with the
# recurrence at random points is that recurrence (two analytic functions that differ do so
# almost everywhere). The candidates are the four update rules and the assignments of scan
# inputs to the roles q, k, v, g, beta that the shapes allow; the scale is fitted.

LINEAR_ATTENTION = "LinearAttention"  # emitted in DOMAIN, attributes as ONNX opset 27's op

ANALYTIC_OPS = frozenset({
    "Identity", "Constant", "Cast", "CastLike", "Shape", "Unsqueeze", "Squeeze", "Reshape", "Flatten",
    "Transpose", "Expand", "Tile", "Concat", "Gather", "Slice", "MatMul", "Gemm", "Einsum", "Mul", "Add",
    "Sub", "Div", "Neg", "Exp", "Sqrt", "Reciprocal", "ReduceSum"})
_PROBES = 2
_RTOL, _ATOL = 1e-4, 1e-5


def _outer_reads(body: onnx.GraphProto) -> list[str]:
    local = {v.name for v in body.input} | {t.name for t in body.initializer}
    reads = []
    for node in body.node:
        reads += [n for n in node.input if n and n not in local and n not in reads]
        local |= set(node.output)
    return reads


def _role_shapes(state: list, q_heads: int) -> dict:
    """Per role, the step shapes it may take for a state of shape ``state``."""
    *lead, heads, d_k, d_v = state
    return {"q": [[*lead, q_heads, d_k]], "k": [[*lead, heads, d_k]], "v": [[*lead, heads, d_v]],
            "decay": [[*lead, heads], [*lead, heads, 1], [*lead, heads, d_k]],
            "beta": [[*lead, heads], [*lead, heads, 1], [*lead, 1], [*lead, 1, 1]]}


def _step(rule: str, s, q, k, v, decay, beta):
    """The reference step in float64 on [B, H, ...] arrays: ``(S_next, o)`` without scale;
    ``decay`` [B, H, 1 | d_k], ``beta`` [B, H | 1, 1]."""
    if rule in ("gated", "gated_delta"):
        s = s * np.exp(decay)[..., None]
    if rule in ("delta", "gated_delta"):
        v = beta * (v - np.einsum("bhkv,bhk->bhv", s, k))
    s = s + k[..., None] * v[..., None, :]
    group = q.shape[1] // s.shape[1]
    return s, np.einsum("bhk,bhkv->bhv", q, np.repeat(s, group, axis=1))


def _candidates(scan_shapes: list, state: list):
    """``(rule, roles)`` pairs the shapes allow: roles maps q, k, v (decay, beta) to scan input
    positions."""
    import itertools

    rules = {3: ("linear",), 4: ("gated", "delta"), 5: ("gated_delta",)}.get(len(scan_shapes), ())
    for rule in rules:
        names = ["q", "k", "v"] + (["decay"] if "gated" in rule else []) + (["beta"] if "delta" in rule else [])
        for order in itertools.permutations(range(len(names))):
            roles = {name: position for name, position in zip(names, order)}
            q_shape = scan_shapes[roles["q"]]
            if len(q_shape) != len(state) - 1 or q_shape[-2] % state[-3]:
                continue
            allowed = _role_shapes(state, q_shape[-2])
            if all(list(scan_shapes[p]) in allowed[name] for name, p in roles.items()):
                yield rule, roles


def match_linear_attention(body: onnx.GraphProto, state: list, scan_shapes: list, constant,
                           opsets: dict) -> dict | None:
    """For a ``Scan`` body with one state of shape ``state`` ([B, H, d_k, d_v] or [H, d_k, d_v])
    and step inputs of shapes ``scan_shapes``: ``{"rule", "roles", "scale"}`` when the body is
    a ``LinearAttention`` recurrence (see above), else None. ``constant(name)``: the value of
    an outer-scope name the body reads, or None."""
    from onnx.reference import ReferenceEvaluator

    if len(body.output) != 2 or len(body.input) != 1 + len(scan_shapes) or len(state) not in (3, 4):
        return None
    if any(n.op_type not in ANALYTIC_OPS or n.domain not in ("", "ai.onnx") for n in body.node):
        return None
    if any(v.type.tensor_type.elem_type not in (onnx.TensorProto.UNDEFINED, onnx.TensorProto.FLOAT)
           for v in body.input):
        return None  # float32 state and steps (an untyped body input takes the Scan input's type)
    candidates = list(_candidates(scan_shapes, state))
    outer = {name: constant(name) for name in _outer_reads(body)}
    if not candidates or any(value is None for value in outer.values()):
        return None
    value_info = helper.make_tensor_value_info
    graph = helper.make_graph(
        list(body.node), "step",
        [value_info(v.name, onnx.TensorProto.FLOAT, shape) for v, shape in zip(body.input, [state, *scan_shapes])],
        [value_info(v.name, onnx.TensorProto.FLOAT, None) for v in body.output],
        list(body.initializer) + [numpy_helper.from_array(np.asarray(a), n) for n, a in outer.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()])
    rng = np.random.default_rng(0)
    probes = []
    for _ in range(_PROBES):
        s = rng.standard_normal(state) * 0.5
        xs = [rng.standard_normal(shape) for shape in scan_shapes]
        try:
            got = ReferenceEvaluator(model).run(None, {v.name: a.astype(np.float32)
                                                       for v, a in zip(body.input, [s, *xs])})
        except Exception:  # the reference lacks an op or the body is ill-formed: no match
            return None
        probes.append((s, xs, [np.asarray(g, np.float64) for g in got]))
    for rule, roles in candidates:
        scale = _fits(rule, roles, state, probes)
        if scale is not None:
            return {"rule": rule, "roles": roles, "scale": scale}
    return None


def _fits(rule: str, roles: dict, state: list, probes: list) -> float | None:
    """The scale with which the probes' outputs equal ``rule``'s step under ``roles``, or None."""
    batched = len(state) == 4
    scale = None
    for s, xs, (s_next, out) in probes:
        args = {name: xs[p] if batched else xs[p][None] for name, p in roles.items()}
        if "decay" in args:  # [B, H], [B, H, 1] or [B, H, d_k]
            args["decay"] = args["decay"].reshape(*args["decay"].shape[:2], -1)
        if "beta" in args:  # [B, H | 1 (, 1)]
            args["beta"] = args["beta"].reshape(args["beta"].shape[0], -1, 1)
        s_want, o_want = _step(rule, s if batched else s[None], args["q"], args["k"], args["v"],
                               args.get("decay"), args.get("beta"))
        if s_next.shape != tuple(state) or out.shape != (*state[:-3], args["q"].shape[1], state[-1]):
            return None  # the rewrite's reshapes assume these layouts
        if not np.allclose(s_next.reshape(s_want.shape), s_want, _RTOL, _ATOL):
            return None
        out = out.reshape(o_want.shape)
        fitted = float(out.ravel() @ o_want.ravel() / max(o_want.ravel() @ o_want.ravel(), 1e-30))
        if not np.isfinite(fitted) or fitted == 0.0 or not np.allclose(out, fitted * o_want, _RTOL, _ATOL):
            return None
        if scale is not None and not np.isclose(scale, fitted, _RTOL):
            return None
        scale = fitted
    return scale


def _rewrite_linear_attention(node, body, num_scan_inputs, shapes, constant, fresh, opsets):
    """The ``Scan`` as reshapes of its time-major step inputs into ``LinearAttention``'s
    [B, T, H * d] layout, the op, and reshapes back; or None."""
    if len(node.input) != 1 + num_scan_inputs or len(node.output) != 2 or not node.input[0]:
        return None
    state = shapes.get(node.input[0])
    scans = [shapes.get(name) for name in node.input[1:]]
    if state is None or any(s is None or len(s) < 2 for s in scans) or len({s[0] for s in scans}) != 1:
        return None
    steps = scans[0][0]
    match = match_linear_attention(body, list(state), [list(s[1:]) for s in scans], constant, opsets)
    if match is None:
        return None
    *lead, heads, d_k, d_v = state
    batch = lead[0] if lead else 1
    q_heads = scans[match["roles"]["q"]][-2]
    nodes = []

    def op(op_type, inputs, hint, out=None, **attrs):
        out = out or fresh(hint)
        nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def shape(values):
        name = fresh("shape")
        nodes.append(helper.make_node("Constant", [], [name],
                                      value=numpy_helper.from_array(np.array(values, np.int64), name)))
        return name

    def batch_major(name):  # [T, (B,) H, ...] -> [B, T, H * ...]
        if batch > 1:
            name = op("Transpose", [name], name + "_bt", perm=[1, 0, *range(2, len(shapes[name]))])
        return op("Reshape", [name, shape([batch, steps, -1])], name + "_flat")

    args = {role: batch_major(node.input[1 + p]) for role, p in match["roles"].items()}
    past = op("Reshape", [node.input[0], shape([batch, heads, d_k, d_v])], "past_state")
    inputs = [args["q"], args["k"], args["v"], past, args.get("decay", ""), args.get("beta", "")]
    while not inputs[-1]:
        inputs.pop()
    output, present = fresh("output"), fresh("present_state")
    nodes.append(helper.make_node(LINEAR_ATTENTION, inputs, [output, present], domain=DOMAIN,
                                  name=node.name or "linear_attention", q_num_heads=q_heads, kv_num_heads=heads,
                                  update_rule=match["rule"], scale=match["scale"]))
    if node.output[0]:
        op("Reshape", [present, shape(state)], "state", out=node.output[0])
    if node.output[1]:
        if batch > 1:
            per_head = op("Reshape", [output, shape([batch, steps, q_heads, d_v])], "output_heads")
            op("Transpose", [per_head], "output", out=node.output[1], perm=[1, 0, 2, 3])
        else:
            op("Reshape", [output, shape([steps, *lead, q_heads, d_v])], "output", out=node.output[1])
    return nodes
