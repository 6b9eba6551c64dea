"""INT8 figures: models quantized by ONNX Runtime's own tools, edgecc against ONNX Runtime on
the same quantized file and against edgecc's fp32 build, interleaved in one run.

    .venv/bin/python bench/int8.py [--models ffn,encoder,squeezenet,resnet50] [--threads 2]
                                   [--rounds 7] [--repeat 20]

Models (seeded random weights): a BERT-base FFN block (768 -> 3072 -> 768 on 128 tokens) and
the 4-layer encoder of ``bench/tuned.py`` (d_model 256, 128 tokens), each quantized two ways:
``dynamic`` (``quantize_dynamic``: DynamicQuantizeLinear + MatMulInteger, int8 weights) and
``QDQ`` (``quantize_static``, uint8 activations calibrated on 8 seeded batches, int8 weights
per channel); and the onnx wheel's squeezenet and resnet50 (converted to opset 13, logits
output) and a MobileNet-v1 (``edgecc.zoo.mobilenet_model``, 112 x 112: depthwise and 1x1
convs), QDQ only, after ONNX Runtime's recommended ``quant_pre_process`` (which folds batch
norms into the convs). Columns: medians (ms) of edgecc int8, ONNX Runtime int8, edgecc fp32
and ONNX Runtime fp32; edgecc int8 / ORT int8 (below 1: edgecc faster); edgecc fp32 / edgecc
int8; the matmuls and convs edgecc ran as integer kernels; the output's max abs difference
from ONNX Runtime on the same int8 model (graph optimisations off: the model as written), in
steps of the output's quantization; ``model.so``'s size, int8 / fp32.

``--tune-knobs``: each int8 model's kernel knobs (tile width, rows a pass) are also measured
(``edgecc.tuning.tune`` with one trial: the knob candidates, no schedule search), and a line
under the model gives the tuning time and the build with that log, interleaved with the rest.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnx.version_converter
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static

import edgecc
from edgecc.bench import bundle_runner, interleaved, onnxruntime_session, session_runner
from edgecc.tuning import tune
from edgecc.zoo import encoder_model, ffn_model, light_model, logits_model, mobilenet_model, sample_inputs

MODELS = ("ffn", "encoder", "squeezenet", "resnet50", "mobilenet")
CONVNETS = ("squeezenet", "resnet50", "mobilenet")


class Calibration(CalibrationDataReader):
    def __init__(self, model, batches: int = 8):
        rng = np.random.default_rng(1)
        shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
        self.batches = iter([{name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
                             for _ in range(batches)])

    def get_next(self):
        return next(self.batches, None)


def quantized(model, how: str, folder: Path, preprocess: bool = False) -> onnx.ModelProto:
    onnx.save(model, folder / "fp32.onnx")
    source, out = folder / "fp32.onnx", folder / f"{how}.onnx"
    if preprocess:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        quant_pre_process(str(source), str(folder / "pre.onnx"), skip_symbolic_shape=True)
        source = folder / "pre.onnx"
    if how == "dynamic":
        quantize_dynamic(source, out, weight_type=QuantType.QInt8)
    else:
        quantize_static(source, out, Calibration(model), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
    return onnx.load(out)


def output_step(model) -> float:
    """The scale the quantized model's output is dequantized with (one step), or 0."""
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    producer = {out: node for node in model.graph.node for out in node.output}
    node = producer.get(model.graph.output[0].name)
    return float(consts[node.input[1]]) if node is not None and node.op_type == "DequantizeLinear" else 0.0


def fp32_model(name: str) -> onnx.ModelProto:
    if name == "ffn":
        return ffn_model()
    if name == "encoder":
        return encoder_model()
    if name == "mobilenet":
        return mobilenet_model()
    return onnx.version_converter.convert_version(logits_model(light_model(name)), 13)


def exact(model, inputs):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, inputs)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--tune-knobs", action="store_true", help="also time the int8 build with tuned knobs")
    args = parser.parse_args()
    t = args.threads
    logging.getLogger().setLevel(logging.ERROR)  # ONNX Runtime's quantizer advice on every model
    print(f"{'model':<20}{'int8 ms':>9}{'ORT int8':>9}{'fp32 ms':>9}{'ORT fp32':>9}{'int8/ORT':>9}"
          f"{'fp32/int8':>10}{'kernels':>9}{'max diff':>10}{'steps':>6}{'size':>7}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            if name not in MODELS:
                parser.error(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
            model = fp32_model(name)
            fp32 = edgecc.compile(model, "host")
            inputs = sample_inputs(model)
            convnet = name in CONVNETS
            for how in ("QDQ",) if convnet else ("dynamic", "QDQ"):
                q = quantized(model, how, Path(tmp), preprocess=convnet)
                int8 = edgecc.compile(q, "host")
                layers = int8.manifest["quantization"]["int8_layers"]
                runners = {
                    "int8": bundle_runner(int8, inputs, t, args.repeat),
                    "ort_int8": session_runner(onnxruntime_session(q, t), inputs, args.repeat),
                    "fp32": bundle_runner(fp32, inputs, t, args.repeat),
                    "ort_fp32": session_runner(onnxruntime_session(model, t), inputs, args.repeat),
                }
                if args.tune_knobs:
                    start, log = time.perf_counter(), Path(tmp) / f"{name}-{how}.jsonl"
                    tune(q, "host", log=log, trials=1, progress=lambda _: None)
                    tuning_s = time.perf_counter() - start
                    runners["tuned"] = bundle_runner(edgecc.compile(q, "host", tuning_log=log), inputs, t, args.repeat)
                ms = interleaved(runners, args.rounds)
                diff = float(np.abs(next(iter(int8.run(inputs).values())) - exact(q, inputs)).max())
                step = output_step(q)
                steps = f"{diff / step:>6.2f}" if step else f"{'-':>6}"
                print(f"{name + ' ' + how:<20}{ms['int8']:>9.3f}{ms['ort_int8']:>9.3f}{ms['fp32']:>9.3f}"
                      f"{ms['ort_fp32']:>9.3f}{ms['int8'] / ms['ort_int8']:>8.2f}x{ms['fp32'] / ms['int8']:>9.2f}x"
                      f"{sum(bool(x['kernel']) for x in layers):>5}/{len(layers):<3}{diff:>10.2e}{steps}"
                      f"{(int8.path / 'model.so').stat().st_size / (fp32.path / 'model.so').stat().st_size:>6.2f}x",
                      flush=True)
                if args.tune_knobs:
                    print(f"{'  knobs tuned':<20}{ms['tuned']:>9.3f} ms, {ms['tuned'] / ms['int8']:.3f}x the default "
                          f"knobs ({tuning_s:.0f} s of tuning)", flush=True)


if __name__ == "__main__":
    main()
