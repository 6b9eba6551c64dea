"""edgecc's CUDA rule for what dlight only schedules as a cross-thread reduction.

dlight's matmul rule takes dense convs, but a depthwise or grouped conv, or a
pooling window, reduces over a handful of taps (9, 25, a group's channels); dlight
then gives each output a thread block that reduces those few values across
threads. ``direct_reduction`` instead gives each thread one output and runs the
short reduction in a register, with the padding read inline and the epilogue
(bias, residual, activation) applied before the single store.
"""

from __future__ import annotations

from tvm.s_tir import Schedule

from .cpu import REDUCE, _elements, _is_reduction, _iter_kinds, _perfect_loops, inline_spatial_blocks, main_reduction

THREADS = 128
MAX_TAPS = 4096  # reduction length per output above which dlight's cross-thread rules win
MIN_OUTPUTS = 4 * THREADS  # below this, a thread per output leaves the GPU idle


def direct_reduction(func) -> Schedule | None:
    """One thread per output of the kernel's main reduction; None when it does not fit."""
    sch = Schedule(func)
    block = main_reduction(sch)
    if block is None:
        return None
    loops = _perfect_loops(sch, block)
    kinds = _iter_kinds(sch, block)
    if loops is None or kinds.index(REDUCE) != kinds.count(0) or REDUCE not in kinds:
        return None
    spatial, reduce = loops[: kinds.count(0)], loops[kinds.count(0):]
    taps = outputs = 1
    for loop in reduce:
        taps *= int(sch.get(loop).extent)
    for loop in spatial:
        outputs *= int(sch.get(loop).extent)
    if taps > MAX_TAPS or outputs < MIN_OUTPUTS:
        return None
    for producer in sch.get_producers(block):  # padding: read in place, no extra pass
        if not _is_reduction(sch, producer):
            sch.compute_inline(producer)
    inline_spatial_blocks(sch, keep=[block])
    writeback = sch.cache_write(block, 0, "local")
    consumers = sch.get_consumers(writeback)
    if len(consumers) == 1 and _elements(sch, writeback) == _elements(sch, consumers[0]):
        try:
            sch.reverse_compute_inline(consumers[0])
        except Exception:  # noqa: BLE001 -- not elementwise: it keeps its own (bound) loop nest
            pass
    fused = sch.fuse(*spatial)
    bx, tx = sch.split(fused, [None, THREADS])
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")
    sch.reverse_compute_at(writeback, tx, preserve_unit_loops=True)
    sch.decompose_reduction(block, reduce[0])
    for other in sch.get_child_blocks(sch.get_sblock("root")):
        if sch.get(other).name_hint in (sch.get(writeback).name_hint, sch.get(block).name_hint):
            continue
        if sch.get(other).name_hint.endswith("_init"):
            continue
        other_loops = sch.get_loops(other)
        if other_loops and sch.get(other_loops[0]).thread_binding is None:
            outer = sch.fuse(*other_loops)
            obx, otx = sch.split(outer, [None, THREADS])
            sch.bind(obx, "blockIdx.x")
            sch.bind(otx, "threadIdx.x")
    return sch
