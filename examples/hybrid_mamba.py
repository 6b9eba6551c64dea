"""A small hybrid Mamba-2 / attention language model (the shape of Nemotron-H), written with
``onnx.helper``: a prefill graph (``T`` tokens in, last-token logits and every layer's state
out) and a decode graph (one token and the states in, logits and the next states out).

    .venv/bin/python examples/hybrid_mamba.py [OUT_DIR] [--layers 8] [--d-model 512] [--steps 1024]

Layers: ``[Mamba-2, Mamba-2, Mamba-2, attention] * (layers / 4)``, each followed by a SwiGLU
MLP, pre-RMSNorm and residuals throughout; seeded random weights.

Mamba-2 mixer: ``in_proj`` to ``(z, xBC, dt)``; ``CausalConvWithState`` (SiLU fused) over
``xBC``; ``dt = softplus(dt + dt_bias)``; the SSD recurrence as ``LinearAttention`` with
``update_rule="gated"``: per head ``decay = dt * A``, ``key = dt * B``, ``value = x``,
``query = C`` (one B/C group shared by the heads), ``scale = 1``; then ``+ D * x``, the gated
RMSNorm ``RMSNorm(y * silu(z))``, and ``out_proj``. Attention: grouped-query, causal, no
positional encoding (the Mamba layers carry order), ONNX ``Attention`` (opset 23) with a KV
cache in decode.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 27


@dataclasses.dataclass(frozen=True)
class Config:
    layers: int = 8
    d_model: int = 512
    vocab: int = 4096
    heads: int = 16  # Mamba-2 heads; d_inner = heads * head_dim
    head_dim: int = 64
    d_state: int = 64
    conv: int = 4
    attn_heads: int = 8
    attn_kv_heads: int = 2
    mlp: int = 1536

    @property
    def d_inner(self) -> int:
        return self.heads * self.head_dim

    @property
    def conv_channels(self) -> int:
        return self.d_inner + 2 * self.d_state

    def is_attention(self, layer: int) -> bool:
        return layer % 4 == 3


class _Graph:
    """Nodes, initializers and value infos under construction, with unique names."""

    def __init__(self, rng: np.random.Generator):
        self.nodes, self.inits, self.inputs, self.outputs = [], [], [], []
        self.rng, self.count = rng, 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{hint}_{self.count}"

    def op(self, op_type: str, inputs: list[str], outputs: int | list[str] = 1, **attrs):
        names = [self.name(op_type.lower()) for _ in range(outputs)] if isinstance(outputs, int) else outputs
        self.nodes.append(helper.make_node(op_type, inputs, names, name=self.name(op_type), **attrs))
        return names[0] if len(names) == 1 else names

    def weight(self, hint: str, value: np.ndarray) -> str:
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def ints(self, values) -> str:
        name = self.name("shape")
        self.inits.append(numpy_helper.from_array(np.asarray(values, np.int64), name))
        return name

    def linear(self, x: str, fan_in: int, fan_out: int, hint: str) -> str:
        w = self.rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)
        return self.op("MatMul", [x, self.weight(hint, w)])

    def rms_norm(self, x: str, width: int) -> str:
        return self.op("RMSNormalization", [x, self.weight("norm", 1.0 + 0.1 * self.rng.standard_normal(width))],
                       axis=-1, epsilon=1e-5)

    def state(self, name: str, shape: list, decode: bool) -> str | None:
        """A layer state: a graph input in decode (returned), and the same name + ``_out`` an output."""
        self.outputs.append(helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, shape))
        if decode:
            self.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
            return name
        return None


def _mamba2(g: _Graph, x: str, cfg: Config, layer: int, steps, decode: bool) -> str:
    h, p, n = cfg.heads, cfg.head_dim, cfg.d_state
    zxbcdt = g.linear(g.rms_norm(x, cfg.d_model), cfg.d_model, cfg.d_inner + cfg.conv_channels + h, "in_proj")
    z, xbc, dt = g.op("Split", [zxbcdt, g.ints([cfg.d_inner, cfg.conv_channels, h])], 3, axis=-1)
    conv_w = g.weight("conv_w", g.rng.standard_normal((cfg.conv_channels, 1, cfg.conv)) / np.sqrt(cfg.conv))
    conv_b = g.weight("conv_b", 0.1 * g.rng.standard_normal(cfg.conv_channels))
    past_conv = g.state(f"conv_state_{layer}", [1, cfg.conv_channels, cfg.conv - 1], decode)
    conv_in = g.op("Transpose", [xbc], perm=[0, 2, 1])
    conv_out = g.op("CausalConvWithState", [conv_in, conv_w, conv_b] + ([past_conv] if decode else []),
                    [g.name("conv_out"), f"conv_state_{layer}_out"], activation="silu")[0]
    xbc = g.op("Transpose", [conv_out], perm=[0, 2, 1])
    xs, b, c = g.op("Split", [xbc, g.ints([cfg.d_inner, n, n])], 3, axis=-1)
    dt_bias = g.weight("dt_bias", np.log(np.expm1(g.rng.uniform(0.001, 0.1, h))))  # Mamba-2's dt init
    dt = g.op("Softplus", [g.op("Add", [dt, dt_bias])])  # [1, T, H]
    a = g.weight("A", -g.rng.uniform(1.0, 16.0, h))
    decay = g.op("Mul", [dt, a])
    key = g.op("Mul", [g.op("Unsqueeze", [dt, g.ints([3])]), g.op("Unsqueeze", [b, g.ints([2])])])  # [1, T, H, N]
    key = g.op("Reshape", [key, g.ints([1, -1, h * n])])
    query = g.op("Reshape", [g.op("Expand", [g.op("Unsqueeze", [c, g.ints([2])]), g.ints([1, 1, h, n])]),
                             g.ints([1, -1, h * n])])
    past_ssm = g.state(f"ssm_state_{layer}", [1, h, n, p], decode)
    y = g.op("LinearAttention", [query, key, xs, past_ssm or "", decay], [g.name("ssm_y"), f"ssm_state_{layer}_out"],
             q_num_heads=h, kv_num_heads=h, update_rule="gated", scale=1.0)[0]
    skip = g.weight("D", np.repeat(g.rng.uniform(0.5, 1.5, h), p))
    y = g.op("Add", [y, g.op("Mul", [xs, skip])])
    y = g.rms_norm(g.op("Mul", [y, g.op("Mul", [z, g.op("Sigmoid", [z])])]), cfg.d_inner)
    return g.op("Add", [x, g.linear(y, cfg.d_inner, cfg.d_model, "out_proj")])


def _attention(g: _Graph, x: str, cfg: Config, layer: int, decode: bool) -> str:
    hd = cfg.d_model // cfg.attn_heads
    h = g.rms_norm(x, cfg.d_model)
    q = g.linear(h, cfg.d_model, cfg.d_model, "wq")
    k = g.linear(h, cfg.d_model, cfg.attn_kv_heads * hd, "wk")
    v = g.linear(h, cfg.d_model, cfg.attn_kv_heads * hd, "wv")
    cache = [1, cfg.attn_kv_heads, "past" if decode else "steps", hd]
    cache_out = [1, cfg.attn_kv_heads, "total", hd] if decode else cache
    for kind in ("key", "value"):
        g.outputs.append(helper.make_tensor_value_info(f"{kind}_cache_{layer}_out", TensorProto.FLOAT, cache_out))
    if decode:
        for kind in ("key", "value"):
            g.inputs.append(helper.make_tensor_value_info(f"{kind}_cache_{layer}", TensorProto.FLOAT, cache))
        out = g.op("Attention", [q, k, v, "", f"key_cache_{layer}", f"value_cache_{layer}"],
                   [g.name("attn"), f"key_cache_{layer}_out", f"value_cache_{layer}_out"],
                   q_num_heads=cfg.attn_heads, kv_num_heads=cfg.attn_kv_heads)[0]
    else:
        out = g.op("Attention", [q, k, v], [g.name("attn")], q_num_heads=cfg.attn_heads,
                   kv_num_heads=cfg.attn_kv_heads, is_causal=1)
        for kind, t in (("key", k), ("value", v)):  # the cache: [1, kv heads, T, head dim]
            heads = g.op("Reshape", [t, g.ints([1, -1, cfg.attn_kv_heads, hd])])
            g.op("Transpose", [heads], [f"{kind}_cache_{layer}_out"], perm=[0, 2, 1, 3])
    return g.op("Add", [x, g.linear(out, cfg.d_model, cfg.d_model, "wo")])


def _mlp(g: _Graph, x: str, cfg: Config) -> str:
    h = g.rms_norm(x, cfg.d_model)
    gate, up = g.linear(h, cfg.d_model, cfg.mlp, "w_gate"), g.linear(h, cfg.d_model, cfg.mlp, "w_up")
    act = g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate])]), up])
    return g.op("Add", [x, g.linear(act, cfg.mlp, cfg.d_model, "w_down")])


def build(cfg: Config = Config(), decode: bool = False, steps=1024, seed: int = 0) -> onnx.ModelProto:
    """The prefill model (``tokens`` ``[1, steps]``) or, with ``decode``, the one-token step
    (``tokens`` ``[1, 1]`` plus every layer's state; the KV caches' length is symbolic,
    ``past``). Both take the same seeded weights."""
    g = _Graph(np.random.default_rng(seed))
    steps = 1 if decode else steps
    g.inputs.append(helper.make_tensor_value_info("tokens", TensorProto.INT64, [1, steps]))
    embedding = g.weight("embedding", 0.5 * g.rng.standard_normal((cfg.vocab, cfg.d_model)))
    x = g.op("Gather", [embedding, "tokens"])
    for layer in range(cfg.layers):
        x = (_attention(g, x, cfg, layer, decode) if cfg.is_attention(layer)
             else _mamba2(g, x, cfg, layer, steps, decode))
        x = _mlp(g, x, cfg)
    last = x if decode else g.op("Slice", [x, g.ints([-1]), g.ints([2 ** 62]), g.ints([1])])
    logits = g.linear(g.rms_norm(last, cfg.d_model), cfg.d_model, cfg.vocab, "lm_head")
    g.op("Identity", [logits], ["logits"])
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1, cfg.vocab])] + g.outputs
    graph = helper.make_graph(g.nodes, "hybrid_mamba_decode" if decode else "hybrid_mamba_prefill",
                              g.inputs, outputs, g.inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=11)


def sample_tokens(cfg: Config, steps: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, cfg.vocab, (1, steps), dtype=np.int64)


def decode_feeds(prefill_outputs: dict[str, np.ndarray], token: np.ndarray) -> dict[str, np.ndarray]:
    """The decode model's inputs from the prefill's outputs (``NAME_out`` -> ``NAME``)."""
    feeds = {"tokens": token}
    feeds.update({name[:-len("_out")]: value for name, value in prefill_outputs.items() if name.endswith("_out")})
    return feeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="hybrid-mamba")
    parser.add_argument("--layers", type=int, default=Config.layers)
    parser.add_argument("--d-model", type=int, default=Config.d_model)
    parser.add_argument("--steps", type=int, default=1024, help="prefill length")
    args = parser.parse_args()
    cfg = Config(layers=args.layers, d_model=args.d_model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, model in (("prefill", build(cfg, steps=args.steps)), ("decode", build(cfg, decode=True))):
        path = out / f"hybrid_mamba_{name}.onnx"
        onnx.save(model, str(path))
        print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
