"""Build time and bundle size per model and target, and the runtime cache build time per arch.

    .venv/bin/python bench/build_report.py [--models squeezenet,resnet50] [--targets host,arm,riscv]
                                           [--cold-runtime]

``--cold-runtime`` builds each arch's runtime in a fresh temporary cache first and
reports how long that took (the one-time cost a new machine pays).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import edgecc
from edgecc import zoo
from edgecc.runtime import ensure_runtime
from edgecc.targets import get_target


def folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="squeezenet,shufflenet,inception_v1,resnet50")
    parser.add_argument("--targets", default="host,arm,riscv,cuda,jetson-orin")
    parser.add_argument("--cold-runtime", action="store_true")
    args = parser.parse_args()
    targets = args.targets.split(",")

    if args.cold_runtime:
        with tempfile.TemporaryDirectory() as cache:
            os.environ["EDGECC_CACHE_DIR"] = cache
            for arch in sorted({get_target(t).arch for t in targets}):
                start = time.perf_counter()
                ensure_runtime(arch)
                print(f"runtime cache {arch:8s} cold build {time.perf_counter() - start:6.1f} s")
            del os.environ["EDGECC_CACHE_DIR"]

    print(f"{'model':14s} {'target':12s} {'build s':>8s} {'model.so MB':>12s} {'bundle MB':>10s}")
    with tempfile.TemporaryDirectory() as out:
        for name in args.models.split(","):
            model = zoo.light_model(name)
            for target in targets:
                start = time.perf_counter()
                bundle = edgecc.compile(model, target)
                path = bundle.save(Path(out) / f"{name}-{target}")
                seconds = time.perf_counter() - start
                print(f"{name:14s} {target:12s} {seconds:8.1f} {(path / 'model.so').stat().st_size / 1e6:12.1f} "
                      f"{folder_mb(path):10.1f}", flush=True)


if __name__ == "__main__":
    main()
