"""What quantizing costs in output error: ``--quantize int8`` on squeezenet and resnet50, and
``--quantize int4`` on the transformer encoder, against the fp32 build of the same model.

    .venv/bin/python bench/quant_error.py [--models squeezenet,resnet50,encoder] [--samples 4]

The image models are the onnx wheel's (seeded random weights, as everywhere in ``bench/``), their
logits compared (with random weights the softmax after them is one-hot and hides errors);
int8 is calibrated on 8 seeded random inputs and evaluated on ``--samples`` others. Per model:
the cosine similarity of the quantized output with the fp32 one (mean over samples, and the
worst), the largest absolute difference and the largest fp32 output, the matmuls and convs
that ran as integer kernels, and the quantized build's speed-up over the fp32 one (medians of
5 interleaved rounds, 2 threads).
"""

from __future__ import annotations

import argparse

import numpy as np

import edgecc
from edgecc.bench import bundle_runner, interleaved
from edgecc.frontend.loader import graph_inputs
from edgecc.quantize import random_calibration
from edgecc.zoo import encoder_model, light_model, logits_model


def cosine(a, b) -> float:
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="squeezenet,resnet50,encoder")
    parser.add_argument("--samples", type=int, default=4)
    args = parser.parse_args()
    print(f"{'model':<12}{'quantize':>9}{'cosine':>10}{'worst':>10}{'max abs':>10}{'max |fp32|':>11}{'kernels':>9}"
          f"{'speed-up':>10}", flush=True)
    for name in args.models.split(","):
        if name == "encoder":
            model, how = encoder_model(), {"quantize": "int4", "group_size": 32}
        else:
            model, how = logits_model(light_model(name)), {"quantize": "int8"}
        fp32 = edgecc.compile(model, "host")
        quantized = edgecc.compile(model, "host", **how, warn=lambda line: None)
        layers = quantized.manifest["quantization"][f"{how['quantize']}_layers"]
        cosines, worst_abs, scale = [], 0.0, 0.0
        for sample in random_calibration(graph_inputs(model), args.samples, seed=100):
            want = next(iter(fp32.run(sample).values()))
            got = next(iter(quantized.run(sample).values()))
            cosines.append(cosine(got, want))
            worst_abs = max(worst_abs, float(np.abs(got - want).max()))
            scale = max(scale, float(np.abs(want).max()))
        ms = interleaved({"fp32": bundle_runner(fp32, sample, 2, 10), "q": bundle_runner(quantized, sample, 2, 10)}, 5)
        print(f"{name:<12}{how['quantize']:>9}{np.mean(cosines):>10.5f}{min(cosines):>10.5f}{worst_abs:>10.4g}"
              f"{scale:>11.4g}{sum(bool(x['kernel']) for x in layers):>5}/{len(layers):<3}"
              f"{ms['fp32'] / ms['q']:>9.2f}x", flush=True)


if __name__ == "__main__":
    main()
