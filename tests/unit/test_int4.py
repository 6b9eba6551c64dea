"""The INT4 weight-only kernel against NumPy, its packed layout, and the int4 quantizer."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm.s_tir import Schedule

from tvm.target.codegen import target_has_features

from edgecc.quantize import quantize_weight
from edgecc.schedules import int4
from edgecc.targets import get_target

LANES = 16  # the host preset (AVX-512)
HOST = get_target("host")


def _weight(rng, n, k, group):
    codes = rng.integers(0, 16, (n, k)).astype(np.uint8)
    scales = (rng.random((n, k // group)) * 0.1 + 0.01).astype(np.float32)
    zeros = rng.integers(0, 16, (n, k // group)).astype(np.uint8)
    return codes, scales, zeros


def _dequantized(codes, scales, zeros, group):
    return (codes.astype(np.float64) - np.repeat(zeros, group, axis=1)) * np.repeat(scales, group, axis=1)


@pytest.mark.parametrize("lead, k, n, group", [
    ((1,), 64, 32, 32),       # decoding: one row, the narrowest tile (one vector a half)
    ((1,), 256, 128, 16),     # one row, the widest tile (4 vectors a half)
    ((3,), 128, 96, 16),      # 3 rows: one pass of 3
    ((2, 5), 64, 64, 32),     # 10 rows in [2, 5]: three passes of 3, then 1
    ((1, 4), 512, 64, 256),   # two groups of 256; 4 rows: a pass of 3, then 1
])
def test_kernel_matches_numpy(lead, k, n, group):
    rng = np.random.default_rng(k + n + group)
    m = int(np.prod(lead))
    c, rows = int4.row_block(m, n, LANES)
    codes, scales, zeros = _weight(rng, n, k, group)
    sch = Schedule(int4.kernel(lead, k, n, group, LANES, c, rows))
    assert int4.schedule(sch, int4.kernel_of(sch), LANES) == "int4-matmul"
    lib = tvm.compile(tvm.IRModule({"f": sch.mod["main"].with_attr("global_symbol", "f")}), target=HOST.tvm_target())
    x = rng.standard_normal(lead + (k,)).astype(np.float32)
    out = tvm.runtime.tensor(np.full(lead + (n,), np.nan, np.float32))
    packed = int4.pack(codes, scales, zeros, LANES, c)
    lib["f"](*[tvm.runtime.tensor(a) for a in (x, *packed)], out)
    want = x.astype(np.float64) @ _dequantized(codes, scales, zeros, group).T
    # fp32 sums of K products of values up to ~15 * 0.11: relative 1e-5 plus an absolute floor
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=1e-4 * np.sqrt(k))


def test_pack_layout_is_the_documented_one():
    rng = np.random.default_rng(1)
    n, k, group, c = 64, 32, 16, 1
    codes, scales, zeros = _weight(rng, n, k, group)
    packed, tile_scales, tile_zeros = int4.pack(codes, scales, zeros, LANES, c)
    half, tile = c * LANES, 2 * c * LANES
    assert packed.shape == (n // tile, k, half) and packed.dtype == np.uint8
    for t, kk, j in [(0, 0, 0), (1, 5, 3), (1, 31, 15)]:
        assert packed[t, kk, j] & 15 == codes[t * tile + j, kk]
        assert packed[t, kk, j] >> 4 == codes[t * tile + half + j, kk]
    assert tile_scales[1, 1, 7] == scales[tile + 7, 1]
    assert tile_zeros.shape == (n // tile, k // group, half)
    assert tile_zeros[1, 1, 4] & 15 == zeros[tile + 4, 1] and tile_zeros[1, 1, 4] >> 4 == zeros[tile + half + 4, 1]


def test_half_vectors_and_row_block():
    assert int4.half_vectors(4096, 16) == 4 and int4.half_vectors(96, 16) == 1 and int4.half_vectors(40, 16) is None
    assert int4.row_block(1, 4096, 16) == (4, 1)
    assert int4.row_block(7, 4096, 16) == (2, 3)  # rows share the unpacking; 12 accumulators
    assert int4.row_block(2, 4096, 4) == (2, 2)


def test_quantize_weight_round_trip_within_half_a_step():
    rng = np.random.default_rng(2)
    weight = rng.standard_normal((128, 48)).astype(np.float32)  # [K, N]
    codes, scales, zeros = quantize_weight(weight, 32)
    assert codes.shape == (48, 128) and codes.max() <= 15 and zeros.max() <= 15
    back = _dequantized(codes, scales, zeros, 32).T
    step = np.repeat(scales, 32, axis=1).T
    assert np.all(np.abs(back - weight) <= step * 0.5 + 1e-6)
    # zero is representable exactly (padding, ReLU'd activations' weights...)
    assert np.all(np.abs(_dequantized(zeros[:, :, None].repeat(32, 2).reshape(48, 128), scales, zeros, 32)) == 0)


def _int8_rows(x, group):
    """``x`` as the VNNI kernel sees it: per row and group, ``round(x / s) * s``, ``s = max|x| / 127``."""
    m, k = x.shape
    blocks = x.reshape(m, k // group, group).astype(np.float32)
    scale = np.abs(blocks).max(axis=2, keepdims=True) / np.float32(127)
    inverse = np.where(scale > 0, 1 / np.where(scale > 0, scale, 1), 0).astype(np.float32)
    return (np.round(blocks * inverse) * scale).reshape(m, k)


@pytest.mark.skipif(not target_has_features("avx512vnni", HOST.tvm_target()),
                    reason="this CPU has no AVX-512 VNNI")
@pytest.mark.parametrize("lead, k, n, group", [
    ((1,), 64, 32, 32), ((1,), 256, 128, 16), ((3,), 128, 96, 16), ((2, 5), 128, 64, 64)])
def test_vnni_kernel_matches_numpy_with_int8_activations(lead, k, n, group):
    rng = np.random.default_rng(k * n + group)
    m = int(np.prod(lead))
    c, rows = int4.row_block(m, n, LANES)
    codes, scales, zeros = _weight(rng, n, k, group)
    sch = Schedule(int4.kernel_vnni(lead, k, n, group, c, rows))
    assert int4.schedule(sch, int4.kernel_of(sch), LANES) == "int4-matmul"
    lib = tvm.compile(tvm.IRModule({"f": sch.mod["main"].with_attr("global_symbol", "f")}), target=HOST.tvm_target())
    x = rng.standard_normal(lead + (k,)).astype(np.float32)
    x.reshape(m, k)[0, :group] = 0  # an all-zero group: scale 1, every code multiplied by 0
    out = tvm.runtime.tensor(np.full(lead + (n,), np.nan, np.float32))
    lib["f"](*[tvm.runtime.tensor(a) for a in (x, *int4.pack_vnni(codes, scales, zeros, c))], out)
    want = _int8_rows(x.reshape(m, k), group).astype(np.float64) @ _dequantized(codes, scales, zeros, group).T
    # exact integer dot products; the float32 scaling per group rounds: relative 1e-5 plus a floor
    np.testing.assert_allclose(out.numpy().reshape(m, n), want, rtol=1e-5, atol=1e-4 * np.sqrt(k))

