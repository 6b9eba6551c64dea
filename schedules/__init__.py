"""Default schedules: every PrimFunc gets one before lowering.

CUDA kernels must bind threads to run at all, so GPU targets get TVM's dlight
rules (matmul, GEMV, reductions, and a fallback that schedules anything else).
CPU kernels are left to TVM's loop nests and LLVM's vectorizer for now.
"""

from __future__ import annotations


def schedule_passes(preset) -> list:
    """The schedule phase of the pipeline for a target preset (a list of TVM passes)."""
    if preset.device != "cuda":
        return []
    from tvm.s_tir import dlight as dl

    return [dl.ApplyDefaultSchedule(dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(),
                                    dl.gpu.GeneralReduction(), dl.gpu.Fallback())]
