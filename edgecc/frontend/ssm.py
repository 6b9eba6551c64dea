"""State-space ops: ONNX ``LinearAttention`` and ``CausalConvWithState`` (opset 27) and
edgecc's ``ai.edgecc::SelectiveScan`` (Mamba-1; :mod:`edgecc.ssm` defines it).

``LinearAttention`` and ``SelectiveScan`` become one call each of a fused scan kernel
(:mod:`edgecc.schedules.ssm`), computed in float32; other float types are cast around it.
``CausalConvWithState`` is an injective expression (the ``k`` taps unrolled, ``past_state``
read in place of the left padding), so the ops around it fuse into the same kernel.
"""

from __future__ import annotations

import tvm
from tvm import relax, te, tirx
from tvm.relax.frontend.onnx import onnx_frontend
from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter

from .converters import register_converter


def _dtype(expr) -> str:
    return str(expr.ty.dtype.dtype)


def _dims(expr) -> list:
    return list(expr.ty.shape.values)


def _static(dim, what: str) -> int:
    if not isinstance(dim, (int, tirx.IntImm)):
        raise ValueError(f"{what} must be static, got {dim}")
    return int(dim)


def _int_or_none(dim) -> int | None:
    return int(dim) if isinstance(dim, (int, tirx.IntImm)) else None


def _f32(bb, expr):
    return expr if _dtype(expr) == "float32" else bb.emit(relax.op.astype(expr, "float32"))


def _text(value, default: str) -> str:
    if value is None:
        return default
    return value.decode() if isinstance(value, bytes) else str(value)




def _dummy(rank: int):
    import numpy as np

    return relax.const(np.zeros((1,) * rank, np.float32))


@register_converter("LinearAttention", domain="ai.edgecc")
@register_converter("LinearAttention")
class LinearAttention(OnnxOpConverter):
    """``LinearAttention`` (opset 27): every ``update_rule``, GQA, per-head or per-key-dim
    decay, per-head or scalar ``beta``, with or without ``past_state``; as one
    :func:`edgecc.schedules.ssm.linear_attention` kernel. ``ai.edgecc::LinearAttention`` is
    the same op, edgecc-internal: what :mod:`edgecc.passes.ssm` writes for a ``Scan`` it
    recognises, in models of any opset."""

    @classmethod
    def _impl_v27(cls, bb, inputs, attr, params):
        from edgecc.schedules import ssm

        query, key, value = inputs[0], inputs[1], inputs[2]
        past, decay, beta = (inputs[i] if len(inputs) > i else None for i in (3, 4, 5))
        rule = _text(attr.get("update_rule"), "gated_delta")
        if rule not in ssm.RULES:
            raise ValueError(f"LinearAttention: update_rule '{rule}' is not one of {', '.join(ssm.RULES)}")
        hq, hk = int(attr["q_num_heads"]), int(attr["kv_num_heads"])
        if hq <= 0 or hk <= 0 or hq % hk:
            raise ValueError(f"LinearAttention: q_num_heads {hq} must be a positive multiple of kv_num_heads {hk}")
        gated, delta = rule in ("gated", "gated_delta"), rule in ("delta", "gated_delta")
        if gated != (decay is not None) or delta != (beta is not None):
            raise ValueError(f"LinearAttention: update_rule '{rule}' "
                             f"{'needs' if gated else 'forbids'} decay and {'needs' if delta else 'forbids'} beta")
        d_k = _static(_dims(query)[2], "LinearAttention: query's last dim") // hq
        d_v = _static(_dims(value)[2], "LinearAttention: value's last dim") // hk
        decay_kind = "none"
        if decay is not None:
            width = _static(_dims(decay)[2], "LinearAttention: decay's last dim")
            decay_kind = "head" if width == hk else "key" if width == hk * d_k else None
            if decay_kind is None:
                raise ValueError(f"LinearAttention: decay's last dim {width} is neither kv_num_heads ({hk}) "
                                 f"nor kv_num_heads * d_k ({hk * d_k})")
        beta_kind = "none"
        if beta is not None:
            width = _static(_dims(beta)[2], "LinearAttention: beta's last dim")
            beta_kind = "head" if width == hk else "one" if width == 1 else None
            if beta_kind is None:
                raise ValueError(f"LinearAttention: beta's last dim {width} is neither kv_num_heads ({hk}) nor 1")
        chunk = int(attr.get("chunk_size", 0))  # set on the node: the kernel's chunk, up to ssm.MAX_CHUNK
        batch, steps = _dims(query)[0], _dims(query)[1]
        # Static shapes give the kernel its shape (what a tuned chunk is measured for).
        spec = ssm.LinearAttentionSpec(hq, hk, d_k, d_v, rule, float(attr.get("scale", 0.0)), decay_kind,
                                       beta_kind, past is not None, chunk if 0 < chunk <= ssm.MAX_CHUNK else 0,
                                       _int_or_none(batch), _int_or_none(steps))
        kernel = bb.add_func(ssm.linear_attention(spec), "linear_attention")
        args = [_f32(bb, query), _f32(bb, key), _f32(bb, value),
                _f32(bb, past) if past is not None else _dummy(4),
                _f32(bb, decay) if decay is not None else _dummy(3),
                _f32(bb, beta) if beta is not None else _dummy(3)]
        out = bb.emit(relax.call_tir(kernel, args, [
            relax.TensorType([batch, steps, hq * d_v], "float32"),
            relax.TensorType([batch, hk, d_k, d_v], "float32")]))
        output, state = bb.emit(relax.TupleGetItem(out, 0)), bb.emit(relax.TupleGetItem(out, 1))
        out_dtype, state_dtype = _dtype(query), _dtype(past) if past is not None else _dtype(query)
        if out_dtype != "float32":
            output = bb.emit(relax.op.astype(output, out_dtype))
        if state_dtype != "float32":
            state = bb.emit(relax.op.astype(state, state_dtype))
        return relax.Tuple([output, state])


