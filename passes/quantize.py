"""Quantized matmuls and convs to integer kernels: 4-bit weight-only (INT4) and INT8.

INT4 (:func:`Int4Matmul`): 4-bit weights to weight-only matmul kernels, the dequantization
fused in.

The importer turns a 4-bit weight (``com.microsoft.MatMulNBits``, or ``DequantizeLinear`` of
an int4/uint4 initializer blocked along ``K``) into
:func:`edgecc.schedules.int4.dequantize` of constant codes, scales and zero points. This pass
finds every ``matmul(x, permute_dims(dequantize(...)))`` (the weight read as ``[K, N]``) and
replaces it by :func:`edgecc.schedules.int4.kernel` on the weight packed two codes a byte
(:func:`edgecc.schedules.int4.pack`): no float32 copy of the weight is ever built, in the
library or in memory. The bias add and activation after it fuse into the kernel. Where the
model allows int8 activations (MatMulNBits' ``accuracy_level`` 4) and the CPU has AVX-512
VNNI, the kernel is :func:`edgecc.schedules.int4.kernel_vnni`: activations quantized per
group at run time, integer dot products.

It runs first in the graph phase, before constant folding would evaluate the dequantization
into a float32 weight, which is what happens where it does not apply: ``N`` not a multiple of
two SIMD vectors, symbolic shapes, non-float32 activations, and CUDA targets. The decisions go
to the module attribute ``edgecc.int4`` (JSON, see :func:`report_of`).

INT8 (:func:`Int8Matmul`): after constant folding, every int32 ``matmul`` or NHWC ``conv2d`` of
int8/uint8 activations (``int32(a) - za``) by a constant weight, as the quantized ops import,
becomes a kernel of :mod:`edgecc.schedules.int8` that multiplies the int8 values directly, the
requantization after it fused in; the decisions go to ``edgecc.int8`` (:func:`int8_report_of`).
"""

from __future__ import annotations

import json

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from ._util import bound_value, const_array, evaluate_constant, op_name, rebind, static_shape

REPORT_ATTR = "edgecc.int4"
INT8_REPORT_ATTR = "edgecc.int8"


def _choose(spec, tuning, entry: dict):
    """A kernel's knobs: from the tuning logs where they measured its candidates, else
    ``spec``'s defaults; recorded in the layer's report ``entry``."""
    from edgecc.schedules import knobs

    spec, note = knobs.choose(spec, tuning, entry["layer"])
    entry["knobs"] = spec.label
    if note:
        entry["knobs_tuned"] = note
    return spec


@mutator
class _Int4(PyExprMutator):
    def __init__(self, mod, lanes: int, vnni: bool, report: list, tuning=None):
        super().__init__(mod)
        self.tuning = tuning
        self.mod = mod
        self.lanes = lanes
        self.vnni = vnni
        self.report = report

    def _bound(self, expr):
        return bound_value(expr, self.lookup_binding)

    def _dequantize(self, expr):
        """``(codes, scales, zeros, group)`` when ``expr`` is a ``[K, N]`` view of an imported
        4-bit weight, else None."""
        from edgecc.schedules import int4

        view = self._bound(expr)
        if op_name(view) != "relax.permute_dims" or (view.attrs.axes is not None
                                                     and [int(a) for a in view.attrs.axes] != [1, 0]):
            return None
        call = self._bound(view.args[0])
        if not isinstance(call, relax.Call) or call.op != tvm.ir.Op.get("relax.call_tir"):
            return None
        func = self.mod[call.args[0]]
        attrs = func.attrs or {}
        group = attrs.get(int4.DEQUANTIZE_ATTR)
        arrays = [const_array(a) for a in call.args[1].fields]
        if group is None or any(a is None for a in arrays):
            return None
        return (*arrays, int(group), int(attrs.get(int4.ACCURACY_ATTR, 0)))

    def visit_var_binding_(self, binding):
        from edgecc.schedules import int4, knobs

        call = binding.value
        found = self._dequantize(call.args[1]) if op_name(call) == "relax.matmul" else None
        x_shape, out_shape = static_shape(call.args[0]) if found else None, static_shape(call) if found else None
        if found is None or x_shape is None or out_shape is None or call.args[0].ty.dtype != "float32":
            super().visit_var_binding_(binding)
            return
        codes, scales, zeros, group, accuracy_level = found
        n, k = codes.shape
        lead = tuple(x_shape[:-1])
        c, rows = int4.row_block(int(np.prod(lead)), n, self.lanes)
        entry = {"layer": binding.var.name, "weight": [k, n], "group_size": group, "activations": "float32",
                 "kernel": None}
        self.report.append(entry)
        if c is None:
            entry["reason"] = f"N={n} is not a multiple of {2 * self.lanes} (two SIMD vectors): float32"
            super().visit_var_binding_(binding)
            return
        vnni = accuracy_level >= 4 and self.vnni and group % 4 == 0
        name = "int4_matmul_vnni" if vnni else "int4_matmul"
        spec = _choose(knobs.Spec("int4_matmul", {
            "lead": list(lead), "k": k, "n": n, "group": group, "lanes": self.lanes, "vnni": vnni},
            {"c": c, "rows": rows}), self.tuning, entry)
        c = spec.knobs["c"]
        if vnni:
            packed, tile_scales, tile_zeros = int4.pack_vnni(codes, scales, zeros, c)
            entry["activations"] = "int8"
            entry["reason"] = "4-bit weight, accuracy_level 4: int8 activations, VNNI dot products"
        else:
            packed, tile_scales, tile_zeros = int4.pack(codes, scales, zeros, self.lanes, c)
            entry["reason"] = "4-bit weight: INT4 kernel"
        gvar = self.builder_.add_func(knobs.write(spec), name)
        entry["kernel"] = gvar.name_hint
        rebind(self, binding, relax.call_tir(
            gvar, [self.visit_expr(call.args[0]), relax.const(packed), relax.const(tile_scales),
                   relax.const(tile_zeros)], relax.TensorType(list(out_shape), "float32")))


