"""INT8 matmuls and convolutions with a constant weight: int8 x int8 products accumulated in
int32 (x86 AVX-512 VNNI ``vpdpbusd`` and AArch64 ``sdot`` dot products, AArch64 i8mm ``smmla``
matrix products for matmuls, widening multiply-accumulates on NEON without dotprod and on RVV:
see :class:`Isa` and :func:`isa_for`), the requantization after them fused in as an epilogue.
Convolutions: :func:`conv_kernel` (channels-last, each kernel row one contiguous run);
i8mm matmuls: :func:`kernel_mmla`. The rest of this docstring describes the matmul.

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
each row; then in parallel over tiles, per pass of up to 24 / ``C`` rows, ``C`` accumulators a row stay
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
MAX_ACCUMULATORS = 24  # vector registers a block of rows or pixels keeps (of 32 on AVX-512 / NEON / RVV)


class Isa:
    """How a kernel multiplies int8 by int8 into int32 lanes: a dot-product instruction (its
    LLVM intrinsic, four products a lane) or, with ``intrinsic`` None, widening
    multiply-accumulates written as plain vector arithmetic (``acc += int32(a) * int32(w)``,
    one product a lane, which LLVM selects as NEON ``smull``/``smlal`` or RVV ``vwmul``/
    ``vwmacc``); the int32 lanes a vector; and whether the activations go in unsigned
    (``vpdpbusd``: u8 x s8) or signed."""

    def __init__(self, name: str, intrinsic: str | None, lanes: int, unsigned_activations: bool):
        self.name, self.intrinsic, self.lanes, self.unsigned = name, intrinsic, lanes, unsigned_activations

    @property
    def dot(self) -> bool:
        return self.intrinsic is not None


VNNI = Isa("vnni", "llvm.x86.avx512.vpdpbusd.512", 16, True)
SDOT = Isa("sdot", "llvm.aarch64.neon.sdot.v4i32.v16i8", 4, False)
NEON_MAC = Isa("neon", None, 4, False)
# AArch64 i8mm: a 2x8 by 8x2 int8 matrix product into a 2x2 int32 block (kernel_mmla).
SMMLA = Isa("smmla", "llvm.aarch64.neon.smmla.v4i32.v16i8", 4, False)
# CUDA: __dp4a, four signed byte products added to an int32 per thread (kernel_dp4a).
DP4A = Isa("dp4a", "__dp4a", 1, False)


def rvv_mac(vlen: int) -> Isa:
    """Widening multiply-accumulates on RVV registers of ``vlen`` bits."""
    return Isa("rvv", None, vlen // 32, False)


def isa_for(preset, op: str = "conv") -> Isa | None:
    """How a CPU preset multiplies int8 in a ``conv`` or ``matmul`` kernel (dot products where it
    has them; i8mm's ``smmla`` for matmuls), or None (x86 without AVX-512 VNNI: TVM's generic
    int32 code)."""
    from tvm.target.codegen import target_has_features

    if preset.device == "cuda":
        return DP4A if op == "matmul" else None
    target = preset.tvm_target()
    if preset.arch == "x86_64" and target_has_features("avx512vnni", target):
        return VNNI
    if preset.arch == "aarch64":
        if op == "matmul" and target_has_features("i8mm", target):
            return SMMLA
        return SDOT if target_has_features("dotprod", target) else NEON_MAC
    if preset.arch == "riscv64" and preset.vlen:
        return rvv_mac(preset.vlen)
    return None


def _lane_order(dot: bool) -> tuple[int, int]:
    """Within a packed vector of 4 x lanes weights (after the ``[..., lanes, 4]`` axes): a dot
    product wants each lane's four reduction values together (byte ``4*i + j``), widening
    multiply-accumulates one reduction step's lanes together (byte ``j*L + i``)."""
    return (0, 1) if dot else (1, 0)


