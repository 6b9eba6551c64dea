"""``make demo``: compile squeezenet (seeded random weights) for arm and riscv, run both under
qemu-user, and compare with ONNX Runtime on the same input.

``make demo-hybrid`` (``python -m edgecc.demo hybrid``): the same for the hybrid Mamba-2 /
attention model of ``examples/hybrid_mamba.py`` (a small config, so qemu is quick): prefill
of 64 tokens, then one decode step fed the prefill's states, on host, arm and riscv."""

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


def hybrid(outdir: str = "demo-out", steps: int = 64) -> int:
    import onnxruntime as ort

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
    import hybrid_mamba

    out = Path(outdir)
    out.mkdir(exist_ok=True)
    cfg = hybrid_mamba.Config(layers=4, d_model=256, vocab=2048, heads=8, head_dim=32, d_state=32, mlp=512)
    prefill, decode = hybrid_mamba.build(cfg, steps=steps), hybrid_mamba.build(cfg, decode=True)
    tokens = {"tokens": hybrid_mamba.sample_tokens(cfg, steps)}
    ort_prefill = ort.InferenceSession(prefill.SerializeToString(), providers=["CPUExecutionProvider"])
    states = dict(zip([o.name for o in ort_prefill.get_outputs()], ort_prefill.run(None, tokens)))
    step = hybrid_mamba.decode_feeds(states, np.array([[1]], np.int64))
    ort_decode = ort.InferenceSession(decode.SerializeToString(), providers=["CPUExecutionProvider"])
    next_logits = ort_decode.run(None, step)[0]
    print(f"model: hybrid Mamba-2/attention, {cfg.layers} layers (attention every 4th), d_model {cfg.d_model}, "
          f"{cfg.heads} SSM heads of {cfg.head_dim}, d_state {cfg.d_state}; prefill {steps} tokens, then 1 decode step")
    for target in ("host", "arm", "riscv"):
        for name, model, feeds, want in (("prefill", prefill, tokens, states["logits"]),
                                         ("decode", decode, step, next_logits)):
            start = time.perf_counter()
            bundle = edgecc.compile(model, target)
            path = bundle.save(out / f"hybrid-{name}-{target}")
            timing = {}
            got = bundle.run(feeds, timing=timing)["logits"]
            err = float(np.max(np.abs(got - want)))
            ok = np.allclose(got, want, rtol=1e-3, atol=1e-3)
            print(f"{target:6s} {name:8s} built in {time.perf_counter() - start:5.1f}s -> {path}/  "
                  f"{timing['median_ms']:8.2f} ms, max |edgecc - onnxruntime| = {err:.2e} "
                  f"({'agrees' if ok else 'DISAGREES'} at rtol=atol=1e-3)")
            if not ok:
                return 1
    return 0


if __name__ == "__main__":
    try:
        if sys.argv[1:2] == ["hybrid"]:
            sys.exit(hybrid(*sys.argv[2:]))
        sys.exit(main(*sys.argv[1:]))
    except EdgeccError as err:
        print(f"edgecc: error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
