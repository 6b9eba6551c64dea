"""Load an ONNX file, check it before any compiling, and import it into Relax."""

from __future__ import annotations

import collections
import dataclasses
import os
import re
import warnings
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import external_data_helper, helper

from edgecc.errors import UnsupportedOpError, UserInputError

from .converters import converter_ops, supported_ops
from .narrow import lower_narrow_types
from .qdq import fuse_qdq
from .simplify import simplify


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """A named model input or output: shape (ints, or strings for symbolic dims) and dtype."""

    name: str
    shape: tuple
    dtype: str

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclasses.dataclass
class ModelInfo:
    """What ``edgecc inspect`` reports about a model."""

    path: str
    opsets: dict[str, int]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    op_histogram: dict[str, int]
    num_params: int
    params_bytes: int
    unsupported: list[str]


def load_onnx(path: str | os.PathLike) -> onnx.ModelProto:
    """Read an ONNX file with its external data, or raise a one-line :class:`UserInputError`.

    Catches what users meet: a missing file, a corrupt or truncated protobuf, a
    file that parses but holds no graph, missing external-data files, opset
    imports this ONNX version does not know.
    """
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"model file not found: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError) as err:
        raise UserInputError(f"{path} is not a valid ONNX model (corrupt or truncated file: {err})") from None
    if not model.graph.node or not model.graph.output:
        raise UserInputError(f"{path} is not a valid ONNX model (no graph nodes or outputs; truncated file?)")
    _load_external_data(model, path)
    _check_opsets(model, path)
    return model


def _load_external_data(model: onnx.ModelProto, path: Path) -> None:
    base = path.parent
    for tensor in external_data_helper._get_all_tensors(model):
        if not external_data_helper.uses_external_data(tensor):
            continue
        info = external_data_helper.ExternalDataInfo(tensor)
        location = base / info.location
        if not location.is_file():
            raise UserInputError(
                f"external data file '{info.location}' for tensor '{tensor.name}' is missing "
                f"(looked in {base}/)")
    try:
        external_data_helper.load_external_data_for_model(model, str(base))
    except (OSError, ValueError) as err:
        raise UserInputError(f"cannot read external data of {path}: {err}") from None


def _check_opsets(model: onnx.ModelProto, path: Path) -> None:
    opsets = {_domain(o.domain): o.version for o in model.opset_import}
    if "" not in opsets:
        raise UserInputError(f"{path}: no opset import for the default ONNX domain")
    newest = onnx.defs.onnx_opset_version()
    if not 1 <= opsets[""] <= newest:
        raise UserInputError(
            f"{path}: imports ONNX opset {opsets['']}, but this onnx ({onnx.__version__}) "
            f"knows opsets 1 to {newest}")
    for node in _all_nodes(model.graph):
        if _domain(node.domain) not in opsets:
            raise UserInputError(
                f"{path}: node '{node.name or node.op_type}' uses domain '{node.domain}' "
                "that the model does not import (opset_import)")


def _domain(domain: str) -> str:
    return "" if domain in ("", "ai.onnx") else domain


