"""The block-sparse kernel against NumPy, and the sparsity pass's rewrite (TVMScript before/expected)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.s_tir import Schedule
from tvm.script import ir as I
from tvm.script import relax as R
from tvm.script import tirx as T

from edgecc.passes import sparsify
from edgecc.schedules import sparse
from edgecc.targets import get_target

LANES = 16  # the host preset (AVX-512)
HOST = get_target("host")


def _pruned(rng, n, k, density, rows=1):
    """An [N, K] weight keeping ``density`` of its rows x 1 blocks."""
    weight = rng.standard_normal((n, k)).astype(np.float32)
    keep = rng.random((-(-n // rows), k)) < density
    return weight * np.repeat(keep, rows, axis=0)[:n]


def _run_kernel(weight_nk, rows, m, rng):
    """``W @ xt`` through the scheduled sparse kernel, and the NumPy reference."""
    n, k = weight_nk.shape
    mp = sparse.padded_rows(m, LANES)
    data, indices, indptr = sparse.to_bsr(weight_nk, rows)
    sch = Schedule(sparse.kernel(k, mp, n, rows, data.shape[0], LANES))
    block, kind = sparse.kernel_of(sch)
    assert kind == sparse.SPARSE_ATTR and sparse.schedule(sch, block, LANES) == "sparse-bsr"
    func = sch.mod["main"].with_attr("global_symbol", "sparse_bsr")
    lib = tvm.compile(tvm.IRModule({"sparse_bsr": func}), target=HOST.tvm_target())
    xt = np.zeros((k, mp), np.float32)
    xt[:, :m] = rng.standard_normal((k, m)).astype(np.float32)
    out = tvm.runtime.tensor(np.full((sparse.padded_channels(n, rows), mp), np.nan, np.float32))
    lib["sparse_bsr"](*[tvm.runtime.tensor(a) for a in (xt, data, indices, indptr)], out)
    assert np.all(out.numpy()[n:] == 0)  # the rows padding the last block row
    return out.numpy()[:n, :m], (weight_nk.astype(np.float64) @ xt[:, :m].astype(np.float64))


# fp32 sums of up to K products: 1e-5 relative plus an absolute floor for near-zero outputs
RTOL, ATOL = 1e-5, 1e-4


@pytest.mark.parametrize("density", [0.5, 0.2, 0.1, 0.02])
@pytest.mark.parametrize("rows", [1, 4])
def test_kernel_matches_numpy_across_sparsities(density, rows):
    rng = np.random.default_rng(int(density * 100) + rows)
    weight = _pruned(rng, 96, 80, density, rows)
    got, want = _run_kernel(weight, rows, 64, rng)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("n, k, m, rows", [
    (10, 37, 50, 4),    # rows not a multiple of the block (last block row padded), M padded to tiles
    (7, 16, 16, 2),     # odd rows, one vector of pixels
    (33, 100, 200, 1),  # odd everything
    (9, 40, 17 * 16, 1),  # 17 vectors of pixels: a tile of 9, then a narrower one of 8
    (12, 40, 7 * 16, 4),  # 4x1 blocks: tiles of 3 vectors, the last of 1
])
def test_kernel_odd_shapes(n, k, m, rows):
    rng = np.random.default_rng(n * k)
    got, want = _run_kernel(_pruned(rng, n, k, 0.3, rows), rows, m, rng)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def test_kernel_empty_rows_and_fully_dense_blocks():
    rng = np.random.default_rng(3)
    weight = _pruned(rng, 32, 48, 0.1, 4)
    weight[4:12] = 0                      # two empty block rows
    weight[16:20, 5:9] = 1.5              # fully dense 4x1 blocks
    weight[28:32] = rng.standard_normal((4, 48))  # a block row with every block present
    got, want = _run_kernel(weight, 4, 48, rng)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    assert np.all(got[4:12] == 0)


def test_int32_kernel_is_exact():
    """A quantized matmul's zero-point-centred integers: exact int32 sums."""
    rng = np.random.default_rng(7)
    n, k, m = 24, 70, 40
    weight = (rng.integers(-127, 128, (n, k)) * (rng.random((n, k)) < 0.1)).astype(np.int32)
    mp = sparse.padded_rows(m, LANES)
    data, indices, indptr = sparse.to_bsr(weight, 1)
    assert data.dtype == np.int32
    sch = Schedule(sparse.kernel(k, mp, n, 1, data.shape[0], LANES, "int32"))
    block, _ = sparse.kernel_of(sch)
    sparse.schedule(sch, block, LANES)
    lib = tvm.compile(tvm.IRModule({"f": sch.mod["main"].with_attr("global_symbol", "f")}), target=HOST.tvm_target())
    xt = rng.integers(-255, 256, (k, mp)).astype(np.int32)
    out = tvm.runtime.tensor(np.zeros((n, mp), np.int32))
    lib["f"](*[tvm.runtime.tensor(a) for a in (xt, data, indices, indptr)], out)
    np.testing.assert_array_equal(out.numpy(), weight.astype(np.int64) @ xt)


