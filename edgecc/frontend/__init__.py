"""ONNX -> Relax: loading with clear errors, an op-support check, and the import itself.

The import is TVM's ``tvm.relax.frontend.onnx.from_onnx``; edgecc adds its own
converters through :mod:`edgecc.frontend.converters` rather than forking TVM's file.
"""

from __future__ import annotations

from . import attention, ops, quantized, rnn, ssm, text, vision  # noqa: F401  (register edgecc's converters)
from .converters import CONVERTERS, register_converter, supported_ops
from .loader import ModelInfo, TensorSpec, check_supported, import_onnx, inspect_model, load_onnx

__all__ = ["CONVERTERS", "register_converter", "supported_ops", "ModelInfo", "TensorSpec",
           "check_supported", "import_onnx", "inspect_model", "load_onnx"]
