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
- ``data``    float32 ``[nnzb, R]``: ``W[b*R + i, k]`` for ``i < R``

Schedule: parallel over block rows; per tile of ``V`` vectors of pixels, ``R x V``
accumulators stay in registers across the block row's non-zero blocks. The kernel is
scheduled as written; :func:`schedule` only brings fused epilogue blocks (bias,
activation) into the tile loop, vectorised, so each output tile is finished while it
is in registers and L1.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm.s_tir import Schedule
from tvm import te
from tvm.script import tirx as T

from .cpu import _vectorize_inner, inline_spatial_blocks

SPARSE_ATTR = "edgecc.sparse"
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
    data = np.ascontiguousarray(blocks[block_row, column], dtype=np.float32)
    indices = column.astype(np.int32)
    if data.shape[0] == 0:  # an all-zero weight: one explicit zero block keeps buffers non-empty
        data, indices = np.zeros((1, rows), np.float32), np.zeros(1, np.int32)
    return data, indices, indptr


def block_count(weight_nk: np.ndarray, rows: int) -> int:
    """Non-zero ``rows`` x 1 blocks of an ``[N, K]`` weight."""
    return int(np.any(_row_blocks(weight_nk, rows) != 0, axis=2).sum())


def tile_vectors(m: int, lanes: int) -> int:
    """SIMD vectors of pixels per register tile for ``M`` rows: up to 4 (with up to 4 block
    rows, at most 16 accumulators: half of the vector registers on AVX-512 and NEON)."""
    return max(1, min(4, -(-m // lanes)))


def padded_rows(m: int, lanes: int) -> int:
    """``Mp``: ``M`` rounded up to whole register tiles."""
    tile = tile_vectors(m, lanes) * lanes
    return -(-m // tile) * tile


def padded_channels(n: int, rows: int) -> int:
    """``Np``: ``N`` rounded up to whole ``rows`` x 1 blocks (the rows of the kernel's output)."""
    return -(-n // rows) * rows


def kernel(k: int, mp: int, n: int, rows: int, nnzb: int, lanes: int, vectors: int | None = None) -> tvm.tirx.PrimFunc:
    """``yt[Np, Mp] = W @ xt[K, Mp]`` for a BSR weight of ``nnzb`` blocks of ``rows`` x 1
    (``Np`` = :func:`padded_channels`; rows past ``N`` come out zero)."""
    vectors = vectors or tile_vectors(mp, lanes)
    while rows * vectors * lanes * 4 >= MAX_STACK_BYTES and vectors % 2 == 0:
        vectors //= 2  # TVM puts accumulators of 1 KiB or more on the heap, out of registers
    tile = vectors * lanes
    assert mp % tile == 0, (mp, tile)
    i64 = T.int64
    k_, mp_, r_, nnzb_, nb_ = i64(k), i64(mp), i64(rows), i64(nnzb), i64(-(-n // rows))
    n_ = nb_ * r_  # N rounded up to whole blocks: the zero rows padding the last block row are stored
    tile_, lanes_ = i64(tile), i64(lanes)

    @T.prim_func(private=True, s_tir=True)
    def sparse_bsr(xt: T.Buffer((k_, mp_), "float32"), data: T.Buffer((nnzb_, r_), "float32"),
                   indices: T.Buffer((nnzb_,), "int32"), indptr: T.Buffer((nb_ + 1,), "int32"),
                   yt: T.Buffer((n_, mp_), "float32")):
        for nb, mo in T.grid(nb_, mp_ // tile_):
            with T.sblock("sparse_bsr"):
                vnb, vmo = T.axis.remap("SS", [nb, mo])
                T.reads(xt[0:k_, vmo * tile_:vmo * tile_ + tile_], data[0:nnzb_, 0:r_],
                        indices[0:nnzb_], indptr[vnb:vnb + 2])
                T.writes(yt[vnb * r_:vnb * r_ + r_, vmo * tile_:vmo * tile_ + tile_])
                T.sblock_attr({SPARSE_ATTR: 1})
                acc = T.sblock_alloc_buffer((r_, tile_), "float32")
                for ri in T.unroll(r_):
                    for v in T.unroll(i64(vectors)):
                        for lane in T.vectorized(lanes_):
                            acc[ri, v * lanes_ + lane] = T.float32(0)
                for e in range(indptr[vnb], indptr[vnb + 1]):
                    for ri in T.unroll(r_):
                        for v in T.unroll(i64(vectors)):
                            for lane in T.vectorized(lanes_):
                                acc[ri, v * lanes_ + lane] = acc[ri, v * lanes_ + lane] + data[
                                    T.Cast("int64", e), ri] * xt[T.Cast("int64", indices[e]),
                                                                 vmo * tile_ + v * lanes_ + lane]
                for ri in T.unroll(r_):
                    for v in T.unroll(i64(vectors)):
                        for lane in T.vectorized(lanes_):
                            yt[vnb * r_ + ri, vmo * tile_ + v * lanes_ + lane] = acc[ri, v * lanes_ + lane]

    return sparse_bsr.with_attr("op_pattern", 4)  # OutEWiseFusable: bias and activation fuse in


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
    """``(block, kind)`` of a (fused) kernel's sparse or transpose block, or None."""
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        annotations = sch.get(block).annotations
        for kind in (SPARSE_ATTR, TRANSPOSE_ATTR):
            if kind in annotations:
                return block, kind
    return None


def schedule(sch: Schedule, block, lanes: int) -> str:
    """Parallel block rows; the fused epilogue (bias, activation: elementwise blocks reading the
    sparse output) inlined into one block computed per output tile, vectorised."""
    keep = [block]
    inline_spatial_blocks(sch, keep=keep)
    nb, mo = sch.get_loops(block)[-2:]
    for consumer in sch.get_consumers(block):
        sch.reverse_compute_at(consumer, mo)
        _vectorize_inner(sch, sch.get_loops(consumer)[2:], lanes)
    sch.parallel(nb)
    return "sparse-bsr"
