"""Issue 4's table: untuned edgecc builds against ONNX Runtime, 1 and 2 threads, same run.

    .venv/bin/python bench/default_schedules.py [--models squeezenet,encoder,...] [--threads 1,2]
                                                [--rounds 5] [--repeat 10] [--per-op MODEL]

Models: the onnx wheel's light models (seeded random weights) and a 4-layer
transformer encoder (d_model 256, seq 128, edgecc.zoo.encoder_model). For each
model: compile time of the host build, then per thread count the median of
interleaved rounds for edgecc and ONNX Runtime and their ratio (edgecc / ORT,
below 1 is faster). Ends with the geometric mean of the ratios per thread count.
``--per-op MODEL`` adds that model's kernels by time.
"""

from __future__ import annotations

import argparse
import math
import time

import edgecc
from edgecc import zoo
from edgecc.bench import measure

DEFAULT_MODELS = ("squeezenet", "shufflenet", "inception_v1", "resnet50", "encoder", "inception_v2",
                  "densenet121", "bvlc_alexnet", "zfnet512", "vgg19")


def load(name: str):
    return zoo.encoder_model() if name == "encoder" else zoo.light_model(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--per-op", default=None, metavar="MODEL")
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")]

    header = f"{'model':<14}{'compile s':>10}" + "".join(
        f"{f'ORT {t}t ms':>13}{f'edgecc {t}t ms':>16}{f'ratio {t}t':>10}" for t in threads)
    print(header, flush=True)
    ratios: dict[int, list[float]] = {t: [] for t in threads}
    for name in args.models.split(","):
        proto = load(name)
        start = time.perf_counter()
        bundle = edgecc.compile(proto, "host")
        compile_s = time.perf_counter() - start
        row = f"{name:<14}{compile_s:>10.1f}"
        for t in threads:
            result = measure(bundle, proto, threads=t, rounds=args.rounds, repeat=args.repeat,
                             per_op=(name == args.per_op and t == threads[-1]))
            ratios[t].append(result.ratio)
            row += f"{result.peer_ms:>13.2f}{result.edgecc_ms:>16.2f}{result.ratio:>9.2f}x"
            if result.per_op:
                per_op = result.per_op
        print(row, flush=True)
        if name == args.per_op:
            total = sum(ms for _, _, ms in per_op)
            for kernel, calls, ms in per_op[:20]:
                print(f"    {ms:9.3f} ms {100 * ms / total:5.1f}%  x{calls:<3} {kernel}")
    print("geomean ratio: " + ", ".join(
        f"{t} thread{'s' if t > 1 else ''} {math.exp(sum(map(math.log, r)) / len(r)):.2f}x"
        for t, r in ratios.items() if r))


if __name__ == "__main__":
    main()