def causal_conv(x: te.Tensor, weight: te.Tensor, bias: te.Tensor | None, past: te.Tensor | None,
                channels_last: bool = False):
    """``(output, present_state)`` of ``CausalConvWithState`` without its activation: the
    depthwise causal conv over ``concat(past or zeros, x)`` along time, taps unrolled.
    ``channels_last``: ``x`` and the output are ``[B, L, C]`` (the state stays ``[B, C, k-1]``)."""
    length = x.shape[1] if channels_last else x.shape[2]
    taps = int(weight.shape[2])

    def read(b, c, p):
        return x[b, p, c] if channels_last else x[b, c, p]

    def padded(b, c, p):  # position p of concat(past, x); p < taps - 1 reads the carried state
        zero = tirx.const(0, x.dtype)
        before = past[b, c, tirx.max(p, 0)] if past is not None else zero
        return tirx.if_then_else(p < taps - 1, before, read(b, c, tirx.max(p - (taps - 1), 0)))

    def conv(b, c, l):
        total = bias[c] if bias is not None else tirx.const(0, x.dtype)
        for j in range(taps):
            total = total + weight[c, 0, j] * padded(b, c, l + j)
        return total

    def carry(b, c, p):  # last taps - 1 positions of the padded sequence
        return padded(b, c, length + p)

    batch, channels = x.shape[0], x.shape[2] if channels_last else x.shape[1]
    output = te.compute(x.shape, (lambda b, l, c: conv(b, c, l)) if channels_last else conv, name="causal_conv")
    present = te.compute((batch, channels, taps - 1), carry, name="causal_conv_state")
    return output, present


def _transposed_from(bb, expr):
    """The ``[B, L, C]`` tensor ``expr`` is ``Transpose(perm=[0, 2, 1])`` of, else None."""
    value = bb.lookup_binding(expr) if isinstance(expr, relax.Var) else expr
    if isinstance(value, relax.Call) and value.op == tvm.ir.Op.get("relax.permute_dims") \
            and value.attrs.axes is not None and [int(a) for a in value.attrs.axes] == [0, 2, 1]:
        return value.args[0]
    return None


@register_converter("CausalConvWithState")
class CausalConvWithState(OnnxOpConverter):
    """``CausalConvWithState`` (opset 27), its SiLU/Swish fused."""

    @classmethod
    def _impl_v27(cls, bb, inputs, attr, params):
        x, weight = inputs[0], inputs[1]
        bias, past = (inputs[i] if len(inputs) > i else None for i in (2, 3))
        activation = _text(attr.get("activation"), "none")
        if activation not in ("none", "silu", "swish"):
            raise ValueError(f"CausalConvWithState: activation '{activation}' is not one of none, silu, swish")
        _static(_dims(weight)[2], "CausalConvWithState: the kernel size")
        dtype = _dtype(x)
        # Mamba's conv reads a projection's [B, L, C] output through a Transpose: read it in
        # place (the conv vectorises over channels), and hand back the output the same way, so
        # that the Transpose after it (see Transpose below) cancels.
        source = _transposed_from(bb, x)
        args = [_f32(bb, x if source is None else source), _f32(bb, weight)]
        args += [_f32(bb, t) for t in (bias, past) if t is not None]

        def compute(*tensors):
            x_, w_ = tensors[0], tensors[1]
            rest = list(tensors[2:])
            b_ = rest.pop(0) if bias is not None else None
            p_ = rest.pop(0) if past is not None else None
            return causal_conv(x_, w_, b_, p_, channels_last=source is not None)

        out = bb.emit_te(compute, *args, primfunc_name_hint="causal_conv")
        output, state = bb.emit(relax.TupleGetItem(out, 0)), bb.emit(relax.TupleGetItem(out, 1))
        if activation != "none":
            output = bb.emit(relax.op.nn.silu(output))
        if dtype != "float32":
            output = bb.emit(relax.op.astype(output, dtype))
            state = bb.emit(relax.op.astype(state, _dtype(past) if past is not None else dtype))
        if source is not None:
            output = bb.emit(relax.op.permute_dims(output, [0, 2, 1]))
        return relax.Tuple([output, state])


