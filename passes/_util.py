"""Small helpers shared by edgecc's graph passes."""

from __future__ import annotations

import numpy as np
from tvm import relax
from tvm.ir.expr import Constant


def op_name(expr) -> str | None:
    """``relax.nn.conv2d`` for a call to a Relax op, else None."""
    if isinstance(expr, relax.Call) and hasattr(expr.op, "name"):
        return expr.op.name
    return None


def static_shape(expr) -> tuple[int, ...] | None:
    """The shape of a tensor expression when every dim is a known integer."""
    sinfo = expr.ty
    if not isinstance(sinfo, relax.TensorType) or sinfo.shape is None:
        return None
    values = getattr(sinfo.shape, "values", None)
    if values is None or not all(hasattr(v, "value") for v in values):
        return None
    return tuple(int(v.value) for v in values)


def const_array(expr) -> np.ndarray | None:
    """The NumPy value of a Relax constant, else None."""
    return expr.value.numpy() if isinstance(expr, Constant) and hasattr(expr.value, "numpy") else None


def use_counts(func: relax.Function) -> dict:
    """How many places read each Var in a function (bindings and the returned value)."""
    counts: dict = {}

    def bump(expr):
        for var in relax.analysis.free_vars(expr):
            counts[var] = counts.get(var, 0) + 1

    body = func.body
    for block in body.blocks:
        for binding in block.bindings:
            value = binding.value if isinstance(binding, relax.VarBinding) else binding.value
            bump(value)
    bump(body.body)
    return counts


def function_pass(rewrite, name: str):
    """A module pass applying ``rewrite(mod, func) -> func`` to every Relax function."""
    import tvm

    @tvm.transform.module_pass(opt_level=0, name=name)
    def _pass(mod, _ctx):
        updates = {}
        for gvar, func in mod.functions_items():
            if isinstance(func, relax.Function):
                new = rewrite(mod, func)
                if new is not func:
                    updates[gvar] = new
        for gvar, func in updates.items():
            mod[gvar] = func
        return mod

    return _pass


def rebind(mutator, binding, value) -> None:
    """Emit ``value`` in place of ``binding`` (as an output var when the original was one)
    and point every later use of the binding's var at it."""
    if isinstance(binding.var, relax.DataflowVar):
        new = mutator.builder_.emit(value)
    else:
        new = mutator.builder_.emit_output(value)
    mutator.set_var_remap(binding.var, new)


def bound_value(expr, lookup):
    """The value bound to a Var (following Var-to-Var bindings) via ``lookup`` (a mutator's
    ``lookup_binding``); other expressions as they are."""
    while isinstance(expr, relax.Var):
        value = lookup(expr)
        if value is None:
            return expr
        expr = value
    return expr


def evaluate_constant(expr, lookup, depth: int = 0) -> np.ndarray | None:
    """The NumPy value of an expression built from constants by casts, elementwise add and
    subtract, transposes and reshapes (a quantized weight minus its zero point, before
    constant folding), else None."""
    value = bound_value(expr, lookup)
    array = const_array(value)
    if array is not None or depth > 8 or not isinstance(value, relax.Call):
        return array
    name = op_name(value)
    args = [evaluate_constant(a, lookup, depth + 1) if isinstance(a.ty, relax.TensorType) else None
            for a in value.args[:2]]
    if args[0] is None:
        return None
    if name == "relax.astype":
        return args[0].astype(str(value.attrs.dtype))
    if name in ("relax.subtract", "relax.add") and len(value.args) == 2 and args[1] is not None:
        result = (np.subtract if name == "relax.subtract" else np.add)(args[0], args[1])
        return result.astype(str(value.ty.dtype))
    if name == "relax.permute_dims" and (value.attrs.axes is None or args[0].ndim == 2):
        return args[0].T
    if name in ("relax.reshape", "relax.expand_dims"):
        shape = static_shape(value)
        return None if shape is None else args[0].reshape(shape)
    return None
