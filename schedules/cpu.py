"""CPU schedule rules: register tiles along the SIMD lanes, parallel outer loops.

Every rule takes an ``s_tir.Schedule`` of one PrimFunc and the fp32 lane count
of the target (16 for AVX-512, 4 for NEON, VLEN/32 for RVV), schedules it in
place and returns True, or returns False without touching it.

``tiled_reduction`` is the workhorse: conv2d (packed, depthwise), matmul,
batch matmul, pooling and channel reductions are all reductions whose innermost
output axis is contiguous in memory. It computes a register tile of
``rb`` positions x ``vb`` contiguous outputs in a local accumulator, vectorised
over the contiguous axis and unrolled over the other, then writes the tile out
through the fused epilogue (bias, residual add, activation) while it is still in
registers. Loops outside the tile are fused and run in parallel.

``partial_tiles=False`` (RISC-V) keeps to what TVM 0.27 lowers to RVV's scalable
vectors: register tiles that divide their loop exactly, and no vectorised selects
or transcendental calls (those loops stay scalar).
"""

from __future__ import annotations

import re

import tvm
from tvm import tirx
from tvm.sym.analyzer import Analyzer
from tvm.s_tir import Schedule

from .compute import output_block

DATA_PAR, REDUCE = tirx.IterVar.DataPar, tirx.IterVar.CommReduce
ACCUMULATORS = 24  # vector registers a tile may hold: 32 on AVX-512, NEON and RVV, minus operands
STRETCH_DEFAULT = 6  # the default tile may exceed ACCUMULATORS by a sixth (28 of 32 registers)
PARALLEL_MIN_ELEMENTS = 4096  # below this, a parallel launch costs more than it saves
PARALLEL_MIN_MACS = 32768  # the same for a reduction: multiply-adds in all (a 1x16 by 16x10 Gemm: 160)


def _extent(sch: Schedule, loop) -> int | None:
    extent = sch.get(loop).extent
    return int(extent.value) if hasattr(extent, "value") else None


def _iter_kinds(sch: Schedule, block) -> list[int]:
    return [int(iv.iter_type) for iv in sch.get(block).iter_vars]


def _is_reduction(sch: Schedule, block) -> bool:
    return REDUCE in _iter_kinds(sch, block)


def _contiguous_axis(sch: Schedule, block) -> int | None:
    """Index of the spatial iter var that is the written buffer's last index, if any."""
    node = sch.get(block)
    if len(node.writes) != 1 or not node.writes[0].region:
        return None  # several outputs, or a 0-d one (a reduction to a scalar)
    last = node.writes[0].region[-1]
    for index, iv in enumerate(node.iter_vars):
        if iv.iter_type == DATA_PAR and last.min.same_as(iv.var) and int(last.extent) == 1:
            return index
    return None


def _contiguous_in_some_input(sch: Schedule, block, axis: int) -> bool:
    """Whether iter var ``axis`` indexes the last dim of at least one buffer the block reads
    (alone or packed, as in ``oc % 32``)."""
    var = sch.get(block).iter_vars[axis].var
    return any(any(v.same_as(var) for v in tirx.analysis.undefined_vars(r.region[-1].min, []))
               for r in sch.get(block).reads)


# Constructs TVM's RVV (scalable vector) lowering cannot vectorise in TVM 0.27.
_RVV_UNSAFE = re.compile(r"if_then_else|T\.(exp|erf|tanh|log|pow|reinterpret)\b")


def _rvv_safe(sch: Schedule, block) -> bool:
    return _RVV_UNSAFE.search(str(sch.get(block).body)) is None


def _elements(sch: Schedule, block) -> int:
    """Number of elements of the (first) buffer a block writes."""
    size = 1
    for dim in sch.get(block).writes[0].source.shape:
        size *= int(dim)
    return size


def _perfect_loops(sch: Schedule, block) -> list | None:
    """The block's loops, if there is one loop per iter var in order (a fresh TE nest)."""
    loops = sch.get_loops(block)
    node = sch.get(block)
    if len(loops) != len(node.iter_vars):
        return None
    for loop, iv in zip(loops, node.iter_vars):
        if _extent(sch, loop) is None or int(iv.dom.extent) != _extent(sch, loop):
            return None
    return loops


