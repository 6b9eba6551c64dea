"""Default schedules: every PrimFunc gets one before lowering, with no tuning.

CPU targets: edgecc's rules in :mod:`.cpu`, sized from the target's SIMD width
(AVX-512, NEON, RVV at the preset's VLEN), for the kernels :mod:`.compute`
defines and the ones TVM's legalization emits. Each PrimFunc records the rule
that scheduled it in its ``edgecc.schedule`` attribute; ``edgecc build
--verbose`` lists them.

CUDA targets: TVM's dlight rules (matmul, GEMV, reductions, and a fallback that
binds threads to anything else). dlight's matmul rule covers conv2d too: it
normalises the conv's index space into a GEMM (implicit im2col) and tiles that
with shared memory. Depthwise and grouped convs and pooling, which dlight would
reduce across threads, get edgecc's thread-per-output rule (:mod:`.gpu`).
"""

from __future__ import annotations

import tvm
from tvm import relax, tirx
from tvm.s_tir import Schedule

from . import attention, cpu, gpu, int4, int8, prefetch, sparse, ssm, winograd
from .compute import (GROUP_WIDTH_ATTR, WHOLE_REDUCTION_ATTR, conv2d_legalizer, extreme_reduce_legalizers,
                      fast_math_legalizers, matmul_legalizer)

RULE_ATTR = "edgecc.schedule"
PREFETCH_NOTE = " + weight prefetch"


