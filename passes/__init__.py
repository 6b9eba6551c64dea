"""Graph-level Relax passes, run after import and before legalization.

edgecc's own passes (quantize, sparsify, ssm, ...) live here one per file and
join :func:`graph_passes`. Today the phase holds the inference simplifications
every target wants: batch norm decomposed into a scale and shift on constants,
and constants folded, so later fusion sees conv + elementwise epilogues.
"""

from __future__ import annotations

from tvm import relax


def graph_passes(preset) -> list:
    """The graph phase of the pipeline for a target preset (a list of TVM passes)."""
    del preset  # every target wants the same inference simplifications today
    return [relax.transform.DecomposeOpsForInference(), relax.transform.FoldConstant()]