def Int4Matmul(preset, tuning=None):  # noqa: N802 (TVM pass naming)
    """Pass: matmuls reading an imported 4-bit weight to INT4 kernels for a CPU preset."""
    import tvm

    from tvm.target.codegen import target_has_features

    from edgecc.schedules import fp32_lanes

    @tvm.transform.module_pass(opt_level=0, name="edgecc.Int4Matmul")
    def _pass(mod, _ctx):
        report: list[dict] = []
        lanes = fp32_lanes(preset)
        vnni = preset.arch == "x86_64" and lanes == 16 and target_has_features("avx512vnni", preset.tvm_target())
        rewriter = _Int4(mod, lanes, vnni, report, tuning)
        for gvar, func in list(mod.functions_items()):
            if isinstance(func, relax.Function):
                rewriter.builder_.update_func(gvar, rewriter.visit_expr(func))
        new = rewriter.builder_.get()
        return new.with_attr(REPORT_ATTR, json.dumps(report)) if report else new

    return _pass


def report_of(mod) -> list[dict]:
    """The layers :func:`Int4Matmul` looked at (empty when it did not run or found none)."""
    attrs = mod.attrs or {}
    return json.loads(str(attrs[REPORT_ATTR])) if REPORT_ATTR in attrs else []


# -- INT8 ---------------------------------------------------------------------------------------
@mutator
class _Int8(PyExprMutator):
    def __init__(self, mod, isa, matmul_isa, report: list, tuning=None):
        super().__init__(mod)
        self.tuning = tuning
        self.isa = isa  # convs (and matmuls, unless the CPU has matrix products)
        self.matmul_isa = matmul_isa
        self.report = report

    def _bound(self, expr):
        return bound_value(expr, self.lookup_binding)

    def _evaluate(self, expr):
        return evaluate_constant(expr, self.lookup_binding)

    def _activations(self, expr):
        """``(a, za)`` for ``int32(a) - za`` or ``int32(a)`` with ``a`` int8/uint8 and ``za`` a
        scalar int32 (an expression, or None for 0); else None."""
        value, zero = self._bound(expr), None
        if op_name(value) == "relax.subtract":
            zero = value.args[1]
            zero_shape = static_shape(zero)
            if zero_shape is None or any(d != 1 for d in zero_shape) or str(zero.ty.dtype) != "int32":
                return None
            value = self._bound(value.args[0])
        if op_name(value) != "relax.astype" or str(value.attrs.dtype) != "int32":
            return None
        a = value.args[0]
        if not isinstance(a.ty, relax.TensorType) or str(a.ty.dtype) not in ("int8", "uint8"):
            return None
        return a, zero

    def _conv_input(self, expr):
        """``(a, za, layout)`` for a conv's NHWC input ``int32(a) - za``, with ``a`` NHWC, or
        ``permute_dims(int32(a) - za)`` of an NCHW ``a`` (the layout pass's transpose); else None."""
        value = self._bound(expr)
        if op_name(value) == "relax.permute_dims" and value.attrs.axes is not None and \
                [int(x) for x in value.attrs.axes] == [0, 2, 3, 1]:
            found = self._activations(value.args[0])
            return None if found is None else (*found, "NCHW")
        found = self._activations(expr)
        return None if found is None else (*found, "NHWC")

    def _conv(self, binding) -> bool:
        """Rewrite an int32 NHWC conv2d of int8/uint8 activations by a constant weight into the
        dot-product conv kernel; False where it does not apply."""
        from edgecc.schedules import int8, knobs

        if self.isa is None:  # (CUDA: matmuls only)
            return False
        call = binding.value
        attrs = call.attrs
        found = self._conv_input(call.args[0])
        out_shape = static_shape(call)
        if found is None or out_shape is None or attrs.data_layout != "NHWC" or attrs.out_layout != "NHWC" \
                or str(attrs.kernel_layout) not in ("OIHW", "OHWI", "HWIO") or str(binding.var.ty.dtype) != "int32":
            return False
        weight = self._evaluate(call.args[1])
        if weight is None or weight.ndim != 4:
            return False
        weight = weight.transpose([str(attrs.kernel_layout).index(d) for d in "OIHW"])
        a, zero, layout = found
        oc, ch, kh, kw = weight.shape
        entry = {"layer": binding.var.name, "weight": [oc, ch, kh, kw], "op": "conv2d", "kernel": None}
        self.report.append(entry)
        c, pixels = int8.conv_tile(oc, out_shape[2], self.isa.lanes)
        spec = knobs.Spec("int8_conv", {
            "shape": list(static_shape(a)), "layout": layout, "a_dtype": str(a.ty.dtype), "oc": oc, "kernel_hw": [kh, kw],
            "strides": [int(s) for s in attrs.strides], "pads": [int(p) for p in attrs.padding],
            "out_hw": list(out_shape[1:3]), "isa": self.isa.name, "lanes": self.isa.lanes}, {"c": c, "pixels": pixels})
        packed = int8.pack_conv(weight.astype(np.int32), self.isa.lanes, c, self.isa.dot)
        depthwise = int(attrs.groups) == oc and ch == 1
        if depthwise and layout == "NHWC" and weight.min() >= -128 and weight.max() <= 127:
            from edgecc.schedules.compute import depthwise_conv2d_nhwc_int8

            packed_dw = np.ascontiguousarray(weight[:, 0].transpose(1, 2, 0)).astype(np.int8)
            call = self.builder_.call_te(
                depthwise_conv2d_nhwc_int8, self.visit_expr(a), self._zero(zero), relax.const(packed_dw),
                [int(x) for x in attrs.strides], [int(x) for x in attrs.padding], [int(x) for x in attrs.dilation],
                primfunc_name_hint="depthwise_conv2d_int8")
            entry["kernel"] = call.args[0].name_hint
            entry["reason"] = "depthwise: int32 products of the int8 input and weights, vectorised across channels"
            rebind(self, binding, call)
            return True
        reason = ("depthwise: the int32 depthwise kernel, vectorised across channels" if depthwise else
                  "grouped: generic int32 conv" if int(attrs.groups) != 1 else
                  "dilated: generic int32 conv" if any(int(d) != 1 for d in attrs.dilation) else
                  "weights beyond int8 (a weight zero point): generic int32 conv" if packed is None else None)
        if reason is not None:
            entry["reason"] = reason
            return False
        spec = _choose(spec, self.tuning, entry)
        gvar = self.builder_.add_func(knobs.write(spec), f"int8_conv_{self.isa.name}")
        entry["kernel"], entry["reason"] = gvar.name_hint, self._how()
        w, cw = packed if spec.knobs["c"] == c else \
            int8.pack_conv(weight.astype(np.int32), self.isa.lanes, spec.knobs["c"], self.isa.dot)
        rebind(self, binding, relax.call_tir(
            gvar, [self.visit_expr(a), self._zero(zero), relax.const(w), relax.const(cw)],
            relax.TensorType(list(out_shape), "int32")))
        return True

    def _how(self) -> str:
        return (f"int8 x int8 dot products ({self.isa.name})" if self.isa.dot
                else f"int8 x int8 widening multiply-accumulates ({self.isa.name})")

    def _zero(self, zero):
        """The activations' zero point as an int32 scalar tensor."""
        zero = relax.const(np.array(0, np.int32)) if zero is None else self.visit_expr(zero)
        if static_shape(zero) != ():
            zero = self.builder_.emit(relax.op.reshape(zero, []))
        return zero

    def visit_var_binding_(self, binding):
        from edgecc.schedules import int8, knobs

        call = binding.value
        if op_name(call) == "relax.nn.conv2d" and self._conv(binding):
            return
        if op_name(call) != "relax.matmul" or str(call.attrs.out_dtype) != "int32":
            super().visit_var_binding_(binding)
            return
        weight = self._evaluate(call.args[1])
        found = self._activations(call.args[0])
        a_shape, out_shape = static_shape(call.args[0]), static_shape(call)
        if weight is None or weight.ndim != 2 or found is None or a_shape is None or out_shape is None:
            super().visit_var_binding_(binding)
            return
        a, zero = found
        k, n = weight.shape
        entry = {"layer": binding.var.name, "weight": [k, n], "kernel": None}
        self.report.append(entry)
        lead = tuple(static_shape(a)[:-1])
        m = int(np.prod(lead))
        args = {"lead": list(lead), "k": k, "n": n, "a_dtype": str(a.ty.dtype)}
        spec = None
        if self.matmul_isa is int8.SMMLA:
            spec = knobs.Spec("int8_mmla", args, dict(zip(("cp", "rp"), int8.mmla_tile(m, n))))
        elif self.matmul_isa is not int8.DP4A:
            spec = knobs.Spec("int8_matmul", {**args, "isa": self.isa.name, "lanes": self.isa.lanes},
                              dict(zip(("c", "rows"), int8.tile_vectors(m, n, self.isa.lanes))))
        if spec is not None:
            spec = _choose(spec, self.tuning, entry)
        if self.matmul_isa is int8.SMMLA:
            packed = int8.pack_mmla(weight.astype(np.int32), spec.knobs["cp"])
        elif self.matmul_isa is int8.DP4A:
            packed = int8.pack_dp4a(weight.astype(np.int32))
        else:
            packed = int8.pack(weight.astype(np.int32), self.isa.lanes, spec.knobs["c"], self.isa.dot)
        if packed is None:
            entry["reason"] = "a weight column spans more than 256 values: generic int32 matmul"
            super().visit_var_binding_(binding)
            return
        if self.matmul_isa is int8.DP4A:
            func, how = int8.kernel_dp4a(lead, k, n, str(a.ty.dtype)), "int8 x int8 dot products (CUDA __dp4a)"
        else:
            func = knobs.write(spec)
            how = "int8 x int8 matrix products (i8mm smmla)" if self.matmul_isa is int8.SMMLA else self._how()
        gvar = self.builder_.add_func(func, f"int8_matmul_{self.matmul_isa.name}")
        entry["kernel"], entry["reason"] = gvar.name_hint, how
        w, wz, cw = packed
        rebind(self, binding, relax.call_tir(
            gvar, [self.visit_expr(a), self._zero(zero), relax.const(w), relax.const(wz), relax.const(cw)],
            relax.TensorType(list(out_shape), "int32")))


