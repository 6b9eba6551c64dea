"""Attention over a KV cache of run-time length, as one kernel (CPU).

A decode step's attention reads a cache whose length is only known at run time. Written as
TVM ops (the scores, the causal mask, a softmax over a symbolic axis, a matmul with it) it is
four kernels, each a scalar loop over the cache; here it is one: per ``(batch, kv head)``, in
parallel, and per query row of that head (the ``G`` query heads sharing it, times the new
tokens): the scores against every visible key (dot products that LLVM vectorises over the
head dim), their softmax (``fast_exp`` vectorised over the keys) and the weighted sum of the
values (vectorised over the value dim). The scores of one row live in a scratch row of the
cache's length; nothing else is allocated. :mod:`edgecc.passes.attention` puts it in place of
the four ops on CPU targets.

Causal masking follows ONNX ``Attention``: row ``r`` (query ``r mod steps``) sees key ``j`` iff
``j <= r mod steps + past``, ``past`` being the cached keys before this call's ``new_keys``.
"""

from __future__ import annotations

import tvm
from tvm.script import tirx as T

from . import ssm
from .ssm import fast_exp

ATTENTION_ATTR = "edgecc.attention"  # on the kernel's block; the schedule rule reads it


def decode_attention(kv_heads: int, rows: int, depth: int, depth_v: int, scale: float, steps: int,
                     new_keys: int, causal: bool, lanes: int = 16) -> tvm.tirx.PrimFunc:
    """``(rows [B, H_kv, R, D], keys [B, H_kv, S, D], values [B, H_kv, S, Dv]) -> [B, H_kv, R, Dv]``,
    float32, ``B`` and ``S`` symbolic: ``softmax(scale * rows @ keys^T, masked) @ values``.
    ``lanes``: the vector width the dot products accumulate in (one per row, summed at the end)."""
    i64 = T.int64
    w = lanes if depth % lanes == 0 else 1
    hk_, r_, d_, dv_, w_ = i64(kv_heads), i64(rows), i64(depth), i64(depth_v), i64(w)
    steps_, new_ = i64(steps), i64(new_keys)
    scale = float(scale)

    @T.prim_func(private=True, s_tir=True)
    def attention(q_h: T.handle, k_h: T.handle, v_h: T.handle, o_h: T.handle):
        b_, s_ = T.int64(), T.int64()
        q = T.match_buffer(q_h, (b_, hk_, r_, d_), "float32")
        k = T.match_buffer(k_h, (b_, hk_, s_, d_), "float32")
        v = T.match_buffer(v_h, (b_, hk_, s_, dv_), "float32")
        o = T.match_buffer(o_h, (b_, hk_, r_, dv_), "float32")
        for bi, hi in T.grid(b_, hk_):
            with T.sblock("attention"):
                vb, vh = T.axis.remap("SS", [bi, hi])
                T.reads(q[vb, vh, 0:r_, 0:d_], k[vb, vh, 0:s_, 0:d_], v[vb, vh, 0:s_, 0:dv_])
                T.writes(o[vb, vh, 0:r_, 0:dv_])
                T.sblock_attr({ATTENTION_ATTR: "decode"})
                p = T.sblock_alloc_buffer((r_, s_), "float32")  # scores, then weights
                part = T.sblock_alloc_buffer((r_, w_), "float32")  # each row's dot product, per lane
                acc = T.sblock_alloc_buffer((dv_,), "float32")
                lane = T.sblock_alloc_buffer((w_,), "float32")  # a row's running max, then sum, per lane
                for j in range(s_):  # every row against key j: the key is read once
                    for r in range(r_):
                        for c in T.vectorized(w_):
                            part[r, c] = T.float32(0)
                    for d0 in range(d_ // w_):
                        for r in range(r_):
                            for c in T.vectorized(w_):
                                part[r, c] = part[r, c] + q[vb, vh, r, d0 * w_ + c] * k[vb, vh, j, d0 * w_ + c]
                    for r in range(r_):  # the lanes summed by halves: a tree of vector adds
                        if w >= 16:
                            for c in T.vectorized(8):
                                part[r, c] = part[r, c] + part[r, c + 8]
                        if w >= 8:
                            for c in T.vectorized(4):
                                part[r, c] = part[r, c] + part[r, c + 4]
                        if w >= 4:
                            for c in T.vectorized(2):
                                part[r, c] = part[r, c] + part[r, c + 2]
                        if w >= 2:
                            p[r, j] = (part[r, 0] + part[r, 1]) * T.float32(scale)
                        else:
                            p[r, j] = part[r, 0] * T.float32(scale)
                for r in range(r_):
                    visible = T.min(s_ - new_ + T.floormod(r, steps_) + 1, s_) if causal else s_
                    blocks = visible // w_  # whole vectors of keys; the rest one by one
                    for c in T.vectorized(w_):
                        lane[c] = T.float32(-3.4e38)
                    for j0 in range(blocks):
                        for c in T.vectorized(w_):
                            lane[c] = T.max(lane[c], p[r, j0 * w_ + c])
                    for j in range(visible - blocks * w_):
                        lane[0] = T.max(lane[0], p[r, blocks * w_ + j])
                    for c in range(w_ - 1):
                        lane[0] = T.max(lane[0], lane[c + 1])
                    top = lane[0]
                    for c in T.vectorized(w_):
                        lane[c] = T.float32(0)
                    for j0 in range(blocks):
                        for c in T.vectorized(w_):
                            p[r, j0 * w_ + c] = fast_exp(p[r, j0 * w_ + c] - top)
                            lane[c] = lane[c] + p[r, j0 * w_ + c]
                    for j in range(visible - blocks * w_):
                        p[r, blocks * w_ + j] = fast_exp(p[r, blocks * w_ + j] - top)
                        lane[0] = lane[0] + p[r, blocks * w_ + j]
                    for c in range(w_ - 1):
                        lane[0] = lane[0] + lane[c + 1]
                    for c in T.vectorized(dv_):
                        acc[c] = T.float32(0)
                    for j in range(visible):
                        for c in T.vectorized(dv_):
                            acc[c] = acc[c] + p[r, j] * v[vb, vh, j, c]
                    for c in T.vectorized(dv_):
                        o[vb, vh, r, c] = acc[c] / lane[0]

    return attention.with_attr("op_pattern", 8)


def kernel_of(sch) -> tuple | None:
    """``(block, kind)`` of an attention kernel's block, or None."""
    return ssm.kernel_of(sch, ATTENTION_ATTR)


def schedule(sch, block, kind: str) -> str:
    """The ``(batch, kv head)`` loops fused and run in parallel; the rest is written as it runs."""
    ssm.parallel_outer(sch, block)
    return f"attention[{kind}]"
