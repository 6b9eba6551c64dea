"""Tuning a model's kernels with MetaSchedule, into an edgecc tuning log.

1. The model is imported and legalized as a build would, giving its fused kernels (tasks),
   each with how often the graph calls it.
2. Tasks whose record is already in the log are skipped (a rerun resumes).
3. Every remaining tunable task's default schedule is measured once; a task's share of the
   model's latency is its default time times its calls.
4. Trials (``trials``), or time (``time_budget``), are spread by share, largest first. Each
   task is searched by MetaSchedule's evolutionary search guided by an XGBoost cost model
   (one model shared by all tasks, so it learns across them), measured by a local runner or
   through a TVM RPC tracker.
5. Each task's best schedule, or the default if nothing beat it, is appended to the log as
   soon as the task is done.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

import tvm
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.schedule import Schedule

from edgecc.errors import UserInputError
from edgecc.schedules import cpu, fp32_lanes, knobs, prefetch, schedule_cpu, ssm, winograd
from edgecc.tuning.log import TuningLog, kernel_script, new_header, parse_kernel, read_log, workload_key
from edgecc.tuning.space import has_decisions, space_generator

MIN_TRIALS = 4  # a task that would get fewer is left at its default schedule
# Warm (the default): calls back to back, the kernel's weights in the caches after the first.
EVALUATOR = {"number": 3, "repeat": 3, "min_repeat_ms": 40}
# Cold (``cold_caches``): one call at a time after the caches are flushed of every argument but
# the first, as a kernel runs in a model whose weights do not stay cached between inferences.
# On resnet50 here, warm timings were up to 2.8x below the same kernels' times in the model,
# cold ones within 0.75-1.25x; on squeezenet, whose weights stay cached, cold ones are too slow
# (a single call also wakes the thread pool), and a log tuned cold ran 13% slower.
COLD_EVALUATOR = {"number": 1, "repeat": 10, "min_repeat_ms": 0, "enable_cpu_cache_flush": True}


@dataclasses.dataclass
class Task:
    name: str
    key: str
    func: tvm.tirx.PrimFunc
    calls: int
    default_us: float = 0.0
    default_trace: list | None = None
    trials: int = 0
    tunable: bool = True  # False: a Winograd transform, a scan's chunk or knobs, measured (for the choice) but not searched
    alternative: bool = False  # one way of several (Winograd/direct, a scan's chunk, knobs): recorded even untuned
    spec: str | None = None  # a hand-written kernel's knobs (edgecc.schedules.knobs.Spec JSON)

    @property
    def share_us(self) -> float:
        return self.default_us * self.calls


@dataclasses.dataclass
class TaskResult:
    name: str
    calls: int
    trials: int
    default_us: float
    best_us: float
    seconds: float


@dataclasses.dataclass
class TuneSummary:
    log: Path
    kernels: int
    already_tuned: int
    untunable: int
    results: list[TaskResult]
    seconds: float
    trials: int
    convs: dict = dataclasses.field(default_factory=dict)  # 3x3 conv -> Winograd/direct latencies, choice

    def estimated_speedup(self) -> float:
        before = sum(r.default_us * r.calls for r in self.results)
        after = sum(r.best_us * r.calls for r in self.results)
        return before / after if after else 1.0


def parse_duration(text: str) -> float:
    """``90s``, ``30m``, ``1.5h`` or plain seconds -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        seconds = float(text[:-1]) * units[text[-1]] if text and text[-1] in units else float(text)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise UserInputError(f"time budget {text!r}: expected a positive duration, e.g. 90s, 30m or 1.5h")
    return seconds


