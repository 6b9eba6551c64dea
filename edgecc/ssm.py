"""Mamba-1's selective scan as an ONNX custom op, ``ai.edgecc::SelectiveScan`` (version 1):
its definition, a NumPy reference, and helpers that write it into ONNX models, either as the
op or as the same recurrence in an ONNX ``Scan`` loop (what an exporter without the op writes).

Semantics (``B`` batch, ``L`` time steps, ``D`` channels, ``N`` state size; all float)::

    inputs   x [B, L, D]   delta [B, L, D]   A [D, N]   B [B, L, N]   C [B, L, N]
             D [D] (opt)   z [B, L, D] (opt)   delta_bias [D] (opt)   initial_state [B, D, N] (opt)
    attrs    delta_softplus: int, default 0
    outputs  y [B, L, D]   final_state [B, D, N]

    dt[b, t, d] = delta[b, t, d] + delta_bias[d]              (delta_bias absent: + 0)
    dt = log(1 + exp(dt))                                     (only if delta_softplus)
    h[b, -1] = initial_state[b]                               (absent: zeros)
    h[b, t, d, n] = exp(dt[b, t, d] * A[d, n]) * h[b, t-1, d, n] + dt[b, t, d] * B[b, t, n] * x[b, t, d]
    y[b, t, d] = sum_n C[b, t, n] * h[b, t, d, n] + D[d] * x[b, t, d]      (D absent: + 0)
    y[b, t, d] *= z[b, t, d] * sigmoid(z[b, t, d])                          (only if z is given)
    final_state[b] = h[b, L-1]

This is ``selective_scan_fn`` of the Mamba reference implementation with its ``(B, D, L)``
tensors stored time-major (``(B, L, D)``, as the projections around it produce them), one
``B``/``C`` group, and real-valued ``A``. Shapes: ``L`` may be symbolic; ``D`` and ``N`` static.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

DOMAIN = "ai.edgecc"
OPSET = helper.make_opsetid(DOMAIN, 1)
INPUTS = ("x", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


def selective_scan_reference(x, delta, a, b, c, d=None, z=None, delta_bias=None, initial_state=None,
                             delta_softplus=False):
    """NumPy reference of ``SelectiveScan``: ``(y, final_state)``, computed in float64."""
    x, delta, a, b, c = (np.asarray(t, np.float64) for t in (x, delta, a, b, c))
    dt = delta + (0.0 if delta_bias is None else np.asarray(delta_bias, np.float64))
    if delta_softplus:
        dt = np.logaddexp(0.0, dt)
    batch, steps, channels = x.shape
    h = np.zeros((batch, channels, a.shape[1])) if initial_state is None else np.array(initial_state, np.float64)
    y = np.empty_like(x)
    for t in range(steps):
        h = np.exp(dt[:, t, :, None] * a) * h + (dt[:, t] * x[:, t])[:, :, None] * b[:, t, None, :]
        y[:, t] = np.einsum("bdn,bn->bd", h, c[:, t])
    if d is not None:
        y += np.asarray(d, np.float64) * x
    if z is not None:
        z = np.asarray(z, np.float64)
        y *= z / (1.0 + np.exp(-z))
    return y.astype(np.float32), h.astype(np.float32)


def selective_scan_node(inputs: dict[str, str], outputs=("y", "final_state"), delta_softplus=False,
                        name="selective_scan") -> onnx.NodeProto:
    """A ``SelectiveScan`` node; ``inputs`` maps :data:`INPUTS` names (x, delta, A, B, C
    required) to tensor names. Add :data:`OPSET` to the model's opset imports."""
    missing = [k for k in INPUTS[:5] if k not in inputs]
    if missing:
        raise ValueError(f"SelectiveScan needs {', '.join(missing)}")
    names = [inputs.get(k, "") for k in INPUTS]
    while names[-1] == "":
        names.pop()
    return helper.make_node("SelectiveScan", names, list(outputs), name=name, domain=DOMAIN,
                            delta_softplus=int(delta_softplus))


def selective_scan_model(steps, channels: int, state: int, skip=True, gate=True, delta_bias=True,
                         initial_state=False, delta_softplus=True, as_scan=False, seed=0) -> onnx.ModelProto:
    """A model computing one selective scan over its inputs (``A``, ``D``, ``delta_bias`` as
    seeded weights): the op itself, or with ``as_scan`` the recurrence as an ONNX ``Scan``
    (opset 21) over precomputed per-step terms, the form an exporter without the op writes."""
    rng = np.random.default_rng(seed)
    a = -np.exp(rng.uniform(np.log(1.0), np.log(16.0), (channels, state))).astype(np.float32)  # Mamba's S4D-real init
    weights = {"A": a}
    if skip:
        weights["D"] = rng.standard_normal(channels).astype(np.float32)
    if delta_bias:
        weights["delta_bias"] = rng.uniform(-4.0, -2.0, channels).astype(np.float32)
    value = helper.make_tensor_value_info
    seq = [value(k, TensorProto.FLOAT, [1, steps, channels]) for k in ("x", "delta")]
    seq += [value(k, TensorProto.FLOAT, [1, steps, state]) for k in ("B", "C")]
    if gate:
        seq.append(value("z", TensorProto.FLOAT, [1, steps, channels]))
    if initial_state:
        seq.append(value("initial_state", TensorProto.FLOAT, [1, channels, state]))
    outs = [value("y", TensorProto.FLOAT, [1, steps, channels]),
            value("final_state", TensorProto.FLOAT, [1, channels, state])]
    inits = [onnx.numpy_helper.from_array(w, k) for k, w in weights.items()]
    names = {k: k for k in INPUTS if k in weights or any(v.name == k for v in seq)}
    if as_scan:
        nodes = _scan_nodes(names, channels, state, delta_softplus, initial_state)
        opsets = [helper.make_opsetid("", 21)]
    else:
        nodes = [selective_scan_node(names, delta_softplus=delta_softplus)]
        opsets = [helper.make_opsetid("", 21), OPSET]
    graph = helper.make_graph(nodes, "selective_scan", seq, outs, inits)
    return helper.make_model(graph, opset_imports=opsets, ir_version=10)


