"""The search space MetaSchedule explores: edgecc's default rules with their choices opened up.

On CPUs a kernel's design spaces are edgecc's own rule (:mod:`edgecc.schedules.cpu`) once per
loop-order variant that applies to it; within each, the register tile's rows and the unroll
depth are categorical decisions starting at the default rule's values. The default schedule is
one point of the space, so tuning starts from it, and a tuned kernel is never the default
rule's worse. Kernels with no decisions (elementwise, layout) have nothing to tune.
(CUDA kernels get dlight's rules, which edgecc has not parameterised: no space yet.)
"""

from __future__ import annotations

import random

from tvm.s_tir import meta_schedule as ms
from tvm.ir.utils import derived_object
from tvm.s_tir.schedule import Schedule, Trace

from edgecc.schedules import cpu, fp32_lanes, prefetch, schedule_cpu


@derived_object
class MutateCategorical(ms.mutator.PyMutator):
    """Mutate one ``sample_categorical`` decision of a trace to another of its candidates
    (MetaSchedule's own mutators only touch tile sizes, unroll annotations and parallelism)."""

    def _initialize_with_tune_context(self, context) -> None:
        pass

    def apply(self, trace: Trace, rand_state: int) -> Trace | None:
        rng = random.Random(rand_state)
        choices = [(inst, decision) for inst, decision in trace.decisions.items()
                   if inst.kind.name == "SampleCategorical" and len(inst.attrs[0]) > 1]
        if not choices:
            return None
        inst, decision = rng.choice(choices)
        others = [i for i in range(len(inst.attrs[0])) if i != int(decision)]
        return trace.with_decision(inst, rng.choice(others), remove_postproc=True)

    def clone(self):
        return MutateCategorical()


def cpu_spaces(preset):
    """``sch -> [Schedule]``: one design space per loop-order variant that applies."""
    lanes, partial_tiles = fp32_lanes(preset), preset.arch != "riscv64"

    def spaces(sch: Schedule) -> list[Schedule]:
        found = []
        for variant in range(cpu.TILED_VARIANTS):
            candidate = sch.copy()
            if schedule_cpu(candidate, lanes, partial_tiles, cpu.Choices(sample=True, variant=variant)) is not None:
                found.append(candidate)
        return found

    return spaces


def has_decisions(sch: Schedule) -> bool:
    return any(inst.kind.name == "SampleCategorical" for inst in sch.trace.insts)


@derived_object
class PrefetchWeights(ms.postproc.PyPostproc):
    """Add the weight prefetches a build adds (:mod:`edgecc.schedules.prefetch`) to each candidate
    measured, so that tuning times what a build runs."""

    def _initialize_with_tune_context(self, context) -> None:
        pass

    def apply(self, sch: Schedule) -> bool:
        prefetch.prefetch_weights(sch)
        return True

    def clone(self):
        return PrefetchWeights()


def space_generator(preset):
    """The MetaSchedule space generator for a CPU preset's kernels."""
    postprocs = [PrefetchWeights()] if preset.arch in prefetch.PREFETCH_ARCHES else []
    return ms.space_generator.ScheduleFn(cpu_spaces(preset), sch_rules=[], postprocs=postprocs,
                                         mutator_probs={MutateCategorical(): 1.0})