def fp32_lanes(preset) -> int:
    """fp32 SIMD lanes of a CPU preset."""
    return max(preset.vector_bits // 32, 1)


def legalize_map(preset, conv_policy: winograd.Policy | None = None) -> dict:
    """Op legalizations edgecc owns for a preset (``LegalizeOps(customize_legalize_map=...)``);
    ``conv_policy`` chooses between Winograd and direct 3x3 convs (default: the untuned choice)."""
    if preset.device != "cpu":
        return {}
    lanes = fp32_lanes(preset)
    if preset.arch == "riscv64":  # TVM's RVV lowering cannot take the transforms' partial tiles
        conv_policy = None
    elif conv_policy is None:
        conv_policy = winograd.Policy()
    legalizers = {"relax.nn.conv2d": conv2d_legalizer(lanes, conv_policy),
                  "relax.matmul": matmul_legalizer(lanes), **extreme_reduce_legalizers()}
    if preset.arch != "riscv64":  # TVM's RVV lowering rejects fast_exp's vector bit casts
        legalizers.update(fast_math_legalizers())
    return legalizers


def schedule_cpu(sch: Schedule, lanes: int, partial_tiles: bool = True,
                 choices: cpu.Choices = cpu.DEFAULT_CHOICES) -> str | None:
    """Schedule one PrimFunc in place with the CPU rules; returns the rule that applied, or None
    when ``choices`` names a variant that does not apply to this kernel.
    ``partial_tiles=False`` keeps register tiles exact divisors (RVV cannot lower predicated
    vector loops)."""
    scan = ssm.kernel_of(sch)
    if scan is not None:
        return None if choices.variant else ssm.schedule(sch, *scan)
    found = attention.kernel_of(sch)
    if found is not None:
        return None if choices.variant else attention.schedule(sch, *found)
    found = sparse.kernel_of(sch)
    if found is not None:
        if choices.variant:
            return None
        block, kind = found
        rule = {sparse.SPARSE_ATTR: sparse.schedule, sparse.DEPTHWISE_ATTR: sparse.schedule_depthwise}
        return rule.get(kind, sparse.schedule_transpose)(sch, block, lanes)
    partial = next((b for b in sch.get_child_blocks(sch.get_sblock("root"))
                    if WHOLE_REDUCTION_ATTR in sch.get(b).annotations), None)
    if partial is not None:
        if choices.variant:
            return None
        parts, lane, run = sch.get_loops(partial)
        sch.reorder(parts, run, lane)
        sch.parallel(parts)
        sch.vectorize(lane)
        return "whole-reduction"
    int8_block = int8.kernel_of(sch)
    if int8_block is not None:
        return None if choices.variant else int8.schedule(sch, int8_block, lanes)
    int4_block = int4.kernel_of(sch)
    if int4_block is not None:
        return None if choices.variant else int4.schedule(sch, int4_block, lanes)
    transform = winograd.kernel_of(sch)
    if transform is not None and not choices.variant:
        done = (winograd.schedule_input if transform == winograd.INPUT else winograd.schedule_output)(sch, lanes)
        if done:
            return f"winograd-transform[{transform}]"
    main = cpu.main_reduction(sch)
    if main is not None and not choices.variant and _takes(cpu.row_fused, sch, lanes):
        cpu.row_fused(sch, lanes)
        return "row-fused"
    if main is not None:
        name = sch.get(main).annotations.get("edgecc.kernel") or sch.get(main).name_hint
        width = sch.get(main).annotations.get(GROUP_WIDTH_ATTR)
        done = cpu.tiled_reduction(sch, main, lanes, partial_tiles, choices)
        if done:
            rule = f"tiled-reduction[{name}]"
            if width is not None:
                done += cpu.ungroup(sch, done[1], int(width), lanes, partial_tiles)
        elif choices.variant:
            return None
        else:
            rule, done = f"row-reduction[{name}]", cpu.row_reduction(sch, main, lanes)
        cpu.schedule_other_blocks(sch, lanes, done, partial_tiles)
    elif choices.variant:
        return None
    else:
        cpu.inline_spatial_blocks(sch)
        cpu.schedule_other_blocks(sch, lanes, [], partial_tiles)
        rule = "injective"
    return rule


def _takes(rule, sch: Schedule, *args) -> bool:
    """Whether ``rule`` applies to the kernel, tried on a copy of its schedule."""
    try:
        return bool(rule(sch.copy(), *args))
    except Exception:  # noqa: BLE001 -- a rule that fails on this kernel does not apply
        return False


def schedule_cpu_func(func: tirx.PrimFunc, lanes: int, partial_tiles: bool = True,
                      prefetching: bool = False) -> tuple[tirx.PrimFunc, str]:
    """Schedule one PrimFunc with the default CPU rules; returns it and the rule that applied.
    ``prefetching``: with :mod:`.prefetch`'s weight prefetches where the schedule has the shape."""
    sch = Schedule(func)
    rule = schedule_cpu(sch, lanes, partial_tiles)
    if prefetching and prefetch.prefetch_weights(sch):
        rule += PREFETCH_NOTE
    return sch.mod["main"], rule


def _tuned(gvar, func: tirx.PrimFunc, tuning, prefetching: bool = False) -> tirx.PrimFunc | None:
    """The kernel scheduled by its tuning record's trace, if ``tuning`` has one that replays
    (``prefetching``: and the weight prefetches tuning measured it with)."""
    if tuning is None:
        return None
    record = tuning.lookup(gvar.name_hint, func)
    if record is None:
        return None
    from tvm.s_tir.schedule import Trace

    sch = Schedule(func)
    try:
        Trace.apply_json_to_schedule(record["trace"], sch)
    except Exception as err:  # noqa: BLE001 -- a record that does not replay falls back
        tuning.failed(gvar.name_hint, f"{type(err).__name__}")
        return None
    tuning.used(gvar.name_hint, record)
    rule = f"tuned ({record['latency_us']:.1f} us, default rule {record['default_us']:.1f} us)"
    if prefetching and prefetch.prefetch_weights(sch):
        rule += PREFETCH_NOTE
    return sch.mod["main"].with_attr("tirx.is_scheduled", True).with_attr(RULE_ATTR, rule)


def _tuned_chunk(gvar, func: tirx.PrimFunc, tuning, lanes: int) -> tuple[int | None, str]:
    """A linear-attention kernel's chunk from the tuning logs: the fastest of the chunks they
    measured for it (``(None, "")``: none measured, the default stands), and a note saying so."""
    if tuning is None:
        return None, ""
    measured = {}
    for chunk, variant in ssm.chunk_variants(func, lanes).items():
        record = tuning.peek(variant)
        if record is not None:
            measured[chunk] = record
    if not measured:
        return None, ""
    best = min(measured, key=lambda c: measured[c]["latency_us"])
    tuning.used(gvar.name_hint, measured[best])
    times = ", ".join(f"{c}: {r['latency_us']:.1f} us" for c, r in sorted(measured.items()))
    return best, f" (chunk tuned: {times})"


def ScheduleCPU(preset, tuning=None):  # noqa: N802 (TVM pass naming)
    """Pass: schedule every PrimFunc of the module: from its tuning record if ``tuning`` has one
    for it, else with the CPU rules; recording which."""
    lanes = fp32_lanes(preset)
    partial_tiles = preset.arch != "riscv64"
    prefetching = preset.arch in prefetch.PREFETCH_ARCHES

    @tvm.transform.module_pass(opt_level=0, name="edgecc.ScheduleCPU")
    def _pass(mod, _ctx):
        updates = {}
        for gvar, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc) or RULE_ATTR in (func.attrs or {}):
                continue
            tuned = _tuned(gvar, func, tuning, prefetching)
            if tuned is not None:
                updates[gvar] = tuned
                continue
            tuned_chunk = ""
            if ssm.BUILD_ATTR in (func.attrs or {}):
                chunk, tuned_chunk = _tuned_chunk(gvar, func, tuning, lanes)
                func = ssm.specialise(func, lanes, chunk, scalable=preset.arch == "riscv64")
            try:
                new, rule = schedule_cpu_func(func, lanes, partial_tiles, prefetching)
            except Exception as err:  # noqa: BLE001 -- an unscheduled kernel is slow, not wrong
                new, rule = func, f"fallback (unscheduled: {type(err).__name__})"
            rule += tuned_chunk
            updates[gvar] = new.with_attr(RULE_ATTR, rule)
        for gvar, func in updates.items():
            mod[gvar] = func
        return mod

    return _pass