def _all_nodes(graph: onnx.GraphProto):
    """Every node, including those in If/Loop/Scan subgraphs."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _all_nodes(g)


def unsupported_ops(model: onnx.ModelProto) -> list[str]:
    """One description per unsupported (domain, op type): its opset and first node."""
    opsets = {_domain(o.domain): o.version for o in model.opset_import}
    known = supported_ops()
    first_use: dict[tuple[str, str], str] = {}
    for node in _all_nodes(model.graph):
        key = (_domain(node.domain), node.op_type)
        if key not in known and key not in first_use:
            first_use[key] = node.name or f"<unnamed {node.op_type}>"
    return [f"{op} (domain '{domain or 'ai.onnx'}', opset {opsets.get(domain, '?')}, first node '{node}')"
            for (domain, op), node in first_use.items()]


def check_supported(model: onnx.ModelProto) -> None:
    """Raise :class:`UnsupportedOpError` naming every op the frontend cannot import."""
    missing = unsupported_ops(model)
    if missing:
        raise UnsupportedOpError(f"unsupported ONNX ops: {'; '.join(missing)}")


def _value_spec(value: onnx.ValueInfoProto) -> TensorSpec:
    ttype = value.type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                 for d in ttype.shape.dim)
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(ttype.elem_type)).name if ttype.elem_type else "?"
    return TensorSpec(value.name, dims, dtype)


def graph_inputs(model: onnx.ModelProto) -> list[TensorSpec]:
    """The user-facing inputs: graph inputs that are not initializers (old IR lists both)."""
    weights = {t.name for t in model.graph.initializer}
    return [_value_spec(v) for v in model.graph.input if v.name not in weights]


def inspect_model(path: str | os.PathLike) -> ModelInfo:
    """Inputs, outputs, op histogram, parameter size and unsupported ops of a model file."""
    model = load_onnx(path)
    params = [t for t in model.graph.initializer]
    return ModelInfo(
        path=str(path),
        opsets={(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        inputs=graph_inputs(model),
        outputs=[_value_spec(v) for v in model.graph.output],
        op_histogram=dict(collections.Counter(
            (f"{n.domain}::{n.op_type}" if _domain(n.domain) else n.op_type)
            for n in _all_nodes(model.graph)).most_common()),
        num_params=sum(int(np.prod(t.dims)) for t in params),
        params_bytes=sum(int(np.prod(t.dims)) * np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
                         for t in params),
        unsupported=unsupported_ops(model),
    )


def bind_input_shapes(model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None) -> list[TensorSpec]:
    """Apply ``--input-shape`` bindings. Dims left symbolic (``batch``) stay symbolic: the
    model is compiled for any size there, with Relax symbolic shapes."""
    inputs = graph_inputs(model)
    input_shapes = dict(input_shapes or {})
    names = [i.name for i in inputs]
    for name in input_shapes:
        if name not in names:
            raise UserInputError(f"--input-shape names '{name}', but the model's inputs are: {', '.join(names)}")
    sequences = {v.name for v in model.graph.input if v.type.HasField("sequence_type")}
    bound = []
    for spec in inputs:
        if spec.name in sequences:  # a list of tensors: one shape per element
            if spec.name not in input_shapes:
                raise UserInputError(f"input '{spec.name}' is a sequence; give the shape of each element")
            bound.append(TensorSpec(spec.name, tuple(tuple(int(d) for d in s) for s in input_shapes[spec.name]),
                                    "sequence"))
            continue
        shape = tuple(int(d) for d in input_shapes[spec.name]) if spec.name in input_shapes else spec.shape
        if spec.name in input_shapes and any(d < 0 for d in shape):
            raise UserInputError(f"--input-shape {spec.name}: dims must be 0 or more, got {list(shape)}")
        if any(d == "?" for d in shape):
            example = ",".join(str(d) if isinstance(d, int) else "1" for d in shape)
            raise UserInputError(f"input '{spec.name}' has dims without a name or size; bind them with "
                                 f"--input-shape {spec.name}={example}")
        bound.append(TensorSpec(spec.name, shape, spec.dtype))
    return bound


def _type_specs(ret_ty, names: list[str]) -> list[TensorSpec]:
    from tvm import relax

    fields = ret_ty.fields if isinstance(ret_ty, relax.TupleType) else [ret_ty]
    specs = []
    for name, field in zip(names, fields):
        shape = tuple(int(d) if hasattr(d, "value") else str(d) for d in field.shape.values) \
            if field.shape is not None else ()
        specs.append(TensorSpec(name, shape, str(field.dtype)))
    return specs


def _identifier(name: str, taken: set[str]) -> str:
    ident = re.sub(r"\W", "_", name)
    ident = ident if ident and not ident[0].isdigit() else f"input_{ident}"
    while ident in taken:
        ident += "_"
    return ident


def rename_inputs_to_identifiers(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose graph inputs are C identifiers (``gpu_0/data_0`` -> ``gpu_0_data_0``).

    TVM names kernel parameters after the inputs, and its CUDA codegen writes them
    into C source unchanged; the bundle keeps the ONNX names (inputs are positional).
    """
    renames, taken = {}, {v.name for v in model.graph.value_info} | {n for node in model.graph.node
                                                                       for n in node.output}
    for value in model.graph.input:
        if not value.name.isidentifier():
            renames[value.name] = _identifier(value.name, taken)
            taken.add(renames[value.name])
    if not renames:
        return model
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for value in model.graph.input:
        value.name = renames.get(value.name, value.name)
    for tensor in model.graph.initializer:
        tensor.name = renames.get(tensor.name, tensor.name)
    for node in _all_nodes(model.graph):
        node.input[:] = [renames.get(name, name) for name in node.input]
    return model