def _rpc_runner(tracker: str, key: str, evaluator: dict):
    import socket

    host, sep, port = tracker.rpartition(":")
    if not sep or not port.isdigit():
        raise UserInputError(f"--rpc-tracker {tracker!r}: expected HOST:PORT")
    try:  # fail in seconds, not after TVM's minute of retries
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as err:
        raise UserInputError(f"cannot reach the RPC tracker at {tracker}: {err}") from None
    try:
        summary = tvm.rpc.connect_tracker(host, int(port)).summary()
    except Exception as err:  # noqa: BLE001 -- any failure to reach it is the same for the user
        raise UserInputError(f"cannot reach the RPC tracker at {tracker}: {err}") from None
    keys = {k for k in summary.get("queue_info", {})}
    if key not in keys:
        raise UserInputError(f"RPC tracker {tracker} has no device with key '{key}' "
                             f"(keys: {', '.join(sorted(keys)) or 'none'}); start one with "
                             f"python -m tvm.exec.rpc_server --tracker {tracker} --key {key}")
    config = ms.runner.RPCConfig(tracker_host=host, tracker_port=int(port), tracker_key=key,
                                 session_timeout_sec=120)
    return ms.runner.RPCRunner(rpc_config=config, evaluator_config=ms.runner.EvaluatorConfig(**evaluator))


def _register_cross_export() -> None:
    """Builder-worker initializer: ``edgecc.tuning.export`` links a kernel into a shared library
    with the compiler in ``$EDGECC_TUNE_CXX`` (the target's cross compiler)."""
    from tvm.support.cc import cross_compiler

    @tvm.register_global_func("edgecc.tuning.export", override=True)
    def export(mod):
        path = os.path.join(tempfile.mkdtemp(prefix="edgecc-tune-"), "kernel.so")
        mod.export_library(path, fcompile=cross_compiler(os.environ["EDGECC_TUNE_CXX"]))
        return path


def _builder(preset, remote: bool):
    if remote:
        os.environ["EDGECC_TUNE_CXX"] = preset.require_toolchain()
        return ms.builder.LocalBuilder(f_export="edgecc.tuning.export", initializer=_register_cross_export)
    return ms.builder.LocalBuilder()


def _default_schedule(task: Task, preset) -> Schedule:
    """The default rule as a point of the tuning space (its decisions at their defaults)."""
    sch = Schedule(task.func)
    schedule_cpu(sch, fp32_lanes(preset), preset.arch != "riscv64", cpu.Choices(sample=True))
    if preset.arch in prefetch.PREFETCH_ARCHES:  # as a build and the search's candidates have it
        prefetch.prefetch_weights(sch)
    return sch


def tuning_kernels(mod, preset):
    """``(name, kernel, calls, spec)``: the kernels tuning measures for a model, and a log for it
    may hold (:func:`edgecc.pipeline.kernels_both_ways`), with the knobs of hand-written kernels
    opened up: a linear-attention kernel by its chunk variants (``name[chunk C]``), an INT8/INT4
    kernel by its knob candidates written on their own (``name[c4 rows6]``, ``spec`` their
    :class:`edgecc.schedules.knobs.Spec` JSON, else ``""``); the build picks among them by
    measurement. ``spec`` is None for the other kernels."""
    from edgecc.pipeline import kernels_both_ways

    lanes = fp32_lanes(preset)
    for name, func, calls in kernels_both_ways(mod, preset):
        chunks = ssm.chunk_variants(func, lanes)
        for chunk, variant in chunks.items():
            yield f"{name}[chunk {chunk}]", variant, calls, ""
        candidates = {} if chunks else knobs.variants(func)
        for label, variant in candidates.items():
            yield f"{name}[{label}]", variant, calls, knobs.spec_of(variant).to_json()
        if not chunks and not candidates:
            yield name, func, calls, None


def _report_variants(tasks: list[Task], progress) -> None:
    """Each hand-written kernel's measured chunks or knobs, and the ones a build with the log takes."""
    by_kernel: dict[str, dict[str, float]] = {}
    for task in tasks:
        if task.alternative and "[" in task.name and winograd.alternative(task.func) is None:
            base, _, label = task.name.partition("[")
            by_kernel.setdefault(base, {})[label.rstrip("]")] = task.default_us
    for base, times in sorted(by_kernel.items()):
        best = min(times, key=times.get)
        progress(f"{base}: {best} ({', '.join(f'{c}: {us:.1f} us' for c, us in times.items())})")


