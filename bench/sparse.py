"""Issue 7's figures: pruned models with edgecc's sparse kernels against its dense build and
ONNX Runtime (which runs the pruned model dense), interleaved in one run.

    .venv/bin/python bench/sparse.py [--threads 2] [--rounds 7] [--repeat 10] [--crossover]

Models (seeded random weights, magnitude-pruned with ``edgecc.prune``):

- ``ffn``: a BERT-base feed-forward block, 768 -> 3072 (Gelu) -> 768 on 128 tokens, with its
  residual add; pruned to 90% unstructured and to 80% in 4x1 blocks.
- ``encoder``: the 4-layer encoder of ``bench/tuned.py`` (d_model 256, 128 tokens) with its
  Q/K/V/output projections and FFNs pruned to 90% unstructured.
- ``mobilenet-v1``: MobileNet v1 at 224x224 (its 13 blocks of depthwise 3x3 + 1x1 convs,
  ReLU6), every prunable weight at 85%: the 1x1 convs run sparse and the depthwise convs
  between them channels-first; the classifier has one row and stays dense.
- ``mobilenet 112``: the shorter MobileNet-style network of ``edgecc.zoo.mobilenet_model``'s
  defaults (8 blocks, 112x112), pruned the same way.

Each round times edgecc sparse, edgecc dense (``sparsity="off"``) and ONNX Runtime, in a
rotating order; the table gives medians over rounds and the speed-ups dense / sparse and
ORT / sparse (above 1: the sparse build is faster), then ``model.so``'s size sparse / dense.

``--crossover`` sweeps one layer of each kind (the FFN's 768 -> 3072 matmul on 128 tokens; a
1x1 conv 128 -> 256 at 28x28) over densities, pruned in 1x1 and 4x1 blocks, forcing the sparse
kernel, and prints its block shape, block fill and work per weight (``blocks x (R + 2) /
weights``) and where it stops beating the dense kernel: the numbers behind
``edgecc.passes.sparsify.THRESHOLDS``. A layer alone pays its transposes in and out, which a
chain of sparse layers does not, so the crossover is conservative. Last, the same matmul
quantized by ONNX Runtime's ``quantize_dynamic`` (int8 weights): the int32 sparse kernel
against edgecc's dense VNNI kernel.
"""

from __future__ import annotations

import argparse

import numpy as np
from onnx import TensorProto, helper, numpy_helper

import edgecc
from edgecc.bench import bundle_runner, interleaved, onnxruntime_session, session_runner
from edgecc.passes import sparsify
from edgecc.prune import prune_model
from edgecc.zoo import MOBILENET_V1_BLOCKS, encoder_model, ffn_model, mobilenet_model, sample_inputs


def race(model, bundles: dict, threads: int, rounds: int, repeat: int, with_ort: bool = True) -> dict:
    """Median ms per contestant (edgecc bundles by name, and ``ort``), interleaved round by round."""
    inputs = sample_inputs(model)
    runners = {name: bundle_runner(bundle, inputs, threads, repeat) for name, bundle in bundles.items()}
    if with_ort:
        runners["ort"] = session_runner(onnxruntime_session(model, threads), inputs, repeat)
    return interleaved(runners, rounds)


def models():
    ffn = ffn_model()
    yield "ffn 90% unstructured", prune_model(ffn, 0.9, (1, 1))[0]
    yield "ffn 80% 4x1 blocks", prune_model(ffn, 0.8, (4, 1))[0]
    yield "encoder 90% unstructured", prune_model(encoder_model(), 0.9, (1, 1))[0]
    yield "mobilenet-v1 85%", prune_model(mobilenet_model(224, MOBILENET_V1_BLOCKS), 0.85, (1, 1))[0]
    yield "mobilenet 112 85%", prune_model(mobilenet_model(), 0.85, (1, 1))[0]


def headline(args) -> None:
    print(f"{'model':<24}{'sparse ms':>10}{'dense ms':>10}{'ORT ms':>9}{'dense/sparse':>14}{'ORT/sparse':>12}"
          f"{'layers':>8}{'size':>7}", flush=True)
    for name, model in models():
        sparse = edgecc.compile(model, "host")
        dense = edgecc.compile(model, "host", sparsity="off")
        layers = sparse.manifest["sparsity"]["layers"]
        converted = sum(layer["converted"] for layer in layers)
        ms = race(model, {"sparse": sparse, "dense": dense}, args.threads, args.rounds, args.repeat)
        size = (sparse.path / "model.so").stat().st_size / (dense.path / "model.so").stat().st_size
        print(f"{name:<24}{ms['sparse']:>10.3f}{ms['dense']:>10.3f}{ms['ort']:>9.3f}"
              f"{ms['dense'] / ms['sparse']:>13.2f}x{ms['ort'] / ms['sparse']:>11.2f}x{converted:>5}/{len(layers)}"
              f"{size:>6.2f}x", flush=True)


