"""``edgecc bench``: latency of a host build against ONNX Runtime, measured side by side.

Both run on the same seeded inputs with the same thread count. Rounds alternate
which runs first; each round reports a median over ``repeat`` runs, and the
result is the median of the round medians (the machine is shared and noisy).
``per_op`` times each kernel call of one run through the Relax VM's instrument hook.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time

import numpy as np

from edgecc.errors import UserInputError


@dataclasses.dataclass
class BenchResult:
    """Medians in milliseconds; ``ratio`` is edgecc / peer (below 1 means edgecc is faster)."""

    edgecc_ms: float
    peer_ms: float | None
    threads: int
    rounds: int
    repeat: int
    per_op: list[tuple[str, int, float]] | None = None  # (kernel, calls, total ms)

    @property
    def ratio(self) -> float | None:
        return self.edgecc_ms / self.peer_ms if self.peer_ms else None


def onnxruntime_median(session, inputs, repeat: int) -> float:
    session.run(None, inputs)  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        session.run(None, inputs)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def onnxruntime_session(model, threads: int, **config: str):
    """An ONNX Runtime CPU session on ``threads`` intra-op threads; ``config`` sets session
    config entries (e.g. ``{"session.qdq_matmulnbits_accuracy_level": "4"}``)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    for key, value in config.items():
        options.add_session_config_entry(key, value)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def bundle_runner(bundle, inputs: dict, threads: int, repeat: int):
    """A callable timing one round of ``bundle`` (median ms of ``repeat`` runs)."""
    def run() -> float:
        timing = {}
        bundle.run(inputs, repeat=repeat, threads=threads, timing=timing)
        return timing["median_ms"]
    return run


def session_runner(session, inputs: dict, repeat: int):
    """A callable timing one round of an ONNX Runtime session (median ms of ``repeat`` runs)."""
    return lambda: onnxruntime_median(session, inputs, repeat)


def interleaved(runners: dict, rounds: int) -> dict[str, float]:
    """Median over ``rounds`` of each runner's round time, the order rotating every round so
    that none always runs first (or right after another)."""
    samples = {name: [] for name in runners}
    names = list(runners)
    for index in range(rounds):
        for name in names[index % len(names):] + names[:index % len(names)]:
            samples[name].append(runners[name]())
    return {name: statistics.median(values) for name, values in samples.items()}


def use_threads(threads: int) -> None:
    """Size this process's TVM thread pool. Without it TVM takes ``TVM_NUM_THREADS``, else half
    the hardware threads on x86 (it assumes hyper-threading): one thread on a 2-vCPU machine."""
    import tvm

    tvm.get_global_func("runtime.config_threadpool")(1, int(threads))  # 1: TVM's default affinity


def per_op_times(bundle, inputs: dict[str, np.ndarray], threads: int | None = None) -> list[tuple[str, int, float]]:
    """(kernel, calls, total ms) for one run of ``main``, slowest first (host bundles only).

    Runs in this process, on ``threads`` threads (default: every core)."""
    import tvm
    from tvm import relax

    use_threads(threads or os.cpu_count() or 1)

    vm = relax.VirtualMachine(tvm.runtime.load_module(str(bundle.path / "model.so")), tvm.cpu())
    args = [tvm.runtime.tensor(a) for a in bundle.check_inputs(inputs)]
    vm["main"](*args)  # warm-up
    totals: dict[str, list] = {}
    started: dict[str, float] = {}

    def instrument(func, name, before_run, ret_value, *call_args):
        if before_run:
            started[name] = time.perf_counter()
        else:
            entry = totals.setdefault(name, [0, 0.0])
            entry[0] += 1
            entry[1] += (time.perf_counter() - started.pop(name)) * 1e3

    vm.set_instrument(instrument)
    vm["main"](*args)
    return sorted(((name, calls, ms) for name, (calls, ms) in totals.items()), key=lambda row: -row[2])


