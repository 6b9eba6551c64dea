"""The CUDA packing rewrite: parse and rebuild TVM's module blob byte for byte."""

import struct

import pytest

from edgecc.cuda import build_blob, compile_cuda_module, parse_blob
from edgecc.errors import EdgeccError


def _str(data: bytes) -> bytes:
    return struct.pack("<Q", len(data)) + data


def test_blob_round_trip_is_byte_identical():
    payload = _str(b"cuda") + b"FMAP-BYTES" + _str(b"__global__ void k() {}")
    groups = [(b"_lib", None), (b"cuda", payload)]
    blob = build_blob([0, 1, 1], [1], groups)
    assert parse_blob(blob) == ([0, 1, 1], [1], groups)
    assert build_blob(*parse_blob(blob)) == blob


def test_blob_with_wrong_length_is_refused():
    blob = build_blob([0, 0], [], [(b"_lib", None)])
    with pytest.raises(EdgeccError, match="layout"):
        parse_blob(blob + b"x")


def test_compiled_module_is_left_alone():
    payload = _str(b"fatbin") + b"FMAP" + _str(b"\x50\xed\x55\xba...")
    assert compile_cuda_module(payload, "sm_87") == payload