def Int8Matmul(preset, tuning=None):  # noqa: N802 (TVM pass naming)
    """Pass: int32 matmuls and NHWC convs of int8/uint8 activations by a constant weight (as
    the quantized ops import, constants folded) to INT8 kernels for the CPU preset: AVX-512 VNNI
    or AArch64 dotprod dot products, i8mm matrix products for matmuls, widening
    multiply-accumulates on NEON without dotprod and on RVV (:func:`edgecc.schedules.int8.isa_for`);
    x86 without VNNI keeps TVM's generic int32 code."""
    from edgecc.schedules import int8

    @tvm.transform.module_pass(opt_level=0, name="edgecc.Int8Matmul")
    def _pass(mod, _ctx):
        isa, matmul_isa = int8.isa_for(preset), int8.isa_for(preset, "matmul")
        if matmul_isa is None:
            return mod
        report: list[dict] = []
        rewriter = _Int8(mod, isa, matmul_isa, report, tuning)
        for gvar, func in list(mod.functions_items()):
            if isinstance(func, relax.Function):
                rewriter.builder_.update_func(gvar, rewriter.visit_expr(func))
        new = rewriter.builder_.get()
        return new.with_attr(INT8_REPORT_ATTR, json.dumps(report)) if report else new

    return _pass


def int8_report_of(mod) -> list[dict]:
    """The int32 matmuls and convs :func:`Int8Matmul` looked at (empty when it did not run or found none)."""
    attrs = mod.attrs or {}
    return json.loads(str(attrs[INT8_REPORT_ATTR])) if INT8_REPORT_ATTR in attrs else []
