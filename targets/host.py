"""The CPU this compiler runs on."""

import platform

from .base import TRIPLES, TargetPreset, with_mattr


def host(mcpu=None, mattr=None, **_):
    from tvm.target import codegen

    arch = platform.machine()
    llvm = {"kind": "llvm", "mtriple": TRIPLES.get(arch, f"{arch}-linux-gnu"),
            "mcpu": mcpu or codegen.llvm_get_system_cpu()}
    if mattr:
        llvm["mattr"] = with_mattr([], mattr)
    return TargetPreset("host", f"this machine's CPU ({arch}, detected mcpu)", arch, llvm)
