"""The Python API: what the CLI calls, and what users import."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import onnx

from edgecc import __version__
from edgecc.bundle import LIBRARY, MANIFEST, Bundle, sha256
from edgecc.errors import EdgeccError, UserInputError
from edgecc.frontend import import_onnx, inspect_model, load_onnx
from edgecc.frontend.loader import bind_input_shapes
from edgecc.quantize import (QUANTIZE_MODES, check_group_size, load_calibration, quantize_int4, quantize_int8,
                             random_calibration)
from edgecc.targets import TargetPreset, get_target

__all__ = ["compile", "inspect_model"]


def _require_nvcc() -> None:
    """CUDA device code is compiled by nvcc at build time; find it and tell TVM where it is."""
    from edgecc.cuda import find_nvcc

    os.environ.setdefault("CUDA_PATH", str(find_nvcc().parent.parent))


def _export(executable, path: Path, preset: TargetPreset) -> None:
    from tvm.support.cc import cross_compiler

    compiler = preset.require_toolchain()
    options = {}
    if preset.device == "cuda":
        from edgecc.cuda import fpack_imports_with_fatbin

        options["fpack_imports"] = fpack_imports_with_fatbin(preset.cuda_arch, preset.llvm["mtriple"])
    executable.export_library(str(path), fcompile=cross_compiler(compiler), **options)


def compile(model: str | os.PathLike | onnx.ModelProto, target: str | TargetPreset = "host", *,
            input_shapes: dict[str, list[int]] | None = None, mcpu: str | None = None,
            mattr: list[str] | None = None, vlen: int | None = None, cuda_arch: str | None = None,
            tuning_log: str | os.PathLike | list | None = None, sparsity: str = "auto",
            quantize: str | None = None, group_size: int = 32, int8_activations: bool = False,
            calibration: str | os.PathLike | list | None = None,
            log: Callable[[str], None] | None = None, warn: Callable[[str], None] | None = None) -> Bundle:
    """Compile an ONNX model into a bundle for a target.

    Parameters
    ----------
    model : path or onnx.ModelProto
        The model; a path is read with its external data.
    target : str
        A preset name from ``edgecc targets`` (``host``, ``arm``, ``riscv``, ``cuda``, ...).
    input_shapes : dict, optional
        ``{input name: [dims]}`` binding symbolic input dims.
    mcpu, mattr, vlen, cuda_arch : optional
        Overrides of the preset's CPU, features (``["+dotprod"]``), RISC-V VLEN, CUDA arch.
    tuning_log : path or list of paths, optional
        Tuning logs (files, or folders of ``*.jsonl``) from ``edgecc tune``: kernels with a
        record for this target and toolchain take its schedule, the others the default rules.
        A log file tuned for another target is refused.
    sparsity : {"auto", "off"}
        ``auto``: constant matmul and 1x1-conv weights sparse enough to run faster as
        block-sparse kernels (per the target's measured threshold) become fused sparse
        kernels; the manifest's ``sparsity`` lists each candidate weight and the decision.
        ``off``: every weight stays dense.
    quantize : {None, "int4", "int8"}
        ``int4``: quantize every ``MatMul``/``Gemm`` constant weight to 4 bits, asymmetric per
        group of ``group_size`` inputs (:mod:`edgecc.quantize`), run by INT4 weight-only kernels
        on CPU targets. Models that arrive with 4-bit weights (``MatMulNBits``, blocked int4
        ``DequantizeLinear``) take those kernels without it. ``int8``: static quantization
        (int8 weights per output channel, uint8 activations calibrated on ``calibration``),
        written as QDQ; matmuls run as INT8 kernels. The manifest's ``quantization`` lists each
        matmul with a quantized weight and its kernel.
    calibration : folder or list of dicts, optional
        ``quantize="int8"``'s calibration samples: a folder (one-input models: one ``.npy`` a
        sample; several inputs: one subfolder a sample, ``<input name>.npy`` each) or a list of
        ``{input name: array}``. Without: 8 seeded random samples, with a warning.
    group_size : int
        Inputs per scale and zero point for ``quantize="int4"`` (16, 32, 64, 128 or 256).
    int8_activations : bool
        With ``quantize="int4"``: let the kernels quantize activations to int8 per group at run
        time (MatMulNBits' ``accuracy_level`` 4, as ONNX Runtime's fastest path): VNNI dot
        products where the CPU has them; faster, less exact.
    log : callable, optional
        Receives one progress line per step.
    warn : callable, optional
        Receives warnings (default: ``log``).

    Returns
    -------
    Bundle
        The compiled bundle, in a private folder until :meth:`Bundle.save`.
    """
    log = log or (lambda line: None)
    warn = warn or log
    from edgecc.passes import SPARSITY_MODES

    if sparsity not in SPARSITY_MODES:
        raise UserInputError(f"unknown sparsity mode {sparsity!r}; valid: {', '.join(SPARSITY_MODES)}")
    if quantize not in QUANTIZE_MODES:
        raise UserInputError(f"unknown quantization {quantize!r}; valid: int4, int8")
    check_group_size(group_size)
    if int8_activations and quantize != "int4":
        raise UserInputError("--int8-activations needs --quantize int4")
    if calibration is not None and quantize != "int8":
        raise UserInputError("--calibration needs --quantize int8")
    preset = get_target(target, mcpu=mcpu, mattr=mattr, vlen=vlen, cuda_arch=cuda_arch)
    preset.require_toolchain()
    if preset.device == "cuda":
        _require_nvcc()
    source = "<in-memory model>"
    if not isinstance(model, onnx.ModelProto):
        source = str(model)
        model = load_onnx(model)
    tuning = None
    if tuning_log is not None:
        from edgecc.tuning import TuningRecords

        paths = [tuning_log] if isinstance(tuning_log, (str, os.PathLike)) else list(tuning_log)
        tuning = TuningRecords(paths, preset)
        for note in tuning.notes:
            log(f"tuning log {note}")

    quantized = []
    if quantize == "int8":
        specs = bind_input_shapes(model, input_shapes)
        if calibration is None:
            warn("warning: no --calibration data: activation ranges calibrated on seeded random inputs, "
                 "which may not match real data")
            samples = random_calibration(specs)
        elif isinstance(calibration, (str, os.PathLike)):
            samples = load_calibration(calibration, specs)
        else:
            samples = list(calibration)
        model, quantized = quantize_int8(model, samples)
        log(f"quantized {len(quantized)} weights to int8 (calibrated on {len(samples)} samples)")
    if quantize == "int4":
        model, quantized = quantize_int4(model, group_size, int8_activations)
        log(f"quantized {len(quantized)} weights to int4 in groups of {group_size}")
        if not quantized:
            log("warning: no MatMul/Gemm constant weight with K a multiple of the group size: nothing quantized")

    timings = {}
    start = time.perf_counter()
    mod, inputs, outputs = import_onnx(model, input_shapes)
    timings["import_s"] = round(time.perf_counter() - start, 3)
    log(f"imported {source}: {len(model.graph.node)} nodes, inputs "
        + ", ".join(f"{i.name}{list(i.shape)}" for i in inputs))
    for spec in inputs:
        symbolic = [d for d in spec.shape if isinstance(d, str)]
        if symbolic:
            log(f"input '{spec.name}' keeps symbolic dims {symbolic}: compiled for any size "
                f"(--input-shape binds them, for kernels scheduled for one size)")

    from edgecc.pipeline import build_executable
    from edgecc.runtime import ensure_runtime

    start = time.perf_counter()
    try:
        executable, phases = build_executable(mod, preset, tuning, sparsity)
    except EdgeccError:
        raise
    except Exception as err:  # TVM's errors are long; keep the last line, --debug shows all
        lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
        raise EdgeccError(f"compiling for {preset.name} failed: {type(err).__name__}: "
                          f"{lines[-1] if lines else err}") from err
    timings["compile_s"] = round(time.perf_counter() - start, 3)
    for record in phases:
        log(f"phase {record.phase}: {record.seconds:.2f}s, {record.prim_funcs_after} kernels")
        for kernel, rule in sorted((record.kernels or {}).items()):
            log(f"  {kernel}: {rule}")
        for layer in record.sparse_layers or []:
            log(f"  sparsity {layer['layer']} {layer['op']} {layer['weight']}: {layer['sparsity']:.0%} zeros, "
                f"{layer['block']} blocks, {'sparse ' + layer['kernel'] if layer['converted'] else 'dense'} "
                f"({layer['reason']})")
        for layer in record.int8_layers or []:
            log(f"  int8 {layer['layer']} {layer['weight']}: {layer['kernel'] or 'int32 matmul'} ({layer['reason']})")
        for layer in record.int4_layers or []:
            log(f"  int4 {layer['layer']} {layer['weight']} groups of {layer['group_size']}, "
                f"{layer['activations']} activations: {layer['kernel'] or 'float32'} ({layer['reason']})")

    runtime_dir = ensure_runtime(preset.arch, log=log)
    staging = tempfile.TemporaryDirectory(prefix="edgecc-bundle-")
    folder = Path(staging.name)
    start = time.perf_counter()
    _export(executable, folder / LIBRARY, preset)
    timings["link_s"] = round(time.perf_counter() - start, 3)
    shutil.copytree(runtime_dir, folder / "runtime", symlinks=True)
    log(f"linked {LIBRARY} for {preset.name} ({preset.arch}) in {timings['link_s']:.1f}s")

    manifest = _manifest(source, preset, inputs, outputs, phases, timings, folder / LIBRARY)
    manifest["sparsity"] = {"mode": sparsity, "layers": next(
        (record.sparse_layers for record in phases if record.sparse_layers is not None), [])}
    manifest["quantization"] = {
        "mode": quantize or "none", "group_size": group_size if quantize == "int4" else None,
        "int8_activations": int8_activations,
        "weights_quantized": len(quantized),
        "int4_layers": next((r.int4_layers for r in phases if r.int4_layers is not None), []),
        "int8_layers": next((r.int8_layers for r in phases if r.int8_layers is not None), [])}
    if tuning is not None:
        manifest["tuning_records"] = tuning.report()
        log(f"tuning logs: {manifest['tuning_records']['from_log']} kernels from records, "
            f"{manifest['tuning_records']['fallback']} by default rules")
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return Bundle(folder, manifest, staging=staging)


def _manifest(source, preset, inputs, outputs, phases, timings, library: Path) -> dict:
    import tvm
    import tvm_ffi

    return {
        "format": 1,
        "source_model": source,
        "inputs": [spec.to_json() for spec in inputs],
        "outputs": [spec.to_json() for spec in outputs],
        "target": preset.to_json(),
        "versions": {"edgecc": __version__, "tvm": tvm.__version__, "tvm_ffi": tvm_ffi.__version__},
        "model_sha256": sha256(library),
        "passes": [record.to_json() for record in phases],
        "tuning_records": [],
        "timings": timings,
        "runner": "runtime/edgecc-run model.so --input IN0.npy [--input IN1.npy ...] --output-dir DIR",
    }
