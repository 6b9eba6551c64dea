"""Converters for vision and classic-ML ops TVM's importer lacks or gets wrong.

- ``BatchNormalization`` with ``training_mode=1``: normalises with the batch
  statistics and returns the updated running mean and variance, as the spec's
  formulas do (TVM's ``batch_norm`` mixes the running statistics with the
  momentum the other way round). Inference mode is TVM's own converter.
- ``Col2Im`` and ``DeformConv``, which TVM has no converter for: both become
  gathers at indices computed at import from the static shapes.
- ``ConvTranspose`` with ``output_shape``: the pads follow from it per the spec,
  then TVM's converter does the rest (TVM ignores ``output_shape``).
- ``SpaceToDepth`` in ``CRD`` mode (opset 28), which TVM's converter ignores.
- ``NonMaxSuppression``: TVM's converter, with the spec's strict IoU threshold.
- ``ai.onnx.ml``'s ``TreeEnsemble`` and ``LabelEncoder`` (numeric keys and values).
"""

from __future__ import annotations

import itertools

import numpy as np
from onnx import numpy_helper
from tvm import relax
from tvm.relax.frontend.onnx import onnx_frontend
from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter

from .converters import register_converter
from .ops import _constant, _dtype, _shape

ML = "ai.onnx.ml"


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _tensor(value: np.ndarray) -> relax.Expr:
    """A constant of the array's own dtype (``relax.const`` narrows 64-bit arrays by default)."""
    value = np.asarray(value)
    return relax.const(value, str(value.dtype))


def _array(value) -> np.ndarray:
    """An attribute's value (a TensorProto or a list of numbers) as an array."""
    if hasattr(value, "data_type"):
        return numpy_helper.to_array(value)
    return np.asarray(value)


@register_converter("BatchNormalization")
class BatchNormalization(OnnxOpConverter):
    """``training_mode=1``: batch statistics; ``0``: TVM's converter."""

    @classmethod
    def _impl_v14(cls, bb, inputs, attr, params):
        if not attr.get("training_mode", 0):
            return onnx_frontend.BatchNormalization._impl_v15(bb, inputs, attr, params)
        data, scale, bias, mean, var = inputs[:5]
        epsilon = attr.get("epsilon", 1e-5)
        momentum = attr.get("momentum", 0.9)
        dtype = _dtype(data)
        compute = "float32" if dtype == "float16" else dtype  # the spec asks float statistics

        def cast(expr):
            return expr if _dtype(expr) == compute else relax.op.astype(expr, compute)

        ndim = len(_shape(data))
        axes = [0] + list(range(2, ndim))
        x = cast(data)
        batch_mean = bb.normalize(relax.op.mean(x, axes))
        batch_var = bb.normalize(relax.op.variance(x, axes))

        def per_channel(expr):
            return relax.op.reshape(expr, [1, -1] + [1] * (ndim - 2))

        inv_std = relax.op.rsqrt(relax.op.add(batch_var, relax.const(epsilon, compute)))
        y = relax.op.multiply(relax.op.subtract(x, per_channel(batch_mean)),
                              per_channel(bb.normalize(relax.op.multiply(inv_std, cast(scale)))))
        y = relax.op.add(y, per_channel(cast(bias)))

        def running(old, batch):
            mixed = relax.op.add(relax.op.multiply(cast(old), relax.const(momentum, compute)),
                                 relax.op.multiply(batch, relax.const(1 - momentum, compute)))
            return relax.op.astype(mixed, _dtype(old)) if _dtype(old) != compute else mixed

        if compute != dtype:
            y = relax.op.astype(y, dtype)
        return relax.Tuple([y, running(mean, batch_mean), running(var, batch_var)])


def _gather_sum(bb, columns: relax.Expr, index: np.ndarray) -> relax.Expr:
    """``sum_k columns[..., index[s, k]]`` over the last axis, an index one past the end reading 0."""
    shape = _shape(columns)
    zero = relax.op.zeros(shape[:-1] + [1], _dtype(columns))
    padded = bb.normalize(relax.op.concat([columns, zero], axis=-1))
    taken = relax.op.take(padded, _tensor(index.astype("int64")), axis=len(shape) - 1)
    return relax.op.sum(taken, axis=-1)


