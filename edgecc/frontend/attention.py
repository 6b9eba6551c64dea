"""ONNX ``Attention`` (opset 23+) for the common case, without its function body's copies.

The function body repeats every key/value head ``q_num_heads / kv_num_heads`` times (GQA) and
transposes the keys before its matmul; over a decode step's KV cache those copies cost more
than the attention. Here the query heads sharing a key/value head are stacked as rows of one
matmul against that head (``[B, H_kv, G * T, D] @ K^T``), the causal mask is an index test
fused into the softmax's kernel, and nothing is repeated.

Taken: float32, 3-D (with ``q_num_heads``/``kv_num_heads``) or 4-D Q/K/V, optional
``past_key``/``past_value`` (outputs ``present_key``/``present_value``), ``is_causal``,
``scale``. Anything else (masks, ``nonpad_kv_seqlen``, ``softcap``, windows, the
``qk_matmul_output``) keeps the ONNX function body (:func:`takes`).
"""

from __future__ import annotations

import math

import onnx
from tvm import relax, te, tirx
from tvm.relax.frontend.onnx import onnx_frontend

from edgecc.passes.attention import MASK_ATTR, SCORES_ATTR

from .converters import register_converter

_PLAIN = {"softcap": 0.0, "qk_matmul_output_mode": 0, "left_window_size": -1, "right_window_size": -1}


def takes(node: onnx.NodeProto, rank: int | None, elem_type: int | None) -> bool:
    """Whether this converter computes ``node`` (an ONNX ``Attention``) exactly."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    inputs = list(node.input) + [""] * (7 - len(node.input))
    return (rank in (3, 4) and elem_type == onnx.TensorProto.FLOAT
            and all(attrs.get(k, v) == v for k, v in _PLAIN.items())
            and not inputs[3] and not inputs[6] and bool(inputs[4]) == bool(inputs[5])
            and (len(node.output) < 4 or not node.output[3])
            and (rank == 4 or ("q_num_heads" in attrs and "kv_num_heads" in attrs)))


def _dims(expr) -> list:
    return list(expr.ty.shape.values)


def _heads_first(bb, x, heads: int | None):
    """``[B, T, H * D]`` as ``[B, H, T, D]``; 4-D inputs are that already."""
    if heads is None:
        return x
    b, t, hd = _dims(x)
    return bb.emit(relax.op.permute_dims(relax.op.reshape(x, [b, t, heads, int(hd) // heads]), [0, 2, 1, 3]))


def _scores(rows: te.Tensor, keys: te.Tensor, scale: float) -> te.Tensor:
    """``scale * rows @ keys^T`` over ``[B, H, R, D]`` and ``[B, H, S, D]``, reading the keys
    in place (no transposed copy of a cache)."""
    d = te.reduce_axis((0, rows.shape[3]), name="d")
    return te.compute((rows.shape[0], rows.shape[1], rows.shape[2], keys.shape[2]),
                      lambda b, h, r, s: te.sum(rows[b, h, r, d] * keys[b, h, s, d] * tirx.const(scale, "float32"),
                                                axis=d), name="scores")


def _causal(scores: te.Tensor, steps: int, new_keys: int) -> te.Tensor:
    """Row ``r`` (query ``r mod steps``) sees key ``j`` iff ``j <= r mod steps + past``, the past
    being the cached keys before this call's ``new_keys`` (ONNX aligns the causal mask to the
    cache's end, not to the keys')."""
    past = scores.shape[-1] - new_keys
    low = tirx.const(-math.inf, "float32")
    return te.compute(scores.shape, lambda b, h, r, j: tirx.Select(j <= tirx.floormod(r, steps) + past,
                                                                   scores[b, h, r, j], low), name="causal")


@register_converter("Attention")
class Attention(onnx_frontend.Attention):
    """ONNX ``Attention`` as :mod:`this module <edgecc.frontend.attention>` describes;
    ``com.microsoft``'s contrib ``Attention`` (a ``num_heads`` attribute) stays TVM's."""

    @classmethod
    def _impl_v23(cls, bb, inputs, attr, params):
        if "num_heads" in attr:
            return super()._impl_v1(bb, inputs, attr, params)
        q, k, v = inputs[0], inputs[1], inputs[2]
        past_key, past_value = (inputs[i] if len(inputs) > i else None for i in (4, 5))
        three_d = len(_dims(q)) == 3
        hq = int(attr["q_num_heads"]) if three_d else int(_dims(q)[1])
        hk = int(attr["kv_num_heads"]) if three_d else int(_dims(k)[1])
        q4 = _heads_first(bb, q, hq if three_d else None)
        k4 = _heads_first(bb, k, hk if three_d else None)
        v4 = _heads_first(bb, v, hk if three_d else None)
        new_keys = int(_dims(k4)[2])
        if past_key is not None:
            k4 = bb.emit(relax.op.concat([past_key, k4], axis=2))
            v4 = bb.emit(relax.op.concat([past_value, v4], axis=2))
        batch, _, steps, depth = _dims(q4)
        group = hq // hk
        scale = float(attr.get("scale", 0.0)) or 1.0 / math.sqrt(int(depth))
        rows = bb.emit(relax.op.reshape(q4, [batch, hk, group * int(steps), depth]))  # a kv head's queries
        if isinstance(_dims(k4)[2], tirx.IntImm):
            scores = relax.op.matmul(rows, relax.op.permute_dims(k4, [0, 1, 3, 2]))
            scores = bb.emit(relax.op.multiply(scores, relax.const(scale, "float32")))
        else:  # a KV cache of run-time length: dot products with the cached keys as they lie
            # (edgecc.passes.attention makes the chain from here to the values one kernel on CPUs)
            scores = bb.emit_te(_scores, rows, k4, scale, primfunc_name_hint="attention_scores",
                                primfunc_attrs={SCORES_ATTR: {"scale": scale}})
        if int(attr.get("is_causal", 0)):
            scores = bb.emit_te(_causal, scores, int(steps), new_keys, primfunc_name_hint="causal_mask",
                                primfunc_attrs={MASK_ATTR: {"steps": int(steps), "new_keys": new_keys}})
        weights = bb.emit(relax.op.nn.softmax(scores, axis=-1))
        out = bb.emit(relax.op.matmul(weights, v4))  # [B, H_kv, G * T, Dv]
        dv = _dims(out)[3]
        out = bb.emit(relax.op.reshape(out, [batch, hq, steps, dv]))
        if three_d:
            out = bb.emit(relax.op.reshape(relax.op.permute_dims(out, [0, 2, 1, 3]), [batch, steps, hq * int(dv)]))
        return relax.Tuple([out, k4, v4])

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        return super()._impl_v1(bb, inputs, attr, params)
