"""INT8 matmul with a constant weight: integer dot products (x86 AVX-512 VNNI ``vpdpbusd``,
AArch64 ``sdot``), int32 out, the requantization after it fused in as an epilogue.

The importers write every quantized matmul (``MatMulInteger``, ``QLinearMatMul``,
``QGemm``, and QDQ ``MatMul`` folded into ``QLinearMatMul``) as
``matmul(int32(a) - za, int32(b) - zb, out_dtype="int32")``; once constants are folded,
``b`` is an int32 constant ``Bc = b - zb`` ``[K, N]``. :mod:`edgecc.passes.quantize` replaces
that matmul by :func:`kernel`, which computes the same int32 result:

    acc[m, n] = sum_k (a'[m, k] - za') * (w[n, k] - wz[n])
              = dot(a', w) - wz[n] * rowsum(a')[m] - za' * (colsum(w)[n] - K * wz[n])

with ``a'`` the activations as the instruction wants them (unsigned for ``vpdpbusd``: an
int8 ``a`` is offset by 128, ``za' = za + 128``; signed for ``sdot``: a uint8 ``a`` offset by
-128), and ``w`` int8 with a zero point per column chosen so that ``w - wz == Bc``
(:func:`pack`). ``K`` is padded to a multiple of 4 with zero weights.

Packed layout (``L`` int32 lanes a vector: 16 on AVX-512, 4 on NEON; ``C`` vectors a tile,
``T = C * L`` columns): ``packed`` int8 ``[N / T, Kp / 4, C, 4 * L]``, byte ``4*i + j`` of
vector ``v`` holding ``w[t*T + v*L + i, 4*kq + j]``: the four weights each 32-bit lane
multiplies with four activations broadcast from one 32-bit word.

Schedule (written scheduled): a prologue converts the activations (``a'``, padded) and sums
each row; then in parallel over tiles, per pass of up to 3 rows, ``C`` accumulators a row stay
in registers across ``K`` and the correction terms are applied once at the end.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm.s_tir import Schedule
from tvm.script import tirx as T

from .cpu import _vectorize_inner, inline_spatial_blocks
from .int4 import row_indexing

INT8_ATTR = "edgecc.int8_matmul"
PROLOGUE_ATTR = "edgecc.int8_prologue"
MAX_STACK_BYTES = 1024


class Isa:
    """A dot-product instruction: its LLVM intrinsic, lanes, and whether it takes the
    activations unsigned (``vpdpbusd``: u8 x s8) or signed (``sdot``: s8 x s8)."""

    def __init__(self, name: str, intrinsic: str, lanes: int, unsigned_activations: bool):
        self.name, self.intrinsic, self.lanes, self.unsigned = name, intrinsic, lanes, unsigned_activations


VNNI = Isa("vnni", "llvm.x86.avx512.vpdpbusd.512", 16, True)
SDOT = Isa("sdot", "llvm.aarch64.neon.sdot.v4i32.v16i8", 4, False)


def isa_for(preset) -> Isa | None:
    """The dot-product instruction a CPU preset has, or None."""
    from tvm.target.codegen import target_has_features

    target = preset.tvm_target()
    if preset.arch == "x86_64" and target_has_features("avx512vnni", target):
        return VNNI
    if preset.arch == "aarch64" and target_has_features("dotprod", target):
        return SDOT
    return None


def tile_vectors(m: int, n: int, lanes: int) -> tuple[int, int] | None:
    """``(C, P)``: vectors a tile (up to 4, dividing ``N / lanes``) and rows a pass (up to 3)."""
    if n % lanes:
        return None
    c = next(c for c in (4, 2, 1) if (n // lanes) % c == 0)
    return c, min(m, 3)


def pack(centered_kn: np.ndarray, lanes: int, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(packed, wz, cw)`` from the int32 constant ``Bc = b - zb`` ``[K, N]``: int8 weights in
    the kernel's layout, the zero point per column (``w - wz == Bc``) and the correction
    ``colsum(w) - K * wz``. None when a column spans more than 256 values."""
    k, n = centered_kn.shape
    low, high = centered_kn.min(axis=0), centered_kn.max(axis=0)
    if np.any(high.astype(np.int64) - low > 255):
        return None
    offset = np.where((low >= -128) & (high <= 127), 0, low.astype(np.int64) + 128)  # w = Bc - offset
    w = (centered_kn - offset).T.astype(np.int8)  # [N, K]
    wz = (-offset).astype(np.int32)
    cw = (w.astype(np.int64).sum(axis=1) - k * wz).astype(np.int32)
    kp = -(-k // 4) * 4
    tile = c * lanes
    w = np.pad(w, ((0, 0), (0, kp - k)))
    packed = w.reshape(n // tile, c, lanes, kp // 4, 4).transpose(0, 3, 1, 2, 4).reshape(n // tile, kp // 4, c, 4 * lanes)
    return np.ascontiguousarray(packed), wz, cw


def kernel(lead: tuple[int, ...], k: int, n: int, a_dtype: str, isa: Isa, c: int, rows: int) -> tvm.tirx.PrimFunc:
    """``y[*lead, N] (int32) = (a - za) @ (w - wz)`` for ``a`` int8/uint8 and ``za`` an int32
    scalar tensor, the weight packed by :func:`pack`."""
    lanes = isa.lanes
    tile = c * lanes
    m = int(np.prod(lead))
    kp = -(-k // 4) * 4
    assert n % tile == 0 and rows <= m and rows * c * lanes * 4 < MAX_STACK_BYTES
    full, rest = divmod(m, rows)
    offset = (128 if isa.unsigned else 0) - (128 if a_dtype == "uint8" else 0)  # a' = a + offset
    adt = "uint8" if isa.unsigned else "int8"
    vbytes = f"int8x{4 * lanes}"
    vacc = f"int32x{lanes}"
    i64 = T.int64
    lead_ = [i64(d) for d in lead]
    m_, k_, kq_, n_ = i64(m), i64(k), i64(kp // 4), i64(n)
    nt_, tile_, c_, p_, l_ = i64(n // tile), i64(tile), i64(c), i64(rows), i64(lanes)

    at, columns = row_indexing(lead_)

    @T.macro(hygienic=False)
    def rows_pass(first, count):
        for r in T.unroll(count):
            for v in T.unroll(c_):
                acc[r, v, T.ramp(0, 1, lanes)] = T.broadcast(T.int32(0), lanes)
        for kq in range(kq_):
            for v in T.unroll(c_):
                for r in T.unroll(count):
                    acc[r, v, T.ramp(0, 1, lanes)] = T.call_llvm_pure_intrin(
                        vacc, isa.intrinsic, acc[r, v, T.ramp(0, 1, lanes)],  # (acc, activations, weights)
                        T.reinterpret(vbytes, T.broadcast(T.reinterpret("int32", ap[first + r, T.ramp(kq * 4, 1, 4)]),
                                                          lanes)),
                        T.reinterpret(vbytes, packed[vt, kq, v, T.ramp(0, 1, 4 * lanes)]))
        for r in T.unroll(count):
            for v in T.unroll(c_):
                for lane in T.vectorized(l_):
                    y[at(first + r, vt * tile_ + v * l_ + lane)] = acc[r, v, lane] - wz[
                        vt * tile_ + v * l_ + lane] * rowsum[first + r] - (za[()] + offset) * cw[vt * tile_ + v * l_ + lane]

    @T.prim_func(private=True, s_tir=True)
    def int8_matmul(a: T.Buffer((*lead_, k_), a_dtype), za: T.Buffer((), "int32"),
                    packed: T.Buffer((nt_, kq_, c_, 4 * l_), "int8"), wz: T.Buffer((n_,), "int32"),
                    cw: T.Buffer((n_,), "int32"), y: T.Buffer((*lead_, n_), "int32")):
        ap = T.alloc_buffer((m_, kq_ * 4), adt)
        rowsum = T.alloc_buffer((m_,), "int32")
        for i in range(m_):
            with T.sblock("int8_prologue"):
                vi = T.axis.spatial(m_, i)
                T.reads(a[at(vi, slice(0, k_))])
                T.writes(ap[vi, 0:kq_ * 4], rowsum[vi])
                T.sblock_attr({PROLOGUE_ATTR: 1})
                for kk in range(k_):
                    ap[vi, kk] = T.Cast(adt, T.Cast("int32", a[at(vi, kk)]) + offset)
                for kk in range(kq_ * 4 - k_):
                    ap[vi, k_ + kk] = T.Cast(adt, 0)
                rowsum[vi] = 0
                for kk in range(k_):
                    rowsum[vi] = rowsum[vi] + T.Cast("int32", ap[vi, kk])
        for t in range(nt_):
            with T.sblock("int8_matmul"):
                vt = T.axis.spatial(nt_, t)
                T.reads(ap[0:m_, 0:kq_ * 4], rowsum[0:m_], za[()], packed[vt, 0:kq_, 0:c_, 0:4 * l_],
                        wz[vt * tile_:vt * tile_ + tile_], cw[vt * tile_:vt * tile_ + tile_])
                T.writes(y[columns(vt * tile_, tile_)])
                # (names the row macro uses, recorded here so the parser sees them)
                T.sblock_attr({INT8_ATTR: 1, "edgecc.isa": isa.intrinsic, "edgecc.lanes": lanes,
                               "edgecc.vectors": vacc + "," + vbytes})
                acc = T.sblock_alloc_buffer((p_, c_, l_), "int32")
                for i0 in range(i64(full)):
                    rows_pass(i0 * p_, p_)
                if rest > 0:
                    rows_pass(i64(full * rows), i64(rest))

    return int8_matmul.with_attr("op_pattern", 4)  # OutEWiseFusable: the requantization fuses in


def kernel_of(sch: Schedule):
    """The INT8 matmul block of a (fused) kernel, or None."""
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        if INT8_ATTR in sch.get(block).annotations:
            return block
    return None


def schedule(sch: Schedule, block, lanes: int) -> str:
    """Parallel tiles (and prologue rows); the fused epilogue computed per tile, vectorised."""
    prologue = next(b for b in sch.get_child_blocks(sch.get_sblock("root"))
                    if PROLOGUE_ATTR in sch.get(b).annotations)
    inline_spatial_blocks(sch, keep=[block, prologue])
    sch.parallel(sch.get_loops(prologue)[0])
    tile = sch.get_loops(block)[-1]
    for consumer in sch.get_consumers(block):
        sch.reverse_compute_at(consumer, tile)
        _vectorize_inner(sch, sch.get_loops(consumer)[1:], lanes)
    sch.parallel(tile)
    return "int8-matmul"
