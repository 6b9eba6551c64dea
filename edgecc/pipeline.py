"""The compile pipeline: numbered phases from an imported Relax module to a VM executable.

1. graph     edgecc.passes: graph-level rewrites on constants
2. legalize  Relax ops -> TIR PrimFuncs, fused into kernels
3. schedule  edgecc.schedules: a schedule for every PrimFunc
4. lower     memory planning and VM lowering
Set ``EDGECC_DUMP_IR=DIR`` to write the module after each phase (debugging switch).
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import tvm
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu_generic
from tvm.relax.backend.cuda import pipeline as cuda_backend

from edgecc.passes import graph_passes, quantize, sparsify
from edgecc.schedules import legalize_map, schedule_passes, schedule_report, winograd


@dataclasses.dataclass
class PhaseRecord:
    """What one phase did, for the manifest and ``--verbose``."""

    phase: str
    passes: list[str]
    seconds: float
    prim_funcs_after: int
    kernels: dict[str, str] | None = None  # schedule phase: kernel name -> rule that scheduled it
    sparse_layers: list[dict] | None = None  # graph phase: the sparsity pass's decision per weight
    int4_layers: list[dict] | None = None  # graph phase: matmuls reading 4-bit weights, and their kernels
    int8_layers: list[dict] | None = None  # graph phase: int8 matmuls, and their kernels

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def _backend(preset):
    return cuda_backend if preset.device == "cuda" else cpu_generic


def phases(preset, target, tuning=None, conv_policy=None, sparsity="auto") -> list[tuple[str, list]]:
    """The (name, passes) phases for a preset; the one place the order is defined.
    ``conv_policy`` (:class:`edgecc.schedules.winograd.Policy`) picks Winograd or direct 3x3 convs;
    ``sparsity`` (``auto``/``off``) whether sparse weights become sparse kernels."""
    backend = _backend(preset)
    return [
        ("graph", graph_passes(preset, sparsity, tuning)),
        # The CUDA backend's legalize list ends with dlight; edgecc's schedule phase owns that.
        ("legalize", backend.library_dispatch_passes(target) + [
            relax.transform.LegalizeOps(legalize_map(preset, conv_policy)), relax.transform.AnnotateTIROpPattern(),
            relax.transform.FoldConstant(), relax.transform.FuseOps(), relax.transform.FuseTIR()]),
        ("schedule", schedule_passes(preset, tuning)),
        ("lower", backend.dataflow_lower_passes(target) + backend.finalize_passes(target)),
    ]


def _pass_name(p) -> str:
    info = getattr(p, "info", None)
    return info.name if info is not None else type(p).__name__


def choose_convs(mod: tvm.IRModule, preset, target, tuning) -> winograd.Policy:
    """Winograd or direct, per eligible 3x3 conv, from measured latencies in the tuning logs.

    ``mod`` is legalized both ways; a conv whose kernels have records in ``tuning`` both ways
    (Winograd: its three kernels, summed) takes the faster; the others keep the untuned choice.
    The decisions go to ``tuning.convs`` for the manifest."""
    totals = {}
    for mode in ("all", "none"):
        legalize = dict(phases(preset, target, conv_policy=winograd.Policy(mode)))["legalize"]
        fused = tvm.transform.Sequential(legalize)(mod)
        for conv, names in winograd.kernels_by_conv(fused).items():
            records = [tuning.peek(fused[name]) for name in names]
            if all(r is not None for r in records):
                totals.setdefault(conv, {})[mode] = sum(r["latency_us"] for r in records)
    choices = {}
    for conv, us in totals.items():
        if len(us) == 2:
            choices[conv] = us["all"] < us["none"]
            tuning.convs[conv] = {"winograd_us": round(us["all"], 3), "direct_us": round(us["none"], 3),
                                  "chosen": "winograd" if choices[conv] else "direct"}
    return winograd.Policy("auto", choices)


def run_phases(mod: tvm.IRModule, preset, target, tuning=None, until: str | None = None,
               conv_policy=None, sparsity="auto") -> tuple[tvm.IRModule, list[PhaseRecord]]:
    """Run every phase under the target (up to and including ``until``); return the module and a
    record per phase. ``tuning`` (:class:`edgecc.tuning.TuningRecords`) schedules the kernels
    it has records for, and picks Winograd or direct per 3x3 conv where it measured both."""
    dump_dir = os.environ.get("EDGECC_DUMP_IR")
    records = []
    with target:
        for index, (name, passes) in enumerate(phases(preset, target, tuning, conv_policy, sparsity), start=1):
            if name == "legalize" and conv_policy is None and tuning is not None and preset.device == "cpu":
                passes = dict(phases(preset, target, tuning, choose_convs(mod, preset, target, tuning)))[name]
            start = time.perf_counter()
            mod = tvm.transform.Sequential(passes)(mod)
            prim_funcs = sum(isinstance(f, tvm.tirx.PrimFunc) for f in mod.functions.values())
            records.append(PhaseRecord(name, [_pass_name(p) for p in passes],
                                       round(time.perf_counter() - start, 3), prim_funcs,
                                       schedule_report(mod) if name == "schedule" else None,
                                       sparsify.report_of(mod) if name == "graph" else None,
                                       quantize.report_of(mod) if name == "graph" else None,
                                       quantize.int8_report_of(mod) if name == "graph" else None))
            if dump_dir:
                Path(dump_dir).mkdir(parents=True, exist_ok=True)
                (Path(dump_dir) / f"{index}_{name}.py").write_text(mod.script())
            if name == until:
                break
    return mod, records


def kernels(mod: tvm.IRModule, preset, conv_policy=None, sparsity="auto") -> dict[str, tuple[tvm.tirx.PrimFunc, int]]:
    """The fused, unscheduled kernels a build would schedule: ``{name: (PrimFunc, calls)}``,
    ``calls`` being how many times the model's graph calls it (3x3 convs as ``conv_policy``
    chooses; default: the untuned choice)."""
    fused, _ = run_phases(mod, preset, preset.tvm_target(), until="legalize", conv_policy=conv_policy,
                          sparsity=sparsity)
    calls: dict[str, int] = {}

    def visit(node):
        if isinstance(node, relax.Call):
            for arg in node.args:
                if isinstance(arg, tvm.ir.GlobalVar):
                    calls[arg.name_hint] = calls.get(arg.name_hint, 0) + 1

    for func in fused.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return {gvar.name_hint: (func, calls.get(gvar.name_hint, 1)) for gvar, func in fused.functions_items()
            if isinstance(func, tvm.tirx.PrimFunc)}


def kernels_both_ways(mod: tvm.IRModule, preset) -> list[tuple[str, tvm.tirx.PrimFunc, int]]:
    """``(name, kernel, calls)`` of a model computing its eligible 3x3 convs as Winograd, then as
    direct convs: what tuning measures, and what a log for the model may hold. (A kernel
    unaffected by the choice appears twice.)"""
    return [(name, func, calls) for mode in ("all", "none")
            for name, (func, calls) in kernels(mod, preset, winograd.Policy(mode)).items()]


def build_executable(mod: tvm.IRModule, preset, tuning=None, sparsity="auto"):
    """Compile an imported module for a preset into a ``relax.VMExecutable``."""
    target = preset.tvm_target()
    lowered, records = run_phases(mod, preset, target, tuning, sparsity=sparsity)
    executable = relax.build(lowered, target, relax_pipeline=None)
    return executable, records
