"""``make demo``: compile squeezenet (seeded random weights) for arm and riscv, run both under
qemu-user, and compare with ONNX Runtime on the same input."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import onnx

import edgecc
from edgecc import zoo
from edgecc.errors import EdgeccError


def main(outdir: str = "demo-out", model_name: str = "squeezenet") -> int:
    import onnxruntime as ort

    out = Path(outdir)
    out.mkdir(exist_ok=True)
    model = zoo.light_model(model_name, seed=0)
    model_path = out / f"{model_name}.onnx"
    onnx.save(model, str(model_path))
    inputs = zoo.sample_inputs(model, seed=0)
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    reference = session.run(None, inputs)
    print(f"model: {model_path} ({model_name}, seeded random weights), input "
          + ", ".join(f"{k}{list(v.shape)}" for k, v in inputs.items()))

    for target in ("arm", "riscv"):
        start = time.perf_counter()
        bundle = edgecc.compile(model_path, target, log=lambda line: print(f"  {line}"))
        path = bundle.save(out / f"{model_name}-{target}")
        build_s = time.perf_counter() - start
        timing = {}
        outputs = bundle.run(inputs, timing=timing)
        got = next(iter(outputs.values()))
        err = float(np.max(np.abs(got - reference[0])))
        ok = np.allclose(got, reference[0], rtol=1e-4, atol=1e-4)
        runner = " ".join(bundle.command()[:-1]) or "native"
        print(f"{target:6s} built in {build_s:5.1f}s -> {path}/  ran under {runner}: "
              f"{timing['median_ms']:.1f} ms, max |edgecc - onnxruntime| = {err:.2e} "
              f"({'agrees' if ok else 'DISAGREES'} at rtol=atol=1e-4), "
              f"top-1 {int(got.argmax())} vs {int(reference[0].argmax())}")
        if not ok:
            return 1
    print(f"bundles are in {out.resolve()}/ ; run one with: edgecc run {out}/{model_name}-arm "
          f"--input {next(iter(inputs))}=FILE.npy")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(*sys.argv[1:]))
    except EdgeccError as err:
        print(f"edgecc: error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
