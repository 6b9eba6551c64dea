"""Construction knobs of edgecc's hand-written INT8 and INT4 kernels, and how tuning sets them.

A hand-written kernel's register tile (vectors of output columns) and the rows, or output
pixels, it takes a pass are fixed when the kernel is written, and its weight is packed for
that tile: they are not schedule decisions MetaSchedule could mutate in a trace. So each such
kernel carries its :class:`Spec` (kind, shape arguments, knobs) in its block's
``edgecc.knobs`` annotation. Tuning writes the kernel once per candidate (:func:`candidates`,
a handful), measures each on its own, and records them all; a build with the log writes each
kernel with the fastest candidate it finds recorded for the same arguments (:func:`choose`),
and the graph pass packs the weight to match. A candidate the kernel rejects (too many
accumulators for the registers) is skipped.
"""

from __future__ import annotations

import dataclasses
import json
import math

import tvm
from tvm.s_tir.schedule import Schedule

KNOBS_ATTR = "edgecc.knobs"
MAX_CANDIDATES = 6
MAX_KNOB = 64  # no tile or pass is wider (a log's knobs are untrusted)


@dataclasses.dataclass(frozen=True)
class Spec:
    """A hand-written kernel: what writes it (``kind`` and its shape ``args``) and its ``knobs``."""

    kind: str
    args: dict
    knobs: dict

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, "args": self.args, "knobs": self.knobs}, sort_keys=True)

    @staticmethod
    def from_json(text: str) -> Spec:
        value = json.loads(text)
        return Spec(value["kind"], value["args"], value["knobs"])

    @property
    def label(self) -> str:
        """``c4 rows6``: the knobs as a kernel name's suffix."""
        return " ".join(f"{name}{value}" for name, value in self.knobs.items())

    def same_kernel(self, other: Spec) -> bool:
        return self.kind == other.kind and self.args == other.args

    def with_knobs(self, knobs: dict) -> Spec:
        return Spec(self.kind, self.args, dict(knobs))


def _isa(name: str, lanes: int):
    from . import int8

    named = {isa.name: isa for isa in (int8.VNNI, int8.SDOT, int8.NEON_MAC)}
    return named[name] if name in named else int8.rvv_mac(lanes * 32)


def _int8_matmul(a):
    from . import int8

    return lambda k: int8.kernel(tuple(a["lead"]), a["k"], a["n"], a["a_dtype"], _isa(a["isa"], a["lanes"]),
                                 k["c"], k["rows"])


def _int8_mmla(a):
    from . import int8

    return lambda k: int8.kernel_mmla(tuple(a["lead"]), a["k"], a["n"], a["a_dtype"], k["cp"], k["rp"])


def _int8_conv(a):
    from . import int8

    return lambda k: int8.conv_kernel(tuple(a["shape"]), a["layout"], a["a_dtype"], a["oc"], tuple(a["kernel_hw"]),
                                      tuple(a["strides"]), tuple(a["pads"]), tuple(a["out_hw"]),
                                      _isa(a["isa"], a["lanes"]), k["c"], k["pixels"])


def _int4_matmul(a):
    from . import int4

    if a["vnni"]:
        return lambda k: int4.kernel_vnni(tuple(a["lead"]), a["k"], a["n"], a["group"], k["c"], k["rows"])
    return lambda k: int4.kernel(tuple(a["lead"]), a["k"], a["n"], a["group"], a["lanes"], k["c"], k["rows"])


_WRITERS = {"int8_matmul": _int8_matmul, "int8_mmla": _int8_mmla, "int8_conv": _int8_conv,
            "int4_matmul": _int4_matmul}