def copy_bandwidth(nbytes: int, threads: int, repeat: int = 10) -> float:
    """GB/s of a parallel, vectorised float32 copy (read + write) of ``nbytes`` on ``threads``
    threads."""
    import tvm

    from edgecc.targets import get_target

    n = nbytes // 4 // 1024 * 1024
    src = tvm.te.placeholder((n // 1024, 1024), "float32", name="src")
    dst = tvm.te.compute(src.shape, lambda i, j: src[i, j], name="dst")
    func = tvm.te.create_prim_func([src, dst]).with_attr("global_symbol", "copy")
    sch = tvm.s_tir.Schedule(func)
    i, j = sch.get_loops(sch.get_sblock("dst"))
    sch.parallel(i)
    sch.vectorize(j)
    lib = tvm.compile(sch.mod, target=get_target("host").tvm_target()).jit()
    use_threads(threads)
    a = tvm.runtime.tensor(np.ones((n // 1024, 1024), np.float32))
    b = tvm.runtime.tensor(np.zeros((n // 1024, 1024), np.float32))
    lib["copy"](a, b)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        lib["copy"](a, b)
        times.append(time.perf_counter() - start)
    return 2 * n * 4 / statistics.median(times) / 1e9


def benchmark(model, target: str = "host", *, vs: str | None = "onnxruntime", threads: int | None = None,
              rounds: int = 5, repeat: int = 10, per_op: bool = False, input_shapes=None,
              tuning_log=None) -> BenchResult:
    """Compile ``model`` for the host and time it against ``vs`` on the same inputs.

    Parameters
    ----------
    model : path or onnx.ModelProto
    target : str
        Must be a preset that runs natively here (``host``): timing under qemu means nothing.
    vs : {"onnxruntime", None}
        The peer measured in the same run.
    threads : int, optional
        Threads for both (default: all cores).
    rounds, repeat : int
        Interleaved rounds, and timed runs per round.
    per_op : bool
        Also time each kernel.
    tuning_log : path or list of paths, optional
        Tuning logs for the build (as ``edgecc build --tuning-log``).
    """
    import onnx

    import edgecc
    from edgecc.frontend import load_onnx

    if target != "host":
        raise UserInputError("bench measures on this machine: use --target host")
    if vs not in (None, "onnxruntime"):
        raise UserInputError(f"unknown peer {vs!r}; supported: onnxruntime")
    if rounds < 1 or repeat < 1:
        raise UserInputError("--rounds and --repeat must be at least 1")
    proto = model if isinstance(model, onnx.ModelProto) else load_onnx(model)
    bundle = edgecc.compile(proto, target, input_shapes=input_shapes, tuning_log=tuning_log)
    return measure(bundle, proto, vs=vs, threads=threads, rounds=rounds, repeat=repeat, per_op=per_op)


def measure(bundle, proto, *, vs: str | None = "onnxruntime", threads: int | None = None, rounds: int = 5,
            repeat: int = 10, per_op: bool = False) -> BenchResult:
    """Time a host ``bundle`` built from ``proto`` against ``vs``, interleaved round by round."""
    threads = threads or os.cpu_count() or 1
    shapes = {spec["name"]: spec["shape"] for spec in bundle.inputs}
    rng = np.random.default_rng(0)
    inputs = {spec["name"]: rng.standard_normal(shapes[spec["name"]]).astype(spec["dtype"])
              for spec in bundle.inputs}

    session = None
    if vs == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])

    ours, theirs = [], []
    for index in range(rounds):
        def run_edgecc():
            timing = {}
            bundle.run(inputs, repeat=repeat, threads=threads, timing=timing)
            ours.append(timing["median_ms"])

        def run_peer():
            if session is not None:
                theirs.append(onnxruntime_median(session, inputs, repeat))

        for step in ((run_edgecc, run_peer) if index % 2 == 0 else (run_peer, run_edgecc)):
            step()
    return BenchResult(statistics.median(ours), statistics.median(theirs) if theirs else None, threads,
                       rounds, repeat, per_op_times(bundle, inputs, threads) if per_op else None)
