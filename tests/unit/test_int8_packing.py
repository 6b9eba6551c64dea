"""The INT8 kernels' weight packings, checked against the int32 matmul they stand for."""

from __future__ import annotations

import numpy as np

from edgecc.schedules import int8


def test_dp4a_packing_and_corrections_give_the_int32_matmul():
    """The CUDA kernel's arithmetic, emulated: four signed bytes a word on each side, summed
    products (__dp4a), then the zero-point corrections, equal (a - za) @ Bc exactly."""
    rng = np.random.default_rng(0)
    k, n, m = 37, 11, 3
    centered = rng.integers(-60, 190, (k, n)).astype(np.int32)  # columns beyond int8: a zero point each
    a = rng.integers(0, 256, (m, k)).astype(np.int64)
    za = 131
    words, wz, cw = int8.pack_dp4a(centered)
    w = words.view(np.int8).reshape(words.shape[0], n, 4).transpose(0, 2, 1).reshape(-1, n)[:k].astype(np.int64)
    signed = a - 128  # uint8 activations go in signed
    acc = signed @ w - wz[None, :] * signed.sum(axis=1, keepdims=True) - (za - 128) * cw[None, :]
    np.testing.assert_array_equal(acc, (a - za) @ centered)