def test_all_zero_weight_gives_zeros():
    rng = np.random.default_rng(4)
    got, want = _run_kernel(np.zeros((8, 24), np.float32), 1, 16, rng)
    assert np.all(got == 0) and np.all(want == 0)


def _depthwise_reference(image, weight, stride):
    """3x3 depthwise conv, padding 1, of ``image[C, H, W]`` with ``weight[C, 9]``, in float64."""
    channels, height, width = image.shape
    out_h, out_w = (height - 1) // stride + 1, (width - 1) // stride + 1
    padded = np.pad(image.astype(np.float64), ((0, 0), (1, 1), (1, 1)))
    out = np.zeros((channels, out_h, out_w))
    for kh in range(3):
        for kw in range(3):
            window = padded[:, kh:kh + stride * (out_h - 1) + 1:stride, kw:kw + stride * (out_w - 1) + 1:stride]
            out += weight[:, kh * 3 + kw, None, None] * window
    return out


@pytest.mark.parametrize("channels, height, width, stride", [
    (5, 7, 7, 1),     # a row narrower than one vector
    (3, 9, 10, 2),    # odd height, even width, stride 2
    (4, 14, 15, 2),   # odd width at stride 2
    (3, 20, 37, 1),   # rows spanning three vectors, the last partial
    (2, 1, 1, 1),     # a single pixel: every tap but the centre in the padding
    (3, 2, 3, 2),
])
def test_depthwise_channels_first_matches_numpy(channels, height, width, stride):
    rng = np.random.default_rng(channels * height * width + stride)
    out_h, out_w = (height - 1) // stride + 1, (width - 1) // stride + 1
    mp_in, mp_out = sparse.padded_rows(height * width, LANES), sparse.padded_rows(out_h * out_w, LANES)
    rows_in = channels + 3  # a sparse layer's output: channels padded to whole blocks
    sch = Schedule(sparse.depthwise_kernel(rows_in, mp_in, channels, height, width, stride, mp_out, LANES))
    block, kind = sparse.kernel_of(sch)
    assert kind == sparse.DEPTHWISE_ATTR and sparse.schedule_depthwise(sch, block, LANES) == "depthwise-chw"
    func = sch.mod["main"].with_attr("global_symbol", "depthwise_chw")
    lib = tvm.compile(tvm.IRModule({"depthwise_chw": func}), target=HOST.tvm_target())
    xt = rng.standard_normal((rows_in, mp_in)).astype(np.float32)
    weight = rng.standard_normal((channels, 9)).astype(np.float32)
    out = tvm.runtime.tensor(np.full((channels, mp_out), np.nan, np.float32))
    lib["depthwise_chw"](tvm.runtime.tensor(xt), tvm.runtime.tensor(weight), out)
    got = out.numpy()
    want = _depthwise_reference(xt[:channels, :height * width].reshape(channels, height, width), weight, stride)
    np.testing.assert_allclose(got[:, :out_h * out_w].reshape(want.shape), want, rtol=RTOL, atol=ATOL)
    assert np.all(got[:, out_h * out_w:] == 0)  # padding columns


def test_bsr_round_trip():
    rng = np.random.default_rng(5)
    weight = _pruned(rng, 10, 12, 0.4, 4)
    data, indices, indptr = sparse.to_bsr(weight, 4)
    rebuilt = np.zeros((12, 12), np.float32)
    for block_row in range(len(indptr) - 1):
        for e in range(indptr[block_row], indptr[block_row + 1]):
            rebuilt[block_row * 4:block_row * 4 + 4, indices[e]] = data[e]
    np.testing.assert_array_equal(rebuilt[:10], weight)
    assert sparse.block_count(weight, 4) == len(indices)


def test_block_choice_follows_the_structure():
    rng = np.random.default_rng(6)
    assert sparsify.choose_block(_pruned(rng, 64, 64, 0.1, 1))[0] == 1   # unstructured: single values
    assert sparsify.choose_block(_pruned(rng, 64, 64, 0.2, 4))[0] == 4   # 4x1-pruned: its blocks


# -- the rewrite --------------------------------------------------------------------------------

M, K, N = 32, 64, 96


