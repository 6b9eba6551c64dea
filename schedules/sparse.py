"""Sparse weight kernels: block-sparse (BSR) matmul with R x 1 blocks, run channels-first.

:mod:`edgecc.passes.sparsify` replaces a dense matmul or 1x1 conv whose constant weight is
sparse enough by :func:`kernel`. It computes ``yt = W @ xt``: ``W`` is the weight as
``[N, K]`` (output channels by input channels) in BSR form, ``xt`` the activations
transposed to ``[K, Mp]`` (``M`` rows, i.e. tokens or pixels, padded to ``Mp``), ``yt``
the output ``[Np, Mp]`` (``N`` rounded up to whole blocks). In that layout every non-zero weight block is a broadcast
multiply-add over a contiguous run of pixels, so the kernel vectorises over ``M``
whatever the sparsity pattern: one SIMD vector of ``xt`` is loaded per block and reused
by the block's ``R`` rows (XNNPACK's sparse-inference layout).

BSR form (:func:`to_bsr`), for ``W`` of shape ``[N, K]`` and blocks of ``R`` rows by
one column, ``NB = N / R`` block rows:

- ``indptr``  int32 ``[NB + 1]``: block row ``b`` owns blocks ``indptr[b] .. indptr[b+1]-1``
- ``indices`` int32 ``[nnzb]``: the column ``k`` of each block
- ``data``    ``[nnzb, R]`` (float32, or int32 for quantized weights): ``W[b*R + i, k]`` for ``i < R``

Schedule: parallel over block rows; per tile of ``V`` vectors of pixels, ``R x V``
accumulators stay in registers across the block row's non-zero blocks (:func:`tile_vectors`:
up to 15 accumulators, the row's last tile narrower when the vectors do not divide evenly,
so ``Mp`` is ``M`` rounded up to whole vectors only). The kernel is scheduled as written;
:func:`schedule` only brings fused epilogue blocks (bias, activation) in after each block
row, vectorised, so each output row is finished while it is in L1.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm.s_tir import Schedule
from tvm import te
from tvm.script import tirx as T

from .cpu import _vectorize_inner, inline_spatial_blocks

SPARSE_ATTR = "edgecc.sparse"
DEPTHWISE_ATTR = "edgecc.depthwise_chw"
TRANSPOSE_ATTR = "edgecc.transpose"
MAX_STACK_BYTES = 1024  # TVM's kMaxStackAlloca: larger local buffers go to the workspace heap


def _row_blocks(weight_nk: np.ndarray, rows: int) -> np.ndarray:
    """``[NB, K, R]``: the weight's block rows, the last one padded with zero rows."""
    n, k = weight_nk.shape
    padded = np.pad(weight_nk, ((0, -n % rows), (0, 0)))
    return padded.reshape(-1, rows, k).transpose(0, 2, 1)


