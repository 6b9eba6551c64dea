"""ONNX Attention over a KV cache of run-time length: on CPU targets one decode-attention
kernel (edgecc.passes.attention) in place of scores, mask, softmax and matmul; compared with
ONNX Runtime for decode (one new token) and for several new tokens, causal or not, grouped
or not, 3-D and 4-D inputs, at cache lengths the build never saw; on host and under qemu."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import edgecc

RTOL, ATOL = 1e-4, 1e-5


def attention_model(q_heads: int, kv_heads: int, steps: int, depth: int, causal: bool, four_d: bool,
                    scale: float | None = None) -> onnx.ModelProto:
    """``Attention`` (opset 23) with ``past_key``/``past_value`` of symbolic length ``past``."""
    value = helper.make_tensor_value_info
    f = TensorProto.FLOAT
    if four_d:
        q = value("q", f, [1, q_heads, steps, depth])
        k, v = (value(n, f, [1, kv_heads, steps, depth]) for n in ("k", "v"))
        extra = {}
    else:
        q = value("q", f, [1, steps, q_heads * depth])
        k, v = (value(n, f, [1, steps, kv_heads * depth]) for n in ("k", "v"))
        extra = {"q_num_heads": q_heads, "kv_num_heads": kv_heads}
    if scale is not None:
        extra["scale"] = scale
    past = [value(n, f, [1, kv_heads, "past", depth]) for n in ("past_key", "past_value")]
    node = helper.make_node("Attention", ["q", "k", "v", "", "past_key", "past_value"],
                            ["out", "present_key", "present_value"], is_causal=int(causal), **extra)
    out_shape = [1, q_heads, steps, depth] if four_d else [1, steps, q_heads * depth]
    outputs = [value("out", f, out_shape)] + [value(n, f, [1, kv_heads, "total", depth])
                                              for n in ("present_key", "present_value")]
    graph = helper.make_graph([node], "attention", [q, k, v, *past], outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)], ir_version=10)


def _feeds(model, past: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in model.graph.input:
        shape = [past if d.dim_param else d.dim_value for d in value.type.tensor_type.shape.dim]
        feeds[value.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def _check(model, bundle, past: int):
    import onnxruntime as ort

    feeds = _feeds(model, past)
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    got = bundle.run(feeds)
    for value, want in zip(model.graph.output, expected):
        np.testing.assert_allclose(got[value.name], want, rtol=RTOL, atol=ATOL, err_msg=f"{value.name} past={past}")


def _rules(bundle) -> list[str]:
    return list(next(p for p in bundle.manifest["passes"] if p["phase"] == "schedule")["kernels"].values())


@pytest.mark.parametrize("q_heads,kv_heads,steps,depth,causal,four_d,scale", [
    (8, 2, 1, 64, True, False, None),     # a GQA decode step, the hybrid model's shape
    (4, 4, 3, 32, True, False, None),     # three new tokens: each row sees its own prefix
    (6, 2, 2, 16, False, True, 0.3),      # 4-D, not causal, an explicit scale
    (2, 1, 1, 20, True, True, None),      # a head dim that is not a whole vector
])
def test_cache_attention_is_one_kernel_and_matches_onnxruntime(q_heads, kv_heads, steps, depth, causal, four_d,
                                                               scale):
    model = attention_model(q_heads, kv_heads, steps, depth, causal, four_d, scale)
    bundle = edgecc.compile(model, "host")
    rules = _rules(bundle)
    assert "attention[decode]" in rules, rules
    assert not any("softmax" in r for r in rules), rules
    for past in (0, 5, 37, 300):
        _check(model, bundle, past)


@pytest.mark.parametrize("target", ["arm", "riscv"])
def test_cache_attention_under_qemu(target):
    model = attention_model(8, 2, 1, 64, True, False)
    bundle = edgecc.compile(model, target)
    assert "attention[decode]" in _rules(bundle)
    _check(model, bundle, 29)
