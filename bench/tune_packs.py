"""Regenerate the shipped tuning log packs: one log per benchmark model, tuned on this machine.

    .venv/bin/python bench/tune_packs.py [--models squeezenet,...] [--time-budget 5m] [--out DIR]

Writes ``bench/tuning-logs/<target key>/<model>.jsonl`` (target key with ``/`` as ``_``, e.g.
``x86_64_rocketlake_-_512``): the machine kind is part of the folder name because a log's
records are used only on a matching target. Kernels already in a log are not retuned; delete
the log to start over. Prints per model: trials, wall time, and the tuned kernels' speed-up
over the default rules. ``bench/tuned.py`` measures the result against ONNX Runtime.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from edgecc.targets import get_target
from edgecc.tuning import tune
from edgecc.tuning.log import canonical_target, target_key

from default_schedules import load

MODELS = ("squeezenet", "shufflenet", "resnet50", "inception_v1", "encoder")


def pack_dir(root: Path) -> Path:
    return root / target_key(canonical_target(get_target("host"))).replace("/", "_")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--time-budget", default="5m", help="per model (default 5m)")
    parser.add_argument("--trials", type=int, default=None, help="per model (default: no limit but time)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "tuning-logs"))
    args = parser.parse_args()
    folder = pack_dir(Path(args.out))
    for name in args.models.split(","):
        start = time.perf_counter()
        summary = tune(load(name), "host", log=folder / f"{name}.jsonl", trials=args.trials,
                       time_budget=args.time_budget, progress=lambda line: print(f"  {line}", flush=True))
        print(f"{name}: {summary.trials} trials, {time.perf_counter() - start:.0f}s, tuned kernels "
              f"{summary.estimated_speedup():.2f}x faster than default rules -> {summary.log}", flush=True)


if __name__ == "__main__":
    main()