def candidates(spec: Spec) -> list[dict]:
    """The knob settings tuning measures for a kernel, the spec's own first: per tile width
    (widest first), the most rows (pixels) a pass its accumulators allow, and half that."""
    from . import int4, int8

    a = spec.args
    if spec.kind in ("int8_matmul", "int8_conv"):
        lanes, n = a["lanes"], a["n"] if spec.kind == "int8_matmul" else a["oc"]
        vectors = -(-n // lanes)
        m = math.prod(a["lead"]) if spec.kind == "int8_matmul" else a["out_hw"][1]
        name = "rows" if spec.kind == "int8_matmul" else "pixels"
        fits = {c: int8.MAX_ACCUMULATORS // c for c in (4, 3, 2, 1)
                if c <= vectors and (n % lanes or vectors % c == 0)}
        width, rows = "c", name
    elif spec.kind == "int8_mmla":
        m, fits, width, rows = -(-math.prod(a["lead"]) // 2), {4: 6, 2: 12}, "cp", "rp"
    elif spec.kind == "int4_matmul":
        lanes = 16 if a["vnni"] else a["lanes"]
        m, width, rows = math.prod(a["lead"]), "c", "rows"
        fits = {c: (int4.MAX_STACK_BYTES - 1) // (2 * c * lanes * 4) for c in (4, 2, 1)
                if c <= int4.MAX_HALF_VECTORS and a["n"] % (2 * c * lanes) == 0}
    else:
        return [spec.knobs]
    found = [spec.knobs]
    for c, fit in fits.items():
        for r in (fit, fit // 2):
            knobs = {width: c, rows: max(1, min(m, r))}
            if r >= 1 and knobs not in found:
                found.append(knobs)
    return found[:MAX_CANDIDATES]


def write(spec: Spec) -> tvm.tirx.PrimFunc:
    """The kernel for ``spec``, its block annotated with it. AssertionError: the kernel does
    not take these knobs; ValueError: they are not knobs."""
    from . import int4, int8

    if spec.kind not in _WRITERS or not all(isinstance(v, int) and 1 <= v <= MAX_KNOB for v in spec.knobs.values()):
        raise ValueError(f"not a kernel's knobs: {spec.to_json()}")
    func = _WRITERS[spec.kind](spec.args)(spec.knobs)
    sch = Schedule(func)
    block = next(b for b in sch.get_child_blocks(sch.get_sblock("root"))
                 if any(key in sch.get(b).annotations for key in (int8.INT8_ATTR, int8.CONV_ATTR, int4.INT4_ATTR)))
    sch.annotate(block, KNOBS_ATTR, spec.to_json())
    return sch.mod["main"]


def spec_of(func: tvm.tirx.PrimFunc) -> Spec | None:
    """The spec of the hand-written kernel in a (fused) PrimFunc, or None."""
    sch = Schedule(func)
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        text = sch.get(block).annotations.get(KNOBS_ATTR)
        if text is not None:
            return Spec.from_json(str(text))
    return None


def variants(func: tvm.tirx.PrimFunc) -> dict[str, tvm.tirx.PrimFunc]:
    """``{label: kernel}``: what tuning measures of a (fused) kernel with knobs, each candidate
    written on its own (no fused epilogue); empty for other kernels."""
    spec = spec_of(func)
    if spec is None:
        return {}
    found = {}
    for knobs in candidates(spec):
        try:
            found[spec.with_knobs(knobs).label] = write(spec.with_knobs(knobs))
        except (AssertionError, ValueError):
            continue
    return found


def choose(spec: Spec, tuning, kernel: str) -> tuple[Spec, str]:
    """The spec to write a kernel with: the fastest candidate ``tuning`` (:class:`TuningRecords`)
    measured for these arguments, else ``spec``; and a note for the report."""
    if tuning is None:
        return spec, ""
    measured = {}
    for record in tuning.knob_records(spec):
        candidate = spec.with_knobs(Spec.from_json(record["knobs"]).knobs)
        try:  # the record counts only if its kernel is the one this edgecc writes for the knobs
            if tuning.peek(write(candidate)) is record:
                measured[candidate.label] = (candidate, record)
        except (AssertionError, KeyError, TypeError, ValueError):
            continue
    if not measured:
        return spec, ""
    best = min(measured, key=lambda label: measured[label][1]["latency_us"])
    tuning.used(f"{kernel} [{best}]", measured[best][1])
    times = ", ".join(f"{label}: {record['latency_us']:.1f} us" for label, (_, record) in sorted(measured.items()))
    return measured[best][0], f"tuned ({times})"
