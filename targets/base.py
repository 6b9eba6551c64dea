"""What a target preset is: one place for a target's triple, features and toolchain."""

from __future__ import annotations

import dataclasses
import os
import platform
import shutil
from typing import Any

from edgecc.errors import ToolchainError

TRIPLES = {
    "x86_64": "x86_64-linux-gnu",
    "aarch64": "aarch64-linux-gnu",
    "riscv64": "riscv64-linux-gnu",
}
# Cross compiler per runtime arch, and the Debian package that provides it.
TOOLCHAINS = {
    "x86_64": ("x86_64-linux-gnu-g++", "g++-x86-64-linux-gnu"),
    "aarch64": ("aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu"),
    "riscv64": ("riscv64-linux-gnu-g++", "g++-riscv64-linux-gnu"),
}


def find_cxx(arch: str, purpose: str) -> str:
    """Path of a C++ compiler producing ``arch`` code: ``$CXX``/``g++`` on that arch, else the
    cross compiler. ``purpose`` starts the error, which names the Debian package to install."""
    cross, package = TOOLCHAINS[arch]
    names = [cross]
    if arch == platform.machine():
        names.insert(0, os.environ.get("CXX") or "g++")
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    raise ToolchainError(f"{purpose} needs the cross compiler {cross}; install it with: apt-get install {package}")


@dataclasses.dataclass(frozen=True)
class TargetPreset:
    """A resolved target: everything the compiler, bundler and runner need to know.

    Attributes
    ----------
    name : str
        Registry name (``arm``, ``riscv``, ...).
    description : str
        One line for ``edgecc targets``.
    arch : str
        Runtime arch of the library and runner: ``x86_64``, ``aarch64`` or ``riscv64``.
    llvm : dict
        The LLVM target dict for the CPU code (the host code for GPU targets).
    device : str
        ``cpu`` or ``cuda``: where ``main`` runs.
    cuda_arch : str or None
        ``sm_XX`` for CUDA targets.
    vlen : int or None
        RISC-V vector length in bits, used by the emulator too.
    """

    name: str
    description: str
    arch: str
    llvm: dict
    device: str = "cpu"
    cuda_arch: str | None = None
    vlen: int | None = None

    @property
    def vector_bits(self) -> int:
        """SIMD register width the CPU kernels are tiled for: RVV's VLEN, 128 for NEON, and on
        x86 the widest of AVX-512/AVX2/SSE that LLVM enables for the preset's mcpu."""
        if self.arch == "riscv64":
            return self.vlen or 128
        if self.arch != "x86_64":
            return 128
        import tvm
        from tvm.target import codegen

        target = tvm.target.Target(self.llvm)
        for bits, feature in ((512, "avx512f"), (256, "avx2")):
            if codegen.llvm_cpu_has_features(feature, target):
                return bits
        return 128

    def tvm_target(self):
        """The ``tvm.target.Target`` for this preset (with its host for GPU targets)."""
        import tvm

        if self.device == "cuda":
            return tvm.target.Target({"kind": "cuda", "arch": self.cuda_arch, "host": self.llvm})
        return tvm.target.Target(self.llvm)

    def require_toolchain(self) -> str:
        """Path of the C++ compiler that links this target's libraries; clear error if missing."""
        return find_cxx(self.arch, f"target '{self.name}'")

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "arch": self.arch, "device": self.device,
                "llvm": self.llvm, "cuda_arch": self.cuda_arch, "vlen": self.vlen,
                "tvm_target": str(self.tvm_target())}


def with_mattr(base: list[str], extra: list[str] | None) -> list[str]:
    """Merge user ``mattr`` overrides into a preset's list (a later ``-x`` cancels ``+x``)."""
    merged = {m.lstrip("+-"): m for m in base}
    for m in extra or []:
        m = m if m[:1] in "+-" else "+" + m
        merged[m.lstrip("+-")] = m
    return list(merged.values())