def tile_vectors(m: int, n: int, lanes: int) -> tuple[int, int]:
    """``(C, P)``: vectors a tile (up to 4, dividing ``N / lanes`` when that is whole; a ragged
    ``N`` is padded to whole tiles, see :func:`padded_channels`) and rows a pass (``C * P <= 24``
    accumulators)."""
    vectors = -(-n // lanes)
    c = min(vectors, 4) if n % lanes else next(c for c in (4, 2, 1) if vectors % c == 0)
    return c, min(m, MAX_ACCUMULATORS // c)


def pack(centered_kn: np.ndarray, lanes: int, c: int, dot: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(packed, wz, cw)`` from the int32 constant ``Bc = b - zb`` ``[K, N]``: int8 weights in
    the kernel's layout (``dot``: for a dot-product instruction, else for multiply-accumulates,
    see :func:`_lane_order`), the zero point per column (``w - wz == Bc``) and the correction
    ``colsum(w) - K * wz``, all padded with zeros to ``Np`` columns (:func:`padded_channels`).
    None when a column spans more than 256 values."""
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
    np_ = padded_channels(n, lanes, c)
    w = np.pad(w, ((0, np_ - n), (0, kp - k)))
    wz, cw = np.pad(wz, (0, np_ - n)), np.pad(cw, (0, np_ - n))
    i, j = _lane_order(dot)
    packed = w.reshape(np_ // tile, c, lanes, kp // 4, 4).transpose(0, 3, 1, 2 + i * 2, 2 + j * 2).reshape(
        np_ // tile, kp // 4, c, 4 * lanes)
    return np.ascontiguousarray(packed), wz, cw


def kernel(lead: tuple[int, ...], k: int, n: int, a_dtype: str, isa: Isa, c: int, rows: int) -> tvm.tirx.PrimFunc:
    """``y[*lead, N] (int32) = (a - za) @ (w - wz)`` for ``a`` int8/uint8 and ``za`` an int32
    scalar tensor, the weight packed by :func:`pack`."""
    lanes = isa.lanes
    tile = c * lanes
    m = int(np.prod(lead))
    kp = -(-k // 4) * 4
    np_ = padded_channels(n, lanes, c)  # the last tile's columns past N are computed, not stored
    ragged, dot = np_ != n, isa.dot
    assert rows <= m and rows * c <= MAX_ACCUMULATORS
    full, rest = divmod(m, rows)
    offset = (128 if isa.unsigned else 0) - (128 if a_dtype == "uint8" else 0)  # a' = a + offset
    adt = "uint8" if isa.unsigned else "int8"
    vbytes = f"int8x{4 * lanes}"
    vacc = f"int32x{lanes}"
    i64 = T.int64
    lead_ = [i64(d) for d in lead]
    m_, k_, kq_, n_ = i64(m), i64(k), i64(kp // 4), i64(n)
    nt_, tile_, c_, p_, l_ = i64(np_ // tile), i64(tile), i64(c), i64(rows), i64(lanes)

    at, columns = row_indexing(lead_)

    # The accumulators live in two buffers, each small enough to be a stack array LLVM keeps in
    # registers (see conv_kernel).
    half = min(rows, (MAX_STACK_BYTES - 1) // (c * lanes * 4))
    assert (rows - half) * c * lanes * 4 < MAX_STACK_BYTES
    pa_, pb_ = i64(half), i64(max(rows - half, 1))

    @T.macro
    def accumulate(ap, packed, accs, vt, kq, first, count):
        for v in T.unroll(c_):
            for r in T.unroll(count):
                if dot:
                    accs[r, v, T.ramp(0, 1, lanes)] = T.call_llvm_pure_intrin(
                        vacc, isa.intrinsic, accs[r, v, T.ramp(0, 1, lanes)],  # (acc, activations, weights)
                        T.reinterpret(vbytes, T.broadcast(T.reinterpret("int32", ap[first + r, T.ramp(kq * 4, 1, 4)]),
                                                          lanes)),
                        T.reinterpret(vbytes, packed[vt, kq, v, T.ramp(0, 1, 4 * lanes)]))
                else:
                    for j in T.unroll(4):
                        accs[r, v, T.ramp(0, 1, lanes)] = accs[r, v, T.ramp(0, 1, lanes)] + T.Cast(
                            vacc, T.broadcast(ap[first + r, kq * 4 + j], lanes)) * T.Cast(
                            vacc, packed[vt, kq, v, T.ramp(j * lanes, 1, lanes)])

    @T.macro
    def finish(za, wz, cw, rowsum, y, accs, vt, first, count):
        for r in T.unroll(count):
            for v in T.unroll(c_):
                if ragged:
                    for lane in range(l_):
                        if vt * tile_ + v * l_ + lane < n_:
                            y[at(first + r, vt * tile_ + v * l_ + lane)] = accs[r, v, lane] - wz[
                                vt * tile_ + v * l_ + lane] * rowsum[first + r] - (za[()] + offset) * cw[
                                vt * tile_ + v * l_ + lane]
                else:
                    for lane in T.vectorized(l_):
                        y[at(first + r, vt * tile_ + v * l_ + lane)] = accs[r, v, lane] - wz[
                            vt * tile_ + v * l_ + lane] * rowsum[first + r] - (za[()] + offset) * cw[
                            vt * tile_ + v * l_ + lane]

    @T.macro
    def rows_pass(ap, za, packed, wz, cw, rowsum, y, acc_a, acc_b, vt, first, count_a, count_b):
        for r in T.unroll(count_a):
            for v in T.unroll(c_):
                acc_a[r, v, T.ramp(0, 1, lanes)] = T.broadcast(T.int32(0), lanes)
        for r in T.unroll(count_b):
            for v in T.unroll(c_):
                acc_b[r, v, T.ramp(0, 1, lanes)] = T.broadcast(T.int32(0), lanes)
        for kq in range(kq_):
            accumulate(ap, packed, acc_a, vt, kq, first, count_a)
            accumulate(ap, packed, acc_b, vt, kq, first + count_a, count_b)
        finish(za, wz, cw, rowsum, y, acc_a, vt, first, count_a)
        finish(za, wz, cw, rowsum, y, acc_b, vt, first + count_a, count_b)

    @T.prim_func(private=True, s_tir=True)
    def int8_matmul(a: T.Buffer((*lead_, k_), a_dtype), za: T.Buffer((), "int32"),
                    packed: T.Buffer((nt_, kq_, c_, 4 * l_), "int8"), wz: T.Buffer((i64(np_),), "int32"),
                    cw: T.Buffer((i64(np_),), "int32"), y: T.Buffer((*lead_, n_), "int32")):
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
                acc_a = T.sblock_alloc_buffer((pa_, c_, l_), "int32")
                acc_b = T.sblock_alloc_buffer((pb_, c_, l_), "int32")
                for i0 in range(i64(full)):
                    rows_pass(ap, za, packed, wz, cw, rowsum, y, acc_a, acc_b, vt, i0 * p_, pa_, i64(rows - half))
                if rest > 0:
                    rows_pass(ap, za, packed, wz, cw, rowsum, y, acc_a, acc_b, vt, i64(full * rows),
                              i64(min(rest, half)), i64(max(rest - half, 0)))

    return int8_matmul.with_attr("op_pattern", 4)  # OutEWiseFusable: the requantization fuses in


# -- i8mm matrix products ------------------------------------------------------------------------
def mmla_tile(m: int, n: int) -> tuple[int, int]:
    """``(CP, RP)`` for :func:`kernel_mmla`: column pairs a tile (up to 4) and row pairs a pass
    (``CP * RP <= 24`` accumulators)."""
    pairs = -(-n // 2)
    cp = min(pairs, 4)
    return cp, max(1, min(-(-m // 2), MAX_ACCUMULATORS // cp))


def pack_mmla(centered_kn: np.ndarray, cp: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(packed, wz, cw)`` for :func:`kernel_mmla` from the int32 constant ``Bc = b - zb``
    ``[K, N]`` (as :func:`pack`): int8 ``[Np / T, Kp / 8, CP, 16]`` with ``T = 2 * CP`` columns a
    tile, ``K`` padded to ``Kp`` (a multiple of 8) and ``N`` to ``Np`` (whole tiles) with zeros;
    bytes ``8*h + j`` of pair ``p`` hold column ``t*T + 2*p + h`` at ``k = 8*q + j``, the 8x2
    matrix ``smmla`` takes."""
    packed = pack(centered_kn, 1, 1)
    if packed is None:
        return None
    k, n = centered_kn.shape
    _, wz, cw = packed
    offset = -wz[:n].astype(np.int64)
    w = (centered_kn - offset).T.astype(np.int8)  # [N, K], as pack() chose
    kp, tile = -(-k // 8) * 8, 2 * cp
    np_ = -(-n // tile) * tile
    w = np.pad(w, ((0, np_ - n), (0, kp - k)))
    wz, cw = np.pad(wz[:n], (0, np_ - n)), np.pad(cw[:n], (0, np_ - n))
    blocks = w.reshape(np_ // tile, cp, 2, kp // 8, 8).transpose(0, 3, 1, 2, 4).reshape(np_ // tile, kp // 8, cp, 16)
    return np.ascontiguousarray(blocks), wz, cw


def kernel_mmla(lead: tuple[int, ...], k: int, n: int, a_dtype: str, cp: int, rp: int) -> tvm.tirx.PrimFunc:
    """``y[*lead, N] (int32) = (a - za) @ (w - wz)`` as :func:`kernel`, on AArch64 i8mm: each
    ``smmla`` multiplies two rows' 8 activations by two columns' 8 weights into a 2x2 int32
    block. A prologue writes the activations signed (``a' = a - 128`` for uint8), ``K`` padded to
    a multiple of 8 and the rows to an even count, and sums each row; then in parallel over
    tiles of ``2 * CP`` columns, per pass of ``RP`` row pairs, ``RP * CP`` blocks stay in
    registers across ``K``; the corrections are applied as the blocks are stored."""
    m = int(np.prod(lead))
    kp, mp, tile = -(-k // 8) * 8, -(-m // 2) * 2, 2 * cp
    np_ = -(-n // tile) * tile
    offset = -128 if a_dtype == "uint8" else 0
    i64 = T.int64
    lead_ = [i64(d) for d in lead]
    m_, mp_, k_, kb_, n_ = i64(m), i64(mp), i64(k), i64(kp // 8), i64(n)
    nt_, tile_, cp_ = i64(np_ // tile), i64(tile), i64(cp)
    full, rest = divmod(mp // 2, rp)
    at, columns = row_indexing(lead_)

    @T.macro
    def pass_(ap, za, packed, wz, cw, rowsum, y, acc, vt, first, count):  # rows 2*first .. 2*(first+count)
        for r in T.unroll(count):
            for v in T.unroll(cp_):
                acc[r, v, T.ramp(0, 1, 4)] = T.broadcast(T.int32(0), 4)
        for q in range(kb_):
            for r in T.unroll(count):
                for v in T.unroll(cp_):
                    acc[r, v, T.ramp(0, 1, 4)] = T.call_llvm_pure_intrin(
                        "int32x4", SMMLA.intrinsic, acc[r, v, T.ramp(0, 1, 4)],
                        T.Shuffle([ap[(first + r) * 2, T.ramp(q * 8, 1, 8)], ap[(first + r) * 2 + 1, T.ramp(q * 8, 1, 8)]],
                                  list(range(16))),
                        packed[vt, q, v, T.ramp(0, 1, 16)])
        for r in T.unroll(count):
            for v in T.unroll(cp_):
                for lane in T.unroll(4):
                    if (first + r) * 2 + lane // 2 < m_ and vt * tile_ + v * 2 + lane % 2 < n_:
                        y[at((first + r) * 2 + lane // 2, vt * tile_ + v * 2 + lane % 2)] = (
                            acc[r, v, lane] - wz[vt * tile_ + v * 2 + lane % 2] * rowsum[(first + r) * 2 + lane // 2]
                            - (za[()] + offset) * cw[vt * tile_ + v * 2 + lane % 2])

    @T.prim_func(private=True, s_tir=True)
    def int8_matmul_mmla(a: T.Buffer((*lead_, k_), a_dtype), za: T.Buffer((), "int32"),
                         packed: T.Buffer((nt_, kb_, cp_, 16), "int8"), wz: T.Buffer((i64(np_),), "int32"),
                         cw: T.Buffer((i64(np_),), "int32"), y: T.Buffer((*lead_, n_), "int32")):
        ap = T.alloc_buffer((mp_, kb_ * 8), "int8")
        rowsum = T.alloc_buffer((mp_,), "int32")
        for i in range(mp_):
            with T.sblock("int8_prologue"):
                vi = T.axis.spatial(mp_, i)
                T.reads(a[at(T.min(vi, m_ - 1), slice(0, k_))])
                T.writes(ap[vi, 0:kb_ * 8], rowsum[vi])
                T.sblock_attr({PROLOGUE_ATTR: 1})
                for kk in range(kb_ * 8):
                    ap[vi, kk] = T.Cast("int8", T.if_then_else(
                        vi < m_ and kk < k_, T.Cast("int32", a[at(T.min(vi, m_ - 1), T.min(kk, k_ - 1))]) + offset, 0))
                rowsum[vi] = 0
                for kk in range(kb_ * 8):
                    rowsum[vi] = rowsum[vi] + T.Cast("int32", ap[vi, kk])
        for t in range(nt_):
            with T.sblock("int8_matmul"):
                vt = T.axis.spatial(nt_, t)
                T.reads(ap[0:mp_, 0:kb_ * 8], rowsum[0:mp_], za[()], packed[vt, 0:kb_, 0:cp_, 0:16],
                        wz[vt * tile_:vt * tile_ + tile_], cw[vt * tile_:vt * tile_ + tile_])
                T.writes(y[columns(vt * tile_, tile_)])
                T.sblock_attr({INT8_ATTR: 1, "edgecc.isa": SMMLA.intrinsic})
                acc = T.sblock_alloc_buffer((i64(rp), cp_, i64(4)), "int32")
                for i0 in range(i64(full)):
                    pass_(ap, za, packed, wz, cw, rowsum, y, acc, vt, i0 * rp, i64(rp))
                if rest > 0:
                    pass_(ap, za, packed, wz, cw, rowsum, y, acc, vt, i64(full * rp), i64(rest))

    return int8_matmul_mmla.with_attr("op_pattern", 4)


# -- CUDA ----------------------------------------------------------------------------------------
DP4A_THREADS = (8, 32)  # threads a block: rows x columns of outputs
DP4A_RULE = "edgecc.int8-dp4a"


def pack_dp4a(centered_kn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(packed, wz, cw)`` for :func:`kernel_dp4a` from ``Bc = b - zb`` ``[K, N]`` (as
    :func:`pack`): int32 ``[Kp / 4, N]``, each word the four int8 weights of one column at
    ``k = 4*q .. 4*q + 3`` (byte ``j``: ``k = 4*q + j``), ``K`` zero-padded to ``Kp``."""
    packed = pack(centered_kn, 1, 1)
    if packed is None:
        return None
    k, n = centered_kn.shape
    _, wz, cw = packed
    w = (centered_kn + wz[:n].astype(np.int64)).astype(np.int8)  # [K, N], as pack() chose
    kp = -(-k // 4) * 4
    w = np.pad(w, ((0, kp - k), (0, 0)))
    words = np.ascontiguousarray(w.reshape(kp // 4, 4, n).transpose(0, 2, 1)).view(np.int32).reshape(kp // 4, n)
    return words, wz[:n], cw[:n]


def kernel_dp4a(lead: tuple[int, ...], k: int, n: int, a_dtype: str) -> tvm.tirx.PrimFunc:
    """``y[*lead, N] (int32) = (a - za) @ (w - wz)`` as :func:`kernel`, on CUDA with ``__dp4a``
    (written scheduled): one kernel packs each row's activations signed (``a' = a - 128`` for
    uint8) four to a word and sums them; another gives each thread one output, its column's
    weight words read coalesced across the warp, and applies the corrections."""
    m = int(np.prod(lead))
    kq = -(-k // 4)
    offset = -128 if a_dtype == "uint8" else 0
    ty, tx = DP4A_THREADS
    i64 = T.int64
    lead_ = [i64(d) for d in lead]
    m_, k_, kq_, n_ = i64(m), i64(k), i64(kq), i64(n)
    at, _ = row_indexing(lead_)

    @T.prim_func(private=True, s_tir=True)
    def int8_matmul_dp4a(a: T.Buffer((*lead_, k_), a_dtype), za: T.Buffer((), "int32"),
                         packed: T.Buffer((kq_, n_), "int32"), wz: T.Buffer((n_,), "int32"),
                         cw: T.Buffer((n_,), "int32"), y: T.Buffer((*lead_, n_), "int32")):
        ap = T.alloc_buffer((m_, kq_), "int32")
        rowsum = T.alloc_buffer((m_,), "int32")
        for bx in T.thread_binding(i64(-(-m // 64)), thread="blockIdx.x"):
            for tx_ in T.thread_binding(i64(64), thread="threadIdx.x"):
                with T.sblock("int8_rows"):
                    vi = T.axis.spatial(m_, bx * 64 + tx_)
                    T.where(bx * 64 + tx_ < m_)
                    rowsum[vi] = 0
                    for q in range(kq_):
                        ap[vi, q] = T.int32(0)
                        for j in range(4):
                            if q * 4 + j < k_:
                                ap[vi, q] = ap[vi, q] | T.shift_left(
                                    T.bitwise_and(T.Cast("int32", a[at(vi, q * 4 + j)]) + offset, 255), T.Cast("int32", j * 8))
                                rowsum[vi] = rowsum[vi] + T.Cast("int32", a[at(vi, q * 4 + j)]) + offset
        for by in T.thread_binding(i64(-(-m // ty)), thread="blockIdx.y"):
            for bx in T.thread_binding(i64(-(-n // tx)), thread="blockIdx.x"):
                for ty_ in T.thread_binding(i64(ty), thread="threadIdx.y"):
                    for tx_ in T.thread_binding(i64(tx), thread="threadIdx.x"):
                        with T.sblock("int8_dp4a"):
                            vm = T.axis.spatial(m_, by * ty + ty_)
                            vn = T.axis.spatial(n_, bx * tx + tx_)
                            T.where(by * ty + ty_ < m_ and bx * tx + tx_ < n_)
                            acc = T.sblock_alloc_buffer((1,), "int32", scope="local")
                            acc[0] = 0
                            for q in range(kq_):
                                acc[0] = T.call_pure_extern("int32", "__dp4a", ap[vm, q], packed[q, vn], acc[0])
                            y[at(vm, vn)] = acc[0] - wz[vn] * rowsum[vm] - (za[()] + offset) * cw[vn]

    # Opaque: its epilogue is left to its own (dlight) kernel rather than fused unscheduled.
    return int8_matmul_dp4a.with_attr("op_pattern", 8).with_attr("tirx.is_scheduled", True).with_attr(
        "edgecc.schedule", DP4A_RULE)


def kernel_of(sch: Schedule):
    """The INT8 matmul or conv block of a (fused) kernel, or None."""
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        annotations = sch.get(block).annotations
        if INT8_ATTR in annotations or CONV_ATTR in annotations:
            return block
    return None


def _loads(expr, buffer) -> int:
    """How many times ``expr`` reads ``buffer``."""
    if isinstance(expr, tvm.ir.expr.TensorLoad):
        return int(expr.source.same_as(buffer)) + sum(_loads(i, buffer) for i in expr.indices)
    total = 0
    for field in ("a", "b", "value", "condition", "true_value", "false_value", "base"):
        child = getattr(expr, field, None)
        if isinstance(child, tvm.ir.expr.Expr):
            total += _loads(child, buffer)
    for child in getattr(expr, "args", None) or []:
        if isinstance(child, tvm.ir.expr.Expr):
            total += _loads(child, buffer)
    return total


def _reused_values(sch: Schedule, keep) -> list:
    """Epilogue blocks a consumer reads more than twice per element (an erf polynomial's input,
    say): inlined, a quantize/dequantize chain would be recomputed for every use."""
    kept = {sch.get(b).name_hint for b in keep}
    reused = []
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        node = sch.get(block)
        if node.name_hint in kept or len(node.writes) != 1:
            continue
        written = node.writes[0].source
        for consumer in sch.get_consumers(block):
            body = sch.get(consumer).body
            if isinstance(body, tvm.tirx.BufferStore) and _loads(body.value, written) > 2:
                reused.append(block)
                break
    return reused


def _epilogue_at(sch: Schedule, block, loop, lanes: int, first_loop: int) -> None:
    """Inline the epilogue after ``block`` (but values it would recompute, see
    :func:`_reused_values`), then compute what is left of it per iteration of ``loop``,
    vectorised."""
    prologue = [b for b in sch.get_child_blocks(sch.get_sblock("root")) if PROLOGUE_ATTR in sch.get(b).annotations]
    keep = [block] + prologue
    inline_spatial_blocks(sch, keep=keep + _reused_values(sch, keep))
    names = {sch.get(b).name_hint for b in keep}
    after = False
    for other in sch.get_child_blocks(sch.get_sblock("root")):
        if other.same_as(block) or sch.get(other).name_hint == sch.get(block).name_hint:
            after = True
            continue
        if after and sch.get(other).name_hint not in names:
            sch.reverse_compute_at(other, loop)
            _vectorize_inner(sch, sch.get_loops(other)[first_loop:], lanes)


def schedule(sch: Schedule, block, lanes: int) -> str:
    """Parallel tiles (and prologue rows); the fused epilogue computed per tile, vectorised."""
    if CONV_ATTR in sch.get(block).annotations:
        return schedule_conv(sch, block, lanes)
    prologue = next(b for b in sch.get_child_blocks(sch.get_sblock("root"))
                    if PROLOGUE_ATTR in sch.get(b).annotations)
    tile = sch.get_loops(block)[-1]
    _epilogue_at(sch, block, tile, lanes, 1)
    sch.parallel(sch.get_loops(prologue)[0])
    sch.parallel(tile)
    return "int8-matmul"


# -- convolutions -------------------------------------------------------------------------------
CONV_ATTR = "edgecc.int8_conv"


def conv_tile(oc: int, ow: int, lanes: int) -> tuple[int, int]:
    """``(C, P)`` for a conv: vectors of output channels a tile (up to 4) and output pixels a
    block (``C * P <= 24`` accumulators). ``C`` divides ``OC / lanes`` when that is whole; a
    ragged ``OC`` is padded to whole tiles of 4 vectors anyway (see :func:`padded_channels`)."""
    vectors = -(-oc // lanes)
    c = min(vectors, 4) if oc % lanes else next(c for c in (4, 3, 2, 1) if vectors % c == 0)
    return c, max(1, min(ow, MAX_ACCUMULATORS // c))


def padded_channels(oc: int, lanes: int, c: int) -> int:
    """``OCp``: output channels rounded up to whole tiles of ``C`` vectors."""
    return -(-oc // (c * lanes)) * c * lanes


def pack_conv(centered_oihw: np.ndarray, lanes: int, c: int, dot: bool = True) -> tuple[np.ndarray, np.ndarray] | None:
    """``(packed, cw)`` from the int32 constant ``W - wz`` ``[OC, C, KH, KW]`` when every value
    fits int8 (else None).

    The reduction of one kernel row runs over ``r = kx * C + c`` (the order an input row holds
    those values channels-last), zero-padded to ``R``, a multiple of 4; output channels are
    zero-padded to ``OCp`` (:func:`padded_channels`). ``packed`` is int8 ``[OCp / T, KH, R / 4, C,
    4 * L]``, byte ``4*i + j`` of vector ``v`` (``j*L + i`` where not ``dot``, see
    :func:`_lane_order`) holding the weight of output channel ``t*T + v*L + i`` at
    ``(ky, r = 4*rq + j)``; ``cw[oc]`` is the sum of each output channel's
    weights (``OCp`` of them)."""
    oc, ch, kh, kw = centered_oihw.shape
    if centered_oihw.min(initial=0) < -128 or centered_oihw.max(initial=0) > 127:
        return None
    r = -(-kw * ch // 4) * 4
    ocp = padded_channels(oc, lanes, c)
    tile = c * lanes
    w = centered_oihw.astype(np.int8).transpose(0, 2, 3, 1).reshape(oc, kh, kw * ch)  # [OC, KH, (kx, c)]
    w = np.pad(w, ((0, ocp - oc), (0, 0), (0, r - kw * ch)))
    i, j = _lane_order(dot)
    packed = w.reshape(ocp // tile, c, lanes, kh, r // 4, 4).transpose(0, 3, 4, 1, 2 + i * 3, 2 + j * 3).reshape(
        ocp // tile, kh, r // 4, c, 4 * lanes)
    cw = w.reshape(ocp, -1).astype(np.int64).sum(axis=1).astype(np.int32)
    return np.ascontiguousarray(packed), cw


def conv_reads_input(layout: str, a_dtype: str, isa: Isa, ch: int, kernel_hw, pads) -> bool:
    """Whether the conv kernel reads its NHWC input as it is, without a prologue: no padding,
    activations already in the instruction's signedness, and whole 4-byte words a kernel row."""
    offset = (128 if isa.unsigned else 0) - (128 if a_dtype == "uint8" else 0)
    return layout == "NHWC" and not any(pads) and offset == 0 and (kernel_hw[1] * ch) % 4 == 0


def conv_kernel(shape: tuple[int, int, int, int], layout: str, a_dtype: str, oc: int, kernel_hw: tuple[int, int],
                strides: tuple[int, int], pads: tuple[int, int, int, int], out_hw: tuple[int, int],
                isa: Isa, c: int, pixels: int) -> tvm.tirx.PrimFunc:
    """``y[N, OH, OW, OC]`` (int32) = ``conv2d(a - za, W)`` for ``a`` int8/uint8 ``[N, C, H, W]``
    (``layout`` NCHW) or ``[N, H, W, C]`` (NHWC; the kernel reads each row of pixels and channels flat),
    ``za`` an int32 scalar tensor, and the weight packed by :func:`pack_conv`; padding is the
    zero point, as ONNX Runtime pads.

    A prologue writes ``a' = a + offset`` as rows ``[N, Hp, Wp * C + 4]`` (channels-last,
    spatially padded with ``za'``, 4 bytes of slack a row); where the input already is that
    (:func:`conv_reads_input`), the kernel reads it directly. Then in parallel over (tile, image,
    output row), per block of up to ``pixels`` output pixels, ``C`` accumulators a pixel stay in
    registers across the window, each kernel row one run of ``R`` contiguous bytes, and ``za' *
    cw`` is subtracted once at the end: ``sum (a' - za') w = sum a' w - za' * cw`` (padding holds
    ``za'``, so it adds nothing; the bytes past ``KW * C`` meet zero weights)."""
    lanes = isa.lanes
    tile = c * lanes
    n, ch, h, w = shape if layout == "NCHW" else (shape[0], shape[3], shape[1], shape[2])
    kh, kw = kernel_hw
    sh, sw = strides
    pt, pl, pb, pr = pads
    oh, ow = out_hw
    rq = -(-kw * ch // 4)
    hp, wp = h + pt + pb, w + pl + pr
    ocp = padded_channels(oc, lanes, c)  # the last tile's channels past OC are computed, not stored
    assert ocp % tile == 0 and pixels * c <= MAX_ACCUMULATORS
    direct = conv_reads_input(layout, a_dtype, isa, ch, kernel_hw, pads)
    full, rest = divmod(ow, pixels)
    offset = (128 if isa.unsigned else 0) - (128 if a_dtype == "uint8" else 0)  # a' = a + offset
    adt = "uint8" if isa.unsigned else "int8"
    vbytes, vacc = f"int8x{4 * lanes}", f"int32x{lanes}"
    i64 = T.int64
    n_, ch_, h_, w_, oc_ = i64(n), i64(ch), i64(h), i64(w), i64(oc)
    kh_, rq_, hp_, oh_, ow_ = i64(kh), i64(rq), i64(hp), i64(oh), i64(ow)
    row_ = i64(w * ch if direct else wp * ch + 4)
    nt_, tile_, c_, p_, l_ = i64(ocp // tile), i64(tile), i64(c), i64(pixels), i64(lanes)
    ragged, dot = ocp != oc, isa.dot
    a_shape = (n_, ch_, h_, w_) if layout == "NCHW" else (n_, h_, w_, ch_)
    # The accumulators live in two buffers, each small enough to be a stack array LLVM keeps in
    # registers (a larger one would be a heap workspace it cannot promote).
    half = min(pixels, (MAX_STACK_BYTES - 1) // (c * lanes * 4))
    assert (pixels - half) * c * lanes * 4 < MAX_STACK_BYTES
    pa_, pb_ = i64(half), i64(max(pixels - half, 1))

    def a_at(b, k, y, x):
        return (b, k, y, x) if layout == "NCHW" else (b, y, x, k)

    @T.macro
    def accumulate(ap, packed, accs, vt, vb, vy, ky, q, first, count):
        for p in T.unroll(count):
            for v in T.unroll(c_):
                if dot:
                    accs[p, v, T.ramp(0, 1, lanes)] = T.call_llvm_pure_intrin(
                        vacc, isa.intrinsic, accs[p, v, T.ramp(0, 1, lanes)],
                        T.reinterpret(vbytes, T.broadcast(T.reinterpret(
                            "int32", ap[vb, vy * sh + ky, T.ramp((first + p) * (sw * ch) + q * 4, 1, 4)]), lanes)),
                        T.reinterpret(vbytes, packed[vt, ky, q, v, T.ramp(0, 1, 4 * lanes)]))
                else:
                    for j in T.unroll(4):
                        accs[p, v, T.ramp(0, 1, lanes)] = accs[p, v, T.ramp(0, 1, lanes)] + T.Cast(
                            vacc, T.broadcast(ap[vb, vy * sh + ky, (first + p) * (sw * ch) + q * 4 + j], lanes)) * T.Cast(
                            vacc, packed[vt, ky, q, v, T.ramp(j * lanes, 1, lanes)])

    @T.macro
    def finish(za, cw, y, accs, vt, vb, vy, first, count):
        for p in T.unroll(count):
            for v in T.unroll(c_):
                if ragged:
                    for lane in range(l_):
                        if vt * tile_ + v * l_ + lane < oc_:
                            y[vb, vy, first + p, vt * tile_ + v * l_ + lane] = (
                                accs[p, v, lane] - (za[()] + offset) * cw[vt * tile_ + v * l_ + lane])
                else:
                    for lane in T.vectorized(l_):
                        y[vb, vy, first + p, vt * tile_ + v * l_ + lane] = (
                            accs[p, v, lane] - (za[()] + offset) * cw[vt * tile_ + v * l_ + lane])

    @T.macro
    def pixel_block(ap, za, packed, cw, y, acc_a, acc_b, vt, vb, vy, first, count_a, count_b):
        for p in T.unroll(count_a):
            for v in T.unroll(c_):
                acc_a[p, v, T.ramp(0, 1, lanes)] = T.broadcast(T.int32(0), lanes)
        for p in T.unroll(count_b):
            for v in T.unroll(c_):
                acc_b[p, v, T.ramp(0, 1, lanes)] = T.broadcast(T.int32(0), lanes)
        for ky in range(kh_):
            for q in range(rq_):
                accumulate(ap, packed, acc_a, vt, vb, vy, ky, q, first, count_a)
                accumulate(ap, packed, acc_b, vt, vb, vy, ky, q, first + count_a, count_b)
        finish(za, cw, y, acc_a, vt, vb, vy, first, count_a)
        finish(za, cw, y, acc_b, vt, vb, vy, first + count_a, count_b)

    @T.macro
    def rows(ap, za, packed, cw, y):
        for t, b, yy in T.grid(nt_, n_, oh_):
            with T.sblock("int8_conv"):
                vt, vb, vy = T.axis.remap("SSS", [t, b, yy])
                T.reads(ap[vb, vy * sh:vy * sh + kh_, 0:row_], za[()],
                        packed[vt, 0:kh_, 0:rq_, 0:c_, 0:4 * l_], cw[vt * tile_:vt * tile_ + tile_])
                T.writes(y[vb, vy, 0:ow_, vt * tile_:vt * tile_ + tile_])
                T.sblock_attr({CONV_ATTR: 1, "edgecc.isa": isa.intrinsic, "edgecc.lanes": lanes})
                acc_a = T.sblock_alloc_buffer((pa_, c_, l_), "int32")
                acc_b = T.sblock_alloc_buffer((pb_, c_, l_), "int32")
                for i0 in range(i64(full)):
                    pixel_block(ap, za, packed, cw, y, acc_a, acc_b, vt, vb, vy, i0 * p_, pa_, i64(pixels - half))
                if rest > 0:
                    pixel_block(ap, za, packed, cw, y, acc_a, acc_b, vt, vb, vy, i64(full * pixels),
                                i64(min(rest, half)), i64(max(rest - half, 0)))

    @T.prim_func(private=True, s_tir=True)
    def int8_conv(a: T.Buffer(a_shape, a_dtype), za: T.Buffer((), "int32"),
                  packed: T.Buffer((nt_, kh_, rq_, c_, 4 * l_), "int8"), cw: T.Buffer((i64(ocp),), "int32"),
                  y: T.Buffer((n_, oh_, ow_, oc_), "int32")):
        if direct:
            a_rows = T.decl_buffer((n_, h_, w_ * ch_), a_dtype, data=a.data)  # the same bytes, rows flat
            rows(a_rows, za, packed, cw, y)
        else:
            ap = T.alloc_buffer((n_, hp_, row_), adt)
            for b, yy in T.grid(n_, hp_):
                with T.sblock("int8_prologue"):
                    vb0, vyy = T.axis.remap("SS", [b, yy])
                    T.reads(a[a_at(vb0, slice(0, ch_), slice(0, h_), slice(0, w_))] if layout == "NCHW"
                            else a[vb0, 0:h_, 0:w_, 0:ch_], za[()])
                    T.writes(ap[vb0, vyy, 0:row_])
                    T.sblock_attr({PROLOGUE_ATTR: 1})
                    for xx, k in T.grid(i64(wp), ch_):
                        ap[vb0, vyy, xx * ch_ + k] = T.Cast(adt, T.if_then_else(
                            vyy < pt or vyy >= pt + h_ or xx < pl or xx >= pl + w_, za[()] + offset,
                            T.Cast("int32", a[a_at(vb0, k, T.max(T.min(vyy - pt, h_ - 1), 0),
                                                   T.max(T.min(xx - pl, w_ - 1), 0))]) + offset))
                    for xx in range(4):
                        ap[vb0, vyy, i64(wp * ch) + xx] = T.Cast(adt, za[()] + offset)
            rows(ap, za, packed, cw, y)

    return int8_conv.with_attr("op_pattern", 4)


def schedule_conv(sch: Schedule, block, lanes: int) -> str:
    """Parallel (tile, image, row) tasks and prologue rows; the fused epilogue computed per row."""
    prologue = next((b for b in sch.get_child_blocks(sch.get_sblock("root"))
                     if PROLOGUE_ATTR in sch.get(b).annotations), None)
    t, b, row = sch.get_loops(block)
    _epilogue_at(sch, block, row, lanes, 3)
    if prologue is not None:
        loops = sch.get_loops(prologue)
        sch.parallel(sch.fuse(*loops[:2]))
    sch.parallel(sch.fuse(t, b, row))
    return "int8-conv"