def _scan_nodes(names: dict, channels: int, state: int, softplus: bool, has_initial: bool) -> list:
    """The recurrence as ONNX ops: per-step decay ``exp(dt * A)`` and input ``dt * x * B``
    computed for every step up front, a ``Scan`` carrying ``h`` ``[D, N]`` over time (batch 1),
    then the skip and gate on the whole sequence."""
    n = helper.make_node
    nodes = []
    dt = "dt"
    if "delta_bias" in names:
        nodes.append(n("Add", [names["delta"], names["delta_bias"]], ["dt_biased"]))
        source = "dt_biased"
    else:
        source = names["delta"]
    nodes.append(n("Softplus", [source], [dt]) if softplus else n("Identity", [source], [dt]))
    for axis in (0, 1, -1):
        nodes.append(n("Constant", [], [f"axis{axis}"],
                       value=onnx.numpy_helper.from_array(np.array([axis], np.int64), f"axis{axis}")))
    nodes += [n("Squeeze", [dt, "axis0"], ["dt0"]),                               # [L, D]
              n("Unsqueeze", ["dt0", "axis-1"], ["dt3"]),                         # [L, D, 1]
              n("Mul", ["dt3", names["A"]], ["dtA"]), n("Exp", ["dtA"], ["decay"]),  # [L, D, N]
              n("Squeeze", [names["x"], "axis0"], ["x0"]),
              n("Mul", ["dt0", "x0"], ["dtx"]), n("Unsqueeze", ["dtx", "axis-1"], ["dtx3"]),
              n("Squeeze", [names["B"], "axis0"], ["b0"]), n("Unsqueeze", ["b0", "axis1"], ["b_bcast"])]
    nodes += [n("Mul", ["dtx3", "b_bcast"], ["drive"]),                   # [L, D, N]
              n("Squeeze", [names["C"], "axis0"], ["c0"])]                # [L, N]
    if has_initial:
        nodes.append(n("Squeeze", [names["initial_state"], "axis0"], ["h0"]))
    else:
        zeros = onnx.numpy_helper.from_array(np.zeros((channels, state), np.float32), "h_zero")
        nodes.append(n("Constant", [], ["h0"], value=zeros))
    value = helper.make_tensor_value_info
    body = helper.make_graph(
        [n("Mul", ["h_prev", "decay_t"], ["h_decayed"]), n("Add", ["h_decayed", "drive_t"], ["h_next"]),
         n("Mul", ["h_next", "c_t"], ["hc"]),
         n("ReduceSum", ["hc", "body_axis"], ["y_t"], keepdims=0)],
        "selective_scan_step",
        [value("h_prev", TensorProto.FLOAT, [channels, state]), value("decay_t", TensorProto.FLOAT, [channels, state]),
         value("drive_t", TensorProto.FLOAT, [channels, state]), value("c_t", TensorProto.FLOAT, [state])],
        [value("h_next", TensorProto.FLOAT, [channels, state]), value("y_t", TensorProto.FLOAT, [channels])],
        [onnx.numpy_helper.from_array(np.array([-1], np.int64), "body_axis")])
    nodes += [n("Scan", ["h0", "decay", "drive", "c0"], ["h_last", "y_seq"], num_scan_inputs=3, body=body),
              n("Unsqueeze", ["h_last", "axis0"], ["final_state"]),
              n("Unsqueeze", ["y_seq", "axis0"], ["y_ssm"])]
    y = "y_ssm"
    if "D" in names:
        nodes += [n("Mul", [names["x"], names["D"]], ["x_skip"]), n("Add", [y, "x_skip"], ["y_skipped"])]
        y = "y_skipped"
    if "z" in names:
        nodes += [n("Sigmoid", [names["z"]], ["z_sig"]), n("Mul", [names["z"], "z_sig"], ["z_silu"])]
        nodes.append(n("Mul", [y, "z_silu"], ["y"]))
    else:
        nodes.append(n("Identity", [y], ["y"]))
    return nodes