def _one_layer(kind: str, weight: np.ndarray):
    """A model of one matmul (x[128, 768] @ W) or one 1x1 conv (128 -> 256 at 28x28)."""
    if kind == "matmul":
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
        x_shape, y_shape = [128, weight.shape[0]], [128, weight.shape[1]]
    else:
        node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[1, 1])
        x_shape, y_shape = [1, weight.shape[1], 28, 28], [1, weight.shape[0], 28, 28]
    graph = helper.make_graph([node], kind, [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
                              [numpy_helper.from_array(weight, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _crossover(wins: list[tuple[float, float]]) -> str:
    """Where sparse stops winning, from ``(work per weight, dense / sparse)`` points."""
    first_loss = min([work for work, speedup in wins if speedup <= 1.0], default=float("inf"))
    faster = [work for work, speedup in wins if work < first_loss]
    return f"sparse faster at every work per weight up to {max(faster) if faster else 0:.2f}"


def crossover(args) -> None:
    """Sparse / dense time per block fill, the sparse kernel forced on."""
    saved = {arch: dict(limits) for arch, limits in sparsify.THRESHOLDS.items()}
    for limits in sparsify.THRESHOLDS.values():
        for kind in limits:
            limits[kind] = 10.0  # every layer sparse, however dense
    rng = np.random.default_rng(0)
    try:
        print(f"{'layer':<10}{'block':>6}{'fill':>7}{'work':>7}{'sparse ms':>11}{'dense ms':>10}{'dense/sparse':>14}",
              flush=True)
        for kind, shape in (("matmul", (768, 3072)), ("conv1x1", (256, 128, 1, 1))):
            for block in ((1, 1), (4, 1)):
                wins = []
                for density in (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8):
                    model = _one_layer(kind, rng.standard_normal(shape).astype(np.float32))
                    model = prune_model(model, 1.0 - density, block, min_size=1)[0]
                    sparse = edgecc.compile(model, "host")
                    dense = edgecc.compile(model, "host", sparsity="off")
                    (layer,) = sparse.manifest["sparsity"]["layers"]
                    ms = race(model, {"sparse": sparse, "dense": dense}, args.threads, args.rounds, args.repeat,
                              with_ort=False)
                    speedup = ms["dense"] / ms["sparse"]
                    wins.append((layer["work"], speedup))
                    print(f"{kind:<10}{layer['block']:>6}{layer['fill']:>7.2f}{layer['work']:>7.2f}{ms['sparse']:>11.3f}"
                          f"{ms['dense']:>10.3f}{speedup:>13.2f}x", flush=True)
                print(f"  {kind} pruned {block[0]}x{block[1]}: {_crossover(wins)}", flush=True)
        crossover_int8(args, rng)
    finally:
        sparsify.THRESHOLDS.clear()
        sparsify.THRESHOLDS.update(saved)


def crossover_int8(args, rng) -> None:
    """The 768 -> 3072 matmul pruned in 1x1 blocks and quantized by ONNX Runtime's
    quantize_dynamic: edgecc's int32 sparse kernel against its dense VNNI kernel."""
    import tempfile
    from pathlib import Path

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    wins = []
    with tempfile.TemporaryDirectory() as tmp:
        for density in (0.02, 0.03, 0.05, 0.08, 0.1, 0.2):
            model = _one_layer("matmul", rng.standard_normal((768, 3072)).astype(np.float32))
            onnx.save(prune_model(model, 1.0 - density, (1, 1), min_size=1)[0], Path(tmp) / "fp32.onnx")
            quantize_dynamic(Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx", weight_type=QuantType.QInt8)
            model = onnx.load(Path(tmp) / "int8.onnx")
            sparse = edgecc.compile(model, "host")
            dense = edgecc.compile(model, "host", sparsity="off")
            (layer,) = sparse.manifest["sparsity"]["layers"]
            ms = race(model, {"sparse": sparse, "dense": dense}, args.threads, args.rounds, args.repeat, with_ort=False)
            speedup = ms["dense"] / ms["sparse"]
            wins.append((layer["work"], speedup))
            print(f"{'int8':<10}{layer['block']:>6}{layer['fill']:>7.2f}{layer['work']:>7.2f}{ms['sparse']:>11.3f}"
                  f"{ms['dense']:>10.3f}{speedup:>13.2f}x", flush=True)
    print(f"  int8 matmul pruned 1x1: {_crossover(wins)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--crossover", action="store_true", help="also sweep block fills per layer kind")
    args = parser.parse_args()
    headline(args)
    if args.crossover:
        crossover(args)


if __name__ == "__main__":
    main()