def to_bsr(weight_nk: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(data, indices, indptr)`` of an ``[N, K]`` weight in ``rows`` x 1 blocks (the last block
    row padded with zeros when ``rows`` does not divide ``N``); a block is stored when any of
    its values is non-zero."""
    blocks = _row_blocks(weight_nk, rows)
    mask = np.any(blocks != 0, axis=2)
    block_row, column = np.nonzero(mask)  # row-major: sorted by block row, then column
    indptr = np.zeros(blocks.shape[0] + 1, dtype=np.int32)
    np.cumsum(mask.sum(axis=1), out=indptr[1:])
    data = np.ascontiguousarray(blocks[block_row, column], dtype=weight_nk.dtype)
    indices = column.astype(np.int32)
    if data.shape[0] == 0:  # an all-zero weight: one explicit zero block keeps buffers non-empty
        data, indices = np.zeros((1, rows), weight_nk.dtype), np.zeros(1, np.int32)
    return data, indices, indptr


def block_count(weight_nk: np.ndarray, rows: int) -> int:
    """Non-zero ``rows`` x 1 blocks of an ``[N, K]`` weight."""
    return int(np.any(_row_blocks(weight_nk, rows) != 0, axis=2).sum())


MAX_ACCUMULATORS = 15  # R x V vector accumulators per tile: registers to spare, and under 1 KiB


def tile_vectors(vectors: int, rows: int) -> tuple[int, int]:
    """``(V, tiles)``: SIMD vectors per register tile and the number of tiles for a row of
    ``vectors`` vectors of pixels with ``rows``-row blocks. Tiles are as wide as
    :data:`MAX_ACCUMULATORS` allows (each block's index and weight loads are then shared by
    more multiply-adds) and as even as possible; the last tile may be narrower."""
    widest = max(1, MAX_ACCUMULATORS // rows)
    tiles = -(-vectors // widest)
    return -(-vectors // tiles), tiles


def padded_rows(m: int, lanes: int) -> int:
    """``Mp``: ``M`` rounded up to whole SIMD vectors."""
    return -(-m // lanes) * lanes


def padded_channels(n: int, rows: int) -> int:
    """``Np``: ``N`` rounded up to whole ``rows`` x 1 blocks (the rows of the kernel's output)."""
    return -(-n // rows) * rows


def kernel(k: int, mp: int, n: int, rows: int, nnzb: int, lanes: int, dtype: str = "float32") -> tvm.tirx.PrimFunc:
    """``yt[Np, Mp] = W @ xt[K, Mp]`` for a BSR weight of ``nnzb`` blocks of ``rows`` x 1
    (``Np`` = :func:`padded_channels`; rows past ``N`` come out zero). ``dtype``: float32, or
    int32 for a quantized matmul's zero-point-centred integers (exact integer sums)."""
    assert mp % lanes == 0, (mp, lanes)
    vectors, _ = tile_vectors(mp // lanes, rows)
    full, rest = divmod(mp // lanes, vectors)
    assert rows * vectors * lanes * 4 < MAX_STACK_BYTES  # else TVM puts the accumulators on the heap
    i64 = T.int64
    k_, mp_, r_, nnzb_, nb_ = i64(k), i64(mp), i64(rows), i64(nnzb), i64(-(-n // rows))
    n_ = nb_ * r_  # N rounded up to whole blocks: the zero rows padding the last block row are stored
    lanes_ = i64(lanes)

    @T.macro(hygienic=False)
    def tile(start, width):
        """One register tile: ``width`` vectors of pixels from column ``start``."""
        for ri in T.unroll(r_):
            for v in T.unroll(width):
                for lane in T.vectorized(lanes_):
                    acc[ri, v * lanes_ + lane] = T.Cast(dtype, 0)
        for e in range(indptr[vnb], indptr[vnb + 1]):
            for ri in T.unroll(r_):
                for v in T.unroll(width):
                    for lane in T.vectorized(lanes_):
                        acc[ri, v * lanes_ + lane] = acc[ri, v * lanes_ + lane] + data[
                            T.Cast("int64", e), ri] * xt[T.Cast("int64", indices[e]), start + v * lanes_ + lane]
        for ri in T.unroll(r_):
            for v in T.unroll(width):
                for lane in T.vectorized(lanes_):
                    yt[vnb * r_ + ri, start + v * lanes_ + lane] = acc[ri, v * lanes_ + lane]

    @T.prim_func(private=True, s_tir=True)
    def sparse_bsr(xt: T.Buffer((k_, mp_), dtype), data: T.Buffer((nnzb_, r_), dtype),
                   indices: T.Buffer((nnzb_,), "int32"), indptr: T.Buffer((nb_ + 1,), "int32"),
                   yt: T.Buffer((n_, mp_), dtype)):
        for nb in range(nb_):
            with T.sblock("sparse_bsr"):
                vnb = T.axis.spatial(nb_, nb)
                T.reads(xt[0:k_, 0:mp_], data[0:nnzb_, 0:r_], indices[0:nnzb_], indptr[vnb:vnb + 2])
                T.writes(yt[vnb * r_:vnb * r_ + r_, 0:mp_])
                T.sblock_attr({SPARSE_ATTR: 1})
                acc = T.sblock_alloc_buffer((r_, i64(vectors) * lanes_), dtype)
                for mo in range(i64(full)):
                    tile(mo * i64(vectors * lanes), i64(vectors))
                if rest > 0:
                    tile(i64(full * vectors * lanes), i64(rest))

    return sparse_bsr.with_attr("op_pattern", 4)  # OutEWiseFusable: bias and activation fuse in


def depthwise_kernel(rows_in: int, mp_in: int, channels: int, height: int, width: int, stride: int,
                     mp_out: int, lanes: int) -> tvm.tirx.PrimFunc:
    """A 3x3 depthwise conv (padding 1, ``stride`` 1 or 2) in the channels-first layout, so that
    a sparse mobile network runs channels-first from one sparse 1x1 conv to the next with no
    layout change (XNNPACK's sparse-inference pipeline). ``xt[rows_in, mp_in]`` holds channel
    ``c``'s ``height x width`` image in row ``c``; the output ``yt[channels, mp_out]`` the
    ``OH x OW`` result likewise, its padding columns zero.

    Per channel (in parallel), the image is copied into a zero-bordered plane, split by column
    phase for stride 2 (``plane[p, r, i]`` is padded column ``stride*i + p``), so that every
    tap reads a contiguous run; each output row is then computed in whole SIMD vectors (the
    last one overhanging into columns that are dropped) and copied out."""
    s = stride
    out_h, out_w = (height - 1) // s + 1, (width - 1) // s + 1
    owv = -(-out_w // lanes) * lanes
    wp = owv + 2 // s  # tap kw of output column ow reads plane column ow + kw // s
    assert s in (1, 2) and mp_out >= out_h * out_w and mp_in >= height * width
    assert owv * 4 < MAX_STACK_BYTES  # the output row buffer stays on the stack
    even, odd = width // s + 1, (width + 1) // 2  # the first plane column past the image per phase
    i64 = T.int64
    c_, h_, w_, s_, wp_, lanes_ = i64(channels), i64(height), i64(width), i64(s), i64(wp), i64(lanes)
    oh_, ow_, owv_, mpo_ = i64(out_h), i64(out_w), i64(owv), i64(mp_out)

    @T.prim_func(private=True, s_tir=True)
    def depthwise_chw(xt: T.Buffer((i64(rows_in), i64(mp_in)), "float32"), weight: T.Buffer((c_, i64(9)), "float32"),
                      yt: T.Buffer((c_, mpo_), "float32")):
        for c in range(c_):
            with T.sblock("depthwise_chw"):
                vc = T.axis.spatial(c_, c)
                T.reads(xt[vc, 0:h_ * w_], weight[vc, 0:9])
                T.writes(yt[vc, 0:mpo_])
                T.sblock_attr({DEPTHWISE_ATTR: 1})
                plane = T.sblock_alloc_buffer((s_, h_ + 2, wp_), "float32")
                line = T.sblock_alloc_buffer((owv_,), "float32")
                for p, i in T.grid(s_, wp_):
                    plane[p, 0, i] = T.float32(0)
                    plane[p, h_ + 1, i] = T.float32(0)
                for r in range(h_):
                    plane[0, r + 1, 0] = T.float32(0)
                    for i in range(even, wp_):  # past the image in phase 0
                        plane[0, r + 1, i] = T.float32(0)
                    for i in range(w_ // s_):  # padded column s*i: image column s*i - 1
                        plane[0, r + 1, i + 1] = xt[vc, r * w_ + s_ * i + s_ - 1]
                    if s == 2:
                        for i in range(odd, wp_):
                            plane[1, r + 1, i] = T.float32(0)
                        for i in range(odd):  # padded column 2*i + 1: image column 2*i
                            plane[1, r + 1, i] = xt[vc, r * w_ + 2 * i]
                for oh in range(oh_):
                    for v in range(owv_ // lanes_):
                        for lane in T.vectorized(lanes_):
                            line[v * lanes_ + lane] = T.float32(0)
                        for kh in T.unroll(3):
                            for kw in T.unroll(3):
                                for lane in T.vectorized(lanes_):
                                    line[v * lanes_ + lane] = line[v * lanes_ + lane] + weight[vc, kh * 3 + kw] * plane[
                                        kw % s_, oh * s_ + kh, v * lanes_ + lane + kw // s_]
                    for ow in range(ow_):
                        yt[vc, oh * ow_ + ow] = line[ow]
                for j in range(mpo_ - oh_ * ow_):
                    yt[vc, oh_ * ow_ + j] = T.float32(0)

    return depthwise_chw.with_attr("op_pattern", 4)  # OutEWiseFusable: bias and activation fuse in


def _unravel(index, dims):
    """Row-major ``index`` into ``dims``."""
    out = []
    for dim in reversed(dims):
        out.append(index % dim)
        index = index // dim
    return out[::-1]


def to_channels_first(x: te.Tensor, mp: int) -> te.Tensor:
    """``[..., K]`` -> ``[K, Mp]``: the ``M`` rows of ``x`` as columns, the padding columns
    repeating the last row (they only ever meet padding columns downstream)."""
    dims = [int(d) for d in x.shape]
    m = int(np.prod(dims[:-1]))
    return te.compute((dims[-1], mp), lambda k, j: x(*_unravel(tvm.te.min(j, m - 1), dims[:-1]), k),
                      name="to_channels_first", attrs={TRANSPOSE_ATTR: 1})


def from_channels_first(yt: te.Tensor, shape) -> te.Tensor:
    """``[Np, Mp]`` -> ``shape`` (``[..., N]``): the first ``N`` rows and ``M`` columns, transposed."""
    dims = [int(d) for d in shape]

    def value(*index):
        row = index[0]
        for i, dim in zip(index[1:-1], dims[1:-1]):
            row = row * dim + i
        return yt[index[-1], row]

    return te.compute(dims, value, name="from_channels_first", attrs={TRANSPOSE_ATTR: 1})


def _divisor(extent: int, lanes: int) -> int:
    return next(t for t in (lanes, 8, 4, 2, 1) if extent % t == 0)


def schedule_transpose(sch: Schedule, block, lanes: int) -> str:
    """A layout change in square tiles of a vector's width: each tile's reads stay in L1
    (a plain loop over the output reads one value from each of thousands of rows). Vectors run
    along the axis contiguous in the input for :func:`to_channels_first` (its row index
    arithmetic then stays scalar) and in the output for :func:`from_channels_first`."""
    inline_spatial_blocks(sch, keep=[block])
    for consumer in sch.get_consumers(block):  # a fused residual add, say
        sch.reverse_compute_inline(consumer)
    loops = sch.get_loops(block)
    outer = sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0]
    inner = loops[-1]
    extents = [int(sch.get(loop).extent) for loop in (outer, inner)]
    o_out, o_in = sch.split(outer, [None, _divisor(extents[0], lanes)])
    i_out, i_in = sch.split(inner, [None, _divisor(extents[1], lanes)])
    if sch.get(block).name_hint.startswith("to_channels_first"):
        sch.reorder(o_out, i_out, i_in, o_in)
        sch.vectorize(o_in)
    else:
        sch.reorder(o_out, i_out, o_in, i_in)
        sch.vectorize(i_in)
    sch.parallel(o_out)
    return "transpose-tiled"


def kernel_of(sch: Schedule):
    """``(block, kind)`` of a (fused) kernel's sparse, depthwise or transpose block, or None."""
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        annotations = sch.get(block).annotations
        for kind in (SPARSE_ATTR, DEPTHWISE_ATTR, TRANSPOSE_ATTR):
            if kind in annotations:
                return block, kind
    return None


def schedule_depthwise(sch: Schedule, block, lanes: int) -> str:
    """Parallel channels; the fused epilogue computed per channel right after it, vectorised."""
    inline_spatial_blocks(sch, keep=[block])
    channel = sch.get_loops(block)[-1]
    for consumer in sch.get_consumers(block):
        sch.reverse_compute_at(consumer, channel)
        _vectorize_inner(sch, sch.get_loops(consumer)[1:], lanes)
    sch.parallel(channel)
    return "depthwise-chw"


def schedule(sch: Schedule, block, lanes: int) -> str:
    """Parallel block rows; the fused epilogue (bias, activation: elementwise blocks reading the
    sparse output) inlined into one block computed after each block row, vectorised."""
    keep = [block]
    inline_spatial_blocks(sch, keep=keep)
    nb = sch.get_loops(block)[-1]
    for consumer in sch.get_consumers(block):
        sch.reverse_compute_at(consumer, nb)
        _vectorize_inner(sch, sch.get_loops(consumer)[1:], lanes)
    sch.parallel(nb)
    return "sparse-bsr"