def import_onnx(model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None,
                input_values: dict[str, np.ndarray] | None = None):
    """Check, simplify and import a model into a Relax ``IRModule`` with its weights bound as constants.

    The ONNX graph is first simplified for the bound shapes (:mod:`edgecc.frontend.simplify`):
    shape computations and constant subgraphs are folded, ops ONNX defines as functions
    are expanded, ``Scan`` and ``Loop`` with known trip counts are unrolled. Narrow types
    (float8, float4, int4, int2) are then held in bytes (:mod:`edgecc.frontend.narrow`);
    the compiled model takes and returns those bytes.

    Parameters
    ----------
    model : onnx.ModelProto
        A model from :func:`load_onnx` (or built in memory).
    input_shapes : dict, optional
        ``{input name: [dims]}`` binding symbolic or overriding static input dims.
    input_values : dict, optional
        ``{input name: array}``: inputs compiled in as constants (a shape, axes, a trip
        count); they are no longer inputs of the compiled model.

    Returns
    -------
    (tvm.IRModule, list[TensorSpec], list[TensorSpec])
        The module, and the static input and output specs in ``main``'s order.
    """
    from tvm.relax.frontend.onnx import from_onnx

    check_supported(model)
    _check_no_strings(model)
    model = fuse_qdq(model)  # QDQ matmuls as QLinearMatMul: integer kernels, not float on dequantized values
    input_values = dict(input_values or {})
    input_shapes = {**(input_shapes or {}), **{k: list(np.shape(v)) for k, v in input_values.items()}}
    inputs = bind_input_shapes(model, input_shapes)
    model = simplify(model, {spec.name: spec.shape for spec in inputs}, input_values, converter_ops())
    inputs = [spec for spec in inputs if spec.name not in input_values]
    model = lower_narrow_types(model)
    # The simplified graph's inputs: static shapes, narrow types as bytes, sequences one input per element.
    inputs = graph_inputs(model)
    _check_converted(model)
    model = rename_inputs_to_identifiers(model)
    if model.ir_version < 4:
        # IR 3 wants every initializer listed as a graph input; TVM's checker
        # warns about models that omit them, which is harmless for import.
        model = onnx.ModelProto.FromString(model.SerializeToString())
        model.ir_version = 4
    names = [spec.name for spec in graph_inputs(model)]  # same order, identifier names
    # Symbolic dims are left to the model's own dim_params, which TVM imports as shape vars.
    shape_dict = {name: list(spec.shape) for name, spec in zip(names, inputs)
                  if all(isinstance(d, int) for d in spec.shape)}
    dtype_dict = {name: spec.dtype for name, spec in zip(names, inputs)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            mod = from_onnx(model, shape_dict=shape_dict, dtype_dict=dtype_dict, keep_params_in_input=False)
        except Exception as err:  # TVM raises many types; the user needs one line and the node
            raise UserInputError(f"cannot import the model: {type(err).__name__}: {_first_line(err)}") from err
    outputs = _type_specs(mod["main"].ret_ty, [o.name for o in model.graph.output])
    return mod, inputs, outputs


def _check_no_strings(model: onnx.ModelProto) -> None:
    """String tensors have no TVM dtype: name the first model input or output that is one."""
    for value in list(model.graph.input) + list(model.graph.output):
        if value.type.tensor_type.elem_type == onnx.TensorProto.STRING:
            raise UnsupportedOpError(f"'{value.name}' is a string tensor; edgecc compiles numeric tensors only "
                                     "(keep text processing outside the compiled model)")


def _check_converted(model: onnx.ModelProto) -> None:
    """After simplifying, every op left needs a converter (a Loop not unrolled has none)."""
    known = converter_ops()
    left = sorted({f"{n.op_type} (node '{n.name or n.op_type}')" for n in _all_nodes(model.graph)
                   if (_domain(n.domain), n.op_type) not in known})
    if left:
        raise UnsupportedOpError(
            "unsupported ONNX ops: " + "; ".join(left) +
            " (Scan/Loop are unrolled only with a constant trip count and static shapes)")


def _first_line(err: Exception) -> str:
    lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else repr(err)
