"""Issue 5's table: edgecc with the shipped tuning logs against ONNX Runtime, same run.

    .venv/bin/python bench/tuned.py [--models squeezenet,...] [--threads 2] [--rounds 5] [--repeat 10]
                                    [--logs bench/tuning-logs/<target key>]

For each model: how many kernels the logs scheduled, then the median of interleaved rounds
for ONNX Runtime and edgecc without and with the logs (each edgecc build interleaved with
its own ONNX Runtime rounds), and the ratios edgecc / ORT (below 1 is faster). Ends with
the geometric means. The logs come from ``bench/tune_packs.py``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import edgecc
from edgecc.bench import measure

from default_schedules import load
from tune_packs import MODELS, pack_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--logs", default=str(pack_dir(Path(__file__).parent / "tuning-logs")))
    args = parser.parse_args()
    t = args.threads
    print(f"{'model':<14}{'from log':>9}{'ORT ms':>9}{'untuned ms':>11}{'ratio':>7}{'tuned ms':>10}{'ratio':>7}",
          flush=True)
    untuned_ratios, tuned_ratios = [], []
    for name in args.models.split(","):
        proto = load(name)
        untuned = edgecc.compile(proto, "host")
        log = Path(args.logs) / f"{name}.jsonl"
        tuned = edgecc.compile(proto, "host", tuning_log=[log] if log.exists() else [])
        used = tuned.manifest.get("tuning_records") or {"from_log": 0, "fallback": 0}
        a = measure(untuned, proto, threads=t, rounds=args.rounds, repeat=args.repeat)
        b = measure(tuned, proto, threads=t, rounds=args.rounds, repeat=args.repeat)
        untuned_ratios.append(a.ratio)
        tuned_ratios.append(b.ratio)
        print(f"{name:<14}{used['from_log']:>4}/{used['from_log'] + used['fallback']:<4}{b.peer_ms:>9.2f}"
              f"{a.edgecc_ms:>11.2f}{a.ratio:>6.2f}x{b.edgecc_ms:>10.2f}{b.ratio:>6.2f}x", flush=True)
    geo = lambda r: math.exp(sum(map(math.log, r)) / len(r))  # noqa: E731
    print(f"geomean ratio at {t} threads: untuned {geo(untuned_ratios):.2f}x, tuned {geo(tuned_ratios):.2f}x")


if __name__ == "__main__":
    main()
