"""Target presets: a registry name -> a function building a :class:`TargetPreset`.

A new target is one file and one entry here.
"""

from __future__ import annotations

import functools

from edgecc.errors import UserInputError

from .arm import ARM_CORES, arm
from .base import TargetPreset
from .cuda import cuda, jetson_orin
from .host import host
from .riscv import riscv

TARGETS = {
    "host": host,
    **{name: functools.partial(arm, name) for name in ARM_CORES},
    "riscv": functools.partial(riscv, "riscv"),
    "riscv-vlen128": functools.partial(riscv, "riscv-vlen128"),
    "cuda": cuda,
    "jetson-orin": jetson_orin,
}


def get_target(name: str, *, mcpu: str | None = None, mattr: list[str] | None = None,
               vlen: int | None = None, cuda_arch: str | None = None) -> TargetPreset:
    """Resolve a preset name and user overrides into a :class:`TargetPreset`.

    Parameters
    ----------
    name : str
        A key of :data:`TARGETS`.
    mcpu, mattr, vlen, cuda_arch
        Overrides of the preset's CPU, feature list (``+x``/``-x``), RISC-V VLEN, CUDA arch.
        An override that does not apply to the target is an error, not silently ignored.
    """
    if isinstance(name, TargetPreset):
        return name
    if name not in TARGETS:
        raise UserInputError(f"unknown target '{name}'; valid targets: {', '.join(TARGETS)}")
    family = TARGETS[name].func.__name__ if isinstance(TARGETS[name], functools.partial) \
        else TARGETS[name].__name__
    if vlen is not None and family != "riscv":
        raise UserInputError(f"--vlen applies to riscv targets only, not '{name}'")
    if cuda_arch is not None and family not in ("cuda", "jetson_orin"):
        raise UserInputError(f"--cuda-arch applies to cuda and jetson-orin only, not '{name}'")
    return TARGETS[name](mcpu=mcpu, mattr=mattr, vlen=vlen, cuda_arch=cuda_arch)


def describe_targets() -> list[tuple[str, str]]:
    """(name, one-line description) for every preset, without touching toolchains."""
    return [(name, get_target(name).description) for name in TARGETS]


__all__ = ["TARGETS", "TargetPreset", "get_target", "describe_targets"]