def _measure_defaults(tasks: list[Task], preset, target, builder, runner) -> None:
    """Default-schedule latency (us) of each task, one batch through the builder and runner."""
    schedules = [_default_schedule(task, preset) for task in tasks]
    built = builder.build([ms.builder.BuilderInput(sch.mod, target) for sch in schedules])
    futures = [runner.run([ms.runner.RunnerInput(b.artifact_path, "cpu",
                                                 ms.arg_info.ArgInfo.from_prim_func(task.func))])[0]
               if b.error_msg is None else None for b, task in zip(built, tasks)]
    for task, sch, future in zip(tasks, schedules, futures):
        task.default_trace = plain_json(sch.trace.as_json())
        result = future.result() if future is not None else None
        if result is None or result.error_msg is not None or not result.run_secs:
            task.default_us = float("nan")
            continue
        secs = [float(s) for s in result.run_secs]
        task.default_us = sum(secs) / len(secs) * 1e6


def allocate(tasks: list[Task], total: int) -> None:
    """Spread ``total`` trials over tasks by their share of the model's latency."""
    shares = sum(t.share_us for t in tasks) or 1.0
    for task in tasks:
        trials = round(total * task.share_us / shares)
        task.trials = trials if trials >= MIN_TRIALS else 0


def tune(model, target="host", *, log: str | os.PathLike, trials: int | None = None,
         time_budget: str | float | None = None, input_shapes=None, rpc_tracker: str | None = None,
         rpc_key: str | None = None, mcpu=None, mattr=None, vlen=None, cuda_arch=None,
         progress: Callable[[str], None] = print, seed: int = 0, cold_caches: bool = False) -> TuneSummary:
    """Tune a model's kernels for a target; records go to the JSON-lines log at ``log``.

    Parameters
    ----------
    model : path or onnx.ModelProto
    target : str
        A preset name (``edgecc targets``).
    log : path
        The tuning log, created if absent; its records are not retuned.
    trials : int, optional
        Measurements in all, spread by each task's share of the model's latency.
    time_budget : str or seconds, optional
        Wall time for the whole run (``30m``), spread the same way; with ``trials`` too, both
        limits hold.
    rpc_tracker, rpc_key : optional
        Measure on a device registered with a TVM RPC tracker (``HOST:PORT``) under ``KEY``.
    cold_caches : bool
        Measure each kernel's call with its weights flushed from the caches (:data:`COLD_EVALUATOR`),
        for models whose weights do not stay cached between inferences; default warm.
    """
    import onnx

    from edgecc.frontend import import_onnx, load_onnx
    from edgecc.targets import get_target

    start = time.monotonic()
    if trials is None and time_budget is None:
        raise UserInputError("give --trials N or --time-budget (e.g. 30m), or both")
    budget_s = parse_duration(time_budget) if isinstance(time_budget, str) else time_budget
    if (rpc_tracker is None) != (rpc_key is None):
        raise UserInputError("--rpc-tracker and --rpc-key go together")
    preset = get_target(target, mcpu=mcpu, mattr=mattr, vlen=vlen, cuda_arch=cuda_arch)
    import platform

    if rpc_tracker is None and preset.arch != platform.machine():
        raise UserInputError(f"tuning for {preset.name} ({preset.arch}) measures on the device: give "
                             f"--rpc-tracker HOST:PORT --rpc-key KEY of an RPC server running on it")
    if preset.device != "cpu":
        raise UserInputError(f"tuning supports CPU targets; {preset.name} builds use dlight's default "
                             f"GPU schedules, which have no tunable space in edgecc yet")
    if not isinstance(model, onnx.ModelProto):
        model = load_onnx(model)
    if not rpc_tracker:  # measure on every core, as the model runs: TVM's own default halves an
        # x86 machine's threads (it assumes hyper-threading), one thread on 2 vCPUs
        os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))
    evaluator = COLD_EVALUATOR if cold_caches else EVALUATOR
    runner = _rpc_runner(rpc_tracker, rpc_key, evaluator) if rpc_tracker else \
        ms.runner.LocalRunner(evaluator_config=ms.runner.EvaluatorConfig(**evaluator))

    header = new_header(preset, {"rpc_key": rpc_key, "tracker": rpc_tracker} if rpc_tracker else None)
    log_path = Path(log)
    if log_path.exists():
        tuning_log, _ = read_log(log_path)
        why = TuningLog(None, header).compatible_with(tuning_log.header)
        if why:
            raise UserInputError(f"tuning log {log_path} cannot take records for {preset.name}: {why}; "
                                 f"use another --log")
        if any(bool(r["measured"].get("enable_cpu_cache_flush")) != cold_caches for r in tuning_log.records.values()):
            # its times decide between alternatives (Winograd or direct, knobs): one way of measuring a log
            raise UserInputError(f"tuning log {log_path} was measured with {'warm' if cold_caches else 'cold'} "
                                 f"caches; use another --log, or {'leave out' if cold_caches else 'give'} "
                                 f"--cold-caches")
    else:
        tuning_log = TuningLog(log_path, header)
        tuning_log.write(log_path)  # exists from the start, even if no kernel gets a record

    mod, _, _ = import_onnx(model, input_shapes)
    # Eligible 3x3 convs both ways, Winograd and direct: the build takes the faster (choose_convs).
    tasks, untunable, seen = {}, 0, set()
    for name, func, calls, spec in tuning_kernels(mod, preset):
        func = func.with_attr("global_symbol", "main")  # MetaSchedule's builder exports it as main
        key = workload_key(func)
        if (name, key) in seen:  # the same kernel in both legalizations
            continue
        seen.add((name, key))
        if key in tasks:
            tasks[key].calls += calls
            continue
        tunable = has_decisions(_default_schedule(Task(name, key, func, calls), preset))
        alternative = spec is not None or winograd.alternative(func) is not None
        if not tunable and not alternative:
            untunable += 1
            continue
        tasks[key] = Task(name, key, func, calls, tunable=tunable, alternative=alternative, spec=spec or None)
    def done(task):  # a conv alternative's default-only record (0 trials) is searched on a rerun
        record = tuning_log.records.get(task.key)
        return record is not None and (record["trials"] > 0 or not task.tunable)

    already = [t for t in tasks.values() if done(t)]
    todo = [t for t in tasks.values() if not done(t)]
    progress(f"{len(seen)} kernels: {len(tasks)} tunable, {len(already)} already in {log_path}, "
             f"{untunable} with nothing to tune (elementwise/layout)")
    summary = TuneSummary(log_path, len(seen), len(already), untunable, [], 0.0, 0)
    if not todo:
        _report_convs(summary, mod, preset, progress)
        summary.seconds = time.monotonic() - start
        return summary

    target_obj = preset.tvm_target()
    builder = _builder(preset, rpc_tracker is not None)
    measured_at = time.monotonic()
    _measure_defaults(todo, preset, target_obj, builder, runner)
    todo = [t for t in todo if t.default_us == t.default_us]  # NaN: the default did not run
    per_trial_s = max(0.5, 1.5 * (time.monotonic() - measured_at) / max(len(todo), 1))
    todo.sort(key=lambda t: -t.share_us)
    total_trials = trials if trials is not None else 10**9
    if budget_s is not None:
        left = budget_s - (time.monotonic() - start)
        total_trials = min(total_trials, int(left / per_trial_s))
    _skip_losing_alternatives(todo, tuning_log, progress)
    allocate([t for t in todo if t.tunable], total_trials)
    for task in todo:  # a conv's kernels without trials: their default time decides Winograd or direct
        if not task.trials and task.alternative:
            _append(tuning_log, task, task.default_us, task.default_trace, 0,
                    measure_info(rpc_tracker, rpc_key, evaluator))
    _report_variants(todo, progress)
    planned = [t for t in todo if t.trials]
    total_share = sum(t.share_us for t in todo) or 1.0
    progress(f"tuning {len(planned)} tasks, {sum(t.trials for t in planned)} trials"
             + (f", budget {budget_s:.0f}s" if budget_s is not None else ""))

    cost_model = ms.cost_model.XGBModel(num_warmup_samples=16, verbose_eval=0)
    measure = measure_info(rpc_tracker, rpc_key, evaluator)
    for index, task in enumerate(planned, start=1):
        task_start = time.monotonic()
        n = task.trials
        if budget_s is not None:  # recompute from what is left and what a trial really costs
            left = budget_s - (task_start - start)
            share = task.share_us / (sum(t.share_us for t in planned[index - 1:]) or 1.0)
            n = min(n, int(left * share / per_trial_s))
            if n < MIN_TRIALS:
                progress(f"[{index}/{len(planned)}] {task.name}: time budget spent, left at its default")
                if task.alternative:  # its default still decides the conv's way
                    _append(tuning_log, task, task.default_us, task.default_trace, 0, measure)
                continue
        best_us, best_trace, n = _tune_task(task, n, preset, target_obj, builder, runner, cost_model, seed)
        spent = time.monotonic() - task_start
        per_trial_s = 0.5 * per_trial_s + 0.5 * spent / max(n, 1)
        if best_us is None or best_us >= task.default_us:
            best_us, best_trace = task.default_us, task.default_trace
        _append(tuning_log, task, best_us, best_trace, n, measure)
        summary.results.append(TaskResult(task.name, task.calls, n, task.default_us, best_us, spent))
        summary.trials += n
        elapsed = time.monotonic() - start
        remaining = sum(t.trials for t in planned[index:]) * per_trial_s
        if budget_s is not None:
            remaining = min(remaining, max(budget_s - elapsed, 0))
        progress(f"[{index}/{len(planned)}] {task.name} ({100 * task.share_us / total_share:.1f}% of latency, "
                 f"x{task.calls}): {n} trials, best {best_us:.1f} us (default {task.default_us:.1f} us, "
                 f"{task.default_us / best_us:.2f}x); {elapsed:.0f}s elapsed, ~{remaining:.0f}s left")
    _report_convs(summary, mod, preset, progress)
    summary.seconds = time.monotonic() - start
    return summary


