"""Simplify an ONNX graph before import, now that every input shape is known.

edgecc compiles for static input shapes, so much of what a model computes at
run time is known at compile time: the results of ``Shape`` and ``Size``, every
node whose inputs are all constants, the branch an ``If`` with a constant
condition takes. :func:`simplify` folds all of that into initializers, so the
importer sees constant axes, pads, sizes and shapes where exporters (and the
ONNX function expansions) compute them at run time. It also expands ops that
ONNX defines as functions of other ops (``NegativeLogLikelihoodLoss``,
``RotaryEmbedding``, ``Swish``...) into those ops, for the ones the converter
registry has no converter for, and unrolls ``Scan`` and ``Loop`` with a known
trip count.

Constant nodes are evaluated with ONNX's own reference implementation
(``onnx.reference``), the definition every backend is checked against. The
rounds repeat until nothing changes, since each fold lets shape inference see
further.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from edgecc.passes import ssm as ssm_scans

# Inputs whose *value* decides an output shape (or that TVM's converters need
# as constants): a graph input reaching one of these is specialised on its value.
SHAPE_SLOTS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,), "Expand": (1,), "Tile": (1,), "ConstantOfShape": (0,), "Slice": (1, 2, 3, 4),
    "Pad": (1, 2, 3), "Squeeze": (1,), "Unsqueeze": (1,), "Resize": (1, 2, 3), "Upsample": (1,),
    "TopK": (1,), "OneHot": (1,), "Split": (1,), "CumSum": (1,), "CumProd": (1,), "Range": (0, 1, 2),
    "NonMaxSuppression": (2, 3, 4), "Trilu": (1,), "CenterCropPad": (1,), "Col2Im": (1, 2),
    "DFT": (1, 2), "STFT": (1, 3), "BlackmanWindow": (0,), "HammingWindow": (0,), "HannWindow": (0,),
    "MelWeightMatrix": (0, 1, 2, 3, 4), "AffineGrid": (1,), "MaxUnpool": (2,), "If": (0,), "Loop": (0, 1),
    "ReduceSum": (1,), "ReduceMean": (1,), "ReduceMax": (1,), "ReduceMin": (1,), "ReduceProd": (1,),
    "ReduceL1": (1,), "ReduceL2": (1,), "ReduceLogSum": (1,), "ReduceLogSumExp": (1,),
    "ReduceSumSquare": (1,), "RandomNormalLike": (), "Compress": (1,), "StringSplit": (),
}

SHAPE_SLOTS.update({"SequenceAt": (1,), "SequenceInsert": (2,), "SequenceErase": (1,), "SplitToSequence": (1,)})

SEQUENCE_OPS = {"SequenceEmpty", "SequenceConstruct", "SequenceInsert", "SequenceErase", "SequenceAt",
                "SequenceLength", "ConcatFromSequence", "SplitToSequence", "SequenceMap"}


def element_name(sequence: str, index: int) -> str:
    """The tensor holding element ``index`` of a sequence input or output once flattened."""
    return f"{sequence}.seq{index}"


# Never folded: a fresh value each run.
NONDETERMINISTIC = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
                    "Multinomial", "Bernoulli"}


def _prefer_function(node: onnx.NodeProto, rank: int | None, elem_type: int | None = None) -> bool:
    """Where the converter covers only part of an op, its ONNX function is used instead:
    edgecc's ``Attention`` takes the common case (:func:`edgecc.frontend.attention.takes`),
    TVM's ``LayerNormalization`` has no Mean/InvStdDev outputs, its ``RMSNormalization`` only
    normalises the last axis."""
    if node.op_type == "Attention":
        from .attention import takes

        return not takes(node, rank, elem_type)
    if node.op_type == "LayerNormalization":
        return sum(bool(o) for o in node.output) > 1
    if node.op_type == "RMSNormalization":
        axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
        return rank is None or axis % rank != rank - 1
    return False

FOUR_BIT = (onnx.TensorProto.INT4, onnx.TensorProto.UINT4)
FOLD_LIMIT = 1 << 22  # elements: larger constant results stay computed at run time
UNROLL_LIMIT = 256  # iterations of Scan / Loop


def _domain(domain: str) -> str:
    return "" if domain in ("", "ai.onnx") else domain


def has_function(op_type: str, domain: str = "") -> bool:
    """Whether ONNX defines ``op_type`` as a function of other ops (its newest schema)."""
    try:
        schema = onnx.defs.get_schema(op_type, domain=_domain(domain))
    except onnx.defs.SchemaError:
        return False
    return schema.has_function or schema.has_context_dependent_function


def _subgraphs(node: onnx.NodeProto):
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def _graph_refs(graph: onnx.GraphProto) -> set[str]:
    """Names a (sub)graph reads, including those of its own nested subgraphs."""
    names = {o.name for o in graph.output}
    for node in graph.node:
        names.update(node.input)
        for sub in _subgraphs(node):
            names |= _graph_refs(sub)
    return names


def _node_reads(node: onnx.NodeProto) -> set[str]:
    names = set(node.input)
    for sub in _subgraphs(node):
        names |= _graph_refs(sub)
    names.discard("")
    return names


def _rename_in_subgraph(graph: onnx.GraphProto, mapping: dict[str, str]) -> None:
    """Rename outer-scope names a subgraph reads (names it defines itself shadow them)."""
    local = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    local |= {o for n in graph.node for o in n.output}
    visible = {k: v for k, v in mapping.items() if k not in local}
    if not visible:
        return
    for node in graph.node:
        node.input[:] = [visible.get(n, n) for n in node.input]
        for sub in _subgraphs(node):
            _rename_in_subgraph(sub, visible)
    for out in graph.output:
        out.name = visible.get(out.name, out.name)


class _Namer:
    def __init__(self, taken: set[str]):
        self.taken = taken
        self.counter = itertools.count()

    def __call__(self, hint: str) -> str:
        while True:
            name = f"{hint}__s{next(self.counter)}"
            if name not in self.taken:
                self.taken.add(name)
                return name


class Simplifier:
    """One model's simplification state: constants, static shapes, the node list."""

    def __init__(self, model: onnx.ModelProto, input_shapes: dict[str, tuple], input_values: dict | None,
                 keep_ops: set[tuple[str, str]]):
        self.model = onnx.ModelProto.FromString(model.SerializeToString())
        self.opsets = {_domain(o.domain): o.version for o in self.model.opset_import}
        self.keep_ops = keep_ops
        graph = self.model.graph
        self.consts: dict[str, onnx.TensorProto] = {t.name: t for t in graph.initializer}
        self.arrays: dict[str, np.ndarray] = {}
        for name, value in (input_values or {}).items():
            self.consts[name] = numpy_helper.from_array(np.asarray(value), name)
        del graph.input[:]
        self.seqs: dict[str, list[str]] = {}  # sequence value -> its element tensors, when known
        graph.input.extend(self._bound_inputs(model, input_shapes, input_values or {}))
        self.nodes = list(graph.node)
        taken = {v.name for v in graph.input} | set(self.consts)
        taken |= {o for n in onnx_nodes_recursive(graph) for o in list(n.output) + list(n.input)}
        self.namer = _Namer(taken)
        self.shapes: dict[str, tuple | None] = {}
        self.types: dict[str, onnx.TypeProto] = {}

    def _bound_inputs(self, model, input_shapes, input_values):
        weights = {t.name for t in model.graph.initializer}
        inputs = []
        for value in model.graph.input:
            if value.name in input_values or value.name in weights:
                continue
            value = onnx.ValueInfoProto.FromString(value.SerializeToString())
            if value.type.HasField("sequence_type") and value.name in input_shapes:
                elem = value.type.sequence_type.elem_type.tensor_type.elem_type
                names = [element_name(value.name, i) for i in range(len(input_shapes[value.name]))]
                inputs += [helper.make_tensor_value_info(n, elem, list(shape))
                           for n, shape in zip(names, input_shapes[value.name])]
                self.seqs[value.name] = names
                continue
            if value.name in input_shapes and value.type.HasField("tensor_type"):
                shape = value.type.tensor_type.shape
                del shape.dim[:]
                for d in input_shapes[value.name]:
                    if isinstance(d, str):
                        shape.dim.add().dim_param = d  # symbolic: Shape of it stays a runtime value
                    else:
                        shape.dim.add().dim_value = int(d)
            inputs.append(value)
        return inputs

    # -- helpers -------------------------------------------------------------------------------
    def array(self, name: str) -> np.ndarray:
        if name not in self.arrays:
            self.arrays[name] = numpy_helper.to_array(self.consts[name])
        return self.arrays[name]

    def _constant(self, name: str) -> np.ndarray | None:
        return self.array(name) if name in self.consts else None

    def set_const(self, name: str, value) -> None:
        value = np.asarray(value)
        self.consts[name] = numpy_helper.from_array(value, name)
        self.arrays[name] = value

    def _rank(self, name: str) -> int | None:
        ttype = self.types.get(name)
        if ttype is None or not ttype.HasField("tensor_type") or not ttype.tensor_type.HasField("shape"):
            return None
        return len(ttype.tensor_type.shape.dim)

    def _infer(self) -> None:
        # The model's own value_info for outputs of ops ONNX cannot infer (com.microsoft's
        # MatMulNBits written by edgecc.quantize, ...), so that what follows them is inferred too.
        produced = {out for node in self.nodes if _domain(node.domain) != "" for out in node.output}
        hints = [v for v in self.model.graph.value_info if v.name in produced]
        graph = helper.make_graph(self.nodes, self.model.graph.name or "g", list(self.model.graph.input),
                                  list(self.model.graph.output), initializer=list(self.consts.values()),
                                  value_info=hints)
        model = helper.make_model(graph, opset_imports=self.model.opset_import,
                                  ir_version=max(self.model.ir_version, 4))
        model.functions.extend(self.model.functions)
        try:
            inferred = shape_inference.infer_shapes(model, strict_mode=False, data_prop=True).graph
        except Exception:  # inference fails on some graphs; folding then just sees less
            inferred = model.graph
        self.shapes, self.types = {}, {}
        for value in itertools.chain(inferred.input, inferred.value_info, inferred.output):
            self.types[value.name] = value.type
            ttype = value.type.tensor_type
            if value.type.HasField("tensor_type") and ttype.HasField("shape") and \
                    all(d.HasField("dim_value") for d in ttype.shape.dim):
                self.shapes[value.name] = tuple(d.dim_value for d in ttype.shape.dim)
        for name, tensor in self.consts.items():
            self.shapes[name] = tuple(tensor.dims)
            self.types[name] = helper.make_tensor_type_proto(tensor.data_type, list(tensor.dims))

    # -- rewrites ------------------------------------------------------------------------------
    def _fold(self, node: onnx.NodeProto) -> list[onnx.NodeProto] | None:
        """Replacement nodes for ``node`` (``[]`` when it became constants), or None."""
        op, inputs = node.op_type, [n for n in node.input if n]
        if _domain(node.domain) != "":
            return None
        if op == "Constant":
            tensor = _constant_value(node)
            if tensor is None:
                return None
            tensor.name = node.output[0]
            self.consts[node.output[0]] = tensor
            return []
        if op in ("Shape", "Size") and self.shapes.get(node.input[0]) is not None:
            shape = self.shapes[node.input[0]]
            if op == "Size":
                self.set_const(node.output[0], np.array(int(np.prod(shape)), dtype=np.int64))
                return []
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            start, end = attrs.get("start", 0), attrs.get("end", len(shape))
            self.set_const(node.output[0], np.array(shape[slice(start, end)], dtype=np.int64))
            return []
        if op == "If" and node.input[0] in self.consts:
            branch = "then_branch" if bool(self.array(node.input[0]).reshape(-1)[0]) else "else_branch"
            graph = next(a.g for a in node.attribute if a.name == branch)
            return self._inline_graph(graph, [], list(node.output))
        if op in SEQUENCE_OPS or (op == "Identity" and node.input[0] in self.seqs):
            return self._sequence(node)
        if op == "Resize":
            return self._full_rank_resize(node) or self._resize_by_matrices(node)
        if op == "PRelu" and self.opsets.get("", 0) < 7 and node.input[1] in self.consts:
            # Before opset 7 a 1-D slope is per channel (axis 1), not numpy-broadcast.
            slope, shape = self.array(node.input[1]), self.shapes.get(node.input[0])
            if slope.ndim == 1 and slope.size > 1 and shape is not None and len(shape) > 2 \
                    and shape[1] == slope.size:
                per_channel = self.namer(node.input[1])
                self.set_const(per_channel, slope.reshape((-1,) + (1,) * (len(shape) - 2)))
                return [helper.make_node("PRelu", [node.input[0], per_channel], list(node.output), name=node.name)]
        if op in ("Unsqueeze", "Squeeze") and len(node.input) > 1 and node.input[1] in self.consts \
                and self.array(node.input[1]).ndim == 0:  # a scalar axis: the 1-D form converters read
            axes = self.namer(node.input[1])
            self.set_const(axes, self.array(node.input[1]).reshape(1))
            return [helper.make_node(op, [node.input[0], axes], list(node.output), name=node.name)]
        if op == "Scan":
            rewritten = ssm_scans.rewrite_scan(node, self.shapes, self._constant, self.namer,
                                               {"": self.opsets.get("", 27)})
            if rewritten is not None and ssm_scans.DOMAIN not in self.opsets:
                self.opsets[ssm_scans.DOMAIN] = 1
                self.model.opset_import.append(helper.make_opsetid(ssm_scans.DOMAIN, 1))
            return rewritten or self._unroll_scan(node)
        if op == "Loop":
            return self._unroll_loop(node)
        if op in NONDETERMINISTIC or not all(n in self.consts for n in inputs) or any(_subgraphs(node)):
            return None
        if op == "DequantizeLinear" and self.consts[node.input[0]].data_type in FOUR_BIT:
            return None  # a 4-bit weight stays packed: edgecc.passes.quantize runs it as an INT4 kernel
        for out in node.output:
            shape = self.shapes.get(out)
            if shape is not None and int(np.prod(shape)) > FOLD_LIMIT:
                return None
        return self._evaluate(node)

    def _sequence(self, node):
        """Sequence ops on sequences whose elements are known: lists of tensor names."""
        op, ins, out = node.op_type, list(node.input), node.output[0]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}

        def position(name, default, length):
            if not name:
                return default
            if name not in self.consts:
                return None
            pos = int(self.array(name).reshape(-1)[0])
            return pos + length if pos < 0 else pos

        if op == "SequenceEmpty":
            self.seqs[out] = []
            return []
        if op == "SequenceConstruct":
            self.seqs[out] = ins
            return []
        if op == "SplitToSequence":
            return self._split_to_sequence(node, attrs)
        if ins[0] not in self.seqs:
            return None
        items = self.seqs[ins[0]]
        if op == "Identity":
            self.seqs[out] = items
            return []
        if op == "SequenceLength":
            self.set_const(out, np.array(len(items), dtype=np.int64))
            return []
        if op == "SequenceInsert":
            pos = position(ins[2] if len(ins) > 2 else "", len(items), len(items))
            if pos is None:
                return None
            self.seqs[out] = items[:pos] + [ins[1]] + items[pos:]
            return []
        if op == "SequenceErase":
            pos = position(ins[1] if len(ins) > 1 else "", len(items) - 1, len(items))
            if pos is None:
                return None
            self.seqs[out] = items[:pos] + items[pos + 1:]
            return []
        if op == "SequenceAt":
            pos = position(ins[1], 0, len(items))
            if pos is None:
                return None
            return [helper.make_node("Identity", [items[pos]], [out])]
        if op == "ConcatFromSequence":
            if not items:
                return None
            axis = attrs.get("axis", 0)
            if attrs.get("new_axis", 0):
                rank = self.shapes.get(items[0])
                if rank is None:
                    return None
                axis = axis + len(rank) + 1 if axis < 0 else axis
                return self._stack(items, axis, out)
            return [helper.make_node("Concat", items, [out], axis=axis)]
        if op == "SequenceMap":
            body = attrs["body"]
            lengths = {len(self.seqs[n]) for n in ins if n in self.seqs}
            if len(lengths) != 1:
                return None
            nodes, outs = [], [[] for _ in body.output]
            for i in range(lengths.pop()):
                step_in = [self.seqs[n][i] if n in self.seqs else n for n in ins]
                step_out = [self.namer(f"{o.name}_{i}") for o in body.output]
                nodes += self._inline_graph(body, step_in, step_out)
                for k, name in enumerate(step_out):
                    outs[k].append(name)
            for name, items_k in zip(node.output, outs):
                self.seqs[name] = items_k
            return nodes
        return None

    def _split_to_sequence(self, node, attrs):
        shape = self.shapes.get(node.input[0])
        split = node.input[1] if len(node.input) > 1 and node.input[1] else ""
        if shape is None or (split and split not in self.consts):
            return None
        axis = attrs.get("axis", 0) % len(shape)
        length = shape[axis]
        nodes, items = [], []
        if not split:
            for i in range(length):
                name = self.namer(f"{node.output[0]}_{i}")
                index = self.namer("index")
                if attrs.get("keepdims", 1):
                    self.set_const(index, np.array([i], dtype=np.int64))
                else:
                    self.set_const(index, np.array(i, dtype=np.int64))
                nodes.append(helper.make_node("Gather", [node.input[0], index], [name], axis=axis))
                items.append(name)
            self.seqs[node.output[0]] = items
            return nodes
        sizes = self.array(split).reshape(-1)
        if self.array(split).ndim == 0:
            chunk = int(sizes[0])
            sizes = [chunk] * (length // chunk) + ([length % chunk] if length % chunk else [])
        start = 0
        for i, size in enumerate(sizes):
            name = self.namer(f"{node.output[0]}_{i}")
            bounds = [self.namer("starts"), self.namer("ends"), self.namer("axes")]
            for bound, value in zip(bounds, (start, start + int(size), axis)):
                self.set_const(bound, np.array([value], dtype=np.int64))
            nodes.append(helper.make_node("Slice", [node.input[0]] + bounds, [name]))
            items.append(name)
            start += int(size)
        self.seqs[node.output[0]] = items
        return nodes

    def _full_rank_resize(self, node):
        """``Resize`` with ``axes`` (opset 18) as the full-rank form converters know."""
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        shape = self.shapes.get(node.input[0])
        inputs = list(node.input) + [""] * (4 - len(node.input))
        if shape is None or any(n and n not in self.consts for n in inputs[1:]):
            return None
        policy = attrs.get("keep_aspect_ratio_policy", b"stretch")
        policy = policy.decode() if isinstance(policy, bytes) else policy
        if policy != "stretch" and inputs[3]:
            return self._policy_as_scales(node, attrs, shape, inputs, policy)
        if "axes" not in attrs:
            return None
        rank = len(shape)
        axes = [a % rank for a in attrs["axes"]]
        new_inputs = [inputs[0]]
        for slot, name in enumerate(inputs[1:], start=1):
            if not name:
                new_inputs.append("")
                continue
            value = self.array(name)
            if slot == 1:  # roi: starts then ends of the listed axes
                full = np.concatenate([np.zeros(rank), np.ones(rank)]).astype(value.dtype)
                for i, a in enumerate(axes):
                    full[a], full[rank + a] = value[i], value[len(axes) + i]
            elif slot == 2:  # scales
                full = np.ones(rank, dtype=value.dtype)
                full[axes] = value
            else:  # sizes
                full = np.array(shape, dtype=value.dtype)
                full[axes] = value
            fresh = self.namer(name)
            self.set_const(fresh, full)
            new_inputs.append(fresh)
        while new_inputs and not new_inputs[-1]:
            new_inputs.pop()
        resized = helper.make_node("Resize", new_inputs, list(node.output), name=node.name)
        resized.attribute.extend(a for a in node.attribute if a.name != "axes")
        return [resized]

    def _policy_as_scales(self, node, attrs, shape, inputs, policy):
        """``keep_aspect_ratio_policy`` sizes as the one scale they stand for (full rank)."""
        rank = len(shape)
        axes = [a % rank for a in attrs.get("axes", range(rank))]
        sizes = self.array(inputs[3])
        ratios = [float(sizes[i]) / shape[a] for i, a in enumerate(axes)]
        scale = min(ratios) if policy == "not_larger" else max(ratios)
        if any(np.floor(scale * shape[a]) != np.floor(scale * shape[a] + 0.5) for a in axes):
            return None  # sizes round where scales floor: no exact scales form
        full = np.ones(rank, dtype=np.float32)
        full[axes] = scale
        roi = inputs[1]
        if roi and "axes" in attrs and self.array(roi).size:
            return None
        scales = self.namer("scales")
        self.set_const(scales, full)
        resized = helper.make_node("Resize", [inputs[0], roi, scales], list(node.output), name=node.name)
        resized.attribute.extend(a for a in node.attribute if a.name not in ("axes", "keep_aspect_ratio_policy"))
        return [resized]

    def _resize_by_matrices(self, node):
        """``Resize`` as one constant matrix per resized axis, where TVM's resize would differ.

        TVM turns scales into output sizes and interpolates with size ratios, and has
        no antialias or ``half_pixel_symmetric``. ONNX's interpolation is separable,
        and linear in the data, so each axis is a matrix, taken from ONNX's reference
        ``Resize`` applied to an identity. Used only in those cases: elsewhere
        TVM's resize kernel is exact and cheaper.
        """
        from onnx.reference import ReferenceEvaluator

        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        text = {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()}
        shape = self.shapes.get(node.input[0])
        inputs = list(node.input) + [""] * (4 - len(node.input))
        elem = self.types.get(node.input[0])
        if "axes" in attrs or shape is None or any(n and n not in self.consts for n in inputs[1:]) or \
                elem is None or elem.tensor_type.elem_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16,
                                                                   onnx.TensorProto.DOUBLE):
            return None
        if text.get("keep_aspect_ratio_policy", "stretch") != "stretch":
            return None
        rank = len(shape)
        scales = self.array(inputs[2]) if inputs[2] and self.array(inputs[2]).size else None
        sizes = self.array(inputs[3]) if inputs[3] and self.array(inputs[3]).size else None
        roi = self.array(inputs[1]) if inputs[1] and self.array(inputs[1]).size else None
        inexact = scales is not None and any(abs(n * float(sc) - round(n * float(sc))) > 1e-6
                                             for n, sc in zip(shape, scales))
        if not (inexact or attrs.get("antialias", 0) or
                text.get("coordinate_transformation_mode") == "half_pixel_symmetric"):
            return None
        probe_attrs = {k: v for k, v in attrs.items() if k != "extrapolation_value"}
        nodes, current, inside = [], node.input[0], []
        for axis in range(rank):
            n = shape[axis]
            feeds = {"x": np.eye(n, dtype=np.float32)}
            names = ["x", "", "", ""]
            if roi is not None:
                feeds["roi"] = np.array([0, roi[axis], 1, roi[rank + axis]], dtype=np.float32)
                names[1] = "roi"
            if scales is not None:
                if float(scales[axis]) == 1.0 and roi is None:
                    inside.append(np.ones(n))
                    continue
                feeds["scales"], names[2] = np.array([1, scales[axis]], dtype=np.float32), "scales"
            else:
                if int(sizes[axis]) == n and roi is None:
                    inside.append(np.ones(n))
                    continue
                feeds["sizes"], names[3] = np.array([n, sizes[axis]], dtype=np.int64), "sizes"
            while names[-1] == "":
                names.pop()
            probe = helper.make_node("Resize", names, ["y"], **probe_attrs)
            try:
                session = ReferenceEvaluator(probe, opsets=dict(self.opsets))
                matrix = session.run(None, feeds)[0]  # (n, out): column j holds output j's weights
                feeds["x"] = np.ones((1, n), dtype=np.float32)
                inside.append(session.run(None, feeds)[0][0])
            except Exception:
                return None
            perm = list(range(rank))
            perm[axis], perm[-1] = perm[-1], perm[axis]
            weights = self.namer("resize_weights")
            dtype = helper.tensor_dtype_to_np_dtype(elem.tensor_type.elem_type)
            self.set_const(weights, matrix.astype(dtype))
            moved, mixed, back = self.namer("moved"), self.namer("mixed"), self.namer("resized")
            nodes += [helper.make_node("Transpose", [current], [moved], perm=perm),
                      helper.make_node("MatMul", [moved, weights], [mixed]),
                      helper.make_node("Transpose", [mixed], [back], perm=perm)]
            current = back
        extrapolation = float(attrs.get("extrapolation_value", 0.0))
        if text.get("coordinate_transformation_mode") == "tf_crop_and_resize" and extrapolation != 0.0:
            mask = inside[0]
            for vector in inside[1:]:
                mask = np.multiply.outer(mask, vector)
            fill = self.namer("extrapolation")
            dtype = helper.tensor_dtype_to_np_dtype(elem.tensor_type.elem_type)
            self.set_const(fill, ((1 - np.round(mask)) * extrapolation).astype(dtype))
            filled = self.namer("filled")
            nodes.append(helper.make_node("Add", [current, fill], [filled]))
            current = filled
        nodes.append(helper.make_node("Identity", [current], [node.output[0]]))
        return nodes

    def _evaluate(self, node):
        from onnx.reference import ReferenceEvaluator

        try:
            session = ReferenceEvaluator(node, opsets=dict(self.opsets))
            results = session.run(None, {n: self.array(n) for n in node.input if n})
        except Exception:  # the reference lacks some ops and dtypes: leave the node to run
            return None
        for name, value in zip(node.output, results):
            if name:
                if not isinstance(value, np.ndarray) and not np.isscalar(value):
                    return None  # sequences and optionals stay nodes
                self.set_const(name, value)
        return []

    def _inline_graph(self, graph: onnx.GraphProto, inputs: list[str], outputs: list[str],
                      extra: dict[str, str] | None = None) -> list[onnx.NodeProto]:
        """``graph``'s nodes, reading ``inputs`` for its inputs and writing ``outputs``."""
        mapping = dict(extra or {})
        mapping.update({formal.name: actual for formal, actual in zip(graph.input, inputs)})
        for tensor in graph.initializer:
            fresh = self.namer(tensor.name)
            copy = onnx.TensorProto.FromString(tensor.SerializeToString())
            copy.name = fresh
            self.consts[fresh] = copy
            mapping[tensor.name] = fresh
        nodes = []
        for node in graph.node:
            for out in node.output:
                if out:
                    mapping[out] = self.namer(out)
            nodes.append(self._renamed(node, mapping))
        for formal, actual in zip(graph.output, outputs):
            if actual:
                nodes.append(helper.make_node("Identity", [mapping.get(formal.name, formal.name)], [actual]))
        return nodes

    @staticmethod
    def _renamed(node: onnx.NodeProto, mapping: dict[str, str]) -> onnx.NodeProto:
        node = onnx.NodeProto.FromString(node.SerializeToString())
        node.input[:] = [mapping.get(n, n) for n in node.input]
        node.output[:] = [mapping.get(n, n) for n in node.output]
        for sub in _subgraphs(node):
            _rename_in_subgraph(sub, mapping)
        return node

    def _unroll_scan(self, node):
        """Scan (opset 9+) with static shapes: one copy of the body per iteration."""
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if self.opsets.get("", 0) < 9:
            return None
        body = attrs["body"]
        num_scan_in = attrs["num_scan_inputs"]
        num_state = len(node.input) - num_scan_in
        scan_ins = list(node.input[num_state:])
        in_axes = list(attrs.get("scan_input_axes", [0] * num_scan_in))
        in_dirs = list(attrs.get("scan_input_directions", [0] * num_scan_in))
        num_scan_out = len(body.output) - num_state
        out_axes = list(attrs.get("scan_output_axes", [0] * num_scan_out))
        out_dirs = list(attrs.get("scan_output_directions", [0] * num_scan_out))
        shapes = [self.shapes.get(n) for n in scan_ins]
        if not scan_ins or any(s is None for s in shapes):
            return None
        for k, axis in enumerate(out_axes):
            if axis < 0:  # counts from the end of the stacked rank: the body output's rank + 1
                ttype = body.output[num_state + k].type.tensor_type
                if not ttype.HasField("shape"):
                    return None
                out_axes[k] = axis + len(ttype.shape.dim) + 1
        axes = [a % len(s) for a, s in zip(in_axes, shapes)]
        steps = shapes[0][axes[0]]
        if steps > UNROLL_LIMIT or steps == 0:
            return None
        nodes, state = [], list(node.input[:num_state])
        per_step = [[] for _ in range(num_scan_out)]
        for step in range(steps):
            step_ins = []
            for name, axis, direction in zip(scan_ins, axes, in_dirs):
                index = steps - 1 - step if direction else step
                sliced = self.namer(f"{name}_t{index}")
                nodes.append(self._slice_node(name, axis, index, sliced))
                step_ins.append(sliced)
            outs = [self.namer(f"{o.name}_t{step}") for o in body.output]
            nodes += self._inline_graph(body, state + step_ins, outs)
            state = outs[:num_state]
            for k in range(num_scan_out):
                per_step[k].append(outs[num_state + k])
        for final, name in zip(state, node.output[:num_state]):
            if name:
                nodes.append(helper.make_node("Identity", [final], [name]))
        for k, name in enumerate(node.output[num_state:]):
            if not name:
                continue
            items = per_step[k][::-1] if out_dirs[k] else per_step[k]
            nodes += self._stack(items, out_axes[k], name)
        return nodes

    def _slice_node(self, name: str, axis: int, index: int, out: str) -> onnx.NodeProto:
        idx = self.namer("index")
        self.set_const(idx, np.array(index, dtype=np.int64))
        return helper.make_node("Gather", [name, idx], [out], axis=axis)

    def _stack(self, items: list[str], axis: int, out: str) -> list[onnx.NodeProto]:
        """Stack same-shaped values along a new, non-negative ``axis``."""
        nodes, expanded = [], []
        axes = self.namer("axes")
        self.set_const(axes, np.array([axis], dtype=np.int64))
        for item in items:
            name = self.namer(f"{item}_u")
            if self.opsets.get("", 0) >= 13:
                nodes.append(helper.make_node("Unsqueeze", [item, axes], [name]))
            else:  # axes were an attribute before opset 13
                nodes.append(helper.make_node("Unsqueeze", [item], [name], axes=[axis]))
            expanded.append(name)
        nodes.append(helper.make_node("Concat", expanded, [out], axis=axis))
        return nodes

    def _unroll_loop(self, node):
        """Loop with a constant trip count and a condition that folds to constants."""
        body = next(a.g for a in node.attribute if a.name == "body")
        trip, cond = (list(node.input) + ["", ""])[:2]
        if trip and trip not in self.consts:
            return None
        if cond and cond not in self.consts:
            return None
        if not trip:
            return None  # unbounded: needs the condition evaluated per step
        steps = int(self.array(trip).reshape(-1)[0])
        if cond and not bool(self.array(cond).reshape(-1)[0]):
            steps = 0
        if steps > UNROLL_LIMIT:
            return None
        # The body's condition output must be a constant true for every step to unroll.
        cond_out = body.output[0].name
        producers = {o: n for n in body.node for o in n.output}
        if cond_out != body.input[1].name:
            producer = producers.get(cond_out)
            if producer is None or producer.op_type not in ("Identity", "Constant"):
                return None
            if producer.op_type == "Identity" and producer.input[0] != body.input[1].name:
                return None
            if producer.op_type == "Constant":
                value = _constant_value(producer)
                if value is None or not numpy_helper.to_array(value).all():
                    return None
        num_state = len(node.input) - 2
        num_scan = len(body.output) - 1 - num_state
        if steps == 0 and num_scan:
            return None  # empty scan outputs need a dtype and shape we do not know here
        state = list(node.input[2:])
        cond_name = cond or self.namer("cond")
        if not cond:
            self.set_const(cond_name, np.array(True))
        nodes, per_step = [], [[] for _ in range(num_scan)]
        for step in range(steps):
            counter = self.namer("iter")
            self.set_const(counter, np.array(step, dtype=np.int64))
            outs = [self.namer(f"{o.name}_t{step}") for o in body.output]
            nodes += self._inline_graph(body, [counter, cond_name] + state, outs)
            state = outs[1:1 + num_state]
            for k in range(num_scan):
                per_step[k].append(outs[1 + num_state + k])
        for final, name in zip(state, node.output[:num_state]):
            if name:
                nodes.append(helper.make_node("Identity", [final], [name]))
        for k, name in enumerate(node.output[num_state:]):
            if name:
                nodes += self._stack(per_step[k], 0, name)
        return nodes

    def _expand(self, node: onnx.NodeProto) -> list[onnx.NodeProto] | None:
        """The node's ONNX function body, inlined, for ops edgecc has no converter for."""
        key = (_domain(node.domain), node.op_type)
        rank = self._rank(node.input[0]) if node.input else None
        ttype = self.types.get(node.input[0]) if node.input else None
        elem = ttype.tensor_type.elem_type if ttype is not None and ttype.HasField("tensor_type") else None
        if key in self.keep_ops and not (key[0] == "" and _prefer_function(node, rank, elem)):
            return None
        opset = self.opsets.get(key[0])
        try:
            schema = onnx.defs.get_schema(node.op_type, opset, key[0])
        except (onnx.defs.SchemaError, TypeError):
            return None
        try:
            if schema.has_function:
                versions = [v for v in schema.function_opset_versions if v <= opset] or \
                    sorted(schema.function_opset_versions)[:1]
                body = onnx.FunctionProto.FromString(schema.get_function_with_opset_version(max(versions)))
            elif schema.has_context_dependent_function:
                types = [self.types.get(n, onnx.TypeProto()) if n else onnx.TypeProto() for n in node.input]
                if any(n and n not in self.types for n in node.input):
                    return None  # input types unknown until more is inferred
                versions = [v for v in schema.context_dependent_function_opset_versions if v <= opset] or \
                    sorted(schema.context_dependent_function_opset_versions)[:1]
                raw = schema.get_context_dependent_function_with_opset_version(
                    max(versions), node.SerializeToString(), [t.SerializeToString() for t in types])
                body = onnx.FunctionProto.FromString(raw)
            else:
                return None
        except Exception:  # the schema refused this node's attributes or types
            return None
        if not body.node:
            return None
        return self._inline_function(node, body, schema)

    def _inline_function(self, node: onnx.NodeProto, body: onnx.FunctionProto,
                         schema=None) -> list[onnx.NodeProto]:
        mapping = {formal: actual for formal, actual in zip(body.input, list(node.input) + [""] * len(body.input))}
        mapping.update({formal: actual for formal, actual in zip(body.output, node.output) if actual})
        attrs = {a.name: a for a in node.attribute}
        defaults = {}
        if schema is not None:  # the op's declared defaults, where the function body has none
            for name, spec in schema.attributes.items():
                if spec.default_value.type:
                    defaults[name] = spec.default_value
        defaults.update({a.name: a for a in body.attribute_proto})
        nodes = []
        for inner in body.node:
            for out in inner.output:
                if out and out not in mapping:
                    mapping[out] = self.namer(out)
            copy = self._renamed(inner, mapping)
            resolved = []
            for attr in copy.attribute:
                if attr.ref_attr_name:
                    source = attrs.get(attr.ref_attr_name) or defaults.get(attr.ref_attr_name)
                    if source is None:
                        continue  # optional attribute the node leaves unset
                    value = onnx.AttributeProto.FromString(source.SerializeToString())
                    value.name = attr.name
                    attr = value
                resolved.append(attr)
            del copy.attribute[:]
            copy.attribute.extend(resolved)
            nodes.append(copy)
        return nodes

    # -- driver --------------------------------------------------------------------------------
    def run(self, max_rounds: int = 12) -> onnx.ModelProto:
        for _ in range(max_rounds):
            self._infer()
            changed = False
            new_nodes = []
            for node in self.nodes:
                replacement = self._fold(node)
                if replacement is None:
                    replacement = self._expand(node)
                if replacement is None:
                    new_nodes.append(node)
                else:
                    new_nodes.extend(replacement)
                    changed = True
            self.nodes = new_nodes
            if not changed:
                break
        return self._finish()

    def _finish(self) -> onnx.ModelProto:
        graph = self.model.graph
        outputs = []
        for value in graph.output:
            if value.type.HasField("sequence_type") and value.name in self.seqs:
                elem = value.type.sequence_type.elem_type.tensor_type.elem_type
                for i, item in enumerate(self.seqs[value.name]):
                    name = element_name(value.name, i)
                    self.nodes.append(helper.make_node("Identity", [item], [name]))
                    outputs.append(helper.make_tensor_value_info(name, elem, None))
            else:
                outputs.append(value)
        del graph.output[:]
        graph.output.extend(outputs)
        live = {o.name for o in graph.output}
        kept = []
        for node in reversed(self.nodes):
            if any(o in live for o in node.output) or not any(node.output):
                kept.append(node)
                live |= _node_reads(node)
        kept.reverse()
        del graph.node[:]
        graph.node.extend(kept)
        del graph.initializer[:]
        graph.initializer.extend(t for name, t in self.consts.items() if name in live)
        del graph.value_info[:]
        return self.model