def selective_scan_inputs(model: onnx.ModelProto, seed=0) -> dict[str, np.ndarray]:
    """Seeded inputs for :func:`selective_scan_model`, in Mamba's ranges (``delta`` before
    its bias and softplus, ``B``/``C``/``x``/``z`` standard normal)."""
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for value in model.graph.input:
        if value.name in inits:
            continue
        shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
        sample = rng.uniform(0.0, 1.0, shape) if value.name == "delta" else rng.standard_normal(shape)
        feeds[value.name] = sample.astype(np.float32)
    return feeds


def linear_attention_model(rule: str, steps, q_heads: int, kv_heads: int, d_k: int, d_v: int,
                           past=True, decay="head", beta="head", scale=0.0, chunk_size=None,
                           as_scan=False) -> onnx.ModelProto:
    """One ONNX ``LinearAttention`` (opset 27) over graph inputs ``query``, ``key``,
    ``value`` (and ``past_state``, ``decay``, ``beta`` as the rule needs); ``decay`` is
    ``head`` ([B, T, H_kv]) or ``key`` ([B, T, H_kv * d_k]), ``beta`` ``head`` or ``one``;
    ``chunk_size`` set on the node when given. ``as_scan``: the op's ONNX function body in its
    place (what ONNX Runtime runs, a ``Scan`` over time; the form an exporter writes)."""
    value = helper.make_tensor_value_info
    gated, delta = rule in ("gated", "gated_delta"), rule in ("delta", "gated_delta")
    inputs = [value("query", TensorProto.FLOAT, [1, steps, q_heads * d_k]),
              value("key", TensorProto.FLOAT, [1, steps, kv_heads * d_k]),
              value("value", TensorProto.FLOAT, [1, steps, kv_heads * d_v])]
    names = ["query", "key", "value", "past_state" if past else ""]
    if past:
        inputs.append(value("past_state", TensorProto.FLOAT, [1, kv_heads, d_k, d_v]))
    names.append("decay" if gated else "")
    if gated:
        inputs.append(value("decay", TensorProto.FLOAT, [1, steps, kv_heads * (d_k if decay == "key" else 1)]))
    if delta:
        names.append("beta")
        inputs.append(value("beta", TensorProto.FLOAT, [1, steps, kv_heads if beta == "head" else 1]))
    while names[-1] == "":
        names.pop()
    extra = {} if chunk_size is None else {"chunk_size": int(chunk_size)}
    node = helper.make_node("LinearAttention", names, ["output", "present_state"], q_num_heads=q_heads,
                            kv_num_heads=kv_heads, update_rule=rule, scale=float(scale), **extra)
    outputs = [value("output", TensorProto.FLOAT, [1, steps, q_heads * d_v]),
               value("present_state", TensorProto.FLOAT, [1, kv_heads, d_k, d_v])]
    graph = helper.make_graph([node], f"linear_attention_{rule}", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 27)], ir_version=11)
    return _inline_function(model) if as_scan else model


def _inline_function(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its one node replaced by that node's ONNX function body (the schema's
    context-dependent function, built for the node's attributes and input types)."""
    import onnx.inliner

    [node] = model.graph.node
    types = {v.name: v.type.SerializeToString() for v in model.graph.input}
    schema = onnx.defs.get_schema(node.op_type, model.opset_import[0].version, node.domain)
    function = onnx.FunctionProto.FromString(schema.get_context_dependent_function(
        node.SerializeToString(), [types.get(name, onnx.TypeProto().SerializeToString()) for name in node.input]))
    function.domain, function.name = "local", node.op_type
    call = helper.make_node(node.op_type, list(node.input), list(node.output), domain="local")
    graph = helper.make_graph([call], model.graph.name, list(model.graph.input), list(model.graph.output))
    wrapped = helper.make_model(graph, opset_imports=[*model.opset_import, helper.make_opsetid("local", 1)],
                                ir_version=model.ir_version, functions=[function])
    inlined = onnx.inliner.inline_local_functions(wrapped)
    del inlined.opset_import[:]
    inlined.opset_import.extend(model.opset_import)
    return inlined


def linear_attention_inputs(model: onnx.ModelProto, seed=0) -> dict[str, np.ndarray]:
    """Seeded inputs in the ranges the update rules expect: L2-normalised keys per head,
    decays ``log(u)`` for ``u`` in [0.8, 1), ``beta`` in (0, 1)."""
    rng = np.random.default_rng(seed)
    node = next(n for n in model.graph.node if n.op_type == "LinearAttention")
    kv_heads = next(a.i for a in node.attribute if a.name == "kv_num_heads")
    feeds = {}
    for value in model.graph.input:
        shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
        if value.name == "decay":
            sample = np.log(rng.uniform(0.8, 1.0, shape))
        elif value.name == "beta":
            sample = rng.uniform(0.05, 0.95, shape)
        elif value.name == "key":
            sample = rng.standard_normal(shape).reshape(*shape[:2], kv_heads, -1)
            sample = (sample / np.linalg.norm(sample, axis=-1, keepdims=True)).reshape(shape)
        else:
            sample = rng.standard_normal(shape) * (0.5 if value.name == "past_state" else 1.0)
        feeds[value.name] = sample.astype(np.float32)
    return feeds