# Search gains seen on this kind of CPU: a direct conv's kernel a few percent, a Winograd GEMM
# up to 2.2x. An alternative whose default sum is behind by more than its rival could close
# gets no trials (its default time is still recorded, and the build still compares).
DIRECT_GAIN, WINOGRAD_GAIN = 1.1, 3.0


def _skip_losing_alternatives(todo: list[Task], tuning_log: TuningLog, progress) -> None:
    """Spend no trials on a conv's alternative that cannot win: per conv, both ways' kernels
    summed (recorded latency, else default time)."""
    sums: dict[str, dict[str, float]] = {}
    todo_keys = {task.key for task in todo}
    for key, record in tuning_log.records.items():
        if key in todo_keys:
            continue
        conv_kernel = any(word in record["kernel"] for word in ("conv2d", "winograd"))
        found = winograd.alternative(parse_kernel(record["func"])) if conv_kernel else None
        if found is not None:
            sums.setdefault(found[0], {}).setdefault(found[1], 0.0)
            sums[found[0]][found[1]] += record["latency_us"]
    owners = {}
    for task in todo:
        found = winograd.alternative(task.func)
        if found is not None:
            owners[task.key] = found
            sums.setdefault(found[0], {}).setdefault(found[1], 0.0)
            sums[found[0]][found[1]] += task.default_us
    for task in todo:
        if task.key not in owners or not task.tunable:
            continue
        conv, way = owners[task.key]
        us = sums[conv]
        if len(us) < 2:
            continue
        if (way == "direct" and us["direct"] > DIRECT_GAIN * us["winograd"]) or \
                (way == "winograd" and us["winograd"] > WINOGRAD_GAIN * us["direct"]):
            task.tunable = False
            progress(f"{task.name}: not searched: conv {conv} takes {us['winograd']:.1f} us as Winograd, "
                     f"{us['direct']:.1f} us direct")


