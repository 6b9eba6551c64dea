"""edgecc's converter registry, layered over TVM's ONNX converter map.

A converter is a TVM ``OnnxOpConverter`` subclass (``_impl_v<N>`` class methods).
Register one with ``@register_converter("OpType", domain="ai.edgecc")``; it then
wins over TVM's converter of the same op type. TVM keys converters by op type
alone, so the domain is checked by :func:`supported_ops` before importing.
"""

from __future__ import annotations

import functools

import onnx
from tvm.relax.frontend.onnx import onnx_frontend

# (domain, op_type) -> converter class. Later issues add entries here.
CONVERTERS: dict[tuple[str, str], type] = {}

# Domains whose op types TVM's map covers by name: the standard one, and
# ONNX Runtime's contrib ops (FastGelu, SkipLayerNormalization, ...).
TVM_DOMAINS = ("", "com.microsoft")

_tvm_convert_map = onnx_frontend._get_convert_map


def register_converter(op_type: str, domain: str = ""):
    """Class decorator adding an ``OnnxOpConverter`` for ``domain::op_type``."""

    def wrap(cls):
        CONVERTERS[(_normal_domain(domain), op_type)] = cls
        return cls

    return wrap


def _normal_domain(domain: str) -> str:
    return "" if domain in ("", "ai.onnx") else domain


def converter_ops() -> set[tuple[str, str]]:
    """The (domain, op_type) pairs with a converter (TVM's or edgecc's). ``If`` is TVM's own."""
    ops = {(d, op) for d in TVM_DOMAINS for op in _tvm_convert_map()}
    ops |= {("", "If"), ("", "Constant")}
    return ops | set(CONVERTERS)


def supported_ops() -> set[tuple[str, str]]:
    """Every (domain, op_type) the frontend imports: converters, ONNX functions (expanded
    into their body), and ``Scan``/``Loop`` (unrolled when their trip count is known)."""
    return converter_ops() | _function_ops() | {("", "Scan"), ("", "Loop")}


@functools.cache
def _function_ops() -> frozenset[tuple[str, str]]:
    from .simplify import has_function

    return frozenset((_normal_domain(schema.domain), schema.name) for schema in onnx.defs.get_all_schemas()
                     if has_function(schema.name, schema.domain))


def _edgecc_convert_map():
    return {**_tvm_convert_map(), **{op: cls for (_, op), cls in CONVERTERS.items()}}


# TVM reads its converter map through this one module-level function; overriding
# it is how edgecc's converters reach the importer without a fork.
onnx_frontend._get_convert_map = _edgecc_convert_map