@I.ir_module
class Before:
    @R.function
    def main(x: R.Tensor((1, M, K), "float32"), w: R.Tensor((K, N), "float32"),
             b: R.Tensor((N,), "float32")) -> R.Tensor((1, M, N), "float32"):
        with R.dataflow():
            y = R.matmul(x, w)
            z = R.add(y, b)
            out = R.nn.relu(z)
            R.output(out)
        return out


@I.ir_module
class Expected:
    # The three kernels are stubs here, replaced by edgecc.schedules.sparse's below.
    @T.prim_func(private=True)
    def to_channels_first(x: T.handle, xt: T.handle):
        T.evaluate(0)

    @T.prim_func(private=True)
    def sparse_bsr(xt: T.handle, data: T.handle, indices: T.handle, indptr: T.handle, yt: T.handle):
        T.evaluate(0)

    @T.prim_func(private=True)
    def from_channels_first(yt: T.handle, y: T.handle):
        T.evaluate(0)

    @R.function
    def main(x: R.Tensor((1, M, K), "float32"), data: R.Tensor("float32", ndim=2),
             indices: R.Tensor("int32", ndim=1), indptr: R.Tensor("int32", ndim=1),
             b: R.Tensor((N, 1), "float32")) -> R.Tensor((1, M, N), "float32"):
        cls = Expected
        with R.dataflow():
            xt = R.call_tir(cls.to_channels_first, (x,), out_ty=R.Tensor((K, M), "float32"))
            yt = R.call_tir(cls.sparse_bsr, (xt, data, indices, indptr), out_ty=R.Tensor((N, M), "float32"))
            zt = R.add(yt, b)
            outt = R.nn.relu(zt)
            out = R.call_tir(cls.from_channels_first, (outt,), out_ty=R.Tensor((1, M, N), "float32"))
            R.output(out)
        return out


def _te_kernel(te_func, in_shape, *args):
    """The PrimFunc ``BlockBuilder.call_te`` makes of ``te_func`` (as the pass calls it)."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(in_shape, "float32"))
    with bb.function("f", [x]):
        out = bb.emit(bb.call_te(te_func, x, *args, primfunc_attrs={"op_pattern": 2}))
        bb.emit_func_output(out)
    mod = bb.get()
    return next(func for func in mod.functions.values() if isinstance(func, tvm.tirx.PrimFunc))


def test_rewrite_matches_expected_module():
    rng = np.random.default_rng(7)
    weight = _pruned(rng, N, K, 0.1, 1)  # [N, K]
    bias = rng.standard_normal(N).astype(np.float32)
    before = relax.transform.BindParams("main", {"w": weight.T.copy(), "b": bias})(Before)
    after = sparsify.Sparsify(HOST)(before)
    after = relax.transform.DeadCodeElimination()(after)

    data, indices, indptr = sparse.to_bsr(weight, 1)
    expected = relax.transform.BindParams("main", {"data": data, "indices": indices, "indptr": indptr,
                                                   "b": bias.reshape(N, 1)})(Expected)
    for name, func in (("to_channels_first", _te_kernel(sparse.to_channels_first, (1, M, K), M)),
                       ("sparse_bsr", sparse.kernel(K, M, N, 1, data.shape[0], LANES)),
                       ("from_channels_first", _te_kernel(sparse.from_channels_first, (N, M), (1, M, N)))):
        expected.update_func(expected.get_global_var(name), func)
    expected = relax.transform.Normalize()(expected)
    tvm.ir.assert_structural_equal(after.without_attr(sparsify.REPORT_ATTR), expected)

    (layer,) = json.loads(str(after.attrs[sparsify.REPORT_ATTR]))
    assert layer["converted"] and layer["block"] == "1x1" and layer["weight"] == [N, K]
    assert abs(layer["sparsity"] - 0.9) < 0.05


def test_dense_weight_is_left_alone():
    rng = np.random.default_rng(8)
    before = relax.transform.BindParams("main", {"w": rng.standard_normal((K, N)).astype(np.float32),
                                                 "b": np.zeros(N, np.float32)})(Before)
    after = sparsify.Sparsify(HOST)(before)
    tvm.ir.assert_structural_equal(after.without_attr(sparsify.REPORT_ATTR), before)
    (layer,) = sparsify.report_of(after)
    assert not layer["converted"] and "threshold" in layer["reason"]


def test_off_mode_changes_nothing():
    rng = np.random.default_rng(9)
    before = relax.transform.BindParams("main", {"w": _pruned(rng, N, K, 0.05).T.copy(),
                                                 "b": np.zeros(N, np.float32)})(Before)
    after = sparsify.Sparsify(HOST, "off")(before)
    tvm.ir.assert_structural_equal(after, before)
    assert sparsify.report_of(after) == []
