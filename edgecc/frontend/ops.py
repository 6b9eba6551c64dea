"""edgecc's own ONNX converters, where TVM's import leaves work for every inference.

- ``Sum``: TVM broadcasts every input, stacks them and reduces the stack, which
  materialises an extra tensor per residual add; a chain of ``add`` fuses into
  the producing kernel instead.
- ``Dropout``: identity at inference (TVM keeps a ``dropout`` op whose mask
  output blocks fusion and layout rewrites).
"""

from __future__ import annotations

from tvm import relax
from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter

from .converters import register_converter


@register_converter("Sum")
class Sum(OnnxOpConverter):
    """Sum of any number of inputs, with broadcasting: a chain of adds."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        total = inputs[0]
        for item in inputs[1:]:
            total = bb.normalize(relax.op.add(total, item))
        return total


@register_converter("Dropout")
class Dropout(OnnxOpConverter):
    """Inference-time dropout: the input unchanged, and an all-true mask if one is asked for."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        return relax.Tuple([inputs[0], relax.op.ones_like(inputs[0], dtype="bool")])
