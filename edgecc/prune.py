"""Magnitude pruning of an ONNX model's weights, so users can try sparse kernels on their models.

``edgecc prune MODEL.onnx --sparsity 0.9 [--block 4x1] -o pruned.onnx`` zeroes, in each
prunable weight, the blocks with the smallest L1 norm until ``sparsity`` of its values are
zero. A block is ``R x C``: ``R`` output channels by ``C`` input channels, the same for every
kernel tap of a convolution (``1x1`` prunes single values; ``4x1`` matches the 4-row blocks
``edgecc build`` runs fastest). Prunable weights are the constant weights of ``MatMul``
(``B``), ``Gemm`` (``B``) and ungrouped ``Conv`` with at least ``min_size`` values.

Pruning without fine-tuning changes what a model computes: how much accuracy it costs is
for the user to check on their own data.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edgecc.errors import UserInputError

MIN_SIZE = 1024


@dataclasses.dataclass
class Pruned:
    """One weight pruned: its name, the op reading it, its shape and its zeros after pruning."""

    name: str
    op: str
    shape: list[int]
    sparsity: float


def parse_block(text: str) -> tuple[int, int]:
    """``"4x1"`` -> ``(4, 1)``; a one-line error for anything else."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or int(match.group(1)) < 1 or int(match.group(2)) < 1:
        raise UserInputError(f"--block must be RxC with positive integers (e.g. 4x1), got {text!r}")
    return int(match.group(1)), int(match.group(2))


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def _as_out_in(value: np.ndarray, node: onnx.NodeProto) -> np.ndarray | None:
    """The weight viewed as ``[out, in, taps]``; None when it is not a prunable layout."""
    if node.op_type == "MatMul" and value.ndim == 2:
        return value.T[:, :, None]  # B is [K, N]
    if node.op_type == "Gemm" and value.ndim == 2:
        return (value if _attr(node, "transB", 0) else value.T)[:, :, None]
    if node.op_type == "Conv" and value.ndim >= 3 and _attr(node, "group", 1) == 1:
        return value.reshape(value.shape[0], value.shape[1], -1)
    return None


def prune_weight(weight_oit: np.ndarray, sparsity: float, block: tuple[int, int]) -> np.ndarray:
    """A ``[out, in, taps]`` weight with its smallest-L1 blocks zeroed (a copy); edge blocks
    that do not fill ``R x C`` are pruned as the partial blocks they are."""
    rows, cols = block
    out, inp, taps = weight_oit.shape
    pad_o, pad_i = -out % rows, -inp % cols
    padded = np.pad(np.abs(weight_oit), ((0, pad_o), (0, pad_i), (0, 0)))
    norms = padded.reshape((out + pad_o) // rows, rows, (inp + pad_i) // cols, cols, taps).sum(axis=(1, 3))
    count = int(round(sparsity * norms.size))
    keep = np.ones(norms.size, dtype=bool)
    keep[np.argsort(norms, axis=None, kind="stable")[:count]] = False
    keep = keep.reshape(norms.shape)
    mask = np.repeat(np.repeat(keep, rows, axis=0), cols, axis=1)[:out, :inp]
    return np.where(mask, weight_oit, np.zeros_like(weight_oit))


def prune_model(model: onnx.ModelProto, sparsity: float, block: tuple[int, int] = (1, 1),
                min_size: int = MIN_SIZE) -> tuple[onnx.ModelProto, list[Pruned]]:
    """A copy of ``model`` with its prunable weights magnitude-pruned to ``sparsity``."""
    if not 0.0 <= sparsity < 1.0:
        raise UserInputError(f"--sparsity must be in [0, 1), got {sparsity}")
    model = onnx.ModelProto.FromString(model.SerializeToString())
    initializers = {t.name: t for t in model.graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    pruned = []
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm", "Conv") or len(node.input) < 2:
            continue
        name = node.input[1]
        tensor = initializers.get(name)
        if tensor is None or len(readers.get(name, [])) != 1:
            continue
        value = numpy_helper.to_array(tensor)
        if value.dtype != np.float32 or value.size < min_size:
            continue
        view = _as_out_in(value, node)
        if view is None:
            continue
        result = prune_weight(view, sparsity, block)
        if node.op_type == "MatMul" or (node.op_type == "Gemm" and not _attr(node, "transB", 0)):
            new = result[:, :, 0].T
        else:
            new = result.reshape(value.shape)
        tensor.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(new, dtype=np.float32), name))
        pruned.append(Pruned(name, node.op_type, list(value.shape),
                             round(float(1.0 - np.count_nonzero(new) / new.size), 4)))
    return model, pruned


def prune_file(path: str | os.PathLike, output: str | os.PathLike, sparsity: float, block: str = "1x1",
               min_size: int = MIN_SIZE) -> list[Pruned]:
    """Prune the model at ``path`` into ``output`` (written whole or not at all)."""
    from edgecc.frontend import load_onnx

    rows_cols = parse_block(block)
    model = load_onnx(path)
    model, pruned = prune_model(model, sparsity, rows_cols, min_size)
    if not pruned:
        raise UserInputError(f"{path}: no prunable weight (constant MatMul/Gemm/ungrouped Conv weights "
                             f"with at least {min_size} values)")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=".edgecc-prune-", dir=output.parent)
    os.close(handle)
    try:
        onnx.save(model, tmp)
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return pruned
