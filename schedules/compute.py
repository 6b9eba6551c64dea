"""Kernel definitions (TE computes) that the CPU schedule rules are written for.

Relax's default legalization of ``conv2d`` reads the weight in its graph layout
on every inference. For CPUs edgecc legalizes a channels-last conv with a
constant weight into one of two computes whose weight was repacked here, once,
at compile time:

- ``conv2d_nhwc_packed``: weight ``[OC/ob, KH, KW, IC/groups, ob]``; a block of
  ``ob`` output channels (the SIMD lanes) reads one contiguous weight row per
  input channel, in the order the reduction walks it.
- ``depthwise_conv2d_nhwc``: weight ``[KH, KW, C]``, channels contiguous.
- ``grouped_conv2d_nhwc_padded``: weight ``[G, KH, KW, IC/G, padded]``, for groups whose
  width is not whole vectors (shufflenet's 68): computed per group over the flattened
  pixels, each group padded to whole vectors, the padding sliced off on the way out.

The schedule rules find these kernels by the ``edgecc.kernel`` block annotation, and the
packed block (the register tile's width) in ``edgecc.block``.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te, topi

from edgecc.passes._util import const_array, static_shape

GROUP_WIDTH_ATTR = "edgecc.group_width"  # a padded grouped conv's real output channels per group


def output_block(channels: int, lanes: int) -> int:
    """Output channels per tile (and per packed weight row): two vectors, one, else the largest
    power of two dividing ``channels`` (1000 classes -> 8), so vectors stay whole registers."""
    for block in (2 * lanes, lanes):
        if channels % block == 0:
            return block
    block = lanes
    while channels % block:
        block //= 2
    return block


def _output_size(height, width, kh, kw, strides, padding, dilation) -> tuple[int, int]:
    (sh, sw), (dh, dw) = strides, dilation
    return ((height + padding[0] + padding[2] - (kh - 1) * dh - 1) // sh + 1,
            (width + padding[1] + padding[3] - (kw - 1) * dw - 1) // sw + 1)


def _padded(data, padding):
    top, left, bottom, right = padding
    if not any(padding):
        return data
    return topi.nn.pad(data, [0, top, left, 0], [0, bottom, right, 0], name="pad")


def conv2d_nhwc_packed(data, weight, strides, padding, dilation, groups, out_channels, keep_channels=None,
                       conv=None):
    """``out[n, h, w, oc] = sum(pad[n, h*s + kh*d, w*s + kw*d, ic0(oc) + rc] * weight[oc // ob, kh, kw, rc, oc % ob])``

    ``weight`` is :func:`pack_conv_weight`'s: ``rc`` runs over the input channels of
    every group a tile of ``ob`` output channels touches, starting at ``ic0``. With
    ``keep_channels``, the output channels were padded to whole vectors (zero weights)
    and only the first ``keep_channels`` are returned."""
    n, height, width, in_channels = (int(x) for x in data.shape)
    _, kh, kw, span, ob = (int(x) for x in weight.shape)
    (sh, sw), (dh, dw) = strides, dilation
    out_h, out_w = _output_size(height, width, kh, kw, strides, padding, dilation)
    group_out, group_in = out_channels // groups, in_channels // groups
    pad = _padded(data, padding)
    rh, rw = te.reduce_axis((0, kh), "rh"), te.reduce_axis((0, kw), "rw")
    rc = te.reduce_axis((0, span), "rc")

    def body(b, h, w, oc):
        if groups == 1:
            ic = rc
        else:
            ic = te.min((oc // ob * ob // group_out) * group_in, in_channels - span) + rc
        return te.sum(pad[b, h * sh + rh * dh, w * sw + rw * dw, ic] * weight[oc // ob, rh, rw, rc, oc % ob],
                      axis=[rh, rw, rc])

    attrs = {"edgecc.kernel": "conv2d_nhwc", "edgecc.block": ob}
    if conv is not None:  # a conv that could also run as Winograd: its signature (winograd.CONV_ATTR)
        attrs["edgecc.conv"] = conv
    conv = te.compute((n, out_h, out_w, out_channels), body, name="conv2d_nhwc", attrs=attrs)
    if keep_channels is None or keep_channels == out_channels:
        return conv
    return te.compute((n, out_h, out_w, keep_channels), lambda *i: conv[i], name="unpad_channels")


def grouped_conv2d_nhwc_padded(data, weight, strides, padding, dilation, out_channels, lanes):
    """Grouped conv whose group width is not a multiple of the vector: each group's output
    channels are padded up to whole vectors (zero weights) and computed per group over the
    flattened output pixels, ``conv[n, g, pixel, c]`` from ``weight[g, kh, kw, rc, c]``; the
    padding is sliced away by the output block (scheduled group by group, :func:`.cpu.ungroup`)."""
    n, height, width, in_channels = (int(x) for x in data.shape)
    groups, kh, kw, group_in, padded = (int(x) for x in weight.shape)
    group_out = out_channels // groups
    (sh, sw), (dh, dw) = strides, dilation
    out_h, out_w = _output_size(height, width, kh, kw, strides, padding, dilation)
    pad = _padded(data, padding)
    rh, rw = te.reduce_axis((0, kh), "rh"), te.reduce_axis((0, kw), "rw")
    rc = te.reduce_axis((0, group_in), "rc")
    conv = te.compute(
        (n, groups, out_h * out_w, padded),
        lambda b, g, p, c: te.sum(pad[b, p // out_w * sh + rh * dh, p % out_w * sw + rw * dw, g * group_in + rc]
                                  * weight[g, rh, rw, rc, c], axis=[rh, rw, rc]),
        name="grouped_conv2d_nhwc",
        attrs={"edgecc.kernel": "grouped_conv2d_nhwc", "edgecc.block": grouped_block(padded, lanes),
               GROUP_WIDTH_ATTR: group_out})
    return te.compute((n, out_h, out_w, out_channels),
                      lambda b, h, w, oc: conv[b, oc // group_out, h * out_w + w, oc % group_out],
                      name="unpad_groups")


def grouped_block(padded: int, lanes: int) -> int:
    """Output channels per register tile of a padded grouped conv: the whole padded group up
    to five vectors (80 of 68 channels: 4 rows x 5 vectors), else the most vectors up to three
    that divide it (144 -> 48)."""
    vectors = padded // lanes
    if vectors <= 5:
        return padded
    return lanes * max(v for v in (1, 2, 3) if vectors % v == 0)


def pack_conv_weight(weight: np.ndarray, groups: int, lanes: int) -> np.ndarray:
    """OIHW (grouped) weight -> ``[OC/ob, KH, KW, span, ob]`` for :func:`conv2d_nhwc_packed`.

    A tile of ``ob`` output channels (whole vectors) may straddle groups when a group's
    width is not a multiple of ``ob``; its rows then cover the input channels of every
    group it touches (``span``), zero where an output channel does not read them. That
    trades at most a few times the multiply-adds for full vector width, and is exact."""
    out_channels, group_in, kh, kw = weight.shape
    group_out, in_channels = out_channels // groups, group_in * groups
    ob = output_block(group_out, lanes)
    if ob < lanes:  # narrow groups: straddle them rather than use partial vectors
        ob = output_block(out_channels, lanes)
    tiles = out_channels // ob
    if group_out % ob == 0:  # every tile inside one group (always, for groups == 1)
        return np.ascontiguousarray(weight.reshape(tiles, ob, group_in, kh, kw).transpose(0, 3, 4, 2, 1))
    first = [(t * ob) // group_out for t in range(tiles)]
    last = [(t * ob + ob - 1) // group_out for t in range(tiles)]
    span = group_in * max(l - f + 1 for f, l in zip(first, last))
    packed = np.zeros((tiles, kh, kw, span, ob), np.float32)
    for t in range(tiles):
        ic0 = min(first[t] * group_in, in_channels - span)
        for lane in range(ob):
            oc = t * ob + lane
            start = (oc // group_out) * group_in - ic0  # this output channel's group, within the tile rows
            packed[t, :, :, start:start + group_in, lane] = weight[oc].transpose(1, 2, 0)
    return packed


def depthwise_conv2d_nhwc(data, weight, strides, padding, dilation):
    """``out[n, h, w, c] = sum(pad[n, h*s + kh*d, w*s + kw*d, c] * weight[kh, kw, c])``."""
    n, height, width, channels = (int(x) for x in data.shape)
    kh, kw, _ = (int(x) for x in weight.shape)
    (sh, sw), (dh, dw) = strides, dilation
    out_h, out_w = _output_size(height, width, kh, kw, strides, padding, dilation)
    pad = _padded(data, padding)
    rh, rw = te.reduce_axis((0, kh), "rh"), te.reduce_axis((0, kw), "rw")
    return te.compute(
        (n, out_h, out_w, channels),
        lambda b, h, w, c: te.sum(pad[b, h * sh + rh * dh, w * sw + rw * dw, c] * weight[rh, rw, c], axis=[rh, rw]),
        name="depthwise_conv2d_nhwc", attrs={"edgecc.kernel": "depthwise_conv2d_nhwc"})


def depthwise_conv2d_nhwc_int8(data, zero, weight, strides, padding, dilation):
    """A quantized depthwise conv read straight from its int8/uint8 input: ``int32(data) -
    zero`` (padding is the zero point, so 0 once centred) by the int8 ``weight [KH, KW, C]``,
    accumulated in int32, as :func:`depthwise_conv2d_nhwc` computes it."""
    centred = te.compute(data.shape, lambda *i: data(*i).astype("int32") - zero(), name="centred")
    wide = te.compute(weight.shape, lambda *i: weight(*i).astype("int32"), name="weight_int32")
    return depthwise_conv2d_nhwc(centred, wide, strides, padding, dilation)


def matmul_packed(data, weight, out_features):
    """``out[..., m, n] = sum(data[..., m, k] * weight[n // nb, k, n % nb])``: a constant right-hand
    side packed so each block of ``nb`` columns streams contiguously down ``k``."""
    *batch, k_dim = (int(x) for x in data.shape)
    nb = int(weight.shape[-1])
    rk = te.reduce_axis((0, k_dim), "rk")

    def body(*idx):
        *lead, n = idx
        return te.sum(data[(*lead, rk)] * weight[n // nb, rk, n % nb], axis=rk)

    return te.compute((*batch, out_features), body, name="matmul_packed",
                      attrs={"edgecc.kernel": "matmul_packed", "edgecc.block": nb})


def matmul_legalizer(lanes: int):
    """A ``relax.matmul`` legalization for CPUs: a constant 2-D right-hand side gets packed."""
    default = tvm.ir.Op.get("relax.matmul").get_attr("FLegalize")

    def legalize(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
        weight = const_array(call.args[1])
        data_ty = call.args[0].ty
        if weight is None or weight.ndim != 2 or weight.dtype != np.float32 or data_ty.dtype != "float32" \
                or data_ty.ndim < 1 or str(call.ty.dtype) != "float32" \
                or any(not hasattr(d, "value") for d in data_ty.shape.values):
            return default(bb, call)
        k_dim, n_dim = weight.shape
        nb = output_block(n_dim, lanes)
        packed = np.ascontiguousarray(weight.reshape(k_dim, n_dim // nb, nb).transpose(1, 0, 2))
        data = call.args[0]
        if data_ty.ndim == 1:
            return default(bb, call)
        return bb.call_te(matmul_packed, data, relax.const(packed), n_dim, primfunc_name_hint="matmul")

    return legalize


def _ints(values) -> list[int]:
    return [int(v) for v in values]


def _int32_depthwise(call: relax.Call, weight) -> bool:
    """An NHWC depthwise conv of int32 data by an int32 constant into int32 (how quantized ones
    import): the same kernel as float32's, vectorised across channels."""
    attrs = call.attrs
    return ((attrs.data_layout, attrs.kernel_layout, attrs.out_layout) == ("NHWC", "OIHW", "NHWC")
            and weight is not None and weight.dtype == np.int32 and weight.ndim == 4 and weight.shape[1] == 1
            and int(attrs.groups) == weight.shape[0] and str(call.args[0].ty.dtype) == "int32"
            and str(attrs.out_dtype) in ("", "int32", "void", "None"))


def conv2d_legalizer(lanes: int, winograd=None):
    """A ``relax.nn.conv2d`` legalization for CPUs with ``lanes`` fp32 SIMD lanes.
    ``winograd(in_shape, out_channels, padding) -> bool`` (a :class:`.winograd.Policy`) picks
    Winograd F(4, 3) or the direct conv for each eligible 3x3 conv; None: never Winograd."""
    from . import winograd as wino

    default = tvm.ir.Op.get("relax.nn.conv2d").get_attr("FLegalize")

    def legalize(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
        attrs = call.attrs
        weight = const_array(call.args[1])
        if _int32_depthwise(call, weight):  # a quantized depthwise conv (zero points subtracted)
            packed = np.ascontiguousarray(weight[:, 0].transpose(1, 2, 0))
            return bb.call_te(depthwise_conv2d_nhwc, call.args[0], relax.const(packed), _ints(attrs.strides),
                              _ints(attrs.padding), _ints(attrs.dilation), primfunc_name_hint="depthwise_conv2d")
        if (attrs.data_layout, attrs.kernel_layout, attrs.out_layout) != ("NHWC", "OIHW", "NHWC") \
                or weight is None or weight.dtype != np.float32 or call.args[0].ty.dtype != "float32" \
                or (attrs.out_dtype and str(attrs.out_dtype) not in ("", "float32")):
            return default(bb, call)
        out_channels, group_in, kh, kw = weight.shape
        groups = int(attrs.groups)
        strides, padding, dilation = _ints(attrs.strides), _ints(attrs.padding), _ints(attrs.dilation)
        if groups == out_channels and group_in == 1:
            packed = np.ascontiguousarray(weight[:, 0].transpose(1, 2, 0))
            return bb.call_te(depthwise_conv2d_nhwc, call.args[0], relax.const(packed), strides, padding,
                              dilation, primfunc_name_hint="depthwise_conv2d")
        in_shape = static_shape(call.args[0])
        sig = None
        if winograd is not None and in_shape is not None \
                and wino.eligible(weight.shape, strides, dilation, groups, in_shape[3], lanes):
            if winograd(in_shape, out_channels, padding):
                return wino.legalize(bb, call.args[0], weight, padding, output_block(out_channels, lanes))
            sig = wino.signature(in_shape, out_channels, padding)
        group_out = out_channels // groups
        if groups > 1 and group_out % lanes and group_out > lanes:
            padded = -(-group_out // lanes) * lanes
            packed = np.zeros((groups, kh, kw, group_in, padded), np.float32)
            packed[..., :group_out] = weight.reshape(groups, group_out, group_in, kh, kw).transpose(0, 3, 4, 2, 1)
            return bb.call_te(grouped_conv2d_nhwc_padded, call.args[0], relax.const(packed), strides, padding,
                              dilation, out_channels, lanes, primfunc_name_hint="grouped_conv2d")
        keep = out_channels
        if groups == 1 and out_channels % lanes and out_channels > lanes:
            # e.g. 1000 classes: 32 tiles of two whole vectors (24 padded channels) beat 125
            # half vectors; pad to one vector instead where two would waste over 5%.
            out_channels = -(-out_channels // (2 * lanes)) * 2 * lanes
            if out_channels - keep > 0.05 * keep:
                out_channels = -(-keep // lanes) * lanes
            weight = np.concatenate([weight, np.zeros((out_channels - keep, *weight.shape[1:]), np.float32)])
        packed = pack_conv_weight(weight, groups, lanes)
        return bb.call_te(conv2d_nhwc_packed, call.args[0], relax.const(packed), strides, padding, dilation,
                          groups, out_channels, keep, sig, primfunc_name_hint="conv2d")

    return legalize


def fast_math_legalizers() -> dict:
    """float32 ``exp``/``erf``/``gelu``/``tanh``/``softmax``/``sigmoid``/``silu`` as TVM's vectorisable
    polynomial forms (``topi.fast_*``, within a few ulp of libm) instead of one scalar libm call
    per element."""
    def make(op_name, fast, with_axis=False):
        default = tvm.ir.Op.get(op_name).get_attr("FLegalize")

        def legalize(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
            if call.args[0].ty.dtype != "float32":
                return default(bb, call)
            if with_axis:
                return bb.call_te(fast, call.args[0], int(call.attrs.axis))
            return bb.call_te(fast, call.args[0])

        return legalize

    def fast_gelu(x):  # 0.5 x (1 + erf(x / sqrt 2)), as TVM's legalization but with fast_erf
        erf = topi.fast_erf(topi.multiply(x, tvm.tirx.const(0.5 ** 0.5, "float32")))
        return te.compute(x.shape, lambda *i: x(*i) * (tvm.tirx.const(0.5, "float32")
                                                        + erf(*i) * tvm.tirx.const(0.5, "float32")), name="gelu")

    def fast_sigmoid(x):
        e = topi.fast_exp(topi.negative(x))
        one = tvm.tirx.const(1.0, "float32")
        return te.compute(x.shape, lambda *i: one / (one + e(*i)), name="sigmoid")

    def fast_silu(x):
        sigmoid = fast_sigmoid(x)
        return te.compute(x.shape, lambda *i: x(*i) * sigmoid(*i), name="silu")

    def fast_softmax(x, axis):  # TVM's fast_softmax, but scaled by the sum's reciprocal: a division a row
        if axis not in (-1, len(x.shape) - 1):
            return topi.nn.fast_softmax(x, axis)
        k = te.reduce_axis((0, x.shape[-1]), name="k")
        top = te.compute(x.shape[:-1], lambda *i: te.max(x(*i, k), axis=k), name="softmax_max")
        e = topi.fast_exp(te.compute(x.shape, lambda *i: x(*i) - top(*i[:-1]), name="softmax_delta"))
        j = te.reduce_axis((0, x.shape[-1]), name="j")
        total = te.compute(x.shape[:-1], lambda *i: te.sum(e(*i, j), axis=j), name="softmax_sum")
        one = tvm.tirx.const(1.0, "float32")  # (the row's reciprocal is loop-invariant: LLVM hoists it)
        return te.compute(x.shape, lambda *i: e(*i) * (one / total(*i[:-1])), name="softmax_norm")

    return {"relax.exp": make("relax.exp", topi.fast_exp), "relax.erf": make("relax.erf", topi.fast_erf),
            "relax.sigmoid": make("relax.sigmoid", fast_sigmoid), "relax.nn.silu": make("relax.nn.silu", fast_silu),
            "relax.nn.gelu": make("relax.nn.gelu", fast_gelu),
            "relax.tanh": make("relax.tanh", topi.fast_tanh),
            "relax.nn.softmax": make("relax.nn.softmax", fast_softmax, with_axis=True)}


PARTS, LANES = 8, 16  # a whole-tensor max/min: partial results, threads by vector lanes
WHOLE_REDUCTION_ATTR = "edgecc.whole_reduction"


def extreme_reduce_legalizers() -> dict:
    """Float ``max``/``min`` reductions that start from -inf/+inf, as ONNX defines them
    (and bool ones as any/all, which TVM cannot reduce at all).

    TVM's ``topi.max`` starts from the lowest finite value, so a row of all -inf
    (a fully masked attention row) reduces to -3.4e38 instead of -inf, and an
    empty reduction returns that number instead of the identity.
    """
    def make(op_name, is_max):
        default = tvm.ir.Op.get(op_name).get_attr("FLegalize")

        def legalize(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
            data = call.args[0]
            dtype = str(data.ty.dtype)
            if dtype == "bool":  # any / all
                pick = (lambda a, b: tvm.tirx.Or(a, b)) if is_max else (lambda a, b: tvm.tirx.And(a, b))
                identity = not is_max
            elif dtype.startswith("float"):
                pick = (lambda a, b: tvm.tirx.max(a, b)) if is_max else (lambda a, b: tvm.tirx.min(a, b))
                identity = float("-inf") if is_max else float("inf")
            else:
                return default(bb, call)
            if data.ty.ndim < 0:
                return default(bb, call)
            ndim = data.ty.ndim
            axes = sorted(int(a) % ndim for a in call.attrs.axis) if call.attrs.axis is not None \
                else list(range(ndim))
            keepdims = bool(call.attrs.keepdims)

            def whole(x, reducer):
                """All of ``x`` to one value in two steps: ``PARTS x LANES`` partial results, each
                over a contiguous run (vectorised across lanes, parallel across parts), then those."""
                dims = [int(d) for d in x.shape]
                run = int(np.prod(dims)) // (PARTS * LANES)
                c = te.reduce_axis((0, run), name="c")

                def element(flat):
                    index = []
                    for dim in reversed(dims):
                        index.append(flat % dim)
                        flat = flat // dim
                    return x[tuple(index[::-1])]

                partial = te.compute((PARTS, LANES), lambda p, lane: reducer(
                    element((p * run + c) * LANES + lane), axis=[c]), name="partial",
                    attrs={WHOLE_REDUCTION_ATTR: 1})
                pp, pl = te.reduce_axis((0, PARTS), name="pp"), te.reduce_axis((0, LANES), name="pl")
                shape = [1] * ndim if keepdims else []
                return te.compute(shape, lambda *_: reducer(partial[pp, pl], axis=[pp, pl]),
                                  name=op_name.split(".")[-1])

            def compute(x):
                reducer = te.comm_reducer(pick, lambda t: tvm.tirx.const(identity, t), name=op_name)
                size = int(np.prod([int(d) for d in x.shape])) if all(isinstance(d, tvm.tirx.IntImm) for d in x.shape) else 0
                if len(axes) == ndim and size >= 4 * PARTS * LANES and size % (PARTS * LANES) == 0:
                    return whole(x, reducer)
                ranges = [te.reduce_axis((0, x.shape[a]), name=f"k{a}") for a in axes]
                out_shape = [1 if a in axes else x.shape[a] for a in range(ndim)] if keepdims \
                    else [x.shape[a] for a in range(ndim) if a not in axes]

                def body(*idx):
                    idx, index, r = list(idx), [], iter(ranges)
                    for a in range(ndim):
                        if a in axes:
                            index.append(next(r))
                            if keepdims:
                                idx.pop(0)
                        else:
                            index.append(idx.pop(0))
                    return reducer(x[tuple(index)], axis=ranges)

                return te.compute(out_shape, body, name=op_name.split(".")[-1])

            return bb.call_te(compute, data)

        return legalize

    return {"relax.max": make("relax.max", True), "relax.min": make("relax.min", False)}