def ScheduleGPU(tuning=None):  # noqa: N802 (TVM pass naming)
    """Pass: a kernel's tuning record if ``tuning`` has one, else dlight's GPU rules in order (matmul, which also takes conv2d by normalising it
    to a GEMM; GEMV; reductions; a thread-binding fallback), recording which one applied."""
    from tvm.s_tir import dlight as dl

    def direct(func, _target, _tunable):
        try:
            return gpu.direct_reduction(func)
        except Exception:  # noqa: BLE001 -- the kernel does not fit: dlight's rules follow
            return None

    class _Direct:
        apply = staticmethod(direct)

    rules = [("dlight.Matmul", dl.gpu.Matmul()), ("dlight.GEMV", dl.gpu.GEMV()),
             ("edgecc.direct-reduction", _Direct()),
             ("dlight.Reduction", dl.gpu.Reduction()), ("dlight.GeneralReduction", dl.gpu.GeneralReduction()),
             ("dlight.Fallback", dl.gpu.Fallback())]

    @tvm.transform.module_pass(opt_level=0, name="edgecc.ScheduleGPU")
    def _pass(mod, _ctx):
        target = tvm.target.Target.current(allow_none=False)
        updates = {}
        for gvar, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc) or RULE_ATTR in (func.attrs or {}):
                continue
            tuned = _tuned(gvar, func, tuning)
            if tuned is not None:
                updates[gvar] = tuned
                continue
            if ssm.BUILD_ATTR in (func.attrs or {}):
                scan, rule = ssm.schedule_gpu(func)
                updates[gvar] = scan.with_attr("tirx.is_scheduled", True).with_attr(RULE_ATTR, rule)
                continue
            for name, rule in rules:
                if name == "dlight.Matmul" and _symbolic(func):
                    continue  # its tiles over a symbolic length allocate symbolic-size local arrays
                space = rule.apply(func, target, False)
                if space is None:
                    continue
                sch = space if isinstance(space, Schedule) else space[0]
                updates[gvar] = (sch.mod["main"].with_attr("tirx.is_scheduled", True)
                                 .with_attr(RULE_ATTR, name))
                break
        for gvar, func in updates.items():
            mod[gvar] = func
        return mod

    return _pass


def _symbolic(func: tirx.PrimFunc) -> bool:
    """Whether a kernel's buffers have a dimension only known at run time."""
    return any(not isinstance(dim, tirx.IntImm) for param in func.params
               if isinstance(param.ty, tirx.BufferType) for dim in param.ty.shape)


def schedule_passes(preset, tuning=None) -> list:
    """The schedule phase of the pipeline for a target preset (a list of TVM passes);
    ``tuning`` (:class:`edgecc.tuning.TuningRecords`) supplies tuned schedules."""
    return [ScheduleGPU(tuning)] if preset.device == "cuda" else [ScheduleCPU(preset, tuning)]


def schedule_report(mod: tvm.IRModule) -> dict[str, str]:
    """``{kernel name: rule}`` for every PrimFunc: the edgecc rule it records, ``dlight`` for
    one dlight scheduled, else ``fallback (unscheduled)``."""
    report = {}
    for gvar, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        attrs = func.attrs or {}
        if RULE_ATTR in attrs:
            report[gvar.name_hint] = str(attrs[RULE_ATTR])
        elif attrs.get("tirx.is_scheduled", False) or attrs.get("tir.is_scheduled", False):
            report[gvar.name_hint] = "dlight"
        else:
            report[gvar.name_hint] = "fallback (unscheduled)"
    return report
