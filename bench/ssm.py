"""Issue 8's figures: the hybrid Mamba-2 model and the scan kernels against ONNX Runtime,
interleaved in one run, with the machine's copy bandwidth.

    .venv/bin/python bench/ssm.py [--threads 2] [--rounds 5] [--steps 1024] [--skip-model]

1. ``examples/hybrid_mamba.py`` (default config: 8 layers, d_model 512, 16 Mamba-2 heads of
   64, d_state 64, attention every 4th layer), the same ONNX files in both: prefill of
   ``--steps`` tokens, and one decode step after it (KV cache of ``--steps``); then that
   decode step built by edgecc with ``--quantize int4`` (4-bit weights, groups of 32) against
   ONNX Runtime on the fp32 file, with the logits' cosine similarity to fp32.
2. The scan alone. ``LinearAttention`` (gated, the model's Mamba-2 shape): edgecc's kernel
   against ONNX Runtime 1.32, which runs the op's ONNX function body, an ONNX ``Scan`` over
   time. Mamba-1's selective scan: ``ai.edgecc::SelectiveScan`` in edgecc against the same
   recurrence written as an ONNX ``Scan`` (``edgecc.ssm.selective_scan_model(as_scan=True)``)
   in ONNX Runtime.
3. With ``--chunks``: the ``LinearAttention`` prefill kernel at chunks of 1, 2, 4 and 8 tokens.
4. The decode step of the scan: bytes of state it must move (read ``past_state``, write
   ``present_state``) over its time, next to a two-thread copy's (read + write) on an array of
   the state's size (cache-resident, as the state is between tokens) and of 1 GiB (memory).

Ratios are edgecc / ONNX Runtime (below 1: edgecc faster); times are medians over rounds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

import edgecc
from edgecc import ssm
from edgecc.bench import bundle_runner, copy_bandwidth, interleaved, onnxruntime_session, session_runner

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
import hybrid_mamba  # noqa: E402


def _row(name: str, times: dict, extra: str = "") -> None:
    ratio = times["edgecc"] / times["onnxruntime"]
    print(f"{name:44s} edgecc {times['edgecc']:9.3f} ms  onnxruntime {times['onnxruntime']:9.3f} ms  "
          f"ratio {ratio:5.3f} ({1 / ratio:5.1f}x){extra}", flush=True)


def _versus(model, feeds: dict, threads: int, rounds: int, repeat: int) -> dict:
    bundle = edgecc.compile(model, "host")
    session = onnxruntime_session(model, threads)
    expected = session.run(None, feeds)
    got = bundle.run(feeds)
    for value, want in zip(model.graph.output, expected):
        np.testing.assert_allclose(got[value.name], want, rtol=1e-3, atol=1e-3, err_msg=value.name)
    return interleaved({"edgecc": bundle_runner(bundle, feeds, threads, repeat),
                        "onnxruntime": session_runner(session, feeds, repeat)}, rounds)


def hybrid(args) -> None:
    cfg = hybrid_mamba.Config()
    prefill = hybrid_mamba.build(cfg, steps=args.steps)
    tokens = {"tokens": hybrid_mamba.sample_tokens(cfg, args.steps)}
    session = onnxruntime_session(prefill, args.threads)
    states = dict(zip([o.name for o in session.get_outputs()], session.run(None, tokens)))
    _row(f"hybrid prefill T={args.steps}", _versus(prefill, tokens, args.threads, args.rounds, 2))
    decode = hybrid_mamba.build(cfg, decode=True)
    feeds = hybrid_mamba.decode_feeds(states, np.array([[7]], np.int64))
    _row(f"hybrid decode (after {args.steps})", _versus(decode, feeds, args.threads, args.rounds, 20))
    # The same file built with --quantize int4: a decode step reads every weight once, so its
    # time is the weights' bytes over memory bandwidth; 4-bit weights are a sixth of them.
    int4 = edgecc.compile(decode, "host", quantize="int4")
    session = onnxruntime_session(decode, args.threads)
    want, got = session.run(None, feeds)[0], int4.run(feeds)["logits"]
    cosine = float(want.ravel() @ got.ravel() / np.linalg.norm(want) / np.linalg.norm(got))
    times = interleaved({"edgecc": bundle_runner(int4, feeds, args.threads, 20),
                         "onnxruntime": session_runner(session, feeds, 20)}, args.rounds)
    _row("hybrid decode, edgecc --quantize int4", times, f"  (logits cosine vs fp32 {cosine:.4f})")


def scans(args) -> None:
    cfg = hybrid_mamba.Config()
    for steps in (args.steps, 64):
        model = ssm.linear_attention_model("gated", steps, cfg.heads, cfg.heads, cfg.d_state, cfg.head_dim)
        feeds = ssm.linear_attention_inputs(model)
        _row(f"LinearAttention gated H={cfg.heads} {cfg.d_state}x{cfg.head_dim} T={steps}",
             _versus(model, feeds, args.threads, args.rounds, 3), "  (ORT: its Scan function body)")
    for steps, channels, state in ((args.steps, 1024, 16), (args.steps, 256, 16)):
        model = ssm.selective_scan_model(steps, channels, state)
        feeds = ssm.selective_scan_inputs(model)
        bundle = edgecc.compile(model, "host")
        scan = ssm.selective_scan_model(steps, channels, state, as_scan=True)
        session = onnxruntime_session(scan, args.threads)
        times = interleaved({"edgecc": bundle_runner(bundle, feeds, args.threads, 3),
                             "onnxruntime": session_runner(session, feeds, 3)}, args.rounds)
        _row(f"SelectiveScan D={channels} N={state} T={steps}", times, "  (ORT: the same recurrence as Scan)")


def chunks(args) -> None:
    """The prefill kernel's chunk (``LinearAttention``'s ``chunk_size``, set on the node) swept."""
    for rule, hq, hk, dk, dv in (("gated", 16, 16, 64, 64), ("gated", 8, 8, 128, 64), ("linear", 8, 4, 64, 64)):
        runners = {}
        for chunk in (1, 2, 4, 8):
            model = ssm.linear_attention_model(rule, args.steps, hq, hk, dk, dv, chunk_size=chunk)
            feeds = ssm.linear_attention_inputs(model)
            runners[chunk] = bundle_runner(edgecc.compile(model, "host"), feeds, args.threads, 3)
        times = interleaved(runners, args.rounds)
        print(f"LinearAttention {rule} {hq}/{hk} heads {dk}x{dv} T={args.steps}: "
              + ", ".join(f"chunk {c} {ms:.3f} ms" for c, ms in times.items()), flush=True)


def decode_traffic(args) -> None:
    cfg = hybrid_mamba.Config()
    model = ssm.linear_attention_model("gated", 1, cfg.heads, cfg.heads, cfg.d_state, cfg.head_dim)
    feeds = ssm.linear_attention_inputs(model)
    bundle = edgecc.compile(model, "host")
    session = onnxruntime_session(model, args.threads)
    times = interleaved({"edgecc": bundle_runner(bundle, feeds, args.threads, 200),
                         "onnxruntime": session_runner(session, feeds, 200)}, args.rounds)
    state_bytes = cfg.heads * cfg.d_state * cfg.head_dim * 4
    moved = 2 * state_bytes  # past_state read, present_state written
    achieved = moved / (times["edgecc"] * 1e-3) / 1e9
    _row("LinearAttention decode step (T=1)", times)
    cached, memory = copy_bandwidth(moved, args.threads), copy_bandwidth(2 ** 30, args.threads, repeat=3)
    print(f"  state traffic {moved / 2**10:.0f} KiB a step (state {state_bytes / 2**10:.0f} KiB): "
          f"{achieved:.1f} GB/s; copy of the same size {cached:.1f} GB/s ({achieved / cached:.0%}), "
          f"copy of 1 GiB {memory:.1f} GB/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=1024)
    parser.add_argument("--skip-model", action="store_true", help="only the scan kernels")
    parser.add_argument("--chunks", action="store_true", help="also sweep the prefill kernel's chunk")
    args = parser.parse_args()
    if not args.skip_model:
        hybrid(args)
    scans(args)
    if args.chunks:
        chunks(args)
    decode_traffic(args)


if __name__ == "__main__":
    main()