def measure_info(rpc_tracker, rpc_key, evaluator: dict) -> dict:
    """How a record's latency was measured (the record's ``measured``)."""
    measure = {"runner": f"rpc:{rpc_key}" if rpc_tracker else "local", **evaluator, "statistic": "mean"}
    if rpc_tracker is None:
        measure["threads"] = int(os.environ.get("TVM_NUM_THREADS", os.cpu_count() or 1))
    return measure


def _append(tuning_log: TuningLog, task: Task, best_us: float, trace, trials: int, measure: dict) -> None:
    record = {"workload": task.key, "kernel": task.name, "latency_us": round(best_us, 3),
              "default_us": round(task.default_us, 3), "trials": trials, "measured": measure,
              "trace": trace, "func": kernel_script(task.func)}
    if task.spec:
        record["knobs"] = task.spec
    tuning_log.append(record)


def _report_convs(summary: TuneSummary, mod, preset, progress) -> None:
    """Which way each 3x3 conv will build with the log: Winograd or direct, by measured latency."""
    from edgecc.pipeline import choose_convs, run_phases
    from edgecc.tuning import TuningRecords

    target = preset.tvm_target()
    records = TuningRecords([summary.log], preset)
    graph, _ = run_phases(mod, preset, target, until="graph")
    with target:
        choose_convs(graph, preset, target, records)
    summary.convs = records.convs
    for conv, choice in sorted(records.convs.items()):
        progress(f"conv {conv}: {choice['chosen']} (Winograd {choice['winograd_us']:.1f} us, "
                 f"direct {choice['direct_us']:.1f} us)")


