"""``edgecc logs``: show, merge, export, import and verify tuning logs (format: :mod:`.log`)."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Callable

import numpy as np

from edgecc.tuning.log import (TuningLog, TuningLogError, kernel_script, parse_kernel, read_log,
                               workload_key)


def show(path, out: Callable[[str], None] = print) -> TuningLog:
    log, _ = read_log(path)
    header = log.header
    device = ", ".join(f"{k} {v}" for k, v in header.get("device", {}).items() if v is not None)
    out(f"{path}: {len(log.records)} records for {log.describe()}")
    if device:
        out(f"  device: {device}")
    out(f"  {'kernel':<44} {'tuned us':>10} {'default us':>11} {'speedup':>8} {'trials':>7}")
    for record in sorted(log.records.values(), key=lambda r: -r["default_us"]):
        out(f"  {record['kernel'][:44]:<44} {record['latency_us']:10.1f} {record['default_us']:11.1f} "
            f"{record['default_us'] / record['latency_us']:7.2f}x {record['trials']:7d}")
    return log


def merge(paths, output, out: Callable[[str], None] = print) -> TuningLog:
    """Best record per workload of logs that share one target and toolchain."""
    logs = [read_log(p)[0] for p in paths]
    if not logs:
        raise TuningLogError("nothing to merge: give at least one log")
    merged = TuningLog(Path(output), dict(logs[0].header))
    for log in logs:
        why = merged.compatible_with(log.header)
        if why:
            raise TuningLogError(f"cannot merge {log.path} into logs for {merged.describe()}: {why}")
        for record in log.records.values():
            merged.add(record)
    merged.write(Path(output))
    out(f"wrote {output}: {len(merged.records)} records from {len(logs)} logs ({merged.describe()})")
    return merged


def export(path, output, model=None, input_shapes=None, out: Callable[[str], None] = print) -> TuningLog:
    """A log to share: the records a model's build would use (all, without ``model``), validated."""
    log, _ = read_log(path)
    records = dict(log.records)
    if model is not None:
        from edgecc.frontend import import_onnx, load_onnx
        from edgecc.targets import get_target
        from edgecc.tuning.tuner import tuning_kernels

        target = log.header["target"]
        preset = _preset_for(target)
        mod, _, _ = import_onnx(load_onnx(model), input_shapes)
        wanted = {workload_key(func) for _, func, _, _ in tuning_kernels(mod, preset)}
        records = {k: r for k, r in records.items() if k in wanted}
        del get_target
    exported = TuningLog(Path(output), log.header, records)
    exported.write(Path(output))
    out(f"wrote {output}: {len(records)} of {len(log.records)} records ({log.describe()})")
    return exported


def _preset_for(target: dict):
    """A preset matching a log's canonical target, for rebuilding its model's kernels."""
    from edgecc.targets import TargetPreset
    from edgecc.targets.base import TRIPLES

    llvm = {"kind": "llvm", "mtriple": TRIPLES.get(target["arch"], f"{target['arch']}-linux-gnu"),
            "mcpu": target["mcpu"]}
    if target["mattr"]:
        llvm["mattr"] = list(target["mattr"])
    return TargetPreset("log-target", "target of a tuning log", target["arch"], llvm, target["device"],
                        target.get("cuda_arch"), target.get("vlen"))


def replay(record: dict):
    """Parse a record's kernel, check it hashes to the record's key, apply its trace.
    Returns ``(func, scheduled func)``; raises ValueError with the reason."""
    from tvm.s_tir.schedule import Schedule, Trace

    try:
        func = parse_kernel(record["func"])
    except Exception as err:  # noqa: BLE001 -- any parse failure means a bad record
        raise ValueError(f"kernel does not parse: {type(err).__name__}") from None
    if workload_key(func) != record["workload"] or kernel_script(func) != record["func"]:
        raise ValueError("kernel does not match its workload key")
    if "knobs" in record:  # a hand-written kernel's candidate: the kernel this edgecc writes for them
        from edgecc.schedules import knobs

        try:
            written = knobs.write(knobs.Spec.from_json(record["knobs"]))
        except (AssertionError, KeyError, TypeError, ValueError):
            written = None
        if written is None or workload_key(written) != record["workload"]:
            raise ValueError("its knobs do not write its kernel")
    sch = Schedule(func.with_attr("global_symbol", "main"))
    try:
        Trace.apply_json_to_schedule(record["trace"], sch)
    except Exception as err:  # noqa: BLE001
        first = str(err).strip().splitlines()
        raise ValueError(f"trace does not replay on its kernel: {first[-1] if first else type(err).__name__}") from None
    return func, sch.mod["main"]


