"""INT4 weight-only matmul: ``y = x @ dequant(W)^T`` with the weight packed two codes a byte.

A 4-bit weight ``W[N, K]`` (``N`` output columns by ``K`` inputs) holds codes ``q`` in 0..15,
dequantized per group of ``B`` consecutive inputs: ``W[n, k] = (q[n, k] - z[n, g]) * s[n, g]``
with ``g = k // B``. Signed int4 codes are stored offset by 8 (``q + 8``, ``z + 8``), which
leaves ``q - z`` unchanged. The kernel never builds a float copy of ``W``; per group it sums
``x[k] * q[n, k]`` and ``x[k]`` and applies ``s * (sum_xq - z * sum_x)`` once per group.

Packed layout (:func:`pack`), for SIMD width ``L`` float lanes, ``C`` vectors a half-tile
and tiles of ``T = 2 * C * L`` output columns (``N`` a multiple of ``T``):

- ``packed`` uint8 ``[N / T, K, C * L]``: byte ``j`` of tile ``t``, input ``k`` holds column
  ``t*T + j``'s code in its low nibble and column ``t*T + C*L + j``'s in its high nibble. One
  input's codes for a whole tile are one contiguous run (a cache line on AVX-512), and the
  kernel streams each tile's rows in order.
- ``scales`` float32 ``[N / T, G, T]``: column ``t*T + j``'s scale for group ``g``
  (``G = K / B``); ``zeros`` uint8 ``[N / T, G, C * L]``: its zero point, packed like the codes
  (column ``t*T + j`` low, ``t*T + C*L + j`` high).

That is ``K * N / 2`` bytes of codes plus ``4.5 * N * K / B`` of scales and zero points:
0.64 bytes a weight at ``B = 32``, 0.16x float32.

Schedule (:func:`kernel`, written scheduled): first each group's sum of ``x`` per row; then in
parallel over tiles, per pass of up to 3 rows of ``x`` and per group, ``2 * C`` vector
accumulators a row stay in registers while the group's inputs stream by (each byte loaded
once, split into its two nibbles, converted and multiply-added into every row of the pass);
the group's result is scaled into a row buffer of ``T`` floats, written out after the last
group. A fused epilogue
(bias, activation) is computed per tile right after it (:func:`schedule`).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import te
from tvm.s_tir import Schedule
from tvm.script import tirx as T

from .cpu import _vectorize_inner, inline_spatial_blocks

INT4_ATTR = "edgecc.int4_matmul"
DEQUANTIZE_ATTR = "edgecc.dequantize_int4"
ACCURACY_ATTR = "edgecc.int4_accuracy_level"  # MatMulNBits' accuracy_level: 4 allows int8 activations
XSUM_ATTR = "edgecc.int4_xsum"
MAX_STACK_BYTES = 1024  # TVM's kMaxStackAlloca: larger local buffers go to the workspace heap
MAX_HALF_VECTORS = 4  # C: 8 accumulators and 4 byte loads an input


def row_indexing(lead_):
    """``(at, columns)`` for a tensor ``[*lead, X]`` seen as ``M = prod(lead)`` rows in order:
    ``at(i, x)`` indexes row ``i``'s element ``x``; ``columns(first, count)`` is the region of
    every row's elements ``first .. first + count`` (for ``T.reads``/``T.writes``)."""
    def at(i, last):
        index = []
        for dim in reversed(lead_):
            index.append(i % dim)
            i = i // dim
        return tuple(index[::-1]) + (last,)

    def columns(first, count):
        return tuple(slice(0, d) for d in lead_) + (slice(first, first + count),)

    return at, columns


def half_vectors(n: int, lanes: int) -> int | None:
    """``C`` for ``N`` output columns: the most vectors a half-tile (up to 4) with ``N`` a
    multiple of the tile ``2 * C * lanes``; None when not even one vector pair divides ``N``."""
    for c in (4, 2, 1):
        if c <= MAX_HALF_VECTORS and n % (2 * c * lanes) == 0:
            return c
    return None


def _pack_halves(values: np.ndarray, half: int) -> np.ndarray:
    """``[..., 2 * half]`` codes as ``[..., half]`` bytes: the first half low, the second high."""
    return (values[..., :half] | (values[..., half:] << 4)).astype(np.uint8)