def plain_json(obj):
    """A MetaSchedule trace's JSON (TVM arrays, maps, IntImm/FloatImm) as plain Python values."""
    if isinstance(obj, (str, bool, int, float)) or obj is None:
        return obj
    if hasattr(obj, "items"):
        return {str(k): plain_json(v) for k, v in obj.items()}
    if isinstance(obj, tvm.tirx.IntImm):
        return int(obj.value)
    if isinstance(obj, tvm.tirx.FloatImm):
        return float(obj.value)
    if hasattr(obj, "__len__") and hasattr(obj, "__getitem__"):
        return [plain_json(x) for x in obj]
    return str(obj)


def _tune_task(task: Task, trials: int, preset, target, builder, runner, cost_model, seed):
    """MetaSchedule search on one task: (best us, best trace JSON, candidates measured); the first
    two are None when nothing ran. The search stops early once the space is exhausted."""
    mod = tvm.IRModule({"main": task.func})
    context = ms.TuneContext(
        mod=mod, target=target, space_generator=space_generator(preset),
        search_strategy=ms.search_strategy.EvolutionarySearch(
            population_size=64, init_min_unmeasured=16, genetic_num_iters=2, max_fail_count=3),
        task_name=task.name, rand_state=seed, num_threads=1)
    database = ms.database.MemoryDatabase()
    with tempfile.TemporaryDirectory(prefix="edgecc-tune-") as work_dir:
        ms.tune_tasks(tasks=[context], task_weights=[1.0], work_dir=work_dir, max_trials_global=trials,
                      num_trials_per_iter=min(trials, 16), builder=builder, runner=runner, database=database,
                      cost_model=cost_model, task_scheduler="round-robin")
    measured = len(database.get_all_tuning_records())
    best = database.get_top_k(database.commit_workload(mod), 1)
    if not best or not best[0].run_secs:
        return None, None, measured
    secs = [float(s) for s in best[0].run_secs]
    return sum(secs) / len(secs) * 1e6, plain_json(best[0].trace.as_json()), measured
