"""ONNX backend API (``onnx.backend.base``) over edgecc: compile for the host and run.

``onnx.backend.test.BackendTest(edgecc.backend, __name__)`` runs the official ONNX
test suite against edgecc; ``bench/conformance.py`` counts the results. A model
is compiled through the full edgecc pipeline (the ``host`` preset's passes and
schedules) the first time it runs with a given set of input shapes, and run in
process by TVM's Relax VM; inputs bind any symbolic dims.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx.backend.base import Backend, BackendRep

from edgecc.errors import UserInputError
from edgecc.frontend import check_supported, import_onnx
from edgecc.frontend.loader import graph_inputs
from edgecc.frontend.narrow import from_storage, narrow_io, to_storage
from edgecc.frontend.simplify import element_name, shape_inputs


def _to_numpy(value) -> list[np.ndarray]:
    """VM results (a tensor, or nested tuples of them) as a flat list of arrays."""
    if hasattr(value, "numpy"):
        return [value.numpy()]
    items = []
    for item in value:
        items.extend(_to_numpy(item))
    return items


class EdgeccRep(BackendRep):
    """A prepared model: compiled per distinct input shapes, run by the Relax VM on the host."""

    def __init__(self, model: onnx.ModelProto, target: str = "host"):
        super().__init__()
        self.model = model
        self.target = target
        self.input_names = [spec.name for spec in graph_inputs(model)]
        # Inputs that decide shapes (a Reshape target, Range bounds, a trip count):
        # compiled in as constants, one executable per distinct value.
        self.specialized = set(shape_inputs(model))
        # float8/int4/... inputs and outputs: the compiled model takes and returns bytes.
        self.narrow_inputs, self.narrow_outputs = narrow_io(model)
        self.output_names = [o.name for o in model.graph.output]
        self.sequence_outputs = {o.name for o in model.graph.output if o.type.HasField("sequence_type")}
        self._compiled: dict = {}

    def _vm(self, shapes: tuple, values: dict):
        """(VM, compiled output names) for these input shapes and specialised values."""
        key = (shapes, tuple((k, v.dtype.str, v.tobytes()) for k, v in sorted(values.items())))
        if key not in self._compiled:
            import tvm
            from tvm import relax

            from edgecc.pipeline import build_executable
            from edgecc.targets import get_target

            preset = get_target(self.target)
            mod, _, outputs = import_onnx(self.model, dict(zip(self.input_names, shapes)), values)
            executable = build_executable(mod, preset)[0]
            self._compiled[key] = (relax.VirtualMachine(executable, tvm.cpu()), [o.name for o in outputs])
        return self._compiled[key]

    def _group(self, names: list[str], outputs: list[np.ndarray]) -> tuple:
        """The model's outputs from the compiled ones: sequences regrouped, narrow types restored."""
        by_name = dict(zip(names, outputs))
        result = []
        for name in self.output_names:
            if name in self.sequence_outputs:
                items, i = [], 0
                while element_name(name, i) in by_name:
                    items.append(by_name[element_name(name, i)])
                    i += 1
                result.append(items)
            elif name in self.narrow_outputs:
                result.append(from_storage(by_name[name], self.narrow_outputs[name]))
            else:
                result.append(by_name[name])
        return tuple(result)

    def run(self, inputs, **kwargs):
        import tvm

        if isinstance(inputs, dict):
            inputs = [inputs[name] for name in self.input_names]
        elif not isinstance(inputs, (list, tuple)):
            inputs = [inputs]
        if len(inputs) != len(self.input_names):
            raise UserInputError(f"the model takes {len(self.input_names)} inputs, got {len(inputs)}")
        arrays = [[np.asarray(item) for item in x] if isinstance(x, list) else  # a sequence: its elements
                  to_storage(np.asarray(x), self.narrow_inputs[n]) if n in self.narrow_inputs else np.asarray(x)
                  for n, x in zip(self.input_names, inputs)]
        values = {n: a for n, a in zip(self.input_names, arrays) if n in self.specialized}
        shapes = tuple(tuple(tuple(i.shape) for i in a) if isinstance(a, list) else tuple(a.shape) for a in arrays)
        vm, names = self._vm(shapes, values)
        runtime = []
        for name, array in zip(self.input_names, arrays):
            if name not in self.specialized:
                runtime += array if isinstance(array, list) else [array]
        result = vm["main"](*[tvm.runtime.tensor(a) for a in runtime])
        return self._group(names, _to_numpy(result))


class EdgeccBackend(Backend):
    """``onnx.backend.base.Backend`` for edgecc (CPU: the host preset)."""

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device == "CPU"

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs) -> EdgeccRep:
        super().prepare(model, device, **kwargs)
        check_supported(model)
        return EdgeccRep(model)

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs, device: str = "CPU", **kwargs):
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node, inputs, device: str = "CPU", outputs_info=None, **kwargs):
        raise NotImplementedError("edgecc compiles whole models; use run_model")


prepare = EdgeccBackend.prepare
run_model = EdgeccBackend.run_model
run_node = EdgeccBackend.run_node
supports_device = EdgeccBackend.supports_device
