"""NVIDIA GPUs through CUDA: device code from nvcc, host code for x86-64 or aarch64 (Jetson)."""

import re

from .arm import arm_llvm
from .base import TRIPLES, TargetPreset

DEFAULT_CUDA_ARCH = "sm_87"  # Jetson Orin class


def _check_arch(cuda_arch):
    if not re.fullmatch(r"sm_\d{2,3}[a-z]?", cuda_arch):
        from edgecc.errors import UserInputError

        raise UserInputError(f"--cuda-arch must look like sm_87 or sm_90, got {cuda_arch!r}")
    return cuda_arch


def cuda(name="cuda", cuda_arch=None, mcpu=None, **_):
    llvm = {"kind": "llvm", "mtriple": TRIPLES["x86_64"]}
    if mcpu:
        llvm["mcpu"] = mcpu
    arch = _check_arch(cuda_arch or DEFAULT_CUDA_ARCH)
    return TargetPreset(name, f"NVIDIA GPU via CUDA ({arch} by default; --cuda-arch sm_90 ...), x86-64 host",
                        "x86_64", llvm, device="cuda", cuda_arch=arch)


def jetson_orin(name="jetson-orin", cuda_arch=None, mcpu=None, mattr=None, **_):
    arch = _check_arch(cuda_arch or DEFAULT_CUDA_ARCH)
    return TargetPreset(name, "Jetson Orin: aarch64 host (Cortex-A78AE) + CUDA sm_87", "aarch64",
                        arm_llvm("arm", mcpu or "cortex-a78", mattr), device="cuda", cuda_arch=arch)