def pack(codes_nk: np.ndarray, scales_ng: np.ndarray, zeros_ng: np.ndarray, lanes: int, c: int):
    """``(packed, scales, zeros)`` in the kernel's layout from codes ``[N, K]`` (0..15), scales
    ``[N, G]`` and zero points ``[N, G]`` (0..15)."""
    n, k = codes_nk.shape
    half = c * lanes
    codes = codes_nk.astype(np.uint8).reshape(n // (2 * half), 2, half, k)  # [t, lo/hi, j, k]
    packed = (codes[:, 0] | (codes[:, 1] << 4)).transpose(0, 2, 1)  # [t, k, j]
    return (np.ascontiguousarray(packed, dtype=np.uint8), *_pack_groups(scales_ng, zeros_ng, half))


def _pack_groups(scales_ng: np.ndarray, zeros_ng: np.ndarray, half: int) -> tuple[np.ndarray, np.ndarray]:
    """Scales ``[N / T, G, T]`` and zero points packed like the codes ``[N / T, G, T / 2]``."""
    n, groups = scales_ng.shape
    tile = 2 * half
    per_tile = lambda a: a.reshape(n // tile, tile, groups).transpose(0, 2, 1)  # noqa: E731
    return (np.ascontiguousarray(per_tile(scales_ng), dtype=np.float32),
            np.ascontiguousarray(_pack_halves(per_tile(zeros_ng.astype(np.uint8)), half)))


def dequantize(codes: te.Tensor, scales: te.Tensor, zeros: te.Tensor, group: int) -> te.Tensor:
    """``[N, K]`` float32 from codes ``[N, K]`` and per-group ``scales``/``zeros`` ``[N, G]``: the
    importer's form of a 4-bit weight (:mod:`edgecc.passes.quantize` replaces the matmul
    reading it by :func:`kernel`; anywhere else constant folding evaluates it)."""
    n, k = (int(d) for d in codes.shape)
    return te.compute(
        (n, k), lambda i, j: (codes[i, j].astype("float32") - zeros[i, j // group].astype("float32"))
        * scales[i, j // group], name="dequantize_int4", attrs={DEQUANTIZE_ATTR: group})


def row_block(m: int, n: int, lanes: int) -> tuple[int, int]:
    """``(C, P)``: vectors a half-tile and rows of ``x`` per pass over a tile, for ``M`` rows and
    ``N`` columns. One row (decoding) takes the widest tile, 8 accumulators; several rows share
    each byte's unpacking among up to 3 rows of ``2 * C`` accumulators (``C`` up to 2)."""
    c = half_vectors(n, lanes)
    if c is None or m == 1:
        return c, 1
    while c > 2:
        c //= 2
    return c, min(m, 3)


def kernel(lead: tuple[int, ...], k: int, n: int, group: int, lanes: int, c: int, rows: int = 1) -> tvm.tirx.PrimFunc:
    """``y[*lead, N] = x[*lead, K] @ dequant(W)^T`` for a weight packed by :func:`pack` with ``C =
    c``, ``rows`` rows of ``x`` a pass (:func:`row_block`). The ``M = prod(lead)`` rows are
    taken in order, so no reshape sits between the kernel and a fused epilogue."""
    half, tile = c * lanes, 2 * c * lanes
    m = int(np.prod(lead))
    assert n % tile == 0 and k % group == 0 and rows <= m, (n, k, group, tile, rows, m)
    assert rows * 2 * c * lanes * 4 < MAX_STACK_BYTES  # the accumulators stay on the stack, in registers
    full, rest = divmod(m, rows)
    i64 = T.int64
    lead_ = [i64(d) for d in lead]
    m_, k_, n_, b_, g_ = i64(m), i64(k), i64(n), i64(group), i64(k // group)
    nt_, half_, tile_, lanes_, c_, p_ = i64(n // tile), i64(half), i64(tile), i64(lanes), i64(c), i64(rows)

    at, columns = row_indexing(lead_)

    @T.macro(hygienic=False)
    def rows_pass(first, count):
        """Rows ``first .. first + count`` of ``x`` against tile ``vt``."""
        for r in T.unroll(count):
            for j in T.vectorized(tile_):
                out[r, j] = T.float32(0)
        for g in range(g_):
            for r in T.unroll(count):
                for v in T.unroll(2 * c_):
                    for lane in T.vectorized(lanes_):
                        acc[r, v, lane] = T.float32(0)
            for kk in range(b_):
                for v in T.unroll(c_):
                    for r in T.unroll(count):
                        for lane in T.vectorized(lanes_):
                            acc[r, v, lane] = acc[r, v, lane] + x[at(first + r, g * b_ + kk)] * T.Cast(
                                "float32", T.bitwise_and(packed[vt, g * b_ + kk, v * lanes_ + lane], T.uint8(15)))
                            acc[r, c_ + v, lane] = acc[r, c_ + v, lane] + x[at(first + r, g * b_ + kk)] * T.Cast(
                                "float32", T.shift_right(packed[vt, g * b_ + kk, v * lanes_ + lane], T.uint8(4)))
            for r in T.unroll(count):
                for v in T.unroll(2 * c_):
                    for lane in T.vectorized(lanes_):
                        out[r, v * lanes_ + lane] = out[r, v * lanes_ + lane] + scales[vt, g, v * lanes_ + lane] * (
                            acc[r, v, lane] - T.Cast("float32", T.bitwise_and(T.shift_right(
                                    zeros[vt, g, (v % c_) * lanes_ + lane], T.Cast("uint8", v // c_ * 4)), T.uint8(15))) * xsum[first + r, g])
        for r in T.unroll(count):
            for j in T.vectorized(tile_):
                y[at(first + r, vt * tile_ + j)] = out[r, j]

    @T.prim_func(private=True, s_tir=True)
    def int4_matmul(x: T.Buffer((*lead_, k_), "float32"), packed: T.Buffer((nt_, k_, half_), "uint8"),
                    scales: T.Buffer((nt_, g_, tile_), "float32"), zeros: T.Buffer((nt_, g_, half_), "uint8"),
                    y: T.Buffer((*lead_, n_), "float32")):
        xsum = T.alloc_buffer((m_, g_), "float32")  # each group's sum of x, for the zero points
        for i in range(m_):
            with T.sblock("int4_xsum"):
                vi = T.axis.spatial(m_, i)
                T.reads(x[at(vi, slice(0, k_))])
                T.writes(xsum[vi, 0:g_])
                T.sblock_attr({XSUM_ATTR: 1})
                for g in range(g_):
                    xsum[vi, g] = T.float32(0)
                    for kk in range(b_):
                        xsum[vi, g] = xsum[vi, g] + x[at(vi, g * b_ + kk)]
        for t in range(nt_):
            with T.sblock("int4_matmul"):
                vt = T.axis.spatial(nt_, t)
                T.reads(x[columns(0, k_)], packed[vt, 0:k_, 0:half_], scales[vt, 0:g_, 0:tile_],
                        zeros[vt, 0:g_, 0:half_], xsum[0:m_, 0:g_])
                T.writes(y[columns(vt * tile_, tile_)])
                T.sblock_attr({INT4_ATTR: 1})
                acc = T.sblock_alloc_buffer((p_, 2 * c_, lanes_), "float32")
                out = T.sblock_alloc_buffer((p_, tile_), "float32")
                for i0 in range(i64(full)):
                    rows_pass(i0 * p_, p_)
                if rest > 0:
                    rows_pass(i64(full * rows), i64(rest))

    return int4_matmul.with_attr("op_pattern", 4)  # OutEWiseFusable: bias and activation fuse in


def pack_vnni(codes_nk: np.ndarray, scales_ng: np.ndarray, zeros_ng: np.ndarray, c: int):
    """``(packed, scales, zeros)`` for :func:`kernel_vnni` (16 lanes): ``packed`` uint8
    ``[N / T, K / 4, C, 64]``, byte ``4*i + j`` of vector ``v`` holding input ``4*kq + j`` of
    column ``t*T + 16*v + i`` (low nibble) and of column ``t*T + 16*(C + v) + i`` (high): each
    32-bit lane the four codes ``vpdpbusd`` multiplies with four int8 activations. Scales and
    zero points as :func:`pack`."""
    n, k = codes_nk.shape
    tile = 32 * c
    codes = codes_nk.astype(np.uint8).reshape(n // tile, 2, c, 16, k // 4, 4)
    packed = (codes[:, 0] | (codes[:, 1] << 4)).transpose(0, 3, 1, 2, 4).reshape(n // tile, k // 4, c, 64)
    return (np.ascontiguousarray(packed), *_pack_groups(scales_ng, zeros_ng, 16 * c))


def kernel_vnni(lead: tuple[int, ...], k: int, n: int, group: int, c: int, rows: int = 1) -> tvm.tirx.PrimFunc:
    """``y = x @ dequant(W)^T`` with ``x`` quantized to int8 per row and group (symmetric,
    ``scale = max|x| / 127``, ``round(x * (1 / scale))``): ONNX Runtime's MatMulNBits at
    accuracy level 4. Integer dot products with AVX-512 VNNI (``vpdpbusd``: 4 codes by 4 activations
    into each 32-bit lane), the weight packed by :func:`pack_vnni`; per group
    ``y += s * sx * (sum(q * xq) - z * sum(xq))`` in float32."""
    lanes, tile = 16, 32 * c
    m = int(np.prod(lead))
    assert n % tile == 0 and k % group == 0 and group % 16 == 0 and rows <= m, (n, k, group, tile, rows, m)
    assert rows * 2 * c * lanes * 4 < MAX_STACK_BYTES
    full, rest = divmod(m, rows)
    i64 = T.int64
    lead_ = [i64(d) for d in lead]
    m_, k_, n_, b_, g_, q_ = i64(m), i64(k), i64(n), i64(group), i64(k // group), i64(group // 4)
    nt_, half_, tile_, c_, p_ = i64(n // tile), i64(tile // 2), i64(tile), i64(c), i64(rows)

    at, columns = row_indexing(lead_)

    @T.macro(hygienic=False)
    def rows_pass(first, count):
        for r in T.unroll(count):
            for j in T.vectorized(tile_):
                out[r, j] = T.float32(0)
        for g in range(g_):
            for r in T.unroll(count):
                for v in T.unroll(2 * c_):
                    acc[r, v, T.ramp(0, 1, 16)] = T.broadcast(T.int32(0), 16)
            for kq in range(q_):
                for v in T.unroll(c_):
                    codes = packed[vt, g * q_ + kq, v, T.ramp(0, 1, 64)]
                    low = T.reinterpret("int8x64", T.bitwise_and(codes, T.broadcast(T.uint8(15), 64)))
                    high = T.reinterpret("int8x64", T.shift_right(codes, T.broadcast(T.uint8(4), 64)))
                    for r in T.unroll(count):
                        acc[r, v, T.ramp(0, 1, 16)] = T.call_llvm_pure_intrin(
                            "int32x16", "llvm.x86.avx512.vpdpbusd.512", acc[r, v, T.ramp(0, 1, 16)], low,
                            T.reinterpret("int8x64", T.broadcast(T.reinterpret("int32", xq[
                                first + r, T.ramp((g * q_ + kq) * 4, 1, 4)]), 16)))
                        acc[r, c_ + v, T.ramp(0, 1, 16)] = T.call_llvm_pure_intrin(
                            "int32x16", "llvm.x86.avx512.vpdpbusd.512", acc[r, c_ + v, T.ramp(0, 1, 16)], high,
                            T.reinterpret("int8x64", T.broadcast(T.reinterpret("int32", xq[
                                first + r, T.ramp((g * q_ + kq) * 4, 1, 4)]), 16)))
            for r in T.unroll(count):
                for v in T.unroll(2 * c_):
                    out[r, T.ramp(v * 16, 1, 16)] = out[r, T.ramp(v * 16, 1, 16)] + T.Cast(
                        "float32x16", acc[r, v, T.ramp(0, 1, 16)] - T.Cast(
                            "int32x16", T.bitwise_and(T.shift_right(zeros[vt, g, T.ramp(v % c_ * 16, 1, 16)], T.broadcast(
                                T.Cast("uint8", v // c_ * 4), 16)), T.broadcast(T.uint8(15), 16))) * T.broadcast(xqsum[first + r, g], 16)
                    ) * scales[vt, g, T.ramp(v * 16, 1, 16)] * T.broadcast(xscale[first + r, g], 16)
        for r in T.unroll(count):
            for j in T.vectorized(tile_):
                y[at(first + r, vt * tile_ + j)] = out[r, j]

    @T.prim_func(private=True, s_tir=True)
    def int4_matmul_vnni(x: T.Buffer((*lead_, k_), "float32"), packed: T.Buffer((nt_, g_ * q_, c_, 64), "uint8"),
                         scales: T.Buffer((nt_, g_, tile_), "float32"), zeros: T.Buffer((nt_, g_, half_), "uint8"),
                         y: T.Buffer((*lead_, n_), "float32")):
        xq = T.alloc_buffer((m_, k_), "int8")
        xqsum = T.alloc_buffer((m_, g_), "int32")
        xscale = T.alloc_buffer((m_, g_), "float32")
        for i, g in T.grid(m_, g_):
            with T.sblock("int4_quantize_x"):
                vi, vg = T.axis.remap("SS", [i, g])
                T.reads(x[at(vi, slice(vg * b_, vg * b_ + b_))])
                T.writes(xq[vi, vg * b_:vg * b_ + b_], xqsum[vi, vg], xscale[vi, vg])
                T.sblock_attr({XSUM_ATTR: 1})
                part = T.sblock_alloc_buffer((16,), "float32")  # per-lane max |x|, then reduced
                inverse = T.sblock_alloc_buffer((1,), "float32")
                for lane in T.vectorized(16):
                    part[lane] = T.float32(0)
                for k0 in range(b_ // 16):
                    for lane in T.vectorized(16):
                        part[lane] = T.max(part[lane], T.abs(x[at(vi, vg * b_ + k0 * 16 + lane)]))
                for lane in range(1, 16):
                    part[0] = T.max(part[0], part[lane])
                xscale[vi, vg] = T.if_then_else(part[0] > T.float32(0), part[0] / T.float32(127), T.float32(1))
                inverse[0] = T.if_then_else(part[0] > T.float32(0), T.float32(1) / xscale[vi, vg], T.float32(0))
                for k0 in range(b_ // 16):
                    for lane in T.vectorized(16):
                        xq[vi, vg * b_ + k0 * 16 + lane] = T.Cast(
                            "int8", T.round(x[at(vi, vg * b_ + k0 * 16 + lane)] * inverse[0]))
                xqsum[vi, vg] = 0
                for kk in range(b_):
                    xqsum[vi, vg] = xqsum[vi, vg] + T.Cast("int32", xq[vi, vg * b_ + kk])
        for t in range(nt_):
            with T.sblock("int4_matmul"):
                vt = T.axis.spatial(nt_, t)
                T.reads(xq[0:m_, 0:k_], packed[vt, 0:g_ * q_, 0:c_, 0:64], scales[vt, 0:g_, 0:tile_],
                        zeros[vt, 0:g_, 0:half_], xqsum[0:m_, 0:g_], xscale[0:m_, 0:g_])
                T.writes(y[columns(vt * tile_, tile_)])
                T.sblock_attr({INT4_ATTR: 1})
                acc = T.sblock_alloc_buffer((p_, 2 * c_, 16), "int32")
                out = T.sblock_alloc_buffer((p_, tile_), "float32")
                for i0 in range(i64(full)):
                    rows_pass(i0 * p_, p_)
                if rest > 0:
                    rows_pass(i64(full * rows), i64(rest))

    return int4_matmul_vnni.with_attr("op_pattern", 4)


def kernel_of(sch: Schedule):
    """The INT4 matmul block of a (fused) kernel, or None."""
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        if INT4_ATTR in sch.get(block).annotations:
            return block
    return None


def schedule(sch: Schedule, block, lanes: int) -> str:
    """Parallel tiles; the fused epilogue inlined into one block computed per tile, vectorised."""
    xsum = next(b for b in sch.get_child_blocks(sch.get_sblock("root")) if XSUM_ATTR in sch.get(b).annotations)
    inline_spatial_blocks(sch, keep=[block, xsum])
    xsum_loops = sch.get_loops(xsum)
    sch.parallel(sch.fuse(*xsum_loops) if len(xsum_loops) > 1 else xsum_loops[0])
    tile = sch.get_loops(block)[-1]
    for consumer in sch.get_consumers(block):
        sch.reverse_compute_at(consumer, tile)
        _vectorize_inner(sch, sch.get_loops(consumer)[1:], lanes)
    sch.parallel(tile)
    return "int4-matmul"
