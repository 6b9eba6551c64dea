"""The TVM runtime and the ``edgecc-run`` runner, built once per target arch.

A compiled model (``model.so``) needs ``libtvm_runtime.so`` and
``libtvm_ffi.so`` built for the board's arch, at exactly the TVM versions that
compiled it, plus ``edgecc-run`` to load it and call ``main``.
:func:`ensure_runtime` produces that folder and caches it:

- the host arch: the libraries come from the installed wheels;
- other arches with a TVM wheel (x86_64, aarch64): the libraries come from
  that arch's wheels, fetched with ``pip download``;
- riscv64 (no wheel): tvm-ffi and the TVM runtime are compiled from the
  sources shipped inside the installed wheels, with edgecc's own versions of
  the few internal headers the wheel leaves out (``shim/``).

The runner (``runner/edgecc_run.cc``) is compiled for the arch in every case
and finds the libraries beside it (rpath ``$ORIGIN``), so the folder can be
copied to a board as is. :func:`emulator_prefix` says how to start it on
this machine when the arch differs (qemu-user).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import lru_cache

from edgecc.errors import ToolchainError, UserInputError
from edgecc.runtime._build import (
    ARCHES,
    LIBRARIES,
    RUNNER,
    build_runner,
    cache_root,
    ensure_runtime,
    host_arch,
    runtime_key,
)

__all__ = [
    "ARCHES",
    "LIBRARIES",
    "RUNNER",
    "build_runner",
    "cache_root",
    "emulator_prefix",
    "ensure_runtime",
    "host_arch",
    "runtime_key",
]

_QEMU = {
    "x86_64": ("qemu-x86_64", "/usr/x86-64-linux-gnu", "libc6-amd64-cross"),
    "aarch64": ("qemu-aarch64", "/usr/aarch64-linux-gnu", "libc6-arm64-cross"),
    "riscv64": ("qemu-riscv64", "/usr/riscv64-linux-gnu", "libc6-riscv64-cross"),
}


def emulator_prefix(arch: str, vlen: int | None = None) -> list[str]:
    """Return the command prefix that runs an ``arch`` executable on this machine.

    Parameters
    ----------
    arch : str
        One of :data:`ARCHES`.
    vlen : int, optional
        RISC-V vector register length in bits for the emulated CPU (default
        256). Ignored for other arches.

    Returns
    -------
    list of str
        ``[]`` when ``arch`` is this machine's arch; otherwise the qemu-user
        command, e.g. ``["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"]`` or
        ``["qemu-riscv64", "-L", "/usr/riscv64-linux-gnu", "-cpu",
        "rv64,v=true,vlen=256"]`` (RVV code needs the ``v=true`` CPU; the
        default one dies with SIGILL).

    Raises
    ------
    ToolchainError
        The emulator or the arch's C library is not installed (the message
        names the Debian package).
    UserInputError
        Unknown arch or a bad ``vlen``.
    """
    if arch not in ARCHES:
        raise UserInputError(f"unknown arch {arch!r}; expected one of {', '.join(ARCHES)}")
    if arch == host_arch():
        return []
    program, sysroot, libc_package = _QEMU[arch]
    if shutil.which(program) is None:
        raise ToolchainError(f"{program} is needed to run {arch} code on this machine: "
                             "install the Debian package qemu-user")
    if not os.path.isdir(sysroot):
        raise ToolchainError(f"{sysroot} (the {arch} C library for qemu-user) is missing: "
                             f"install the Debian package {libc_package}")
    prefix = [program, "-L", sysroot]
    if arch == "riscv64":
        vlen = 256 if vlen is None else int(vlen)
        if vlen < 128 or vlen > 65536 or vlen & (vlen - 1):
            raise UserInputError(f"RISC-V vlen must be a power of two >= 128, got {vlen}")
        cpu = f"rv64,v=true,vlen={vlen}"
        if _qemu_major(program) < 8:
            cpu += ",vext_spec=v1.0"  # qemu 7 warns on stderr without it
        prefix += ["-cpu", cpu]
    return prefix


@lru_cache(maxsize=None)
def _qemu_major(program: str) -> int:
    """Major version of a qemu-user binary (0 when it cannot be told)."""
    try:
        out = subprocess.run([program, "--version"], capture_output=True, text=True,
                             timeout=30).stdout
        return int(out.split("version", 1)[1].strip().split(".")[0])
    except (OSError, IndexError, ValueError, subprocess.SubprocessError):
        return 0
