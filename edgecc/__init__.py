"""edgecc: ONNX models compiled into deployable libraries for edge targets, on Apache TVM."""

__version__ = "0.1.0"


def compile(model, target="host", **options):  # noqa: A001 - the design's public name
    """Compile an ONNX model for a target; see :func:`edgecc.api.compile`."""
    from edgecc.api import compile as _compile

    return _compile(model, target, **options)


def load(path):
    """Open a saved bundle folder; see :func:`edgecc.bundle.load`."""
    from edgecc.bundle import load as _load

    return _load(path)


def inspect(path):
    """Inputs, outputs, ops and unsupported ops of an ONNX file; see :func:`edgecc.frontend.inspect_model`."""
    from edgecc.frontend import inspect_model

    return inspect_model(path)