@register_converter("Transpose")
class Transpose(onnx_frontend.Transpose):
    """TVM's ``Transpose``, except that a transpose of a transpose is one (or none): how
    :class:`CausalConvWithState`'s channels-last output meets the model's Transpose back."""

    @classmethod
    def _impl_v13(cls, bb, inputs, attr, params):
        data, perm = inputs[0], attr.get("perm")
        value = bb.lookup_binding(data) if isinstance(data, relax.Var) else data
        if perm is not None and isinstance(value, relax.Call) and value.op == tvm.ir.Op.get("relax.permute_dims") \
                and value.attrs.axes is not None:
            inner = [int(a) for a in value.attrs.axes]
            axes = [inner[int(p)] for p in perm]
            return value.args[0] if axes == list(range(len(axes))) else relax.op.permute_dims(value.args[0], axes)
        return super()._impl_v13(bb, inputs, attr, params)


@register_converter("SelectiveScan", domain="ai.edgecc")
class SelectiveScan(OnnxOpConverter):
    """``ai.edgecc::SelectiveScan`` (Mamba-1, :mod:`edgecc.ssm`) as one
    :func:`edgecc.schedules.ssm.selective_scan` kernel."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        from edgecc.schedules import ssm

        x, delta, a, b, c = inputs[0], inputs[1], inputs[2], inputs[3], inputs[4]
        skip, gate, bias, initial = (inputs[i] if len(inputs) > i else None for i in (5, 6, 7, 8))
        for name, tensor, rank in (("x", x, 3), ("delta", delta, 3), ("A", a, 2), ("B", b, 3), ("C", c, 3)):
            if tensor is None or len(_dims(tensor)) != rank:
                raise ValueError(f"SelectiveScan: input {name} must be rank {rank}")
        channels, state = (_static(d, "SelectiveScan: A's shape") for d in _dims(a))
        spec = ssm.SelectiveScanSpec(channels, state, skip is not None, gate is not None, bias is not None,
                                     initial is not None, bool(attr.get("delta_softplus", 0)))
        kernel = bb.add_func(ssm.selective_scan(spec), "selective_scan")
        batch, steps = _dims(x)[0], _dims(x)[1]
        args = [_f32(bb, t) for t in (x, delta, a, b, c)]
        args += [_f32(bb, t) if t is not None else _dummy(rank)
                 for t, rank in ((skip, 1), (gate, 3), (bias, 1), (initial, 3))]
        out = bb.emit(relax.call_tir(kernel, args, [relax.TensorType([batch, steps, channels], "float32"),
                                                    relax.TensorType([batch, channels, state], "float32")]))
        y, final = bb.emit(relax.TupleGetItem(out, 0)), bb.emit(relax.TupleGetItem(out, 1))
        if _dtype(x) != "float32":
            y, final = bb.emit(relax.op.astype(y, _dtype(x))), bb.emit(relax.op.astype(final, _dtype(x)))
        return relax.Tuple([y, final])


@register_converter("DiagonalScan", domain="ai.edgecc")
class DiagonalScan(OnnxOpConverter):
    """edgecc-internal: the diagonal recurrence :mod:`edgecc.passes.ssm` recognises in an ONNX
    ``Scan``, as one :func:`edgecc.schedules.ssm.diagonal_scan` kernel."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        from edgecc.schedules import ssm

        h0, a, b, c = (_f32(bb, t) for t in inputs[:4])
        channels, state = (_static(d, "DiagonalScan: the state's shape") for d in _dims(h0))
        steps = _dims(a)[0]
        kernel = bb.add_func(ssm.diagonal_scan(channels, state), "diagonal_scan")
        out = bb.emit(relax.call_tir(kernel, [h0, a, b, c], [relax.TensorType([channels, state], "float32"),
                                                             relax.TensorType([steps, channels], "float32")]))
        dtype = _dtype(inputs[0])
        last, y = bb.emit(relax.TupleGetItem(out, 0)), bb.emit(relax.TupleGetItem(out, 1))
        if dtype != "float32":
            last, y = bb.emit(relax.op.astype(last, dtype)), bb.emit(relax.op.astype(y, dtype))
        return relax.Tuple([last, y])
