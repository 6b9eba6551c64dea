"""Embed nvcc-compiled device code in CUDA libraries.

TVM 0.27 built without a CUDA driver keeps each CUDA module as *source*
(``fmt="cuda"``), to be compiled when loaded by a Python callback. A board
running edgecc's C++ runner has no Python, so edgecc compiles the source with
nvcc at build time and packs the fatbin in its place, through
``export_library``'s ``fpack_imports`` hook.

The packed blob is TVM's module serialization: a little-endian ``u64`` length,
the import tree (two ``u64`` vectors), then per module group its kind string
and, for non-``_lib`` groups, its bytes. A CUDA module's bytes are
``[fmt string][function map][code bytes]``; strings and vectors are a ``u64``
count followed by the items.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from edgecc.errors import EdgeccError, ToolchainError

FATBIN_MAGIC = bytes.fromhex("50ed55ba")  # first four bytes of every nvcc fatbin


class _Reader:
    def __init__(self, data: bytes, offset: int = 0):
        self.data, self.pos = data, offset

    def u64(self) -> int:
        (value,) = struct.unpack_from("<Q", self.data, self.pos)
        self.pos += 8
        return value

    def raw(self) -> bytes:
        size = self.u64()
        chunk = self.data[self.pos:self.pos + size]
        self.pos += size
        return chunk

    def u64_vector(self) -> list[int]:
        return [self.u64() for _ in range(self.u64())]


def _str(data: bytes) -> bytes:
    return struct.pack("<Q", len(data)) + data


def _u64_vector(values: list[int]) -> bytes:
    return struct.pack("<Q", len(values)) + b"".join(struct.pack("<Q", v) for v in values)


def parse_blob(blob: bytes) -> tuple[list[int], list[int], list[tuple[bytes, bytes | None]]]:
    """Split a packed-imports blob into (row_ptr, child_indices, [(kind, bytes or None)])."""
    reader = _Reader(blob)
    total = reader.u64()
    if total != len(blob) - 8:
        raise EdgeccError("unexpected TVM module blob layout (length header mismatch)")
    row_ptr, children = reader.u64_vector(), reader.u64_vector()
    groups = []
    for _ in range(len(row_ptr) - 1):
        kind = reader.raw()
        groups.append((kind, None if kind == b"_lib" else reader.raw()))
    if reader.pos != len(blob):
        raise EdgeccError("unexpected TVM module blob layout (trailing bytes)")
    return row_ptr, children, groups


def build_blob(row_ptr, children, groups) -> bytes:
    body = _u64_vector(row_ptr) + _u64_vector(children)
    for kind, payload in groups:
        body += _str(kind) + (b"" if payload is None else _str(payload))
    return struct.pack("<Q", len(body)) + body


def compile_cuda_module(payload: bytes, cuda_arch: str) -> bytes:
    """Rewrite one CUDA module's bytes from ``fmt=cuda`` source to an nvcc fatbin."""
    reader = _Reader(payload)
    fmt = reader.raw()
    if fmt != b"cuda":
        return payload  # already compiled (a CUDA-equipped build machine did it)
    fmap_start = reader.pos
    # The code is the last field; the function map sits between fmt and code.
    code_len = _code_length(payload, fmap_start)
    source = payload[len(payload) - code_len:]
    if b"__global__" not in source:
        raise EdgeccError("unexpected CUDA module layout (no kernel source found)")
    fmap = payload[fmap_start:len(payload) - code_len - 8]
    fatbin = nvcc_fatbin(source.decode(), cuda_arch)
    return _str(b"fatbin") + fmap + _str(fatbin)


def _code_length(payload: bytes, fmap_start: int) -> int:
    """Length of the trailing code field: the u64 before the last ``n`` bytes equals ``n``."""
    for size in range(len(payload) - fmap_start - 8, -1, -1):
        start = len(payload) - size - 8
        if start >= fmap_start and struct.unpack_from("<Q", payload, start)[0] == size:
            return size
    raise EdgeccError("unexpected CUDA module layout (no code field)")


def nvcc_fatbin(source: str, cuda_arch: str) -> bytes:
    """Compile CUDA C++ source to a fatbin for ``sm_XX`` with the CUDA toolkit's nvcc."""
    import tvm
    from tvm.support import nvcc

    nvcc_dir = str(find_nvcc().parent)
    if nvcc_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = nvcc_dir + os.pathsep + os.environ.get("PATH", "")
    try:
        # TVM's helper takes the arch from the current target (it runs ``nvcc`` from PATH).
        with tvm.target.Target({"kind": "cuda", "arch": cuda_arch}):
            fatbin = nvcc.compile_cuda(source, target_format="fatbin", compiler="nvcc")
    except RuntimeError as err:
        lines = [ln for ln in str(err).splitlines() if "error" in ln.lower()] or str(err).splitlines()
        raise EdgeccError(f"nvcc failed to compile the CUDA kernels: {lines[0] if lines else err}") from None
    if not bytes(fatbin[:4]) == FATBIN_MAGIC:
        raise EdgeccError("nvcc did not produce a fatbin")
    return bytes(fatbin)


def fpack_imports_with_fatbin(cuda_arch: str, llvm_triple: str):
    """An ``export_library(fpack_imports=...)`` hook embedding nvcc fatbins for ``cuda_arch``."""
    import json

    import tvm_ffi
    from tvm.runtime import _ffi_api

    def pack(module, is_system_lib, prefix, workspace_dir):
        blob = bytes(_ffi_api.ModulePackImportsToTensor(module).numpy().tobytes())
        row_ptr, children, groups = parse_blob(blob)
        groups = [(kind, compile_cuda_module(payload, cuda_arch) if kind == b"cuda" else payload)
                  for kind, payload in groups]
        codegen_blob = tvm_ffi.get_global_func("codegen.codegen_blob")
        obj = codegen_blob(build_blob(row_ptr, children, groups), is_system_lib,
                           json.dumps({"kind": "llvm", "mtriple": llvm_triple}), prefix)
        path = os.path.join(workspace_dir, f"{prefix}devc.o")
        obj.write_to_file(path)
        return path

    return pack


def find_nvcc() -> Path:
    """The CUDA toolkit's nvcc (PATH, $CUDA_PATH or /usr/local/cuda), or a ToolchainError."""
    import shutil

    candidates = [shutil.which("nvcc"), Path(os.environ.get("CUDA_PATH", "/usr/local/cuda")) / "bin" / "nvcc"]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate).resolve()
    raise ToolchainError("CUDA targets need nvcc: install the CUDA toolkit "
                         "(Debian package nvidia-cuda-toolkit) or set CUDA_PATH")
