"""State-space ops: ONNX LinearAttention (every update rule, GQA, decode and prefill, with
and without past state), CausalConvWithState, and ai.edgecc::SelectiveScan, compiled to
edgecc's scan kernels and compared with onnx.reference / the NumPy reference; on the host,
and on arm and riscv under qemu."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import edgecc
from edgecc import ssm

# float32 recurrences summed in another order than the references': over up to 1000 steps
# the state's rounding differs by a few ulp of its largest values.
RTOL, ATOL = 1e-4, 1e-4

# (rule, T, q heads, kv heads, d_k, d_v, past, decay, beta): every T in {1, 7, 64, 1000},
# d_k (the state size) in {16, 64, 128}, GQA ratios 1, 2, 4 and MQA, with and without past.
CASES = [
    ("linear", 1, 2, 2, 16, 16, False, "head", "head"),
    ("linear", 64, 4, 2, 64, 32, True, "head", "head"),
    ("gated", 1, 4, 4, 64, 64, True, "head", "head"),
    ("gated", 7, 8, 2, 16, 32, True, "head", "head"),
    ("gated", 64, 2, 2, 128, 64, False, "key", "head"),
    ("gated", 1000, 4, 4, 64, 64, True, "head", "head"),
    ("delta", 7, 2, 2, 16, 16, True, "head", "head"),
    ("delta", 1000, 2, 1, 128, 32, False, "head", "one"),
    ("gated_delta", 1, 4, 2, 128, 64, True, "head", "head"),
    ("gated_delta", 64, 4, 1, 64, 64, True, "key", "one"),
    ("gated_delta", 1000, 2, 2, 16, 16, True, "head", "head"),
]


def _check(model, feeds, got: dict):
    expected = ReferenceEvaluator(model).run(None, feeds)
    for value, want in zip(model.graph.output, expected):
        np.testing.assert_allclose(got[value.name], want, rtol=RTOL, atol=ATOL, err_msg=value.name)


def _scan_rules(bundle) -> list[str]:
    kernels = next(p for p in bundle.manifest["passes"] if p["phase"] == "schedule")["kernels"]
    return [rule.split(" chunks")[0] for rule in kernels.values() if rule.startswith("scan[")]


@pytest.mark.parametrize("rule,steps,hq,hk,dk,dv,past,decay,beta", CASES)
def test_linear_attention(rule, steps, hq, hk, dk, dv, past, decay, beta):
    model = ssm.linear_attention_model(rule, steps, hq, hk, dk, dv, past, decay, beta)
    feeds = ssm.linear_attention_inputs(model)
    bundle = edgecc.compile(model, "host")
    assert _scan_rules(bundle) == ["scan[linear_attention]"]
    _check(model, feeds, bundle.run(feeds))


@pytest.mark.parametrize("rule,chunk,steps,hq,dk", [
    ("gated", 1, 29, 4, 32), ("gated", 3, 29, 4, 32), ("gated", 8, 1000, 2, 128), ("linear", 8, 37, 2, 64)])
def test_linear_attention_chunk_size_sets_the_prefill_chunk(rule, chunk, steps, hq, dk):
    """``chunk_size`` on the node is the kernel's chunk (GQA too; the tokens after the last
    whole chunk go one by one); the result does not change."""
    model = ssm.linear_attention_model(rule, steps, hq, 2, dk, 32, True, chunk_size=chunk)
    feeds = ssm.linear_attention_inputs(model)
    bundle = edgecc.compile(model, "host")
    kernels = next(p for p in bundle.manifest["passes"] if p["phase"] == "schedule")["kernels"]
    expected = "scan[linear_attention]" + ("" if chunk == 1 else f" chunks of {chunk}")
    assert list(kernels.values()) == [expected]
    _check(model, feeds, bundle.run(feeds))


def _causal_conv_model(steps, channels, taps, bias, past, activation):
    rng = np.random.default_rng(0)
    value = helper.make_tensor_value_info
    inits = [onnx.numpy_helper.from_array(rng.standard_normal((channels, 1, taps)).astype(np.float32), "w")]
    names = ["x", "w", "bias" if bias else ""]
    if bias:
        inits.append(onnx.numpy_helper.from_array(rng.standard_normal(channels).astype(np.float32), "bias"))
    inputs = [value("x", TensorProto.FLOAT, [2, channels, steps])]
    if past:
        names.append("past")
        inputs.append(value("past", TensorProto.FLOAT, [2, channels, taps - 1]))
    while names[-1] == "":
        names.pop()
    node = helper.make_node("CausalConvWithState", names, ["y", "state"], activation=activation)
    graph = helper.make_graph([node], "causal_conv", inputs,
                              [value("y", TensorProto.FLOAT, None), value("state", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 27)], ir_version=11)


@pytest.mark.parametrize("steps,taps,bias,past,activation", [
    (1, 4, True, True, "silu"), (64, 4, False, False, "none"), (2, 4, True, False, "swish"), (33, 3, True, True, "none")])
def test_causal_conv_with_state(steps, taps, bias, past, activation):
    model = _causal_conv_model(steps, 48, taps, bias, past, activation)
    rng = np.random.default_rng(1)
    feeds = {v.name: rng.standard_normal([d.dim_value for d in v.type.tensor_type.shape.dim]).astype(np.float32)
             for v in model.graph.input}
    _check(model, feeds, edgecc.compile(model, "host").run(feeds))


def _selective_reference(model, feeds):
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    node = model.graph.node[0]
    softplus = bool(next(a.i for a in node.attribute if a.name == "delta_softplus"))
    return ssm.selective_scan_reference(feeds["x"], feeds["delta"], weights["A"], feeds["B"], feeds["C"],
                                        weights.get("D"), feeds.get("z"), weights.get("delta_bias"),
                                        feeds.get("initial_state"), softplus)


@pytest.mark.parametrize("steps,channels,state,options", [
    (1, 32, 16, dict(initial_state=True)),
    (7, 40, 16, dict(gate=False, skip=False, delta_bias=False, delta_softplus=False)),
    (64, 64, 64, {}),
    (1000, 32, 128, dict(initial_state=True)),
])
def test_selective_scan(steps, channels, state, options):
    model = ssm.selective_scan_model(steps, channels, state, **options)
    feeds = ssm.selective_scan_inputs(model)
    bundle = edgecc.compile(model, "host")
    assert _scan_rules(bundle) == ["scan[selective_scan]"]
    got = bundle.run(feeds)
    y, final = _selective_reference(model, feeds)
    np.testing.assert_allclose(got["y"], y, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got["final_state"], final, rtol=RTOL, atol=ATOL)


def test_selective_scan_op_matches_its_scan_form():
    """The op and the helper's ONNX Scan form of the same recurrence (run by ONNX Runtime) agree."""
    import onnxruntime as ort

    model = ssm.selective_scan_model(33, 32, 16)
    feeds = ssm.selective_scan_inputs(model)
    scan = ssm.selective_scan_model(33, 32, 16, as_scan=True)
    session = ort.InferenceSession(scan.SerializeToString(), providers=["CPUExecutionProvider"])
    y, final = _selective_reference(model, feeds)
    got = session.run(None, feeds)
    np.testing.assert_allclose(got[0], y, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got[1], final, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("target", ["arm", "riscv"])
def test_scan_kernels_under_qemu(target):
    """The same kernels cross-compiled, run under qemu-user, against the references."""
    model = ssm.linear_attention_model("gated_delta", 7, 4, 2, 16, 32, True, "head", "head")
    feeds = ssm.linear_attention_inputs(model)
    _check(model, feeds, edgecc.compile(model, target).run(feeds))
    model = ssm.linear_attention_model("gated", 5, 2, 2, 16, 16, False, "key", "head")
    feeds = ssm.linear_attention_inputs(model)
    _check(model, feeds, edgecc.compile(model, target).run(feeds))
    model = ssm.linear_attention_model("gated", 11, 2, 2, 16, 16, True, chunk_size=8)  # chunks of 8 + a tail
    feeds = ssm.linear_attention_inputs(model)
    _check(model, feeds, edgecc.compile(model, target).run(feeds))
    model = ssm.selective_scan_model(9, 32, 16)
    feeds = ssm.selective_scan_inputs(model)
    got = edgecc.compile(model, target).run(feeds)
    y, final = _selective_reference(model, feeds)
    np.testing.assert_allclose(got["y"], y, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got["final_state"], final, rtol=RTOL, atol=ATOL)
    conv = _causal_conv_model(6, 16, 4, True, True, "silu")
    rng = np.random.default_rng(1)
    feeds = {v.name: rng.standard_normal([d.dim_value for d in v.type.tensor_type.shape.dim]).astype(np.float32)
             for v in conv.graph.input}
    _check(conv, feeds, edgecc.compile(conv, target).run(feeds))


@pytest.mark.parametrize("target", ["host", "arm"])
def test_scan_loop_is_rewritten_to_a_scan_kernel(target):
    """Mamba's recurrence written as an ONNX Scan compiles to the diagonal-scan kernel (not an
    unrolled loop) and matches ONNX Runtime running the Scan; 300 steps exceed the unroll limit."""
    import onnxruntime as ort

    from edgecc.frontend.simplify import UNROLL_LIMIT

    steps = 300
    assert steps > UNROLL_LIMIT
    model = ssm.selective_scan_model(steps, 32, 16, as_scan=True)
    feeds = ssm.selective_scan_inputs(model)
    bundle = edgecc.compile(model, target)
    assert _scan_rules(bundle) == ["scan[diagonal_scan]"]
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    got = bundle.run(feeds)
    np.testing.assert_allclose(got["y"], expected[0], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got["final_state"], expected[1], rtol=RTOL, atol=ATOL)


def _scan_kernel_matches_onnxruntime(model, feeds):
    """``model`` builds with its Scan as the linear-attention kernel and matches ONNX Runtime."""
    import onnxruntime as ort

    bundle = edgecc.compile(model, "host")
    assert _scan_rules(bundle) == ["scan[linear_attention]"]
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    got = bundle.run(feeds)
    for value, want in zip(model.graph.output, expected):
        np.testing.assert_allclose(got[value.name], want, rtol=RTOL, atol=ATOL, err_msg=value.name)


@pytest.mark.parametrize("rule,hq,hk,dk,dv,decay,beta", [
    ("linear", 4, 2, 16, 16, "head", "head"), ("gated", 2, 2, 64, 32, "key", "head"),
    ("delta", 2, 2, 16, 16, "head", "one"), ("gated_delta", 4, 2, 32, 16, "head", "head")])
def test_linear_attention_scan_body_is_rewritten_to_the_kernel(rule, hq, hk, dk, dv, decay, beta):
    """LinearAttention's own ONNX function body (a Scan over time, what ONNX Runtime runs and an
    exporter writes) compiles to the linear-attention kernel, not an unrolled loop, and matches
    ONNX Runtime running the Scan; 300 steps exceed the unroll limit."""
    model = ssm.linear_attention_model(rule, 300, hq, hk, dk, dv, decay=decay, beta=beta, as_scan=True)
    assert "Scan" in [n.op_type for n in model.graph.node]
    feeds = ssm.linear_attention_inputs(ssm.linear_attention_model(rule, 300, hq, hk, dk, dv, decay=decay, beta=beta))
    _scan_kernel_matches_onnxruntime(model, feeds)


def _exporter_scan(batch: int | None, heads=2, d_k=8, d_v=4, steps=40) -> onnx.ModelProto:
    """Gated linear attention as an exporter might write it: time-major inputs, a state of
    [B, H, d_k, d_v] (or [H, d_k, d_v] with ``batch`` None), the decay already a factor's log
    per head, Einsum for the outer product and the readout, and a scale of 1/8 as a constant."""
    lead = [] if batch is None else [batch]
    sub = "" if batch is None else "b"
    value = helper.make_tensor_value_info
    f = TensorProto.FLOAT
    body = helper.make_graph([
        helper.make_node("Exp", ["g"], ["factor"]),
        helper.make_node("Unsqueeze", ["factor", "axes"], ["factor4"]),
        helper.make_node("Mul", ["factor4", "s"], ["kept"]),
        helper.make_node("Einsum", ["k", "v"], ["written"], equation=f"{sub}hk,{sub}hv->{sub}hkv"),
        helper.make_node("Add", ["written", "kept"], ["s_next"]),
        helper.make_node("Einsum", ["s_next", "q"], ["read"], equation=f"{sub}hkv,{sub}hk->{sub}hv"),
        helper.make_node("Mul", ["read", "eighth"], ["o"])], "step",
        [value("s", f, lead + [heads, d_k, d_v]), value("q", f, lead + [heads, d_k]),
         value("k", f, lead + [heads, d_k]), value("v", f, lead + [heads, d_v]), value("g", f, lead + [heads, 1])],
        [value("s_next", f, lead + [heads, d_k, d_v]), value("o", f, lead + [heads, d_v])],
        [onnx.numpy_helper.from_array(np.array([-1], np.int64), "axes"),
         onnx.numpy_helper.from_array(np.array(0.125, np.float32), "eighth")])
    inputs = [value("s0", f, lead + [heads, d_k, d_v])] + [
        value(n, f, [steps, *lead, heads, d]) for n, d in (("q_seq", d_k), ("k_seq", d_k), ("v_seq", d_v), ("g_seq", 1))]
    outputs = [value("s_last", f, lead + [heads, d_k, d_v]), value("o_seq", f, [steps, *lead, heads, d_v])]
    scan = helper.make_node("Scan", ["s0", "q_seq", "k_seq", "v_seq", "g_seq"], ["s_last", "o_seq"],
                            num_scan_inputs=4, body=body)
    graph = helper.make_graph([scan], "exported_scan", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("batch", [None, 1, 3])
def test_exporter_written_linear_attention_scan(batch):
    """A Scan spelled differently from the op's function body (Einsum, a batchless state,
    batch 3, opset 17) is recognised too, and matches ONNX Runtime."""
    model = _exporter_scan(batch)
    rng = np.random.default_rng(3)
    feeds = {}
    for value in model.graph.input:
        shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
        sample = np.log(rng.uniform(0.8, 1.0, shape)) if value.name == "g_seq" else rng.standard_normal(shape)
        feeds[value.name] = sample.astype(np.float32)
    _scan_kernel_matches_onnxruntime(model, feeds)


@pytest.fixture(scope="module")
def chunk_tuned(tmp_path_factory):
    """A gated LinearAttention (static T = 96) tuned: every chunk of its kernel measured."""
    from edgecc.tuning import tune

    model = ssm.linear_attention_model("gated", 96, 4, 4, 32, 32)
    path = tmp_path_factory.mktemp("chunks") / "log.jsonl"
    progress = []
    tune(model, "host", log=path, trials=4, progress=progress.append)
    return model, path, progress


def test_tune_measures_every_chunk_of_a_scan_kernel(chunk_tuned):
    import json

    _, path, progress = chunk_tuned
    records = [json.loads(line) for line in path.read_text().splitlines()[1:] if line.strip()]
    chunks = sorted(r["kernel"] for r in records if r["kernel"].startswith("linear_attention"))
    assert chunks == [f"linear_attention[chunk {c}]" for c in (1, 2, 4, 8)], chunks
    assert all(r["latency_us"] > 0 and r["trials"] == 0 for r in records if r["kernel"] in chunks)
    fastest = min((r for r in records if r["kernel"] in chunks), key=lambda r: r["latency_us"])["kernel"]
    assert any(line.startswith(f"linear_attention: chunk {fastest.split()[-1].rstrip(']')} (") for line in progress)


@pytest.mark.parametrize("chunk", [1, 4])
def test_build_takes_the_fastest_chunk_in_the_log(chunk_tuned, chunk, tmp_path):
    """A log saying chunk ``chunk`` is fastest makes the build take it, whatever the node's
    default; the output stays exact."""
    import json

    model, path, _ = chunk_tuned
    lines = path.read_text().splitlines()
    out = [lines[0]]
    for line in lines[1:]:
        record = json.loads(line)
        if record["kernel"].startswith("linear_attention["):
            record["latency_us"] = 1.0 if record["kernel"] == f"linear_attention[chunk {chunk}]" else 1000.0
        out.append(json.dumps(record))
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(out) + "\n")
    bundle = edgecc.compile(model, "host", tuning_log=[log])
    kernels = next(p for p in bundle.manifest["passes"] if p["phase"] == "schedule")["kernels"]
    [rule] = [r for r in kernels.values() if r.startswith("scan[")]
    assert rule.startswith("scan[linear_attention]" + (f" chunks of {chunk}" if chunk > 1 else " (")), rule
    assert "chunk tuned" in rule and "linear_attention" in bundle.manifest["tuning_records"]["kernels"]
    feeds = ssm.linear_attention_inputs(model)
    _check(model, feeds, bundle.run(feeds))


def _scan_kernel_ir(model, target: str) -> str:
    """The LLVM IR of ``model``'s scan kernel as a build for ``target`` schedules it."""
    import re

    import tvm

    from edgecc.frontend import import_onnx
    from edgecc.pipeline import run_phases
    from edgecc.targets import get_target

    preset = get_target(target)
    mod, _, _ = import_onnx(model)
    scheduled, _ = run_phases(mod, preset, preset.tvm_target(), until="schedule")
    [(gvar, func)] = [(g, f) for g, f in scheduled.functions_items()
                      if isinstance(f, tvm.tirx.PrimFunc) and re.search("scan|linear_attention", g.name_hint)]
    with preset.tvm_target():
        return tvm.tirx.build(func.with_attr("global_symbol", gvar.name_hint), preset.tvm_target()).inspect_source("ll")


def _rvv_models():
    return [ssm.linear_attention_model("gated_delta", 7, 4, 2, 16, 32, True, "head", "head"),
            ssm.linear_attention_model("gated", 9, 2, 2, 16, 64, True, "key", "head"),
            ssm.selective_scan_model(9, 32, 16), ssm.selective_scan_model(9, 48, 64, gate=False),
            ssm.selective_scan_model(40, 32, 16, as_scan=True)]


@pytest.mark.parametrize("index", range(5))
def test_rvv_scan_kernels_are_vlen_agnostic(index):
    """On RISC-V every float vector operation of a scan kernel is scalable (``<vscale x N x
    float>``: the vector length is read from the CPU at run time, vsetvli), none fixed-width."""
    import re

    ir = _scan_kernel_ir(_rvv_models()[index], "riscv")
    ops = re.findall(r"= (?:fmul|fadd|fsub|call)[^\n]*?<(vscale x )?(\d+) x float>", ir)
    assert any(scalable for scalable, _ in ops), "no scalable float vectors"
    fixed = [lanes for scalable, lanes in ops if not scalable and int(lanes) > 1]
    assert not fixed, f"fixed-width float vectors: {sorted(set(fixed))}"


@pytest.mark.parametrize("vlen", [128, 512, 1024])
def test_rvv_build_runs_at_any_vlen(vlen, monkeypatch):
    """One build for RVV's minimum VLEN (riscv-vlen128) runs correctly under qemu at VLEN 128,
    512 and 1024: the scan kernels adapt to the vector length they find."""
    import edgecc.runtime

    prefix = edgecc.runtime.emulator_prefix
    monkeypatch.setattr(edgecc.runtime, "emulator_prefix", lambda arch, _vlen=None: prefix(arch, vlen))
    import onnxruntime as ort

    for model in _rvv_models():
        bundle = edgecc.compile(model, "riscv-vlen128")
        assert f"vlen={vlen}" in " ".join(bundle.command())
        ops = {n.op_type for n in model.graph.node}
        if "LinearAttention" in ops:
            feeds = ssm.linear_attention_inputs(model)
            _check(model, feeds, bundle.run(feeds))
            continue
        feeds = ssm.selective_scan_inputs(model)
        got = bundle.run(feeds)
        if "SelectiveScan" in ops:
            y, final = _selective_reference(model, feeds)
        else:  # the recurrence as a Scan: ONNX Runtime runs it
            y, final = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
                None, feeds)
        np.testing.assert_allclose(got["y"], y, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(got["final_state"], final, rtol=RTOL, atol=ATOL)