def import_log(path, into, out: Callable[[str], None] = print) -> tuple[int, list[str]]:
    """Validate an untrusted log (schema, sizes, each kernel's key, each trace replaying on its
    kernel) and merge what passes into ``into``. Returns (records added, rejections)."""
    incoming, rejected_lines = read_log(path, strict=False)
    rejections = [f"line {number}: {reason}" for number, reason in rejected_lines]
    into = Path(into)
    target = read_log(into)[0] if into.exists() else TuningLog(into, incoming.header)
    why = target.compatible_with(incoming.header)
    if why:
        raise TuningLogError(f"cannot import {path} into {into} ({target.describe()}): {why}")
    added = 0
    for record in incoming.records.values():
        try:
            replay(record)
        except ValueError as err:
            rejections.append(f"{record['kernel']} ({record['workload'][:12]}): {err}")
            continue
        added += target.add(record)
    target.write(into)
    out(f"imported {added} of {len(incoming.records) + len(rejected_lines)} records from {path} into {into}")
    for reason in rejections:
        out(f"  rejected {reason}")
    return added, rejections


def _random_args(func, rng) -> list[np.ndarray]:
    from tvm.s_tir import meta_schedule as ms

    args = []
    for info in ms.arg_info.ArgInfo.from_prim_func(func):
        shape, dtype = [int(d) for d in info.shape], str(info.dtype)
        if dtype.startswith("float"):
            args.append(rng.uniform(-1, 1, shape).astype(dtype))
        elif dtype == "bool":
            args.append(rng.integers(0, 2, shape).astype(bool))
        else:
            args.append(rng.integers(0, 4, shape).astype(dtype))
    return args


def verify(path, out: Callable[[str], None] = print, rtol: float = 1e-4, atol: float = 1e-4) -> int:
    """Rebuild every kernel the log schedules, tuned and with the default rule, run both on the
    same random inputs here, and compare. Returns the number of kernels that differ."""
    import tvm

    from edgecc.schedules import schedule_cpu_func
    from edgecc.schedules.prefetch import PREFETCH_ARCHES

    log, _ = read_log(path)
    target = log.header["target"]
    if target["device"] != "cpu" or target["arch"] != platform.machine():
        raise TuningLogError(f"verify runs kernels on this machine ({platform.machine()}); "
                             f"{path} is for {log.target_key}")
    preset = _preset_for(target)
    from edgecc.schedules import fp32_lanes

    failures = 0
    rng = np.random.default_rng(0)
    for record in sorted(log.records.values(), key=lambda r: r["kernel"]):
        try:
            func, tuned = replay(record)
            default, _ = schedule_cpu_func(func.with_attr("global_symbol", "main"), fp32_lanes(preset),
                                           preset.arch != "riscv64", preset.arch in PREFETCH_ARCHES)
            args = _random_args(func, rng)
            results = []
            for scheduled in (default, tuned):
                lib = tvm.compile(tvm.IRModule({"main": scheduled}), target=preset.tvm_target())
                run_args = [tvm.runtime.tensor(a) for a in args]
                lib["main"](*run_args)
                results.append([a.numpy() for a in run_args])
            for tuned_out, default_out in zip(results[1], results[0]):  # outputs and untouched inputs
                np.testing.assert_allclose(tuned_out, default_out, rtol=rtol, atol=atol)
            out(f"  ok    {record['kernel']}")
        except (ValueError, AssertionError) as err:
            failures += 1
            out(f"  FAIL  {record['kernel']}: {str(err).strip().splitlines()[0]}")
    out(f"{path}: {len(log.records) - failures} of {len(log.records)} kernels match the untuned build "
        f"(rtol {rtol}, atol {atol})")
    return failures
