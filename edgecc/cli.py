"""``edgecc`` command line: parses arguments and calls :mod:`edgecc.api`; no logic of its own."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edgecc.errors import EdgeccError, UserInputError


def _input_shape(text: str) -> tuple[str, list[int]]:
    name, sep, dims = text.rpartition("=")
    try:
        if not sep or not name:
            raise ValueError
        return name, [int(d) for d in dims.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=D0,D1,..., got {text!r}") from None


def _named_file(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=FILE.npy, got {text!r}")
    return name, path


def _add_target_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", "-t", default="host",
                        help="target preset (see `edgecc targets`; default: host)")
    parser.add_argument("--mcpu", help="override the preset's CPU (e.g. cortex-a55)")
    parser.add_argument("--mattr", action="append", metavar="FEATURE",
                        help="add (+x) or remove (-x) a CPU feature; repeatable")
    parser.add_argument("--vlen", type=int, help="RISC-V vector length in bits (riscv targets)")
    parser.add_argument("--cuda-arch", help="CUDA arch, e.g. sm_87 (default) or sm_90")


def cmd_build(args) -> int:
    from edgecc.api import compile

    log = (lambda line: print(f"edgecc: {line}", file=sys.stderr)) if args.verbose else None
    bundle = compile(args.model, args.target, input_shapes=dict(args.input_shape or []),
                     mcpu=args.mcpu, mattr=args.mattr, vlen=args.vlen, cuda_arch=args.cuda_arch,
                     tuning_log=args.tuning_log, sparsity=args.sparsity, quantize=args.quantize,
                     group_size=args.group_size, int8_activations=args.int8_activations,
                     calibration=args.calibration, log=log,
                     warn=lambda line: print(f"edgecc: {line}", file=sys.stderr))
    outdir = bundle.save(args.output or Path(args.model).stem + f"-{bundle.target['name']}")
    size = sum(f.stat().st_size for f in outdir.rglob("*") if f.is_file())
    print(f"built {outdir} ({bundle.target['name']}, {bundle.target['arch']}, {size / 1e6:.1f} MB)")
    quantization = bundle.manifest.get("quantization") or {}
    if quantization.get("mode") == "int8":
        kernels = sum(layer["kernel"] is not None for layer in quantization["int8_layers"])
        print(f"int8: {quantization['weights_quantized']} weights quantized, {kernels} matmuls run by INT8 kernels")
    if quantization.get("mode") == "int4":
        kernels = sum(layer["kernel"] is not None for layer in quantization["int4_layers"])
        print(f"int4: {quantization['weights_quantized']} weights quantized in groups of "
              f"{quantization['group_size']}, {kernels} run by INT4 kernels")
    tuned = bundle.manifest.get("tuning_records") or {}
    if tuned:
        print(f"tuning logs: {tuned['from_log']} kernels from records, {tuned['fallback']} by default rules")
        for note in tuned["notes"]:
            print(f"  {note}")
    return 0


def cmd_tune(args) -> int:
    from edgecc.tuning import tune

    summary = tune(args.model, args.target, log=args.log, trials=args.trials, time_budget=args.time_budget,
                   input_shapes=dict(args.input_shape or []), rpc_tracker=args.rpc_tracker,
                   rpc_key=args.rpc_key, mcpu=args.mcpu, mattr=args.mattr, vlen=args.vlen,
                   cuda_arch=args.cuda_arch, cold_caches=args.cold_caches,
                   progress=lambda line: print(f"edgecc tune: {line}", flush=True))
    print(f"{summary.log}: {len(summary.results)} kernels tuned in {summary.trials} trials, "
          f"{summary.seconds:.0f}s; their time {summary.estimated_speedup():.2f}x faster than the default rules "
          f"(weighted by calls)")
    return 0


def cmd_logs(args) -> int:
    from edgecc.tuning import logs

    needs = {"merge": "output", "export": "output", "import": "into"}.get(args.action)
    if needs and getattr(args, needs) is None:
        raise UserInputError(f"edgecc logs {args.action} needs --{needs}")

    if args.action == "show":
        for path in args.logs:
            logs.show(path)
    elif args.action == "merge":
        logs.merge(args.logs, args.output)
    elif args.action == "export":
        logs.export(args.logs[0], args.output, model=args.model, input_shapes=dict(args.input_shape or []))
    elif args.action == "import":
        _, rejected = logs.import_log(args.logs[0], args.into)
        return 1 if rejected else 0
    elif args.action == "verify":
        return 1 if sum(logs.verify(path) for path in args.logs) else 0
    return 0


def cmd_prune(args) -> int:
    from edgecc.prune import prune_file

    pruned = prune_file(args.model, args.output, args.sparsity, args.block, args.min_size)
    for entry in pruned:
        print(f"{entry.name} ({entry.op} {entry.shape}): {entry.sparsity:.1%} zeros")
    print(f"pruned {len(pruned)} weights to {args.sparsity:.0%} in {args.block} blocks -> {args.output}")
    print("note: magnitude pruning without fine-tuning changes the model's outputs; "
          "check its accuracy on your data")
    return 0


def cmd_run(args) -> int:
    import numpy as np

    from edgecc.bundle import load, output_file_name

    bundle = load(args.bundle)
    inputs = {}
    for name, path in args.input or []:
        try:
            inputs[name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise UserInputError(f"cannot read input {name!r} from {path}: {err}") from None
    timing = {}
    outputs = bundle.run(inputs, repeat=args.repeat, threads=args.threads, timing=timing)
    outdir = Path(args.output_dir)
    outdir.mkdir(parents=True, exist_ok=True)
    for name, array in outputs.items():
        np.save(outdir / output_file_name(name), array)
        print(f"{name}: {list(array.shape)} {array.dtype} -> {outdir / output_file_name(name)}")
    print(f"latency: median {timing['median_ms']:.3f} ms over {timing['runs']} runs")
    return 0


def cmd_inspect(args) -> int:
    from edgecc.frontend import inspect_model

    info = inspect_model(args.model)
    if args.json:
        import dataclasses

        print(json.dumps(dataclasses.asdict(info), indent=2, default=list))
        return 0
    print(f"model: {info.path}")
    print("opsets: " + ", ".join(f"{d} {v}" for d, v in info.opsets.items()))
    for kind, specs in (("input", info.inputs), ("output", info.outputs)):
        for spec in specs:
            print(f"{kind}: {spec.name} {list(spec.shape)} {spec.dtype}")
    print(f"params: {info.num_params:,} values, {info.params_bytes / 1e6:.2f} MB")
    print("ops: " + ", ".join(f"{op} x{n}" for op, n in info.op_histogram.items()))
    if info.unsupported:
        print("unsupported: " + "; ".join(info.unsupported))
        return 2
    print("unsupported: none")
    return 0


def cmd_bench(args) -> int:
    from edgecc.bench import benchmark

    result = benchmark(args.model, args.target, vs=args.vs, threads=args.threads, rounds=args.rounds,
                       repeat=args.repeat, per_op=args.per_op, input_shapes=dict(args.input_shape or []),
                       tuning_log=args.tuning_log)
    print(f"{Path(args.model).name}: {result.threads} threads, median of {result.rounds} interleaved rounds "
          f"x {result.repeat} runs")
    print(f"  edgecc       {result.edgecc_ms:10.3f} ms")
    if result.peer_ms is not None:
        print(f"  {args.vs:<12} {result.peer_ms:10.3f} ms")
        print(f"  ratio        {result.ratio:10.2f}x  (edgecc / {args.vs}; below 1 is faster)")
    if result.per_op:
        total = sum(ms for _, _, ms in result.per_op)
        print(f"  per kernel (one run, {total:.2f} ms in kernels):")
        for name, calls, ms in result.per_op[:args.top]:
            print(f"    {ms:9.3f} ms {100 * ms / total:5.1f}%  x{calls:<3d} {name}")
    return 0


def cmd_targets(args) -> int:
    from edgecc.targets import describe_targets

    for name, description in describe_targets():
        print(f"{name:<14} {description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgecc", description="Compile ONNX models into deployable "
                                     "libraries for edge targets (ARM NEON, RISC-V RVV, CUDA, host).")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    build = sub.add_parser("build", help="compile MODEL.onnx into a bundle folder")
    build.add_argument("model", metavar="MODEL.onnx")
    _add_target_options(build)
    build.add_argument("-o", "--output", metavar="OUTDIR", help="bundle folder (default: <model>-<target>)")
    build.add_argument("--input-shape", action="append", type=_input_shape, metavar="NAME=D0,D1,...",
                       help="bind an input's shape (symbolic dims); repeatable")
    build.add_argument("--tuning-log", action="append", metavar="PATH",
                       help="tuning log from `edgecc tune`, or a folder of them; repeatable")
    build.add_argument("--sparsity", choices=["auto", "off"], default="auto",
                       help="auto (default): sparse constant matmul/1x1-conv weights become fused sparse "
                       "kernels where the target's measured threshold says they run faster; off: all dense")
    build.add_argument("--quantize", choices=["int4", "int8"],
                       help="int4: 4-bit weight-only quantization of MatMul/Gemm weights, per group of "
                       "--group-size inputs, run by INT4 kernels; int8: static int8 quantization of "
                       "MatMul/Gemm/Conv (weights per channel, activations calibrated on --calibration)")
    build.add_argument("--calibration", metavar="DIR",
                       help="--quantize int8's calibration data: one .npy per sample (one-input models) or one "
                       "subfolder per sample with <input>.npy files (default: seeded random inputs, with a warning)")
    build.add_argument("--group-size", type=int, default=32, metavar="N",
                       help="inputs per scale and zero point for --quantize int4: 16, 32 (default), 64, 128, 256")
    build.add_argument("--int8-activations", action="store_true",
                       help="with --quantize int4: quantize activations to int8 per group at run time "
                       "(ONNX Runtime's accuracy level 4; VNNI dot products where the CPU has them): "
                       "faster, less exact")
    build.add_argument("--verbose", "-v", action="store_true", help="print each step")
    build.set_defaults(func=cmd_build)

    tune = sub.add_parser("tune", help="auto-tune a model's kernels (MetaSchedule, XGBoost) into a log")
    tune.add_argument("model", metavar="MODEL.onnx")
    _add_target_options(tune)
    tune.add_argument("--log", required=True, metavar="PATH",
                      help="tuning log (JSON lines); created if absent, kernels already in it are skipped")
    tune.add_argument("--trials", type=int, help="measurements in all, spread by each kernel's share of latency")
    tune.add_argument("--time-budget", metavar="DURATION", help="wall time for the run, e.g. 30m, 1.5h, 90s")
    tune.add_argument("--rpc-tracker", metavar="HOST:PORT", help="measure on a device behind a TVM RPC tracker")
    tune.add_argument("--rpc-key", metavar="KEY", help="the device's key at the tracker")
    tune.add_argument("--cold-caches", action="store_true",
                      help="time each kernel with its weights flushed from the caches, as in a model whose "
                           "weights do not stay cached between runs (default: warm)")
    tune.add_argument("--input-shape", action="append", type=_input_shape, metavar="NAME=D0,D1,...")
    tune.set_defaults(func=cmd_tune)

    logs = sub.add_parser("logs", help="show, merge, export, import or verify tuning logs")
    logs.add_argument("action", choices=["show", "merge", "export", "import", "verify"],
                      help="show: records; merge: best per kernel into -o; export: a model's records (--model) "
                      "into -o; import: validate an untrusted log and merge it --into a log; verify: rebuild "
                      "tuned kernels and compare with the untuned build")
    logs.add_argument("logs", nargs="+", metavar="LOG")
    logs.add_argument("-o", "--output", metavar="PATH", help="output log (merge, export)")
    logs.add_argument("--into", metavar="PATH", help="log to import into (import)")
    logs.add_argument("--model", metavar="MODEL.onnx", help="export only this model's kernels (export)")
    logs.add_argument("--input-shape", action="append", type=_input_shape, metavar="NAME=D0,D1,...")
    logs.set_defaults(func=cmd_logs)

    prune = sub.add_parser("prune", help="magnitude-prune a model's weights (to try sparse kernels)")
    prune.add_argument("model", metavar="MODEL.onnx")
    prune.add_argument("--sparsity", type=float, required=True, help="fraction of each weight to zero, e.g. 0.9")
    prune.add_argument("--block", default="1x1", metavar="RxC",
                       help="prune R output x C input channels together (default 1x1; 4x1 runs fastest)")
    prune.add_argument("--min-size", type=int, default=1024, metavar="N", help="leave weights under N values dense")
    prune.add_argument("-o", "--output", required=True, metavar="PRUNED.onnx")
    prune.set_defaults(func=cmd_prune)

    run = sub.add_parser("run", help="run a bundle on .npy inputs (under qemu-user for other arches)")
    run.add_argument("bundle", metavar="OUTDIR")
    run.add_argument("--input", "-i", action="append", type=_named_file, metavar="NAME=FILE.npy")
    run.add_argument("--output-dir", default=".", help="where <output name>.npy files go (default: .)")
    run.add_argument("--repeat", type=int, default=1, help="timed runs (default 1)")
    run.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    run.set_defaults(func=cmd_run)

    inspect = sub.add_parser("inspect", help="inputs, outputs, ops and unsupported ops of a model")
    inspect.add_argument("model", metavar="MODEL.onnx")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    inspect.set_defaults(func=cmd_inspect)

    bench = sub.add_parser("bench", help="latency on this machine against ONNX Runtime, side by side")
    bench.add_argument("model", metavar="MODEL.onnx")
    bench.add_argument("--target", "-t", default="host", help="host (timing under qemu means nothing)")
    bench.add_argument("--vs", choices=["onnxruntime"], default="onnxruntime", help="peer measured in the same run")
    bench.add_argument("--threads", type=int, help="threads for both (default: all cores)")
    bench.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    bench.add_argument("--repeat", type=int, default=10, help="timed runs per round (default 10)")
    bench.add_argument("--per-op", action="store_true", help="list kernels by time")
    bench.add_argument("--top", type=int, default=15, help="kernels listed with --per-op (default 15)")
    bench.add_argument("--input-shape", action="append", type=_input_shape, metavar="NAME=D0,D1,...")
    bench.add_argument("--tuning-log", action="append", metavar="PATH", help="tuning log(s) for the build")
    bench.set_defaults(func=cmd_bench)

    targets = sub.add_parser("targets", help="list target presets")
    targets.set_defaults(func=cmd_targets)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except EdgeccError as err:
        if args.debug:
            raise
        print(f"edgecc: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("edgecc: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
