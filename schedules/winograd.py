"""Winograd F(4x4, 3x3) for 3x3 stride-1 convolutions on CPUs: 4x fewer multiply-adds
in the inner product, paid for with two cheap transforms.

A 3x3 conv over a 6x6 input tile gives a 4x4 output tile. In the transformed
domain that is 36 independent products instead of 144, so the conv becomes
three kernels (channels-last, vectorised over channels like every CPU kernel):

1. ``winograd_input``: ``V[a, b, p, c] = (Bt d B)[a, b]`` for every 6x6 input tile
   ``p`` (tiles step 4), written out of the padded input.
2. ``winograd_gemm``: 36 matrix products ``M[a, b] = V[a, b] @ U[a, b]`` over the
   input channels, ``U = G g Gt`` being the weight transformed here at compile time
   and packed like ``matmul_packed``; ``edgecc.schedules.cpu.tiled_reduction``
   schedules (and tuning tunes) it like any matmul.
3. ``winograd_output``: ``out = At M A`` for each tile, clipped to the output; the
   conv's elementwise epilogue (bias, activation, residual) fuses into it.

The transforms are written as explicit sums of their non-zero coefficients, chosen
by a select on the transformed index; their rule unrolls those indices, so each
select folds to one sum. They are separable: rows first, into a tile-sized local
buffer, then columns.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te, tirx, topi
from tvm.s_tir import Schedule

TILE, ALPHA = 4, 6  # output tile, input tile (TILE + 3 - 1)
# Interpolation points 0, 1, -1, 2, -2 and infinity (Lavin & Gray).
BT = ((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0),
      (0, -2, -1, 2, 1, 0), (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1))
G = ((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6),
     (1 / 24, 1 / 12, 1 / 6), (1 / 24, -1 / 12, 1 / 6), (0, 0, 1))
AT = ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1))

INPUT, GEMM, OUTPUT = "winograd_input", "winograd_gemm", "winograd_output"
CONV_ATTR = "edgecc.conv"  # block annotation: the signature of the conv a kernel computes
OPAQUE, OUT_ELEMWISE_FUSABLE = 8, 4  # relax OpPatternKind
MIN_CHANNELS = 16  # below this the transforms cost more than the products save
# The transformed weight is 4x the direct one and streams once per pass over the tiles: past
# this many bytes of it per tile the products wait on memory (measured on AVX-512, 2 cores:
# 3 KiB/tile 2.2x faster than direct, 147 KiB 1.4x, 590 KiB even, 9.4 MiB 2x slower).
MAX_WEIGHT_BYTES_PER_TILE = 256 << 10


def eligible(weight_shape, strides, dilation, groups, in_channels: int, lanes: int) -> bool:
    """Whether a conv can run as Winograd F(4, 3) here: 3x3, stride 1, no dilation, one
    group, and whole vectors of input and output channels."""
    out_channels, _, kh, kw = weight_shape
    return ((kh, kw) == (3, 3) and tuple(strides) == (1, 1) and tuple(dilation) == (1, 1) and groups == 1
            and in_channels % lanes == 0 and out_channels % lanes == 0
            and min(in_channels, out_channels) >= MIN_CHANNELS)


def signature(in_shape, out_channels: int, padding) -> str:
    """What identifies an eligible conv's kernels, either way it is computed:
    ``1x56x56x64->64 pad 1,1,1,1`` (NHWC input, output channels, top/left/bottom/right)."""
    return f"{'x'.join(map(str, in_shape))}->{out_channels} pad {','.join(map(str, padding))}"


def tiles_of(in_shape, padding) -> int:
    batch, height, width, _ = in_shape
    _, _, tiles_h, tiles_w = _tiles(height, width, padding)
    return batch * tiles_h * tiles_w


def preferred(in_shape, out_channels: int, padding) -> bool:
    """The untuned choice: Winograd unless its transformed weight would stream from memory."""
    weight_bytes = ALPHA * ALPHA * in_shape[3] * out_channels * 4
    return weight_bytes <= MAX_WEIGHT_BYTES_PER_TILE * tiles_of(in_shape, padding)


def transform_weight(weight: np.ndarray, ob: int) -> np.ndarray:
    """OIHW 3x3 weight -> ``U = G g Gt`` packed ``[6, 6, OC/ob, IC, ob]`` (float32)."""
    g = np.asarray(G, np.float64)
    u = np.einsum("ai,ocij,bj->abco", g, weight.astype(np.float64), g)  # [6, 6, IC, OC]
    alpha, _, in_channels, out_channels = u.shape
    u = u.reshape(alpha, alpha, in_channels, out_channels // ob, ob).transpose(0, 1, 3, 2, 4)
    return np.ascontiguousarray(u, dtype=np.float32)


def _sum(coefficients, terms):
    """``sum(c * t)`` over the non-zero coefficients, with the +-1 multiplies left out."""
    total = None
    for c, term in zip(coefficients, terms):
        if c == 0:
            continue
        value = term if c == 1 else (-term if c == -1 else term * tirx.const(float(c), "float32"))
        total = value if total is None else total + value
    return total


def _pick(index, rows, make):
    """``make(rows[k])`` selected by ``index == k`` (folds to one term once ``index`` is unrolled)."""
    result = make(rows[-1])
    for k in range(len(rows) - 2, -1, -1):
        result = tirx.Select(index == k, make(rows[k]), result)
    return result


def _tiles(height, width, padding):
    out_h, out_w = height + padding[0] + padding[2] - 2, width + padding[1] + padding[3] - 2
    return out_h, out_w, -(-out_h // TILE), -(-out_w // TILE)


def input_transform(data, padding, conv: str):
    """``V[a, b, p, c]`` for NHWC ``data``; tile ``p = (n * tiles_h + y) * tiles_w + x``."""
    n, height, width, channels = (int(x) for x in data.shape)
    _, _, tiles_h, tiles_w = _tiles(height, width, padding)
    top, left = padding[0], padding[1]
    bottom = tiles_h * TILE + 2 - height - top
    right = tiles_w * TILE + 2 - width - left
    pad = topi.nn.pad(data, [0, top, left, 0], [0, bottom, right, 0], name="pad")
    rows = te.compute(  # Bt along the columns of each tile: rows[p, i, b, c]
        (n * tiles_h * tiles_w, ALPHA, ALPHA, channels),
        lambda p, i, b, c: _pick(b, BT, lambda coeffs: _sum(coeffs, [
            pad[p // (tiles_h * tiles_w), p // tiles_w % tiles_h * TILE + i, p % tiles_w * TILE + j, c]
            for j in range(ALPHA)])),
        name="winograd_input_rows")
    return te.compute(
        (ALPHA, ALPHA, n * tiles_h * tiles_w, channels),
        lambda a, b, p, c: _pick(a, BT, lambda coeffs: _sum(coeffs, [rows[p, i, b, c] for i in range(ALPHA)])),
        name="winograd_input", attrs={"edgecc.kernel": INPUT, CONV_ATTR: conv})


def batched_gemm(v, u, conv: str):
    """``M[a, b, p, o] = sum(V[a, b, p, c] * U[a, b, o // ob, c, o % ob])``."""
    alpha, _, tiles, channels = (int(x) for x in v.shape)
    ob = int(u.shape[-1])
    out_channels = int(u.shape[2]) * ob
    rc = te.reduce_axis((0, channels), "rc")
    return te.compute(
        (alpha, alpha, tiles, out_channels),
        lambda a, b, p, o: te.sum(v[a, b, p, rc] * u[a, b, o // ob, rc, o % ob], axis=rc),
        name="winograd_gemm", attrs={"edgecc.kernel": GEMM, "edgecc.block": ob, CONV_ATTR: conv})


def output_transform(m, batch, out_h, out_w, conv: str):
    """``out[n, h, w, o] = (At M A)[h % 4, w % 4]`` of the tile holding ``(h, w)``."""
    _, _, _, channels = (int(x) for x in m.shape)
    tiles_h, tiles_w = -(-out_h // TILE), -(-out_w // TILE)
    cols = te.compute(  # At along the rows of each tile: cols[n, y, x, i, b, o]
        (batch, tiles_h, tiles_w, TILE, ALPHA, channels),
        lambda n, y, x, i, b, o: _pick(i, AT, lambda coeffs: _sum(coeffs, [
            m[a, b, (n * tiles_h + y) * tiles_w + x, o] for a in range(ALPHA)])),
        name="winograd_output_cols")
    return te.compute(
        (batch, out_h, out_w, channels),
        lambda n, h, w, o: _pick(w % TILE, AT, lambda coeffs: _sum(coeffs, [
            cols[n, h // TILE, w // TILE, h % TILE, b, o] for b in range(ALPHA)])),
        name="winograd_output", attrs={"edgecc.kernel": OUTPUT, CONV_ATTR: conv})


def legalize(bb: relax.BlockBuilder, data: relax.Expr, weight: np.ndarray, padding, ob: int) -> relax.Expr:
    """The three kernels for ``conv2d(data, weight)`` (NHWC data, OIHW 3x3 weight).

    The input transform is opaque to fusion (nothing fuses into or out of it); the output
    transform takes the conv's elementwise epilogue, like a direct conv would."""
    in_shape = [int(x) for x in data.ty.shape.values]
    conv = signature(in_shape, weight.shape[0], padding)
    out_h, out_w, _, _ = _tiles(in_shape[1], in_shape[2], padding)
    # The pattern goes in before the block builder adds the kernel, so convs of one shape share it.
    v = bb.emit(bb.call_te(input_transform, data, padding, conv, primfunc_name_hint="winograd_input",
                           primfunc_attrs={"op_pattern": OPAQUE}))
    m = bb.emit(bb.call_te(batched_gemm, v, relax.const(transform_weight(weight, ob)), conv,
                           primfunc_name_hint="winograd_gemm"))
    return bb.call_te(output_transform, m, in_shape[0], out_h, out_w, conv, primfunc_name_hint="winograd_output",
                      primfunc_attrs={"op_pattern": OUT_ELEMWISE_FUSABLE})


# -- choosing per conv ------------------------------------------------------------------

class Policy:
    """Which eligible convs run as Winograd: ``"auto"`` (:func:`preferred`, or ``choices``
    where tuning decided), ``"all"`` or ``"none"`` (both used to find a model's kernels for
    tuning). ``choices`` maps a signature to True (Winograd) or False (direct)."""

    def __init__(self, mode: str = "auto", choices: dict[str, bool] | None = None):
        self.mode, self.choices = mode, dict(choices or {})

    def __call__(self, in_shape, out_channels: int, padding) -> bool:
        if self.mode != "auto":
            return self.mode == "all"
        conv = signature(in_shape, out_channels, padding)
        return self.choices[conv] if conv in self.choices else preferred(in_shape, out_channels, padding)


def alternative(func: tirx.PrimFunc) -> tuple[str, str] | None:
    """``(conv signature, "winograd" or "direct")`` for a kernel computing an eligible conv."""
    sch = Schedule(func)
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        annotations = sch.get(block).annotations
        if CONV_ATTR in annotations:
            kind = str(annotations.get("edgecc.kernel", ""))
            return str(annotations[CONV_ATTR]), "winograd" if kind.startswith("winograd") else "direct"
    return None


def kernels_by_conv(mod) -> dict[str, list[str]]:
    """``{conv signature: [kernel names]}`` for the fused kernels of a legalized module."""
    found: dict[str, list[str]] = {}
    for gvar, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        sch = Schedule(func)
        sigs = {str(sch.get(b).annotations[CONV_ATTR]) for b in sch.get_child_blocks(sch.get_sblock("root"))
                if CONV_ATTR in sch.get(b).annotations}
        for sig in sigs:
            found.setdefault(sig, []).append(gvar.name_hint)
    return found


# -- schedules ---------------------------------------------------------------------------

def _block(sch: Schedule, name: str):
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        if sch.get(block).name_hint == name:
            return block
    return None


def _inline_epilogue(sch: Schedule, block) -> None:
    """Fold the elementwise blocks after ``block`` (bias, activation) into it, one by one."""
    while True:
        consumers = sch.get_consumers(block)
        if len(consumers) != 1:
            return
        try:
            sch.reverse_compute_inline(consumers[0])
        except Exception:  # noqa: BLE001 -- not elementwise: it keeps its own loop nest
            return


def _first_pass_at(sch: Schedule, stage, loop) -> None:
    """A separable transform's first pass, per tile and channel vector (under ``loop``), into a
    tile-sized local buffer: its two tile loops unrolled, the channels vectorised."""
    sch.compute_at(stage, loop)
    sch.set_scope(stage, 0, "local")
    *_, first, second, channels = sch.get_loops(stage)
    sch.unroll(first)
    sch.unroll(second)
    sch.vectorize(channels)


def schedule_input(sch: Schedule, lanes: int) -> bool:
    """Per tile (parallel) and vector of channels: the 6x6 tile's row pass in a local buffer,
    then its column pass; both fully unrolled, vectorised over channels."""
    out, rows = _block(sch, "winograd_input"), _block(sch, "winograd_input_rows")
    if out is None or rows is None:
        return False
    pad = _block(sch, "pad")
    if pad is not None:
        sch.compute_inline(pad)
    a, b, p, c = sch.get_loops(out)
    c_o, c_i = sch.split(c, [None, lanes])
    sch.reorder(p, c_o, a, b, c_i)
    sch.parallel(p)
    sch.unroll(a)
    sch.unroll(b)
    sch.vectorize(c_i)
    _first_pass_at(sch, rows, c_o)
    return True


def schedule_output(sch: Schedule, lanes: int) -> bool:
    """Per tile (parallel) and vector of channels: the column pass of ``M`` in a local buffer,
    then the row pass with the epilogue, unrolled over the 4x4 outputs (clipped at the edges)."""
    out, cols = _block(sch, "winograd_output"), _block(sch, "winograd_output_cols")
    if out is None or cols is None:
        return False
    _inline_epilogue(sch, out)
    n, h, w, o = sch.get_loops(out)
    h_o, h_i = sch.split(h, [None, TILE])
    w_o, w_i = sch.split(w, [None, TILE])
    o_o, o_i = sch.split(o, [None, lanes])
    sch.reorder(n, h_o, w_o, o_o, h_i, w_i, o_i)
    tile = sch.fuse(n, h_o, w_o)
    sch.parallel(tile)
    sch.unroll(h_i)
    sch.unroll(w_i)
    sch.vectorize(o_i)
    _first_pass_at(sch, cols, o_o)
    return True


def kernel_of(sch: Schedule) -> str | None:
    """Which Winograd kernel a PrimFunc is (by its blocks' ``edgecc.kernel``), if any."""
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        kind = sch.get(block).annotations.get("edgecc.kernel")
        if kind in (INPUT, OUTPUT):
            return str(kind)
    return None