def onnx_nodes_recursive(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for sub in _subgraphs(node):
            yield from onnx_nodes_recursive(sub)


def _constant_value(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The tensor a ``Constant`` node holds (any of its attribute forms)."""
    for attr in node.attribute:
        value = helper.get_attribute_value(attr)
        if attr.name == "value":
            return onnx.TensorProto.FromString(value.SerializeToString())
        if attr.name == "value_float":
            return numpy_helper.from_array(np.array(value, dtype=np.float32))
        if attr.name == "value_floats":
            return numpy_helper.from_array(np.array(value, dtype=np.float32))
        if attr.name == "value_int":
            return numpy_helper.from_array(np.array(value, dtype=np.int64))
        if attr.name == "value_ints":
            return numpy_helper.from_array(np.array(value, dtype=np.int64))
        if attr.name == "value_string":
            return numpy_helper.from_array(np.array(value.decode(), dtype=object))
        if attr.name == "value_strings":
            return numpy_helper.from_array(np.array([v.decode() for v in value], dtype=object))
        if attr.name == "sparse_value":
            return None
    return None


def shape_inputs(model: onnx.ModelProto) -> list[str]:
    """Graph inputs whose values reach a shape slot (see :data:`SHAPE_SLOTS`), in input order."""
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    pending = [n.input[i] for n in graph.node for i in SHAPE_SLOTS.get(n.op_type, ())
               if i < len(n.input) and n.input[i]]
    pending += [n for node in graph.node if node.op_type in ("Scan", "Loop", "If")
                for n in _graph_refs_only_outer(node)]
    marked = set()
    while pending:
        name = pending.pop()
        if name in marked:
            continue
        marked.add(name)
        producer = producers.get(name)
        if producer is not None and producer.op_type not in ("Shape", "Size"):
            pending.extend(n for n in _node_reads(producer))
    weights = {t.name for t in graph.initializer}
    # A sequence's length and element shapes are compiled in anyway (one input per element).
    return [v.name for v in graph.input if v.name in marked and v.name not in weights
            and v.type.HasField("tensor_type")]


def _graph_refs_only_outer(node: onnx.NodeProto) -> list[str]:
    """Outer names read by shape slots inside a node's subgraphs."""
    names = []
    for sub in _subgraphs(node):
        local = {i.name for i in sub.input} | {o for n in sub.node for o in n.output}
        inner = shape_inputs_names(sub)
        names += [n for n in inner if n not in local]
    return names


def shape_inputs_names(graph: onnx.GraphProto) -> set[str]:
    names = set()
    for n in graph.node:
        for i in SHAPE_SLOTS.get(n.op_type, ()):
            if i < len(n.input) and n.input[i]:
                names.add(n.input[i])
    return names


def simplify(model: onnx.ModelProto, input_shapes: dict[str, tuple], input_values: dict | None = None,
             keep_ops: set[tuple[str, str]] | None = None) -> onnx.ModelProto:
    """A copy of ``model`` with its compile-time-known parts folded (see the module doc).

    Parameters
    ----------
    model : onnx.ModelProto
    input_shapes : dict
        Static shape of every graph input.
    input_values : dict, optional
        Inputs to specialise on: they become initializers and leave the graph inputs.
    keep_ops : set of (domain, op_type), optional
        Ops with a converter: these are not expanded into their ONNX function.
    """
    return Simplifier(model, input_shapes, input_values, keep_ops or set()).run()
