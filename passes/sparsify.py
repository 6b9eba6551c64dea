"""Sparse constant weights to block-sparse kernels, with their epilogues fused in.

For every ``matmul(x, W)`` and 1x1 stride-1 NHWC ``conv2d(x, W)`` with a constant weight (and
every quantized int32 matmul, as the importers write them: its weight minus zero point),
this pass measures the weight's sparsity and picks a block shape of ``R`` x 1 (``R`` output
channels by one input channel, ``R`` in 1, 2, 4) minimising the work
``blocks x (R + 2)`` (per block, the vector loads and index arithmetic cost about two
multiply-adds). When that work per weight, ``blocks x (R + 2) / (N x K)``, is at or below
the threshold measured for the op on the target (:data:`THRESHOLDS`), the op becomes
:func:`edgecc.schedules.sparse.kernel`.

The sparse kernel runs channels-first: it reads ``x`` transposed to ``[K, Mp]`` and writes
``yt = [Np, Mp]`` (``M`` tokens or pixels padded to whole register tiles, ``N`` channels to
whole blocks). Like
:mod:`.channels_last`, the pass carries that layout forward: per-channel bias adds,
activations and other elementwise ops on a sparse output are rewritten onto ``yt`` (so
``FuseOps`` fuses them into the sparse kernel), and a sparse layer that reads another's
output takes its ``yt`` directly, with no transposes between them. Every converted value
also gets a transposed twin in the original layout, which dead-code elimination drops
when nothing reads it (a residual add, say, reads the twin and fuses with its transpose).
The transposes are :func:`edgecc.schedules.sparse.to_channels_first` and
``from_channels_first``, scheduled in L1-sized tiles. A 3x3 depthwise conv (stride 1 or 2,
padding 1, one image) on a tracked value runs channels-first too
(:func:`edgecc.schedules.sparse.depthwise_kernel`), so a sparse mobile network goes from one
sparse 1x1 conv through the next depthwise conv to the next 1x1 conv with no layout change.

Not converted: weights with fewer than :data:`MIN_WEIGHTS` values, fewer rows ``M`` than one
SIMD vector (batch-1 decoding: nothing to vectorise over), and symbolic shapes.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from ._util import const_array, evaluate_constant, op_name, rebind, static_shape
from .channels_last import BINARY, UNARY

REPORT_ATTR = "edgecc.sparsity"
MIN_WEIGHTS = 1024  # below: too few multiply-adds to pay the sparse kernel's per-row overhead
BLOCK_ROWS = (1, 2, 4)

# Largest work per weight, blocks x (R + 2) / weights, at which the sparse kernel is faster than
# the dense one, per CPU arch and op. Measured with ``bench/sparse.py --crossover`` on the host
# (x86_64, AVX-512, 2 threads; one layer alone, its transposes included, interleaved medians):
# the 768 -> 3072 matmul on 128 tokens won at every step up to work 1.2 (pruned in 1x1 blocks:
# 1.06x there; in 4x1 blocks: 1.03x) and lost at 1.41 (0.89x); the 128 -> 256 1x1 conv at 28x28
# won at every step measured, up to 1.5 (1.45x even at 4x1 blocks fully dense: edgecc's dense
# 1x1 conv at that size is the slower kernel). Both stop at 1.2, below 1.5, the work of a fully
# dense weight in 4x1 blocks: a dense model's layers keep their dense kernels (measured on one
# shape only, that would be a guess). aarch64 and riscv64 have no hardware here to measure on:
# they take the host's values.
#
# ``matmul_int8`` (a quantized matmul, zero-point-centred int32 values, against edgecc's dense
# VNNI kernel, which does 64 multiply-adds an instruction) is measured the same way on the
# 768 -> 3072 layer quantized by ONNX Runtime's quantize_dynamic: the sparse kernel (1x1 blocks
# only: with 32-bit integer multiplies an R-row block saves no work) won up to 5% non-zeros
# (work 0.06: 1.74x, 0.15: 1.10x) and lost at 8% (0.24: 0.85x).
THRESHOLDS = {
    "x86_64": {"matmul": 1.2, "conv1x1": 1.2, "matmul_int8": 0.15},
}


def threshold(arch: str, kind: str) -> float:
    """The work per weight up to which ``kind`` (``matmul``, ``conv1x1``, ``matmul_int8``) runs
    sparse on ``arch``."""
    return THRESHOLDS.get(arch, THRESHOLDS["x86_64"])[kind]


@dataclasses.dataclass
class Choice:
    """What the pass decided for one weight."""

    layer: str
    op: str
    weight: list[int]  # [N, K]
    sparsity: float  # zero values / all values
    block: str  # "Rx1"
    fill: float  # blocks x R / weights
    work: float  # blocks x (R + 2) / weights: the sparse kernel's estimated cost per dense weight
    converted: bool
    reason: str
    kernel: str | None = None


def choose_block(weight_nk: np.ndarray, block_rows=BLOCK_ROWS) -> tuple[int, int]:
    """``(R, blocks)`` for the R x 1 block shape with the least work ``blocks x (R + 2)``."""
    from edgecc.schedules import sparse  # edgecc.schedules imports this package

    best = None
    for rows in block_rows:
        blocks = sparse.block_count(weight_nk, rows)
        cost = blocks * (rows + 2)  # the work :data:`THRESHOLDS` bounds
        if best is None or cost < best[0]:
            best = (cost, rows, blocks)
    return best[1], best[2]


def _weight_nk(call, lookup):
    """``(kind, [N, K] weight, M, output shape)`` of a sparsifiable call, else None. An int32
    matmul (a quantized one: zero-point-centred int8 values) is kind ``matmul_int8``."""
    name = op_name(call)
    if name == "relax.matmul":
        integer = str(call.attrs.out_dtype) == "int32" and str(call.args[0].ty.dtype) == "int32"
        weight = evaluate_constant(call.args[1], lookup) if integer else const_array(call.args[1])
        in_shape, out_shape = static_shape(call.args[0]), static_shape(call)
        if weight is None or weight.ndim != 2 or in_shape is None or out_shape is None or len(in_shape) < 2:
            return None
        return ("matmul_int8" if integer else "matmul"), weight.T, int(np.prod(in_shape[:-1])), out_shape
    if name == "relax.nn.conv2d":
        attrs = call.attrs
        weight = const_array(call.args[1])
        out_shape = static_shape(call)
        if (weight is None or out_shape is None or attrs.data_layout != "NHWC" or attrs.out_layout != "NHWC"
                or attrs.kernel_layout != "OIHW" or weight.shape[2:] != (1, 1) or int(attrs.groups) != 1
                or any(int(s) != 1 for s in attrs.strides) or any(int(p) != 0 for p in attrs.padding)):
            return None
        return "conv1x1", weight[:, :, 0, 0], int(np.prod(out_shape[:-1])), out_shape
    return None


@dataclasses.dataclass(frozen=True)
class _Stored:
    """A value the pass keeps channels-first: ``value`` holds the original ``shape`` (channels
    last, ``m`` rows of pixels or tokens) as ``[Np, Mp]``: channels (padded to whole blocks)
    by rows (padded to whole register tiles)."""

    value: relax.Expr
    m: int
    shape: tuple

    def back(self, builder) -> relax.Expr:
        """The original layout (the twin other readers use)."""
        from edgecc.schedules import sparse

        return builder.call_te(sparse.from_channels_first, self.value, self.shape,
                               primfunc_name_hint="from_channels_first", primfunc_attrs={"op_pattern": 2})

    def constant(self, value: np.ndarray) -> relax.Expr | None:
        """A constant operand broadcast against the original value, in this layout (None if it
        varies along other axes than the channels)."""
        n = self.shape[-1]
        if value.ndim > len(self.shape) or any(d != 1 for d in value.shape[:-1]) \
                or (value.ndim and value.shape[-1] not in (1, n)):
            return None
        column = value.reshape(-1)
        if column.size == 1:
            return relax.const(column.reshape(()), str(value.dtype))
        rows = int(self.value.ty.shape[0])  # zero for the rows padding the last block
        return relax.const(np.pad(column, (0, rows - n)).reshape(-1, 1), str(value.dtype))


@mutator
class _Sparsify(PyExprMutator):
    def __init__(self, mod, preset, report: list):
        from edgecc.schedules import fp32_lanes

        super().__init__(mod)
        self.lanes = fp32_lanes(preset)
        self.arch = preset.arch
        self.report = report
        self.stored: dict = {}  # original Var -> _Stored

    def _decide(self, binding, kind, weight_nk, m):
        n, k = weight_nk.shape
        sparsity = float(1.0 - np.count_nonzero(weight_nk) / weight_nk.size)
        rows, blocks = choose_block(weight_nk, (1,) if kind == "matmul_int8" else BLOCK_ROWS)
        fill = blocks * rows / weight_nk.size
        work = blocks * (rows + 2) / weight_nk.size
        limit = threshold(self.arch, kind)
        converted = False
        if weight_nk.dtype != (np.int32 if kind == "matmul_int8" else np.float32):
            reason = f"{weight_nk.dtype} weight"
        elif weight_nk.size < MIN_WEIGHTS:
            reason = f"{weight_nk.size} weights < {MIN_WEIGHTS}"
        elif m < self.lanes:
            reason = f"{m} rows < one {self.lanes}-lane vector"
        elif work > limit:
            reason = f"work {work:.2f} > threshold {limit:.2f}"
        else:
            converted, reason = True, f"work {work:.2f} <= threshold {limit:.2f}"
        choice = Choice(binding.var.name, kind, [n, k], round(sparsity, 4), f"{rows}x1", round(fill, 4),
                        round(work, 4), converted, reason)
        self.report.append(choice)
        return choice, rows

    def _tracked(self, expr) -> _Stored | None:
        return self.stored.get(expr) if isinstance(expr, relax.Var) else None

    def _transposed_input(self, x, m, mp):
        """``x`` as ``[K, Mp]``: a tracked value as it is, else transposed and padded."""
        stored = self._tracked(x)
        if stored is not None and stored.m == m:
            return stored.value  # rows past K (block padding) are zero and never read
        from edgecc.schedules import sparse

        return self.builder_.emit(self.builder_.call_te(
            sparse.to_channels_first, self.visit_expr(x), mp, primfunc_name_hint="to_channels_first",
            primfunc_attrs={"op_pattern": 2}))

    def _sparse(self, binding, call) -> _Stored | None:
        from edgecc.schedules import sparse

        found = _weight_nk(call, self.lookup_binding)
        if found is None:
            return None
        kind, weight_nk, m, out_shape = found
        choice, rows = self._decide(binding, kind, weight_nk, m)
        if not choice.converted:
            return None
        n, k = weight_nk.shape
        mp = sparse.padded_rows(m, self.lanes)
        dtype = "int32" if kind == "matmul_int8" else "float32"
        data, indices, indptr = sparse.to_bsr(np.ascontiguousarray(weight_nk, dtype=dtype), rows)
        xt = self._transposed_input(call.args[0], m, mp)
        func = sparse.kernel(int(xt.ty.shape[0]), mp, n, rows, data.shape[0], self.lanes, dtype)
        gvar = self.builder_.add_func(func, "sparse_bsr")
        choice.kernel = gvar.name_hint
        yt = self.builder_.emit(relax.call_tir(
            gvar, [xt, relax.const(data), relax.const(indices), relax.const(indptr)],
            relax.TensorType([sparse.padded_channels(n, rows), mp], dtype)))
        return _Stored(yt, m, out_shape)

    def _depthwise(self, call) -> _Stored | None:
        """A 3x3 depthwise conv (padding 1, stride 1 or 2, one image) on a tracked value, as
        :func:`edgecc.schedules.sparse.depthwise_kernel` on its stored layout; else None."""
        from edgecc.schedules import sparse

        stored = self._tracked(call.args[0]) if op_name(call) == "relax.nn.conv2d" else None
        if stored is None:
            return None
        attrs, weight, out_shape = call.attrs, const_array(call.args[1]), static_shape(call)
        if weight is None or out_shape is None or len(stored.shape) != 4 or stored.shape[0] != 1:
            return None
        channels = stored.shape[3]
        strides = {int(x) for x in attrs.strides}
        if ((attrs.data_layout, attrs.kernel_layout, attrs.out_layout) != ("NHWC", "OIHW", "NHWC")
                or weight.dtype != np.float32 or weight.shape != (channels, 1, 3, 3) or int(attrs.groups) != channels
                or len(strides) != 1 or not strides <= {1, 2} or any(int(p) != 1 for p in attrs.padding)
                or any(int(d) != 1 for d in attrs.dilation)
                or (attrs.out_dtype and str(attrs.out_dtype) not in ("", "float32"))):
            return None
        _, height, width, _ = stored.shape
        m = int(out_shape[1] * out_shape[2])
        mp = sparse.padded_rows(m, self.lanes)
        rows_in, mp_in = (int(d) for d in stored.value.ty.shape)
        func = sparse.depthwise_kernel(rows_in, mp_in, channels, height, width, strides.pop(), mp, self.lanes)
        gvar = self.builder_.add_func(func, "depthwise_chw")
        yt = self.builder_.emit(relax.call_tir(
            gvar, [stored.value, relax.const(np.ascontiguousarray(weight.reshape(channels, 9)))],
            relax.TensorType([channels, mp], "float32")))
        return _Stored(yt, m, out_shape)

    def _elementwise(self, call) -> _Stored | None:
        """An elementwise op on tracked values, rewritten onto their stored layout; else None."""
        name = op_name(call)
        if name not in UNARY and name not in BINARY:
            return None
        tracked = [self._tracked(a) for a in call.args if self._tracked(a) is not None]
        if not tracked or static_shape(call) != tracked[0].shape:
            return None
        first = tracked[0]
        args = []
        for arg in call.args:
            stored = self._tracked(arg)
            if stored is not None:
                if (stored.m, stored.shape, tuple(stored.value.ty.shape)) != \
                        (first.m, first.shape, tuple(first.value.ty.shape)):
                    return None
                args.append(stored.value)
                continue
            value = evaluate_constant(arg, self.lookup_binding)  # astype(constant) stays unfolded
            if not isinstance(arg.ty, relax.TensorType):
                args.append(arg)
                continue
            operand = first.constant(value) if value is not None else None
            if operand is None:
                return None  # a runtime tensor in the original layout, or not per channel
            args.append(operand)
        expr = self.builder_.emit(relax.Call(call.op, args, call.attrs, call.ty_args))
        return _Stored(expr, first.m, first.shape)

    def visit_dataflow_block_(self, block):
        self.stored = {}
        return super().visit_dataflow_block_(block)

    def visit_var_binding_(self, binding):
        value = binding.value
        stored = None
        if isinstance(value, relax.Call):
            stored = self._sparse(binding, value) or self._depthwise(value) or self._elementwise(value)
        if stored is None:
            super().visit_var_binding_(binding)
            return
        self.stored[binding.var] = stored
        rebind(self, binding, stored.back(self.builder_))


def Sparsify(preset, mode: str = "auto"):  # noqa: N802 (TVM pass naming)
    """Pass: sparse constant matmul / 1x1-conv weights to fused BSR kernels (``mode="off"``: none).
    Its decisions for every candidate weight go to the module attribute ``edgecc.sparsity``
    (JSON, see :func:`report_of`)."""
    import tvm

    @tvm.transform.module_pass(opt_level=0, name="edgecc.Sparsify")
    def _pass(mod, _ctx):
        if mode == "off":
            return mod
        report: list[Choice] = []
        sparsifier = _Sparsify(mod, preset, report)
        for gvar, func in list(mod.functions_items()):
            if isinstance(func, relax.Function):
                sparsifier.builder_.update_func(gvar, sparsifier.visit_expr(func))
        new = sparsifier.builder_.get()
        return new.with_attr(REPORT_ATTR, json.dumps([dataclasses.asdict(c) for c in report]))

    return _pass


def report_of(mod) -> list[dict]:
    """The sparsity decisions :func:`Sparsify` recorded on ``mod`` (empty when it did not run)."""
    attrs = mod.attrs or {}
    return json.loads(str(attrs[REPORT_ATTR])) if REPORT_ATTR in attrs else []
