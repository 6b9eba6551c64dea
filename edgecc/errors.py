"""Errors a user can meet. Each carries the fix in its message.

The CLI turns any :class:`EdgeccError` into one line on stderr and exit code
``exit_code``; ``--debug`` shows the traceback instead.
"""


class EdgeccError(Exception):
    """Base class: a problem edgecc can explain in one line."""

    exit_code = 2


class UserInputError(EdgeccError):
    """Bad input: a model, a target name, an option, an input array."""


class UnsupportedOpError(UserInputError):
    """The model uses ONNX ops that the frontend cannot import."""


class ToolchainError(EdgeccError):
    """A cross compiler or emulator is missing; the message names the Debian package."""


class DeviceError(EdgeccError):
    """The device needed to run a bundle is not present (e.g. no GPU)."""

    exit_code = 3


class RuntimeBuildError(EdgeccError):
    """Building the TVM runtime for a target arch failed."""

    exit_code = 1
