"""What a target preset is: one place for a target's triple, features and toolchain."""

from __future__ import annotations

import dataclasses
import shutil
from typing import Any

from edgecc.errors import ToolchainError

# Cross compiler per runtime arch, and the Debian package that provides it.
TOOLCHAINS = {
    "x86_64": ("g++", "g++"),
    "aarch64": ("aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu"),
    "riscv64": ("riscv64-linux-gnu-g++", "g++-riscv64-linux-gnu"),
}
TRIPLES = {
    "x86_64": "x86_64-linux-gnu",
    "aarch64": "aarch64-linux-gnu",
    "riscv64": "riscv64-linux-gnu",
}


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
    def cross_compiler(self) -> str:
        return TOOLCHAINS[self.arch][0]

    @property
    def debian_package(self) -> str:
        return TOOLCHAINS[self.arch][1]

    def tvm_target(self):
        """The ``tvm.target.Target`` for this preset (with its host for GPU targets)."""
        import tvm

        if self.device == "cuda":
            return tvm.target.Target({"kind": "cuda", "arch": self.cuda_arch, "host": self.llvm})
        return tvm.target.Target(self.llvm)

    def require_toolchain(self) -> str:
        """Path of the C++ compiler that links this target's libraries; clear error if missing."""
        path = shutil.which(self.cross_compiler)
        if path is None:
            raise ToolchainError(
                f"target '{self.name}' needs the cross compiler {self.cross_compiler}; "
                f"install it with: apt-get install {self.debian_package}")
        return path

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
