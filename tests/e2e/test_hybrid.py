"""The example hybrid Mamba-2 / attention model (examples/hybrid_mamba.py): prefill and one
decode step compiled for every target; host, arm and riscv (qemu) match ONNX Runtime."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import edgecc

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
import hybrid_mamba  # noqa: E402

CFG = hybrid_mamba.Config(layers=4, d_model=64, vocab=128, heads=4, head_dim=16, d_state=16, attn_heads=4,
                          attn_kv_heads=2, mlp=128)
STEPS = 12


@pytest.fixture(scope="module")
def reference():
    prefill, decode = hybrid_mamba.build(CFG, steps=STEPS), hybrid_mamba.build(CFG, decode=True)
    tokens = {"tokens": hybrid_mamba.sample_tokens(CFG, STEPS)}
    session = ort.InferenceSession(prefill.SerializeToString(), providers=["CPUExecutionProvider"])
    states = dict(zip([o.name for o in session.get_outputs()], session.run(None, tokens)))
    step = hybrid_mamba.decode_feeds(states, np.array([[3]], np.int64))
    session = ort.InferenceSession(decode.SerializeToString(), providers=["CPUExecutionProvider"])
    after = dict(zip([o.name for o in session.get_outputs()], session.run(None, step)))
    return [(prefill, tokens, states), (decode, step, after)]


@pytest.mark.parametrize("target", ["host", "arm", "riscv"])
def test_hybrid_matches_onnxruntime(reference, target):
    for model, feeds, expected in reference:
        got = edgecc.compile(model, target).run(feeds)
        assert set(got) == set(expected)
        for name, want in expected.items():
            np.testing.assert_allclose(got[name], want, rtol=1e-4, atol=1e-4, err_msg=f"{model.graph.name}: {name}")


def test_hybrid_compiles_for_cuda(reference):
    """Built, not run (no GPU here): its scan kernels get the CUDA schedule."""
    for model, _, _ in reference:
        bundle = edgecc.compile(model, "cuda")
        rules = next(p for p in bundle.manifest["passes"] if p["phase"] == "schedule")["kernels"]
        assert any(rule.startswith("scan[linear_attention] (CUDA") for rule in rules.values())
