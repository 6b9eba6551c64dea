"""Graph-level Relax passes, run after import and before legalization.

edgecc's own passes (quantize, sparsify, ssm, ...) live here one per file and
join :func:`graph_passes`. Every target gets the inference simplifications:
batch norm decomposed, then folded with conv biases into the conv weights
(:mod:`.fold_affine`), and constants folded. CPU targets then run their conv
regions channels-last (:mod:`.channels_last`), the layout the CPU kernels in
``edgecc.schedules`` vectorise, and sparse constant weights become fused block-sparse
kernels (:mod:`.sparsify`, ``sparsity="off"`` disables it). On CPU targets the first pass
turns matmuls reading 4-bit weights into INT4 kernels (:mod:`.quantize`), before constant
folding would expand those weights to float32, and after constant folding int8 matmuls and
convs become integer kernels (:mod:`.quantize`, ``Int8Matmul``; on CUDA matmuls, with ``dp4a``). Half-precision matmuls and softmaxes accumulate
in float32 (:mod:`.precision`). On CPU targets attention over a KV cache of run-time length
becomes one kernel (:mod:`.attention`).
"""

from __future__ import annotations

from tvm import relax

from .attention import DecodeAttention
from .channels_last import ChannelsLast
from .fold_affine import FoldAffineIntoConv
from .precision import AccumulateFloat32
from .quantize import Int4Matmul, Int8Matmul
from .sparsify import Sparsify


SPARSITY_MODES = ("auto", "off")


def graph_passes(preset, sparsity: str = "auto", tuning=None) -> list:
    """The graph phase of the pipeline for a target preset (a list of TVM passes);
    ``sparsity`` is ``auto`` (sparse weights to sparse kernels where measured faster) or ``off``;
    ``tuning`` (:class:`edgecc.tuning.TuningRecords`) sets the INT8/INT4 kernels' knobs it measured."""
    passes = [Int4Matmul(preset, tuning), relax.transform.DeadCodeElimination()] if preset.device == "cpu" else []
    passes += [relax.transform.DecomposeOpsForInference(), relax.transform.CanonicalizeBindings(),
              relax.transform.FoldConstant(), FoldAffineIntoConv(),
              relax.transform.DeadCodeElimination(), AccumulateFloat32()]
    if preset.device == "cpu":
        passes += [DecodeAttention(preset), ChannelsLast(), relax.transform.DeadCodeElimination(),
                   Sparsify(preset, sparsity), relax.transform.DeadCodeElimination()]
    passes += [Int8Matmul(preset, tuning), relax.transform.DeadCodeElimination()]
    return passes + [relax.transform.FoldConstant()]
