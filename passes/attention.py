"""Attention over a run-time-length KV cache as one kernel, on CPU targets.

:mod:`edgecc.frontend.attention` writes attention over a cache of symbolic length as four
ops: ``attention_scores`` (a TE kernel reading the cached keys in place), an optional
``causal_mask``, ``softmax`` and ``matmul`` with the values. This pass replaces that chain by
one :func:`edgecc.schedules.attention.decode_attention` kernel; the scores' kernel carries
what the replacement needs (scale, and the mask's steps and new keys) as PrimFunc attributes.
CUDA builds keep the four ops (dlight schedules them).
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from ._util import bound_value, op_name

SCORES_ATTR = "edgecc.attention_scores"  # on attention_scores: {"scale"}
MASK_ATTR = "edgecc.causal_mask"  # on causal_mask: {"steps", "new_keys"}


def _tir_call(expr, lookup, module, attr: str):
    """``(call, attrs)`` when ``expr`` is bound to a ``call_tir`` of a PrimFunc carrying ``attr``."""
    value = bound_value(expr, lookup)
    if op_name(value) != "relax.call_tir":
        return None
    func = module[value.args[0]]
    attrs = func.attrs or {}
    return (value, attrs[attr]) if attr in attrs else None


def _make(lanes: int):
    @mutator
    class _DecodeAttention(PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if op_name(call) != "relax.matmul":
                return call
            weights, values = call.args
            softmax = bound_value(weights, self.lookup_binding)
            if op_name(softmax) != "relax.nn.softmax" or int(softmax.attrs.axis) not in (-1, 3):
                return call
            module = self.builder_.get()
            source, steps, new_keys, causal = softmax.args[0], 1, 1, False
            mask = _tir_call(source, self.lookup_binding, module, MASK_ATTR)
            if mask is not None:
                steps, new_keys, causal = int(mask[1]["steps"]), int(mask[1]["new_keys"]), True
                source = mask[0].args[1].fields[0]
            scores = _tir_call(source, self.lookup_binding, module, SCORES_ATTR)
            if scores is None:
                return call
            rows, keys = scores[0].args[1].fields[:2]  # (then the symbolic dims TE passes)
            batch, kv_heads, n_rows, depth = rows.ty.shape.values
            depth_v = values.ty.shape.values[3]
            from edgecc.schedules.attention import decode_attention

            kernel = decode_attention(int(kv_heads), int(n_rows), int(depth), int(depth_v),
                                      float(scores[1]["scale"]), steps, new_keys, causal, lanes)
            gvar = self.builder_.add_func(kernel, "decode_attention")
            return relax.call_tir(gvar, [rows, keys, values], call.ty)

    return _DecodeAttention


def DecodeAttention(preset):  # noqa: N802 (TVM pass naming)
    """Pass: attention over a symbolic-length KV cache as one kernel (CPU targets)."""
    from edgecc.schedules import fp32_lanes

    rewriter_class = _make(fp32_lanes(preset))

    @tvm.transform.module_pass(opt_level=0, name="edgecc.DecodeAttention")
    def _pass(mod, _ctx):
        rewriter = rewriter_class(mod)
        for gvar, func in list(mod.functions_items()):
            if isinstance(func, relax.Function):
                rewriter.builder_.update_func(gvar, rewriter.visit_expr(func))
        return rewriter.builder_.get()

    return _pass
