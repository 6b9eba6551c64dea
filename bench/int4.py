"""Issue 6's INT4 figures: 4-bit weight-only models against edgecc's fp32 build and ONNX
Runtime's MatMulNBits, interleaved in one run, with the machine's copy bandwidth.

    .venv/bin/python bench/int4.py [--threads 2] [--rounds 7] [--repeat 20] [--group-sizes 32,128]

Models (seeded random weights; ``edgecc.quantize.quantize_int4`` writes the 4-bit model as
``com.microsoft.MatMulNBits`` nodes, which edgecc and ONNX Runtime both run):

- ``gemv 4096``: one MatMul, batch 1, K = N = 4096 (a decoder's projection at decode time).
- ``block 1024``: a transformer block at decode time (one token): ``edgecc.zoo.encoder_model``
  with d_model 1024, 16 heads, FFN 4096, Q/K/V/output and FFN weights quantized.

Contestants, per group size: edgecc int4 (float32 activations) and ONNX Runtime's
MatMulNBits at accuracy level 0 (the same math), edgecc int4 with ``--int8-activations`` and
MatMulNBits at accuracy level 4 (activations quantized to int8 per block, VNNI: MLAS's
fastest path), edgecc fp32 and ONNX Runtime fp32 on the original model. Each row gives medians
over rounds, the speed-ups, and the bandwidth the int4 builds achieve (bytes of codes, scales
and zero points per run / time) next to a two-thread copy's (read + write), measured in the
same run on an array as large as those weights (it stays in the caches as they do) and on
one of 1 GiB (main memory).

Then the weights' size, 4-bit (codes, scales, zero points) over fp32, and the output error of
the quantized block against fp32 (cosine similarity and max abs).
"""

from __future__ import annotations

import argparse

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import edgecc
from edgecc.bench import bundle_runner, copy_bandwidth, interleaved, onnxruntime_session, session_runner
from edgecc.quantize import quantize_int4
from edgecc.zoo import encoder_model, sample_inputs


def gemv_model(k: int = 4096, n: int = 4096, seed: int = 0) -> onnx.ModelProto:
    weight = (np.random.default_rng(seed).standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="proj")], "gemv",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
                              [numpy_helper.from_array(weight, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def weight_bytes(model: onnx.ModelProto) -> tuple[int, int]:
    """(bytes of 4-bit weights with their scales and zero points, bytes of float32 MatMul weights)."""
    consts = {t.name: t for t in model.graph.initializer}
    nbits = fp32 = 0
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            nbits += sum(numpy_helper.to_array(consts[name]).nbytes for name in node.input[1:4] if name)
        elif node.op_type in ("MatMul", "Gemm") and node.input[1] in consts:
            fp32 += numpy_helper.to_array(consts[node.input[1]]).nbytes
    return nbits, fp32


def cosine(a, b) -> float:
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--group-sizes", default="32,128", help="comma-separated group sizes (default 32,128)")
    args = parser.parse_args()
    t = args.threads
    models = {"gemv 4096": gemv_model(),
              "block 1024": encoder_model(layers=1, d_model=1024, heads=16, seq=1, ffn=4096)}
    print(f"{'model':<12}{'group':>6}{'int4':>8}{'int4/i8':>8}{'fp32':>8}{'ORT fp32':>9}{'ORT nb0':>8}{'ORT nb4':>8}"
          f"{'fp32/int4':>10}{'int4/nb0':>9}{'i8/nb4':>8}{'GB/s':>7}{'i8 GB/s':>8}{'copy':>6}{'DRAM':>6}", flush=True)
    dram = copy_bandwidth(1 << 30, t, repeat=5)
    sizes, errors = [], []
    for name, fp32_model in models.items():
        inputs = sample_inputs(fp32_model)
        fp32 = edgecc.compile(fp32_model, "host")
        want = next(iter(onnxruntime_session(fp32_model, t).run(None, inputs)))
        for group in map(int, args.group_sizes.split(",")):
            quantized, _ = quantize_int4(fp32_model, group)
            quantized_i8, _ = quantize_int4(fp32_model, group, int8_activations=True)
            int4 = edgecc.compile(quantized, "host")
            int4_i8 = edgecc.compile(quantized_i8, "host")
            for bundle in (int4, int4_i8):
                assert all(layer["kernel"] for layer in bundle.manifest["quantization"]["int4_layers"])
            runners = {
                "int4": bundle_runner(int4, inputs, t, args.repeat),
                "int4_i8": bundle_runner(int4_i8, inputs, t, args.repeat),
                "fp32": bundle_runner(fp32, inputs, t, args.repeat),
                "ort_fp32": session_runner(onnxruntime_session(fp32_model, t), inputs, args.repeat),
                "ort_nb0": session_runner(onnxruntime_session(quantized, t), inputs, args.repeat),
                "ort_nb4": session_runner(onnxruntime_session(quantized_i8, t), inputs, args.repeat),
            }
            ms = interleaved(runners, args.rounds)
            nbits, fp32_bytes = weight_bytes(quantized)[0], weight_bytes(fp32_model)[1]
            cached = copy_bandwidth(nbits, t)
            print(f"{name:<12}{group:>6}{ms['int4']:>8.3f}{ms['int4_i8']:>8.3f}{ms['fp32']:>8.3f}{ms['ort_fp32']:>9.3f}"
                  f"{ms['ort_nb0']:>8.3f}{ms['ort_nb4']:>8.3f}{ms['fp32'] / ms['int4']:>9.2f}x"
                  f"{ms['int4'] / ms['ort_nb0']:>8.2f}x{ms['int4_i8'] / ms['ort_nb4']:>7.2f}x"
                  f"{nbits / ms['int4'] / 1e6:>7.1f}{nbits / ms['int4_i8'] / 1e6:>8.1f}{cached:>6.1f}{dram:>6.1f}",
                  flush=True)
            sizes.append((name, group, nbits, fp32_bytes, (int4.path / "model.so").stat().st_size,
                          (fp32.path / "model.so").stat().st_size))
            if name.startswith("block"):
                for label, bundle in (("float32 activations", int4), ("int8 activations", int4_i8)):
                    got = next(iter(bundle.run(inputs).values()))
                    errors.append((group, label, cosine(got, want), float(np.abs(got - want).max()),
                                   float(np.abs(want).max())))
    print("\nweights: int4 bytes (codes, scales, zero points) / fp32 bytes; model.so int4 / fp32")
    for name, group, nbits, fp32_bytes, so4, so32 in sizes:
        print(f"  {name:<12} group {group:<4}{nbits / 1e6:7.2f} MB / {fp32_bytes / 1e6:6.2f} MB = "
              f"{nbits / fp32_bytes:.3f}x   model.so {so4 / 1e6:.2f} / {so32 / 1e6:.2f} MB = {so4 / so32:.3f}x")
    print("\nblock 1024, int4 against fp32 (ONNX Runtime on the fp32 model):")
    for group, label, cos, max_abs, scale in errors:
        print(f"  group {group:<4}{label:<20} cosine {cos:.6f}, max abs {max_abs:.4f} (outputs up to {scale:.2f})")


if __name__ == "__main__":
    main()