def _grid(sizes: list[int]) -> np.ndarray:
    """Every index of an array of shape ``sizes``, row-major: [*sizes, len(sizes)]."""
    return np.stack(np.meshgrid(*[np.arange(s) for s in sizes], indexing="ij"), -1)


@register_converter("Col2Im")
class Col2Im(OnnxOpConverter):
    """Sum of column blocks back into an image: per output pixel, a gather of the
    (at most ``prod(block_shape)``) columns that cover it."""

    @classmethod
    def _impl_v18(cls, bb, inputs, attr, params):
        data = inputs[0]
        image = [int(v) for v in _constant(inputs[1], params, "Col2Im image_shape")]
        block = [int(v) for v in _constant(inputs[2], params, "Col2Im block_shape")]
        dims = len(image)
        dilations = list(attr.get("dilations", [1] * dims))
        strides = list(attr.get("strides", [1] * dims))
        pads = list(attr.get("pads", [0] * 2 * dims))
        blocks = [(image[d] + pads[d] + pads[d + dims] - dilations[d] * (block[d] - 1) - 1) // strides[d] + 1
                  for d in range(dims)]
        n, ck, length = _shape(data)
        kernel = int(np.prod(block))
        if length != int(np.prod(blocks)) or ck % kernel:
            raise ValueError(f"Col2Im input of shape {[n, ck, length]} does not fit image {image}, "
                             f"block {block}, pads {pads}, strides {strides}, dilations {dilations}")
        pixels = _grid(image).reshape(-1, 1, dims)
        offsets = _grid(block).reshape(1, -1, dims)
        start = pixels + np.array(pads[:dims]) - offsets * np.array(dilations)  # block origin: [S, K, D]
        at = start // np.array(strides)
        valid = np.all((start % np.array(strides) == 0) & (at >= 0) & (at < np.array(blocks)), axis=-1)
        column = np.arange(kernel)[None, :] * length + np.ravel_multi_index(
            tuple(np.clip(at, 0, np.array(blocks) - 1).transpose(2, 0, 1)), blocks)
        index = np.where(valid, column, kernel * length)
        columns = bb.normalize(relax.op.reshape(data, [n, ck // kernel, kernel * length]))
        return relax.op.reshape(_gather_sum(bb, columns, index), [n, ck // kernel] + image)


@register_converter("DeformConv")
class DeformConv(OnnxOpConverter):
    """2-D deformable convolution: bilinear samples (zero outside the image) gathered
    per kernel tap and output pixel, times the mask, then a grouped matmul."""

    @classmethod
    def _impl_v19(cls, bb, inputs, attr, params):
        x, weight, offset, bias, mask = (inputs[i] for i in range(5))
        if len(_shape(x)) != 4:
            raise NotImplementedError("DeformConv: only 2-D inputs (N, C, H, W) are supported")
        n, c, height, width = _shape(x)
        out_c, group_c, kh, kw = _shape(weight)
        kh, kw = attr.get("kernel_shape", (kh, kw))
        sh, sw = attr.get("strides", (1, 1))
        dh, dw = attr.get("dilations", (1, 1))
        top, left = list(attr.get("pads", (0, 0, 0, 0)))[:2]
        group = attr.get("group", 1)
        offset_group = attr.get("offset_group", 1)
        oh, ow = _shape(offset)[2:]
        taps, pixels = kh * kw, oh * ow
        dtype = _dtype(x)
        op = relax.op

        # Sampling positions before the offsets: [taps, pixels].
        tap_h, tap_w = np.meshgrid(np.arange(kh) * dh, np.arange(kw) * dw, indexing="ij")
        out_h, out_w = np.meshgrid(np.arange(oh) * sh - top, np.arange(ow) * sw - left, indexing="ij")
        base_h = tap_h.reshape(-1, 1) + out_h.reshape(1, -1)
        base_w = tap_w.reshape(-1, 1) + out_w.reshape(1, -1)

        offset = bb.normalize(op.reshape(offset, [n, offset_group, taps, 2, pixels]))

        def offset_part(i):
            part = op.strided_slice(offset, axes=[3], begin=[i], end=[i + 1])
            return op.reshape(part, [n, offset_group, taps, pixels])

        pos_h = bb.normalize(op.add(offset_part(0), _tensor(base_h.astype(dtype))))
        pos_w = bb.normalize(op.add(offset_part(1), _tensor(base_w.astype(dtype))))
        floor_h, floor_w = bb.normalize(op.floor(pos_h)), bb.normalize(op.floor(pos_w))
        frac_h, frac_w = op.subtract(pos_h, floor_h), op.subtract(pos_w, floor_w)
        one = relax.const(1.0, dtype)

        # Input as [n, offset_group, height * width, channels per offset group] for gather_nd.
        image = op.reshape(x, [n, offset_group, c // offset_group, height * width])
        image = bb.normalize(op.permute_dims(image, [0, 1, 3, 2]))
        sampled = None
        for dy, dx in itertools.product((0, 1), (0, 1)):
            row = op.add(floor_h, relax.const(float(dy), dtype))
            col = op.add(floor_w, relax.const(float(dx), dtype))
            inside = op.logical_and(
                op.logical_and(op.greater_equal(row, relax.const(0.0, dtype)),
                               op.less_equal(row, relax.const(height - 1.0, dtype))),
                op.logical_and(op.greater_equal(col, relax.const(0.0, dtype)),
                               op.less_equal(col, relax.const(width - 1.0, dtype))))
            share = op.multiply(frac_h if dy else op.subtract(one, frac_h),
                                frac_w if dx else op.subtract(one, frac_w))
            share = op.where(inside, share, relax.const(0.0, dtype))
            flat = op.add(op.multiply(op.clip(row, 0, height - 1), relax.const(float(width), dtype)),
                          op.clip(col, 0, width - 1))
            flat = op.reshape(op.astype(flat, "int64"), [n, offset_group, taps * pixels, 1])
            values = op.gather_nd(image, flat, batch_dims=2)  # [n, og, taps * pixels, c / og]
            term = op.multiply(values, op.reshape(share, [n, offset_group, taps * pixels, 1]))
            sampled = term if sampled is None else op.add(sampled, term)
        if mask is not None:
            sampled = op.multiply(sampled, op.reshape(mask, [n, offset_group, taps * pixels, 1]))
        sampled = bb.normalize(sampled)

        # Columns [n, group, group_c * taps, pixels], channel-major as the weight is.
        columns = op.reshape(sampled, [n, offset_group, taps, pixels, c // offset_group])
        columns = op.permute_dims(columns, [0, 1, 4, 2, 3])
        columns = op.reshape(columns, [n, group, group_c * taps, pixels])
        kernel = op.reshape(weight, [1, group, out_c // group, group_c * taps])
        out = op.reshape(op.matmul(kernel, columns), [n, out_c, oh, ow])
        if bias is not None:
            out = op.add(out, op.reshape(bias, [1, out_c, 1, 1]))
        return out


@register_converter("ConvTranspose")
class ConvTranspose(OnnxOpConverter):
    """``output_shape`` given: pads per the spec's formula, negative ones as zero rows
    around the result; otherwise TVM's converter as is."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        if "output_shape" not in attr:
            return onnx_frontend.ConvTranspose._impl_v1(bb, inputs, attr, params)
        x, weight, bias = inputs[0], inputs[1], inputs[2]
        spatial = _shape(x)[2:]
        dims = len(spatial)
        target = list(attr["output_shape"])[-dims:]
        strides = list(attr.get("strides", [1] * dims))
        dilations = list(attr.get("dilations", [1] * dims))
        output_padding = list(attr.get("output_padding", [0] * dims))
        kernel = list(attr.get("kernel_shape", _shape(weight)[2:]))
        upper = _text(attr.get("auto_pad", "NOTSET")) == "SAME_UPPER"
        begin, end = [], []
        for i in range(dims):
            total = (strides[i] * (spatial[i] - 1) + output_padding[i]
                     + (kernel[i] - 1) * dilations[i] + 1 - target[i])
            small, large = total // 2, total - total // 2
            begin.append(small if upper else large)
            end.append(large if upper else small)
        rest = {k: v for k, v in attr.items() if k not in ("output_shape", "auto_pad")}
        rest["pads"] = [max(p, 0) for p in begin + end]
        out = onnx_frontend.ConvTranspose._impl_v1(bb, onnx_frontend.onnx_input([x, weight]), rest, params)
        if min(begin + end) < 0:  # the taps reach past the output: zero rows there
            widths = [0, 0, 0, 0] + [w for i in range(dims) for w in (max(-begin[i], 0), max(-end[i], 0))]
            out = relax.op.nn.pad(bb.normalize(out), widths)
        if bias is not None:
            out = relax.op.add(out, relax.op.reshape(bias, [1, -1] + [1] * dims))
        return out


@register_converter("SpaceToDepth")
class SpaceToDepth(OnnxOpConverter):
    """``CRD`` mode (the inverse of ``DepthToSpace``'s): channel-major blocks."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        if _text(attr.get("mode", "DCR")) != "CRD":
            return onnx_frontend.SpaceToDepth._impl_v1(bb, inputs, attr, params)
        size = int(attr["blocksize"])
        b, c, h, w = _shape(inputs[0])
        x = relax.op.reshape(inputs[0], (b, c, h // size, size, w // size, size))
        x = relax.op.permute_dims(x, [0, 1, 3, 5, 2, 4])
        return relax.op.reshape(x, (b, c * size * size, h // size, w // size))


@register_converter("NonMaxSuppression")
class NonMaxSuppression(OnnxOpConverter):
    """TVM's converter with the IoU threshold one float32 step up: TVM suppresses at
    ``iou >= threshold``, ONNX only at ``iou > threshold`` (and defaults it to 0, not 0.5)."""

    @classmethod
    def _impl_v10(cls, bb, inputs, attr, params):
        threshold = 0.0
        if inputs[3] is not None:
            threshold = float(_constant(inputs[3], params, "NonMaxSuppression iou_threshold").reshape(-1)[0])
        above = np.nextafter(np.float32(threshold), np.float32(np.inf))
        items = [inputs[0], inputs[1], inputs[2], relax.const(above, "float32"), inputs[4]]
        return onnx_frontend.NonMaxSuppression._impl_v10(bb, onnx_frontend.onnx_input(items), attr, params)


# TreeEnsemble's node modes, in the spec's numbering.
_LEQ, _LT, _GTE, _GT, _EQ, _NEQ, _MEMBER = range(7)
_COMPARE = {_LEQ: relax.op.less_equal, _LT: relax.op.less, _GTE: relax.op.greater_equal,
            _GT: relax.op.greater, _EQ: relax.op.equal, _NEQ: relax.op.not_equal}


def _tree_paths(attr: dict):
    """Every root-to-leaf path of the ensemble: (leaf, [(node, branch taken)]) per path,
    and the member set of each ``MEMBER`` node (numbered as the reference parses them)."""
    true_ids, false_ids = attr["nodes_truenodeids"], attr["nodes_falsenodeids"]
    true_leaf, false_leaf = attr["nodes_trueleafs"], attr["nodes_falseleafs"]
    modes = _array(attr["nodes_modes"]).astype(int)
    members = iter(_array(attr["membership_values"]).tolist()) if "membership_values" in attr else iter(())
    sets, paths = {}, []

    def walk(node, path):
        if modes[node] == _MEMBER:  # sets are read in visiting order, separated by NaN
            sets[node] = list(itertools.takewhile(lambda v: not np.isnan(v), members))
        for branch, nxt, is_leaf in ((True, true_ids[node], true_leaf[node]),
                                     (False, false_ids[node], false_leaf[node])):
            if is_leaf:
                paths.append((nxt, path + [(node, branch)]))
            else:
                walk(nxt, path + [(node, branch)])

    for root in attr["tree_roots"]:
        if true_leaf[root] and false_leaf[root] and true_ids[root] == false_ids[root]:
            paths.append((true_ids[root], []))  # a tree that is a single leaf
        else:
            walk(root, [])
    return paths, sets


@register_converter("TreeEnsemble", domain=ML)
class TreeEnsemble(OnnxOpConverter):
    """Every node's test evaluated at once; a leaf is reached when all the tests on
    its path go its way (a count compared with the path length); the reached leaves'
    weights are then summed (or min/max-ed) per target."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        x = inputs[0]
        dtype = _dtype(x)
        op = relax.op
        paths, sets = _tree_paths(attr)
        nodes = sorted({node for _, path in paths for node, _ in path})
        column = {node: j for j, node in enumerate(nodes)}
        modes = _array(attr["nodes_modes"]).astype(int)[nodes]
        splits = _array(attr["nodes_splits"]).astype(dtype)[nodes]
        features = np.asarray(attr["nodes_featureids"], "int64")[nodes]
        n_targets = int(attr["n_targets"])
        n = _shape(x)[0]

        # cond[n, node]: whether the node's test sends the row to its true branch.
        values = bb.normalize(op.take(x, _tensor(features), axis=1))
        cond = op.zeros([n, len(nodes)], "bool")
        for mode in sorted(set(modes.tolist())):
            if mode == _MEMBER:
                width = max(len(sets[node]) for node in nodes if node in sets)
                table = np.full((len(nodes), width), np.nan, dtype)
                for node, members in sets.items():
                    table[column[node], :len(members)] = members
                hits = op.equal(op.expand_dims(values, -1), _tensor(table))
                test = op.greater(op.sum(op.astype(hits, "int32"), axis=-1), relax.const(0, "int32"))
            else:
                test = _COMPARE[mode](values, _tensor(splits))
            cond = op.where(_tensor(modes == mode), test, cond)
        if "nodes_missing_value_tracks_true" in attr:
            tracks = np.asarray(attr["nodes_missing_value_tracks_true"], bool)[nodes]
            cond = op.logical_or(cond, op.logical_and(op.isnan(values), _tensor(tracks)))
        cond = bb.normalize(op.astype(cond, dtype))

        on_true = np.zeros((len(nodes), len(paths)), dtype)
        on_false = np.zeros((len(nodes), len(paths)), dtype)
        for p, (_, path) in enumerate(paths):
            for node, branch in path:
                (on_true if branch else on_false)[column[node], p] = 1
        length = np.array([len(path) for _, path in paths], dtype)
        agreed = op.add(op.matmul(cond, _tensor(on_true)),
                        op.matmul(op.subtract(relax.const(1.0, dtype), cond), _tensor(on_false)))
        reached = bb.normalize(op.equal(agreed, _tensor(length)))  # [n, paths]

        leaves = [leaf for leaf, _ in paths]
        weights = _array(attr["leaf_weights"]).astype(dtype)[leaves]
        targets = np.asarray(attr["leaf_targetids"], "int64")[leaves]
        aggregate = int(attr.get("aggregate_function", 1))
        if aggregate in (0, 1):  # AVERAGE, SUM
            table = np.zeros((len(paths), n_targets), dtype)
            table[np.arange(len(paths)), targets] = weights
            if aggregate == 0:
                table /= len(attr["tree_roots"])
            out = op.matmul(op.astype(reached, dtype), _tensor(table))
        elif aggregate in (2, 3):  # MIN, MAX; a target no leaf reaches keeps the dtype's extreme
            bound = np.finfo(dtype).max if aggregate == 2 else np.finfo(dtype).min
            table = np.full((n_targets, len(paths)), bound, dtype)
            table[targets, np.arange(len(paths))] = weights
            picked = op.where(op.expand_dims(reached, 1), _tensor(table), relax.const(bound, dtype))
            out = (op.min if aggregate == 2 else op.max)(picked, axis=-1)
        else:
            raise ValueError(f"TreeEnsemble: unknown aggregate_function {aggregate}")

        post = int(attr.get("post_transform", 0))
        if post == 1:
            return op.nn.softmax(out, axis=-1)
        if post == 2:
            return op.sigmoid(out)
        if post != 0:
            raise NotImplementedError(f"TreeEnsemble: post_transform {post} (SOFTMAX_ZERO, PROBIT) "
                                      "is not supported")
        return out


@register_converter("LabelEncoder", domain=ML)
class LabelEncoder(OnnxOpConverter):
    """A lookup of numeric keys: compare with every key, take the matching value or the default."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        def pick(kind):
            for suffix in ("tensor", "int64s", "floats", "strings"):
                if f"{kind}_{suffix}" in attr:
                    return suffix, _array(attr[f"{kind}_{suffix}"])
            raise ValueError(f"LabelEncoder needs a {kind}_* attribute")

        key_kind, keys = pick("keys")
        value_kind, values = pick("values")
        if "strings" in (key_kind, value_kind) or keys.dtype.kind in "OSU" or values.dtype.kind in "OSU":
            raise NotImplementedError("LabelEncoder with string keys or values is not supported "
                                      "(TVM has no string tensors)")
        if "default_tensor" in attr:
            default = _array(attr["default_tensor"]).reshape(-1)[0]
        elif value_kind == "int64s":
            default = attr.get("default_int64", -1)
        elif value_kind == "floats":
            default = attr.get("default_float", -0.0)
        else:
            default = -1 if values.dtype.kind in "iu" else -0.0
        x = inputs[0]
        keys = keys.astype(_dtype(x))
        value_dtype = str(values.dtype)
        op = relax.op
        hits = op.equal(op.expand_dims(x, -1), _tensor(keys))
        if keys.dtype.kind == "f" and np.isnan(keys).any():  # a NaN key matches NaN
            hits = op.logical_or(hits, op.logical_and(op.expand_dims(op.isnan(x), -1),
                                                      _tensor(np.isnan(keys))))
        hits = bb.normalize(hits)
        found = op.greater(op.sum(op.astype(hits, "int32"), axis=-1), relax.const(0, "int32"))
        value = op.sum(op.where(hits, _tensor(values), relax.const(0, value_dtype)), axis=-1)
        return op.where(found, value, _tensor(np.asarray(default, value_dtype)))


def _upsample_axis(bb, x: relax.Expr, axis: int, scale: float, linear: bool) -> relax.Expr:
    """One axis of ``Upsample``, as ONNX Runtime computes it: asymmetric coordinates
    (``out / scale``, in float32); nearest truncates (rounds up when shrinking),
    linear blends the two neighbours, the last one repeated past the edge."""
    shape = _shape(x)
    size = shape[axis]
    scale = np.float32(scale)
    out_size = int(np.float32(size) * scale)
    pos = np.arange(out_size, dtype="float32") / scale
    if not linear:
        index = np.clip(np.ceil(pos) if scale < 1 else np.floor(pos), 0, size - 1)
        return relax.op.take(x, _tensor(index.astype("int64")), axis=axis)
    pos = np.clip(pos, 0, size - 1)
    low = np.floor(pos).astype("int64")
    high = np.minimum(low + 1, size - 1)
    frac = (pos - low).reshape([out_size] + [1] * (len(shape) - axis - 1))
    dtype = _dtype(x)
    compute = dtype if dtype.startswith(("float", "bfloat")) else "float32"
    data = x if compute == dtype else relax.op.astype(x, compute)
    data = bb.normalize(data)
    below = relax.op.multiply(relax.op.take(data, _tensor(low), axis=axis), _tensor((1 - frac).astype(compute)))
    above = relax.op.multiply(relax.op.take(data, _tensor(high), axis=axis), _tensor(frac.astype(compute)))
    out = relax.op.add(below, above)
    return out if compute == dtype else relax.op.astype(out, dtype)


@register_converter("Upsample")
class Upsample(OnnxOpConverter):
    """Every axis whose scale is not 1 resized in turn by a gather at indices known at
    import (TVM's converter reads ``scales`` only as an attribute, and only in 4-D).
    Opset 7 has ``scales`` as an attribute, opsets 9 and 10 as a constant input."""

    @classmethod
    def _impl_v7(cls, bb, inputs, attr, params):
        return cls._upsample(bb, inputs[0], list(attr["scales"]), attr)

    @classmethod
    def _impl_v9(cls, bb, inputs, attr, params):
        scales = _constant(inputs[1], params, "Upsample scales").reshape(-1).tolist()
        return cls._upsample(bb, inputs[0], scales, attr)

    @classmethod
    def _upsample(cls, bb, x, scales, attr):
        mode = _text(attr.get("mode", "nearest"))
        if mode not in ("nearest", "linear"):
            raise ValueError(f"Upsample: mode must be 'nearest' or 'linear', not {mode!r}")
        if len(scales) != len(_shape(x)):
            raise ValueError(f"Upsample: {len(scales)} scales for an input of rank {len(_shape(x))}")
        for axis, scale in enumerate(scales):
            if scale != 1:
                x = bb.normalize(_upsample_axis(bb, x, axis, scale, mode == "linear"))
        return x
