"""Software prefetch of a K-blocked kernel's weight stream.

Inside a model a large weight is not in any cache when its kernel starts: the
inference before read a hundred megabytes of other weights. Timed alone, resnet50's
last-stage convs ran about 1.6x slower with their weights flushed from the caches
than with them cached, and about as slow inside the model; the hardware prefetchers
do not run far enough ahead of a tile that reads a 128-byte weight row every few
cycles between its FMAs.

A kernel scheduled with the split reduction (``cpu.tiled_reduction``'s variant 4)
reads a chunk of weight rows for every row tile in turn: from memory for the first
tile, from L1 for the others. This pass makes each row tile also prefetch its share
of the chunk the next step of the reduction reads (the next rows in memory, the
weight being packed in the order the reduction walks it), so that the memory reads
overlap the FMAs of the tiles before. A prefetch inside the loop that accumulates
would instead keep LLVM from holding the tile in registers across it (a prefetch
counts as a memory write): that cost 20% of the kernel's time with warm caches.

It runs after scheduling (the default rules and tuning records alike) and on the
candidates tuning measures, so what tuning times is what a build runs.
"""

from __future__ import annotations

from tvm import tirx
from tvm.ir.expr import TensorLoad
from tvm.s_tir import SBlockRealize, Schedule
from tvm.sym.analyzer import Analyzer

LINE_BYTES = 64
LOCALITY = 3  # into L1 (x86 prefetcht0, Arm PLDL1KEEP)
PREFETCH_ARCHES = ("x86_64", "aarch64")


def _weight_load(block):
    """The load of the packed weight in the reduction's update: the one read whose last index
    is the output channel within the packed block (``oc % ob``)."""
    value = block.body.value if isinstance(block.body, tirx.BufferStore) else None
    found, stack = [], [value]
    while stack:
        expr = stack.pop()
        if isinstance(expr, TensorLoad):
            if len(expr.indices) >= 2 and isinstance(expr.indices[-1], tirx.FloorMod):
                found.append(expr)
        elif isinstance(expr, (tirx.Add, tirx.Mul, tirx.Sub)):
            stack += [expr.a, expr.b]
        elif isinstance(expr, tirx.Cast):
            stack.append(expr.value)
    return found[0] if len(found) == 1 else None


def _extent(loop) -> int | None:
    return int(loop.extent.value) if hasattr(loop.extent, "value") else None


def _packed_reduction(sch: Schedule):
    """The update block of a kernel whose weight is packed for its tile (``edgecc.block``)."""
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        node = sch.get(block)
        if "edgecc.block" in node.annotations and node.init is None \
                and any(iv.iter_type == tirx.IterVar.CommReduce for iv in node.iter_vars):
            return block
    return None


def prefetch_weights(sch: Schedule) -> bool:
    """Add the prefetches to a scheduled kernel in place; returns whether it had the shape."""
    block = _packed_reduction(sch)
    if block is None:
        return False
    node = sch.get(block)
    load = _weight_load(node)
    loops = sch.get_loops(block)
    if load is None or len(loops) < 3 or not isinstance(sch.get(loops[-1]).body, SBlockRealize):
        return False
    realize = sch.get(loops[-1]).body
    used = set()
    for iv, value in zip(node.iter_vars, realize.iter_values):
        if iv.iter_type == tirx.IterVar.CommReduce:
            used |= {v.name for v in tirx.analysis.undefined_vars(value, [])}
    steps = [sch.get(loop).loop_var.name in used for loop in loops]
    depth = max((i for i, step in enumerate(steps) if step), default=0)
    # The split reduction: reduction loop(s), the row tiles, the chunk's loop, the tile.
    if depth < 2 or steps[depth - 1] or not any(steps[:depth - 1]):
        return False
    tiles = loops[depth - 1]
    rows, extent = _extent(sch.get(tiles)), _extent(sch.get(loops[depth]))
    if not rows or not extent or any(not hasattr(d, "value") for d in load.source.shape):
        return False
    itemsize = load.source.dtype.bits // 8
    row_elems = int(load.source.shape[-1])
    step = LINE_BYTES // itemsize
    share = -(-(extent * row_elems * itemsize // LINE_BYTES) // rows)
    size = 1
    for dim in load.source.shape:
        size *= int(dim)
    base = _flat(sch, block, load, loops[depth - 1:]) + extent * row_elems
    tile = tirx.Cast("int64", sch.get(tiles).loop_var)
    view = tirx.decl_buffer((size,), load.source.dtype, "weight_prefetch", data=load.source.data)
    stmts = [tirx.DeclBuffer(view, data=load.source.data)]
    for line in range(share):  # (past the weight's end, after the last chunk: a prefetch never faults)
        address = tirx.call_intrin("handle", "tirx.address_of",
                                   tirx.BufferLoad(view, [base + tile * (share * step) + line * step]))
        stmts.append(tirx.Evaluate(tirx.call_intrin("void", "tirx.prefetch", address, 0, LOCALITY, 1)))
    old = sch.get(tiles)
    new = tirx.For(old.loop_var, old.min, old.extent, old.kind, tirx.SeqStmt([*stmts, old.body]),
                   old.thread_binding, old.annotations)
    sch.state.replace(sch.get_sref(tiles), new)
    return True


def _flat(sch: Schedule, block, load, at_zero) -> tirx.PrimExpr:
    """The flat element offset ``load`` reads, with the loops ``at_zero`` at their first step."""
    node = sch.get(block)
    realize = sch.get(sch.get_loops(block)[-1]).body
    bind, zero = Analyzer(), Analyzer()
    for iv, value in zip(node.iter_vars, realize.iter_values):
        bind.bind(iv.var, value)
    for loop in at_zero:
        var = sch.get(loop).loop_var
        zero.bind(var, tirx.const(0, var.ty.dtype))
    flat = tirx.const(0, "int64")
    for index, dim in zip(load.indices, load.source.shape):
        flat = flat * int(dim) + tirx.Cast("int64", zero.simplify(bind.simplify(index)))
    return flat