def _choose_reg_block(extent: int, limit: int, partial_tiles: bool) -> int:
    """Register-tile length along the non-vector axis: the largest divisor of ``extent`` that
    fits (a sixth over ``limit`` is fine: 14 rows of 2 vectors still leave operand registers;
    16 rows spill, and 8 of them ran a 16-row GEMM 2.2x faster).
    Where divisors are all small, split evenly with a partial last tile if the target allows."""
    stretch = limit + limit // STRETCH_DEFAULT
    best = max(d for d in range(1, min(extent, stretch) + 1) if extent % d == 0)
    if best * 2 >= limit or not partial_tiles:
        return best
    tiles = -(-extent // limit)
    return -(-extent // tiles)


def inline_spatial_blocks(sch: Schedule, keep=()) -> None:
    """Inline every spatial block that is not an output (nor in ``keep``) into its consumers,
    so an elementwise chain becomes one block."""
    outputs = {sch.get(b).name_hint for b in sch.get_output_blocks(sch.get_sblock("root"))}
    outputs |= {sch.get(b).name_hint for b in keep}
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        node = sch.get(block)
        if node.name_hint in outputs or _is_reduction(sch, block):
            continue
        try:
            sch.compute_inline(block)
        except Exception:  # noqa: BLE001 -- a block that cannot be inlined keeps its own loop nest
            pass


def _vectorize_inner(sch: Schedule, loops, lanes: int) -> None:
    """Vectorise the innermost loop in chunks of ``lanes`` when it divides evenly."""
    inner = loops[-1]
    extent = _extent(sch, inner)
    if extent is None or extent < 2:
        return
    if extent % lanes == 0 and extent > lanes:
        _, inner = sch.split(inner, [None, lanes])
    elif extent > lanes or extent & (extent - 1):
        return
    sch.vectorize(inner)


def _widest_bits(sch: Schedule, block) -> int:
    """The widest element type a block reads or writes, in bits (32 at least): a block moving
    only bytes fills a vector with four times the float32 lanes."""
    node = sch.get(block)
    widest = max([region.source.dtype.bits for region in list(node.reads) + list(node.writes)] or [32])
    return min(max(widest, 8), 32)


def _concat_bounds(sch: Schedule, block) -> list[int] | None:
    """Where a concatenation along the innermost axis switches inputs (the constants its
    selects compare that axis with), or None for any other block."""
    node = sch.get(block)
    if not node.name_hint.startswith("T_concat") or not node.iter_vars:
        return None
    inner = node.iter_vars[-1].var
    bounds = set()

    def visit(expr):  # the selects nest, conditions first
        if isinstance(expr, (tirx.LE, tirx.LT)) and isinstance(expr.a, tirx.IntImm) and expr.b.same_as(inner):
            bounds.add(int(expr.a.value) + (1 if isinstance(expr, tirx.LT) else 0))
        elif isinstance(expr, tvm.ir.expr.Call) and expr.op.same_as(tvm.ir.Op.get("prim.if_then_else")):
            for arg in expr.args:
                visit(arg)

    if not isinstance(node.body, tirx.BufferStore):
        return None
    visit(node.body.value)
    return sorted(bounds) or None


def injective(sch: Schedule, block, lanes: int, partial_tiles: bool = True) -> None:
    """Elementwise/layout block: fuse the outer loops in parallel, vectorise the innermost
    (not a select such as padding's where ``partial_tiles`` is off: RVV lowering rejects it).
    A concatenation along the innermost axis is split there into one plain copy loop per input."""
    loops = sch.get_loops(block)
    if not loops:
        return
    if interleave(sch, block):
        return
    bounds = _concat_bounds(sch, block)
    extent = _extent(sch, loops[-1])
    if bounds is not None and extent is not None and len(loops) > 1 and bounds[-1] < extent and partial_tiles:
        vector = lanes * 32 // _widest_bits(sch, block)
        outer = sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0]
        edges = [0] + bounds + [extent]
        parts = sch.loop_partition(loops[-1], [b - a for a, b in zip(edges, edges[1:-1])] + [None])
        for part, width in zip(parts, (b - a for a, b in zip(edges, edges[1:]))):
            if width <= 4 * vector:  # (a loop not starting at 0 cannot be split: whole, or LLVM's)
                sch.vectorize(part)
        if (_extent(sch, outer) or 0) * extent >= PARALLEL_MIN_ELEMENTS:
            sch.parallel(outer)
        return
    extents = [_extent(sch, loop) for loop in loops]
    if None in extents:
        return
    total = 1
    for extent in extents:
        total *= extent
    if len(loops) > 1:
        outer = sch.fuse(*loops[:-1])
        loops = [outer, loops[-1]]
    if partial_tiles or _rvv_safe(sch, block):
        _vectorize_inner(sch, loops, lanes)
    if total >= PARALLEL_MIN_ELEMENTS and len(loops) > 1:
        sch.parallel(loops[0])


def _interleave_factor(sch: Schedule, block) -> int | None:
    """For a copy whose innermost output axis reads its input out of order as an interleave
    (a channel shuffle: ``out[..., c * G + g] = in[..., g * K + c]``): ``G``, such that the
    output axis split as ``(c, g)`` reads contiguously along ``c``. None for anything else."""
    node = sch.get(block)
    if not _is_copy(sch, block) or not node.iter_vars:
        return None
    load = node.body.value.value if isinstance(node.body.value, tirx.Cast) else node.body.value
    last = node.iter_vars[-1]
    extent = int(last.dom.extent) if hasattr(last.dom.extent, "value") else 0
    shape = [int(d) for d in load.source.shape] if all(hasattr(d, "value") for d in load.source.shape) else None
    if extent < 8 or shape is None or not _store_is_last(node):
        return None

    def address(j: int) -> int | None:
        analyzer = Analyzer()
        for iv in node.iter_vars:
            analyzer.bind(iv.var, tirx.const(j if iv.var.same_as(last.var) else 0, iv.dom.extent.ty.dtype))
        flat = 0
        for index, dim in zip(load.indices, shape):
            value = analyzer.simplify(index)
            if not hasattr(value, "value"):
                return None
            flat = flat * dim + int(value.value)
        return flat

    addresses = [address(j) for j in range(extent)]
    if None in addresses or all(b - a == 1 for a, b in zip(addresses, addresses[1:])):
        return None
    for factor in range(2, extent // 2 + 1):
        if extent % factor:
            continue
        rows = [addresses[g::factor] for g in range(factor)]
        if all(b - a == 1 for row in rows for a, b in zip(row, row[1:])):
            return factor
    return None


def _store_is_last(node) -> bool:
    """Whether the block's last iter var is the written buffer's last index, alone."""
    last = node.body.indices[-1] if isinstance(node.body, tirx.BufferStore) else None
    return last is not None and last.same_as(node.iter_vars[-1].var)


def interleave(sch: Schedule, block) -> bool:
    """Schedule a channel shuffle (see :func:`_interleave_factor`) as a scalar copy whose
    indices are plain (``out[..., c * G + g] = in[..., g * K + c]``, the group loop unrolled),
    instead of the gather per output vector that vectorising the fused index makes: 4.3x
    faster on shufflenet's 272 x 14 x 14 shuffle (one thread); vector loads with strided
    stores are not (11.6 against 6.3 us)."""
    factor = _interleave_factor(sch, block)
    loops = sch.get_loops(block)
    if factor is None or len(loops) != len(sch.get(block).iter_vars):
        return False
    outer = sch.fuse(*loops[:-1]) if len(loops) > 2 else (loops[0] if len(loops) == 2 else None)
    run, group = sch.split(loops[-1], [None, factor])
    sch.unroll(group)
    if outer is not None and (_extent(sch, outer) or 0) * _extent(sch, run) * factor >= PARALLEL_MIN_ELEMENTS:
        sch.parallel(outer)
    return True


def _full_reduction(sch: Schedule, block, loops, lanes: int) -> None:
    """A reduction to one value (a tensor's max, say): ``lanes`` partial results computed a
    vector at a time (rfactor), then reduced."""
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    extent = _extent(sch, fused)
    if extent is None or extent < 2 * lanes or extent % lanes:
        return
    outer, inner = sch.split(fused, [None, lanes])
    partial = sch.rfactor(inner, 0)  # loops: the reduction outside, the lanes (now spatial) inside
    sch.vectorize(sch.get_loops(partial)[-1])


def row_reduction(sch: Schedule, block, lanes: int) -> list:
    """Reduction along a non-contiguous or innermost axis: parallel over the spatial loops.
    Returns the blocks it scheduled (the reduction, and its init block if it split one off)."""
    loops = sch.get_loops(block)
    kinds = _iter_kinds(sch, block)
    if len(loops) != len(kinds):
        return [block]
    spatial = [loop for loop, kind in zip(loops, kinds) if kind == DATA_PAR]
    if not spatial and loops:
        _full_reduction(sch, block, loops, lanes)
        return [block]
    if not spatial or spatial != loops[: len(spatial)]:
        return [block]
    inner = spatial[-1]
    width = _extent(sch, inner)
    if len(spatial) > 1 and len(loops) == len(spatial) + 1 and width and width % lanes == 0 \
            and width <= 16 * lanes and _extent(sch, loops[-1]) is None:
        # A reduction over a symbolic length (attention over a KV cache) into rows of whole
        # vectors: the reduction loop outside the row, the row accumulated as vectors.
        sch.reorder(loops[-1], inner)
        _vectorize_tile(sch, inner, None, lanes)
        outer = sch.fuse(*spatial[:-1]) if len(spatial) > 2 else spatial[0]
        if (_extent(sch, outer) or 0) >= 2:
            sch.parallel(outer)
        init = sch.decompose_reduction(block, loops[-1])
        _vectorize_tile(sch, sch.get_loops(init)[-1], None, lanes)
        return [block, init]
    outer = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
    if (_extent(sch, outer) or 0) >= 2:
        sch.parallel(outer)
    return [block]


class Choices:
    """Where a rule's tunable choices come from.

    The untuned build takes every choice's default. Tuning (``sample=True``) makes each choice a
    categorical decision in the schedule's trace, starting at the default, that MetaSchedule's
    search mutates; ``variant`` picks the loop order (one design space per variant)."""

    def __init__(self, sample: bool = False, variant: int | None = None):
        self.sample, self.variant = sample, variant  # variant None: the rule's own choice

    def pick(self, sch: Schedule, candidates: list[int], default: int):
        if not self.sample or len(candidates) < 2:
            return default
        candidates = sorted(set(candidates) | {default})
        return sch.sample_categorical(candidates, [1.0 / len(candidates)] * len(candidates),
                                      decision=candidates.index(default))


DEFAULT_CHOICES = Choices()
# Loop orders of a register-tiled reduction, outside the reduction and the tile (``outer`` are the
# spatial axes before the two innermost): 0 keeps a block of output channels in a thread's cache
# across the spatial loops; 1 and 2 keep a spatial tile's inputs across the channel blocks; 3
# tiles the two inner spatial axes together (small feature maps: 7x7, 14x14).
# 4 splits the reduction, so that a weight-heavy conv on a small map (resnet50's last stage)
# reads each chunk of weights from memory once and then from L1 for every row tile; the tile
# accumulates in an L1-resident buffer of the whole map (or of one image row if that is large).
# It applies where a tile reads KBLOCK_MIN_BLOCK_BYTES of weight or more, and is the default for a
# weight of KBLOCK_MIN_WEIGHT_BYTES or more (which a model reads from memory, not the caches: see
# schedules/prefetch.py) in two row tiles or more.
TILED_VARIANTS = 5
KBLOCK_MIN_WEIGHT_BYTES = 1 << 20
KBLOCK_MIN_BLOCK_BYTES = 32 * 1024  # a tile's whole weight block smaller than this stays in L1 anyway
KBLOCK_ACCUMULATOR_BYTES = 32 * 1024
KBLOCK_CHUNK = 64
UNROLL_STEPS = [0, 16, 64, 512]


def _reduction_chunks(sch: Schedule, loop) -> list[int]:
    """Reduction steps a chunk of the split reduction may take (dividing the loop at least twice),
    the default first."""
    extent = _extent(sch, loop) or 0
    return [chunk for chunk in (KBLOCK_CHUNK, 16, 32, 128) if extent % chunk == 0 and extent >= 2 * chunk]


def _row_block_candidates(extent: int, limit: int, partial_tiles: bool) -> list[int]:
    stretch = limit + limit // 3
    divisors = [d for d in range(1, min(extent, stretch) + 1) if extent % d == 0]
    if not partial_tiles:
        return divisors[-6:]
    even = {-(-extent // tiles) for tiles in range(1, extent + 1)}
    return sorted({d for d in divisors[-4:]} | {e for e in even if limit // 3 <= e <= stretch})


def _region_vars(region) -> set[str]:
    """Names of the variables a buffer region's indices use."""
    used = set()
    for r in region.region:
        used |= {v.name for v in tirx.analysis.undefined_vars(r.min, [])}
    return used


def _weight_free(sch: Schedule, block, axis: int) -> bool:
    """Whether some buffer the block reads (its weight) is not indexed by iter var ``axis``."""
    node = sch.get(block)
    var = node.iter_vars[axis].var.name
    written = {region.source.name for region in node.writes}
    return any(region.source.name not in written and var not in _region_vars(region) for region in node.reads)


def weight_bytes(sch: Schedule, block) -> int:
    """Bytes of the largest buffer a reduction block reads that its rows (the spatial axis
    before the contiguous one) do not index: a conv's or matmul's weight. 0 when it has no rows."""
    node = sch.get(block)
    spatial = [iv for iv in node.iter_vars if iv.iter_type == DATA_PAR]
    if len(spatial) < 2:
        return 0
    rows = spatial[-2].var.name
    written = {region.source.name for region in node.writes}
    sizes = [0]
    for region in node.reads:
        if region.source.name in written or rows in _region_vars(region) \
                or not all(hasattr(d, "value") for d in region.source.shape):
            continue
        size = region.source.dtype.bits // 8
        for dim in region.source.shape:
            size *= int(dim)
        sizes.append(size)
    return max(sizes)


def tiled_reduction(sch: Schedule, block, lanes: int, partial_tiles: bool = True,
                    choices: Choices = DEFAULT_CHOICES, reuse_only: bool = False) -> list:
    """Register-tiled, vectorised, parallel schedule of a reduction with a contiguous output axis.
    Returns the blocks it scheduled (empty when the block does not fit the rule, or the variant
    does not apply to it; ``reuse_only``: variant 4 where it has a single row tile)."""
    loops = _perfect_loops(sch, block)
    vec_axis = _contiguous_axis(sch, block)
    kinds = _iter_kinds(sch, block)
    if loops is None or vec_axis is None or REDUCE not in kinds:
        return []
    spatial = [i for i, kind in enumerate(kinds) if kind == DATA_PAR]
    reduce = [i for i, kind in enumerate(kinds) if kind == REDUCE]
    if spatial[-1] != vec_axis or spatial + reduce != list(range(len(kinds))):
        return []
    if not _contiguous_in_some_input(sch, block, vec_axis) or not (partial_tiles or _rvv_safe(sch, block)):
        return []  # e.g. softmax's row max: the lanes would gather across rows
    steps = 1
    for i in reduce:
        steps *= _extent(sch, loops[i]) or 0
    block_bytes = steps * _vector_block(sch, block, _extent(sch, loops[vec_axis]), lanes) * 4
    if choices.variant is None:  # the default: variant 4 for a large weight where it applies, else 0
        if weight_bytes(sch, block) >= KBLOCK_MIN_WEIGHT_BYTES and block_bytes >= KBLOCK_MIN_BLOCK_BYTES:
            done = tiled_reduction(sch, block, lanes, partial_tiles, Choices(choices.sample, 4), reuse_only=True)
            if done:
                return done
        choices = Choices(choices.sample, 0)
    variant = choices.variant
    if len(spatial) < {0: 1, 1: 4, 2: 2, 3: 3, 4: 2}[variant]:
        return []  # the variant's loop order is one an earlier variant already has
    vec_extent = _extent(sch, loops[vec_axis])
    vb = _vector_block(sch, block, vec_extent, lanes)
    vectors = max(1, -(-vb // lanes))
    reg_axis = spatial[-2] if len(spatial) >= 2 else None
    outer = [loops[i] for i in spatial[:-2]]
    reg_loop = loops[reg_axis] if reg_axis is not None else None
    # Rows of an image (h, w) fuse into one row axis; a Winograd GEMM's (b, tile) would not
    # share a weight row across the tile.
    fusable = bool(outer) and _weight_free(sch, block, spatial[-3])
    inner_rows = _extent(sch, reg_loop) if reg_loop is not None else None
    fused_rows = False
    if variant == 4:
        chunks = _reduction_chunks(sch, loops[reduce[-1]])
        if not chunks or block_bytes < KBLOCK_MIN_BLOCK_BYTES:
            return []  # (a tile's weight block that fits L1 is read from it by every row tile anyway)
        fuse = fusable and inner_rows * (_extent(sch, outer[-1]) or 0) * vb * 4 <= KBLOCK_ACCUMULATOR_BYTES
        row_count = inner_rows * (_extent(sch, outer[-1]) if fuse else 1) if inner_rows else 1
        limit = max(1, ACCUMULATORS // vectors)
        if reuse_only and row_count <= _choose_reg_block(row_count, limit, partial_tiles):
            return []  # one row tile (a Winograd GEMM's 16 tiles): no chunk is read twice
        if fuse:
            reg_loop, fused_rows = sch.fuse(outer.pop(), reg_loop), True
    if variant == 3:  # the two inner spatial axes as one row axis
        if not fusable:
            return []
        reg_loop, fused_rows = sch.fuse(outer.pop(), reg_loop), True

    vec_o, vec_i = sch.split(loops[vec_axis], [None, vb])
    if reg_loop is not None:
        extent, limit = _extent(sch, reg_loop), max(1, ACCUMULATORS // vectors)
        candidates = _row_block_candidates(extent, limit, partial_tiles)
        default = _choose_reg_block(extent, limit, partial_tiles)
        if fused_rows and variant == 3:
            # A tile written back as it is done must not straddle two image rows: its writeback
            # covers both rows whole, and would copy the part of the next not yet computed.
            candidates = [rb for rb in candidates if rb % inner_rows == 0 or inner_rows % rb == 0]
            if default not in candidates:
                default = max((rb for rb in candidates if rb <= limit + limit // STRETCH_DEFAULT), default=None)
            if default is None:
                return []
        rb = choices.pick(sch, candidates, default)
        reg_o, reg_i = sch.split(reg_loop, [None, rb])
    else:
        reg_o = reg_i = None
    rows = [reg_o] if reg_o is not None else []
    tile = ([reg_i] if reg_i is not None else []) + [vec_i]
    if variant == 4:  # the reduction split: each chunk of weights read once for every row tile
        chunk = choices.pick(sch, chunks, chunks[0])
        chunk_o, chunk_i = sch.split(loops[reduce[-1]], [None, chunk])
        order = outer[:1] + [vec_o] + outer[1:]
        sch.reorder(*order, *[loops[i] for i in reduce[:-1]], chunk_o, *rows, chunk_i, *tile)
    else:
        order = {0: outer[:1] + [vec_o] + outer[1:] + rows, 1: outer + [vec_o] + rows,
                 2: outer + rows + [vec_o], 3: outer + [vec_o] + rows}[variant]
        sch.reorder(*order, *[loops[i] for i in reduce], *tile)

    # The epilogue (one block once inline_spatial_blocks ran) runs on the tile in registers.
    inline_spatial_blocks(sch, keep=sch.get_producers(block))
    pooling = len({r.source.name for r in sch.get(block).reads} - {w.source.name for w in sch.get(block).writes}) == 1
    for producer in sch.get_producers(block):
        node = sch.get(producer)
        if partial_tiles and not _is_reduction(sch, producer) and "if_then_else" in str(node.body) \
                and (pooling or int(node.iter_vars[-1].dom.extent) < lanes):
            # A padded copy that costs more than a bounds test on each read: of an input too
            # narrow to vectorise (an RGB image's 3 channels; shufflenet's stem conv: 216 ->
            # 167 us on one thread), or one a pooling reads only about twice (resnet50's max
            # pool: 297 -> 99 us on two).
            sch.compute_inline(producer)
    writeback = sch.cache_write(block, 0, "local")
    consumers = sch.get_consumers(writeback)
    # Only an elementwise epilogue, same size as the tile's buffer: TVM also "inlines" a slice
    # (grouped_conv2d's unpadding) and then writes the padding out of bounds.
    if len(consumers) == 1 and _elements(sch, writeback) == _elements(sch, consumers[0]):
        try:
            sch.reverse_compute_inline(consumers[0])
        except Exception:  # noqa: BLE001 -- not elementwise: it stays a separate loop nest
            pass
    anchor = order[-1]
    sch.reverse_compute_at(writeback, anchor, preserve_unit_loops=True)
    _vectorize_tile(sch, vec_i, reg_i, lanes)
    wb_loops = sch.get_loops(writeback)
    _vectorize_tile(sch, wb_loops[-1], wb_loops[-2] if reg_i is not None else None, lanes)
    sliced = _slice_of(sch, writeback)
    scheduled = [writeback]
    if sliced is not None and partial_tiles:  # e.g. 24 channels of a tile padded to 32: on the tile too
        root = sch.get_sblock("root")
        before = {sch.get(b).name_hint for b in sch.get_child_blocks(root)} - {sch.get(sliced).name_hint}
        sch.reverse_compute_at(sliced, anchor, preserve_unit_loops=True)
        sch.compute_inline(writeback)
        slice_loops = sch.get_loops(sliced)
        if reg_i is not None:
            sch.unroll(slice_loops[-2])
        _vectorize_run(sch, slice_loops[-1], lanes)
        scheduled = [b for b in sch.get_child_blocks(root) if sch.get(b).name_hint not in before]
    if choices.sample:  # (variant 4's anchor is a parallel loop, fused below: its row tiles instead)
        unrolled = reg_o if variant == 4 else anchor
        sch.annotate(unrolled, "pragma_auto_unroll_max_step", choices.pick(sch, UNROLL_STEPS, 0))
        sch.annotate(unrolled, "pragma_unroll_explicit", 1)

    parallel_loops = order[:-1] if reg_o is not None and variant != 4 else order
    macs = 1
    for iv in sch.get(block).iter_vars:
        macs *= int(iv.dom.extent) if hasattr(iv.dom.extent, "value") else PARALLEL_MIN_MACS
    if parallel_loops and macs >= PARALLEL_MIN_MACS:
        fused = sch.fuse(*parallel_loops) if len(parallel_loops) > 1 else parallel_loops[0]
        if (_extent(sch, fused) or 0) >= 2:
            sch.parallel(fused)
    # Last: the annotation checks above want the reduction block whole, init included.
    init = sch.decompose_reduction(block, loops[reduce[0]] if variant != 4 or len(reduce) > 1 else chunk_o)
    init_loops = sch.get_loops(init)
    _vectorize_tile(sch, init_loops[-1], init_loops[-2] if reg_i is not None else None, lanes)
    return [block, *scheduled, init]


def ungroup(sch: Schedule, writeback, width: int, lanes: int, partial_tiles: bool = True) -> list:
    """The output block of a padded grouped conv (``conv[n, g, pixel, c]`` -> ``out[n, h, w,
    g * width + c]``, epilogue included): walked pixel by pixel and group by group so it reads
    and writes whole vectors, ``width`` split into whole vectors and a narrower rest (68: four
    vectors of 16 and one of 4) instead of gathering across groups. Returns the block it
    scheduled (none when the kernel does not have that shape)."""
    consumers = sch.get_consumers(writeback)
    if len(consumers) != 1 or not partial_tiles:
        return []
    block = consumers[0]
    extents = [int(iv.dom.extent) for iv in sch.get(block).iter_vars]
    if len(extents) < 2 or extents[-1] % width:
        return []

    def flat(*index):
        pixel = 0
        for i, extent in zip(index[:-1], extents[:-1]):
            pixel = pixel * extent + i
        return pixel, index[-1]

    name = sch.get(block).name_hint
    root = sch.get_sblock("root")
    before = {sch.get(b).name_hint for b in sch.get_child_blocks(root)} - {name}
    sch.transform_block_layout(block, tvm.tirx.IndexMap.from_func(flat, ndim=len(extents)))
    block = sch.get_sblock(name)  # a new block
    pixels, channels = sch.get_loops(block)
    _, inside = sch.split(channels, [None, width])
    _vectorize_run(sch, inside, lanes)
    if extents[-1] * (_extent(sch, pixels) or 0) >= PARALLEL_MIN_ELEMENTS:
        sch.parallel(pixels)
    return [b for b in sch.get_child_blocks(root) if sch.get(b).name_hint not in before]  # renamed by the partition


def _slice_of(sch: Schedule, writeback):
    """The single consumer of a tile's writeback that reads a leading slice of it at its own
    indices (``conv[n, h, w, oc]`` for the first ``oc`` of a padded width), if that is what it is."""
    consumers = sch.get_consumers(writeback)
    if len(consumers) != 1:
        return None
    node, source = sch.get(consumers[0]), sch.get(writeback).writes[0].source
    if _elements(sch, consumers[0]) >= _elements(sch, writeback) or len(node.iter_vars) != len(source.shape):
        return None
    own = [iv.var for iv in node.iter_vars]
    for region in node.reads:
        if region.source.same_as(source) and not all(r.min.same_as(v) and int(r.extent) == 1
                                                     for r, v in zip(region.region, own)):
            return None
    return consumers[0]


def _vectorize_run(sch: Schedule, loop, lanes: int) -> None:
    """Vectorise a contiguous loop of any length: whole vectors, unrolled, then one narrower."""
    extent = _extent(sch, loop)
    whole = extent // lanes * lanes
    parts = sch.loop_partition(loop, [whole, None]) if 0 < whole < extent else [loop]
    for part in parts:
        if _extent(sch, part) > lanes:
            outer, part = sch.split(part, [None, lanes])
            sch.unroll(outer)
        sch.vectorize(part)


def _vectorize_tile(sch: Schedule, vec_loop, reg_loop, lanes: int) -> None:
    """Vectorise a tile's contiguous loop one register (``lanes``) at a time, unrolling the rest.
    (Vectors wider than a register break TVM's scalable-vector lowering for RVV.)"""
    if reg_loop is not None:
        sch.unroll(reg_loop)
    extent = _extent(sch, vec_loop)
    if extent > lanes and extent % lanes == 0:
        outer, vec_loop = sch.split(vec_loop, [None, lanes])
        sch.unroll(outer)
    sch.vectorize(vec_loop)


def _vector_block(sch: Schedule, block, extent: int, lanes: int) -> int:
    """Contiguous outputs per tile: the packed weight's block for conv2d, else from the extent."""
    node = sch.get(block)
    block = node.annotations.get("edgecc.block")
    if block is not None:  # a packed weight fixes the tile width
        return int(block)
    return output_block(extent, lanes)


def schedule_other_blocks(sch: Schedule, lanes: int, done: list, partial_tiles: bool = True) -> None:
    """Every block not yet scheduled: parallel + vectorised when it is plain enough."""
    done_names = {sch.get(b).name_hint for b in done}
    names = [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]
    for name in names:
        if name in done_names:
            continue
        try:
            block = sch.get_sblock(name)
        except Exception:  # noqa: BLE001 -- scheduling an earlier block inlined this one: nothing to do
            continue
        if _is_reduction(sch, block):
            if not tiled_reduction(sch, block, lanes, partial_tiles):
                row_reduction(sch, block, lanes)
        else:
            injective(sch, block, lanes, partial_tiles)


def main_reduction(sch: Schedule):
    """The block a kernel is named after: the annotated kernel, else the largest reduction."""
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    for block in blocks:
        if sch.get(block).annotations.get("edgecc.kernel") is not None:
            return block
    reductions = [b for b in blocks if _is_reduction(sch, b)]
    if not reductions:
        return None

    def work(block):
        size = 1
        for iv in sch.get(block).iter_vars:
            size *= int(iv.dom.extent) if hasattr(iv.dom.extent, "value") else 1
        return size

    return max(reductions, key=work)


def row_fused(sch: Schedule, lanes: int) -> bool:
    """Reductions over the rows of one output and the elementwise steps around them (softmax:
    a max, then a sum of exps; layer norm: a mean, then a variance; RMS norm: a sum of squares):
    every block computed a row at a time inside the output's row loop, in parallel over rows,
    so that the intermediates stay one row long (in L1) instead of whole tensors. Steps with one
    consumer, copies, and per-row or per-column values are inlined first. Applies when then
    every block iterates the output's rows, its last loop running along the row; returns
    whether it did."""
    blocks = list(sch.get_child_blocks(sch.get_sblock("root")))
    kinds = [_iter_kinds(sch, b) for b in blocks]
    if len(blocks) < 2 or not any(REDUCE in k for k in kinds) or REDUCE in kinds[-1]:
        return False
    out_loops = sch.get_loops(blocks[-1])
    rows = [_extent(sch, loop) for loop in out_loops[:-1]]
    if not rows or None in rows or len(out_loops) != len(kinds[-1]):
        return False
    for index in range(len(blocks) - 2, -1, -1):
        if REDUCE in kinds[index]:
            continue
        row_shaped = len(kinds[index]) == len(out_loops)
        if row_shaped and len(sch.get_consumers(blocks[index])) > 1 and not _is_copy(sch, blocks[index]):
            continue  # (an exp that a sum and the output both read is computed once)
        try:
            sch.compute_inline(blocks[index])
        except Exception:  # noqa: BLE001 -- not inlinable: it stays a pass over the row
            continue
        del blocks[index], kinds[index]
    if len(blocks) < 2:
        return False
    for block, block_kinds in zip(blocks, kinds):
        loops = sch.get_loops(block)
        if len(loops) != len(out_loops) or len(block_kinds) != len(loops) \
                or [_extent(sch, loop) for loop in loops[:-1]] != rows or REDUCE in block_kinds[:-1]:
            return False
    partials = [_lane_partials(sch, block, lanes) if REDUCE in block_kinds else None
                for block, block_kinds in zip(blocks, kinds)]
    row = sch.fuse(*out_loops[:-1]) if len(out_loops) > 2 else out_loops[0]
    for block, partial in reversed(list(zip(blocks[:-1], partials[:-1]))):
        sch.compute_at(block, row)
        if partial is not None:
            sch.compute_at(partial, row)
    for block, block_kinds, partial in zip(blocks, kinds, partials):
        if REDUCE not in block_kinds:
            _vectorize_inner(sch, sch.get_loops(block), lanes)
        elif partial is not None:  # compute_at left its loops in iter order, the lanes first
            lane, step = sch.get_loops(partial)[-2:]
            sch.reorder(step, lane)
            sch.vectorize(lane)
    if (_extent(sch, row) or 0) >= 2:
        sch.parallel(row)
    return True


def _is_copy(sch: Schedule, block) -> bool:
    """Whether a block stores a plain read of a buffer (a cast at most): free to recompute."""
    value = sch.get(block).body.value
    if isinstance(value, tvm.tirx.Cast):
        value = value.value
    return isinstance(value, tvm.ir.expr.TensorLoad)


def _lane_partials(sch: Schedule, block, lanes: int):
    """For a reduction along the row when the row is whole vectors: a block reducing it first
    into one partial result per vector lane (a vector max or sum a step, no dependency chain
    through one scalar), ``block`` then reducing the ``lanes`` partials; that partial block, or
    None. (A ragged row would need predicated vector loads past its end, which read garbage
    under LLVM's fast-math flags: it keeps its scalar reduction.)"""
    loop = sch.get_loops(block)[-1]
    extent = _extent(sch, loop)
    if extent is None or extent % lanes or extent < 2 * lanes:
        return None
    _, lane = sch.split(loop, [None, lanes])
    return sch.rfactor(lane, factor_axis=0)
