"""Tuning end to end: ``tune`` measures real kernels into a log, builds use it, and the
``edgecc logs`` tools (import, merge, export, verify) check what they are given.

One local tuning run (10 trials) and one through a real TVM RPC tracker and server (6 trials)
are shared by the whole module; each trial costs a couple of seconds on two cores.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import types

import numpy as np
import onnx
import pytest
import tvm
import tvm_ffi
from onnx import TensorProto, helper, numpy_helper

import edgecc
from edgecc.cli import main
from edgecc.errors import UserInputError
from edgecc.targets import get_target
from edgecc.tuning import TuningLogError, logs, tune, tuner
from edgecc.tuning.log import canonical_target, new_header, parse_kernel, read_log, target_key, workload_key

from ..conftest import onnxruntime_outputs

HOST_KEY = target_key(canonical_target(get_target("host")))
ARM_KEY = target_key(canonical_target(get_target("arm")))
RPC_KEY = "edgecc-test"
TRIALS = 10


def convnet(seed=0, channels=16, hidden=32, second=16, second_kernel=3, size=20) -> onnx.ModelProto:
    """Conv 3x3 (bias) -> Relu -> Conv (bias) -> Relu -> GlobalAveragePool -> Flatten -> Gemm to 10."""
    rng = np.random.default_rng(seed)

    def weight(name, shape):
        return numpy_helper.from_array((0.1 * rng.standard_normal(shape)).astype(np.float32), name)

    pad = (second_kernel - 1) // 2
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], kernel_shape=[second_kernel] * 2,
                              pads=[pad] * 4),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], transB=1)]
    graph = helper.make_graph(
        nodes, "convnet", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        initializer=[weight("w1", (hidden, channels, 3, 3)), weight("b1", (hidden,)),
                     weight("w2", (second, hidden, second_kernel, second_kernel)), weight("b2", (second,)),
                     weight("w3", (10, second)), weight("b3", (10,))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def model_a() -> onnx.ModelProto:
    """Two 3x3 convs of about equal cost: 10 trials spread over both (two records). Their channel
    counts (14, 48 then 48, 8) keep them direct: Winograd's choice is test_winograd's. (The first
    reads its 14-channel input in place, so it has the more multiply-adds of the two.)"""
    return convnet(channels=14, hidden=48, second=8)


def model_b() -> onnx.ModelProto:
    """Other shapes (no kernel in common with model A); its first conv is most of its time."""
    return convnet(seed=1, channels=8, hidden=48, second=8, second_kernel=1, size=24)


def lines_of(path) -> list[dict]:
    return [json.loads(line) for line in open(path).read().splitlines() if line.strip()]


def write_lines(path, items) -> None:
    path.write_text("".join((item if isinstance(item, str) else json.dumps(item)) + "\n" for item in items))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    onnx.save(model_a(), str(root / "a.onnx"))
    onnx.save(model_b(), str(root / "b.onnx"))
    return types.SimpleNamespace(a=root / "a.onnx", b=root / "b.onnx")


@pytest.fixture(scope="module")
def tuned(models, tmp_path_factory):
    """Model A tuned once on this machine, ``TRIALS`` trials, into a fresh log."""
    path = tmp_path_factory.mktemp("tuned") / "a.jsonl"
    progress = []
    start = time.monotonic()
    summary = tune(models.a, "host", log=path, trials=TRIALS, progress=progress.append)
    lines = lines_of(path)
    return types.SimpleNamespace(path=path, summary=summary, progress=progress, header=lines[0],
                                 records=lines[1:], wall=time.monotonic() - start)


# -- tune ------------------------------------------------------------------------------------------------


def test_tune_writes_header_and_records(tuned, models):
    header, records, summary = tuned.header, tuned.records, tuned.summary
    assert header["edgecc_tuning_log"] == 1
    assert header["target_key"] == HOST_KEY == target_key(header["target"])
    assert header["versions"] == {"edgecc": edgecc.__version__, "tvm": tvm.__version__,
                                  "tvm_ffi": tvm_ffi.__version__}
    assert header["device"]["cores"] == os.cpu_count()

    # both 3x3 convs are ~half the model's time: each gets trials and a record
    assert len(records) == 2, "\n".join(tuned.progress)
    assert summary.trials > 0
    assert summary.trials == sum(r["trials"] for r in records) <= TRIALS
    assert sorted(r.name for r in summary.results) == sorted(r["kernel"] for r in records)
    assert summary.already_tuned == 0 and summary.kernels == 6
    assert len({r["workload"] for r in records}) == 2
    for record, result in zip(sorted(records, key=lambda r: r["kernel"]),
                              sorted(summary.results, key=lambda r: r.name)):
        assert re.fullmatch(r"[0-9a-f]{64}", record["workload"])
        assert record["kernel"].startswith("fused_conv2d")
        assert 0 < record["latency_us"] <= record["default_us"] < 1e6
        assert record["latency_us"] == round(result.best_us, 3)
        assert record["default_us"] == round(result.default_us, 3)
        assert record["trials"] >= tuner.MIN_TRIALS
        assert record["measured"] == {"runner": "local", **tuner.EVALUATOR, "statistic": "mean",
                                      "threads": int(os.environ.get("TVM_NUM_THREADS", os.cpu_count()))}
        assert isinstance(record["trace"], list) and len(record["trace"]) == 2
        assert record["trace"][0][0][0] == "GetSBlock"
        # the record carries its kernel: it hashes back to its workload key
        assert workload_key(parse_kernel(record["func"])) == record["workload"]


def test_rerun_with_same_log_resumes_with_what_is_left(tuned, models, tmp_path):
    log = tmp_path / "again.jsonl"  # a copy: the other tests use the log as tuned once
    shutil.copy(tuned.path, log)
    before = log.read_bytes()
    progress = []
    start = time.monotonic()
    summary = tune(models.a, "host", log=log, trials=TRIALS, progress=progress.append)
    assert summary.already_tuned == len(tuned.records) == 2
    assert f"2 already in {log}" in progress[0]
    # the kernels in the log are not tuned again, and their records are kept as they were
    logged = {r["kernel"] for r in tuned.records}
    assert not logged & {r.name for r in summary.results}
    assert log.read_bytes().startswith(before)
    # a rerun spends its trials only on kernels the log does not have yet, appending their records
    assert log.read_bytes().startswith(before)
    kept, _ = read_log(log)
    for record in tuned.records:
        assert kept.records[record["workload"]] == record


def test_cold_caches_measure_with_weights_flushed_and_keep_a_log_one_way(models, tmp_path):
    log = tmp_path / "cold.jsonl"
    summary = tune(models.a, "host", log=log, trials=TRIALS, cold_caches=True, progress=lambda _: None)
    records = lines_of(log)[1:]
    assert records and summary.trials > 0
    assert all(r["measured"]["enable_cpu_cache_flush"] is True and r["measured"]["number"] == 1 for r in records)
    with pytest.raises(UserInputError, match="measured with cold caches"):
        tune(models.a, "host", log=log, trials=tuner.MIN_TRIALS, progress=lambda _: None)


# -- build with a log ------------------------------------------------------------------------------------


def test_build_with_log_uses_records_and_matches_onnxruntime(tuned, models):
    model = model_a()
    x = np.random.default_rng(7).standard_normal((1, 14, 20, 20)).astype(np.float32)
    bundle = edgecc.compile(model, "host", tuning_log=tuned.path)
    report = bundle.manifest["tuning_records"]
    assert report["from_log"] == 2 >= 1
    assert report["replay_failed"] == {} and report["notes"] == []
    assert report["fallback"] >= 1  # the model's other kernels keep the default rules
    assert {k["workload"] for k in report["kernels"].values()} == {r["workload"] for r in tuned.records}
    assert {k["log"] for k in report["kernels"].values()} == {str(tuned.path)}

    tuned_out = bundle.run({"x": x})["y"]
    reference = onnxruntime_outputs(model, {"x": x})[0]
    assert tuned_out.shape == (1, 10) and np.abs(reference).max() > 1e-3
    np.testing.assert_allclose(tuned_out, reference, rtol=1e-4, atol=1e-5)

    untuned = edgecc.compile(model, "host")
    assert untuned.manifest["tuning_records"] == []
    np.testing.assert_allclose(tuned_out, untuned.run({"x": x})["y"], rtol=1e-4, atol=1e-5)


@pytest.fixture
def arm_toolchain(monkeypatch):
    """The arm build must get as far as reading the log even without the cross compiler."""
    if shutil.which("aarch64-linux-gnu-g++") is None:
        from edgecc.targets.base import TargetPreset

        monkeypatch.setattr(TargetPreset, "require_toolchain", lambda self: "/usr/bin/false")


@pytest.fixture
def no_compile(monkeypatch):
    """Fails the test if the build imports or compiles the model (the log is checked first)."""
    import edgecc.api
    import edgecc.pipeline

    def compiled(*args, **kwargs):
        raise AssertionError("the model was imported/compiled before the tuning log was checked")

    monkeypatch.setattr(edgecc.api, "import_onnx", compiled)
    monkeypatch.setattr(edgecc.pipeline, "build_executable", compiled)


def test_host_log_is_refused_for_another_target(tuned, models, arm_toolchain, no_compile, capsys):
    with pytest.raises(TuningLogError) as caught:
        edgecc.compile(model_a(), "arm", tuning_log=tuned.path)
    message = str(caught.value)
    assert HOST_KEY in message and ARM_KEY in message and str(tuned.path) in message

    capsys.readouterr()
    out_dir = tuned.path.parent / "arm-bundle"
    code = main(["build", str(models.a), "--target", "arm", "--tuning-log", str(tuned.path), "-o", str(out_dir)])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.count("\n") == 1 and captured.err.startswith("edgecc: error: ")
    assert HOST_KEY in captured.err and ARM_KEY in captured.err
    assert "Traceback" not in captured.err + captured.out
    assert not out_dir.exists()


# -- knobs of hand-written kernels ----------------------------------------------------------------------


def _int8_layers(bundle) -> list[dict]:
    return next(p for p in bundle.manifest["passes"] if p["phase"] == "graph")["int8_layers"]


def test_int8_kernel_knobs_are_measured_and_the_build_writes_the_fastest(tmp_path):
    """An INT8 matmul's tile width and rows a pass are knobs tuning measures candidate by
    candidate; a build writes each kernel with the fastest recorded, its weight packed to match
    (a non-default width is made the fastest here, so the repacked weight is what runs)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from edgecc.schedules import knobs
    from edgecc.zoo import ffn_model

    onnx.save(ffn_model(d_model=64, hidden=256, seq=8), str(tmp_path / "ffn.onnx"))
    quantize_dynamic(tmp_path / "ffn.onnx", tmp_path / "ffn8.onnx", weight_type=QuantType.QInt8)
    model, log = onnx.load(str(tmp_path / "ffn8.onnx")), tmp_path / "int8.jsonl"
    progress = []
    tune(model, "host", log=log, trials=1, progress=progress.append)
    header, *records = lines_of(log)
    layers: dict[str, list[dict]] = {}
    for record in records:
        spec = knobs.Spec.from_json(record["knobs"])
        assert spec.kind == "int8_matmul" and record["trials"] == 0
        assert record["latency_us"] == record["default_us"] > 0
        assert record["kernel"].endswith(f"[{spec.label}]")
        layers.setdefault(json.dumps(spec.args, sort_keys=True), []).append(record)
    assert len(layers) == 2, "\n".join(progress)  # the FFN's two matmuls
    assert all(len(found) >= 4 for found in layers.values())
    assert sum(": c" in line and " us" in line for line in progress) == 2  # each layer's measured knobs

    # per layer, the narrowest width is made the fastest: the build writes and packs for it
    chosen = []
    for found in layers.values():
        narrow = min(found, key=lambda r: (knobs.Spec.from_json(r["knobs"]).knobs["c"], r["latency_us"]))
        narrow["latency_us"] = 0.5
        chosen.append(knobs.Spec.from_json(narrow["knobs"]).label)
    assert all(not label.startswith("c4 ") for label in chosen)
    write_lines(log, [header, *records])
    bundle = edgecc.compile(model, "host", tuning_log=log)
    assert sorted(layer["knobs"] for layer in _int8_layers(bundle)) == sorted(chosen)
    assert all(layer["knobs_tuned"].startswith("tuned (") for layer in _int8_layers(bundle))
    assert bundle.manifest["tuning_records"]["from_log"] == 2
    untuned = edgecc.compile(model, "host")
    assert all(layer["knobs"].startswith("c4 ") for layer in _int8_layers(untuned))
    x = {"x": np.random.default_rng(3).standard_normal((1, 8, 64)).astype(np.float32)}
    got, reference = bundle.run(x)["y"], onnxruntime_outputs(model, x)[0]
    np.testing.assert_allclose(got, untuned.run(x)["y"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got, reference, rtol=1e-3, atol=1e-3 * np.abs(reference).max())

    # a record whose knobs do not write its kernel is refused on import
    forged = dict(records[0], knobs=json.dumps({**json.loads(records[0]["knobs"]), "knobs": {"c": 1, "rows": 1}}))
    with pytest.raises(ValueError, match="knobs do not write its kernel"):
        logs.replay(forged)


# -- edgecc logs -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def untrusted(tuned, rpc_tuned, tmp_path_factory):
    """A copy of real records with three kinds of damage: a bad trace, an altered kernel, a cut line."""
    good, bad_trace = sorted(tuned.records, key=lambda r: r["kernel"])
    other = rpc_tuned.records[0]
    bad_trace = json.loads(json.dumps(bad_trace))
    first = bad_trace["trace"][0][0]
    assert first[0] == "GetSBlock" and first[2][0] == "root"
    first[2][0] = "nope"  # the trace looks up a block that does not exist
    bad_func = dict(other, func=other["func"].replace("T.float32(0.0))", "T.float32(1.0))"))
    assert bad_func["func"] != other["func"]
    cut = json.dumps(good)[:500]
    path = tmp_path_factory.mktemp("untrusted") / "shared.jsonl"
    write_lines(path, [tuned.header, good, bad_trace, bad_func])
    with path.open("a") as f:
        f.write(cut)  # the last line, cut off mid-write
    return types.SimpleNamespace(path=path, good=good, bad_trace=bad_trace, bad_func=bad_func)


def test_import_keeps_valid_records_and_rejects_each_bad_one(untrusted, tmp_path, capsys):
    into = tmp_path / "mine.jsonl"
    said = []
    added, rejections = logs.import_log(untrusted.path, into, out=said.append)
    assert added == 1
    assert len(rejections) == 3, rejections
    assert rejections[0] == "line 5: not JSON (truncated?)"
    by_workload = {r.split(" (")[1][:12]: r for r in rejections[1:]}
    assert "trace does not replay on its kernel" in by_workload[untrusted.bad_trace["workload"][:12]]
    assert "kernel does not match its workload key" in by_workload[untrusted.bad_func["workload"][:12]]
    assert said[0].startswith(f"imported 1 of 4 records from {untrusted.path}")
    assert sum(line.startswith("  rejected ") for line in said) == 3

    header, *records = lines_of(into)
    assert header["target_key"] == HOST_KEY
    assert records == [untrusted.good]

    # the CLI says the same and exits 1 when anything was rejected
    capsys.readouterr()
    assert main(["logs", "import", str(untrusted.path), "--into", str(tmp_path / "cli.jsonl")]) == 1
    out = capsys.readouterr().out
    assert out.count("  rejected ") == 3 and "imported 1 of 4" in out
    assert lines_of(tmp_path / "cli.jsonl")[1:] == [untrusted.good]


def test_import_refuses_non_logs_and_other_targets(tuned, tmp_path):
    garbage = tmp_path / "garbage.jsonl"
    write_lines(garbage, ["this is not json", tuned.records[0]])
    with pytest.raises(TuningLogError, match="line 1 is not JSON"):
        logs.import_log(garbage, tmp_path / "into.jsonl", out=lambda line: None)
    assert not (tmp_path / "into.jsonl").exists()

    mine = tmp_path / "mine.jsonl"
    shutil.copy(tuned.path, mine)
    before = mine.read_bytes()
    arm = tmp_path / "arm.jsonl"
    write_lines(arm, [new_header(get_target("arm")), *tuned.records])
    with pytest.raises(TuningLogError) as caught:
        logs.import_log(arm, mine, out=lambda line: None)
    assert ARM_KEY in str(caught.value) and HOST_KEY in str(caught.value)
    assert mine.read_bytes() == before


def test_merge_keeps_the_fastest_record_per_workload(tuned, tmp_path):
    faster = json.loads(json.dumps(tuned.records[0]))
    faster["latency_us"] = round(faster["latency_us"] / 2, 3)
    other = tmp_path / "other.jsonl"
    write_lines(other, [tuned.header, faster])
    merged = logs.merge([tuned.path, other], tmp_path / "merged.jsonl", out=lambda line: None)
    header, *records = lines_of(tmp_path / "merged.jsonl")
    assert header == tuned.header
    latency = {r["workload"]: r["latency_us"] for r in records}
    assert len(records) == len(tuned.records) == len(merged.records)
    assert latency[faster["workload"]] == faster["latency_us"] < tuned.records[0]["latency_us"]
    slower = tuned.records[1]
    assert latency[slower["workload"]] == slower["latency_us"]

    # either order: the faster one wins
    logs.merge([other, tuned.path], tmp_path / "merged2.jsonl", out=lambda line: None)
    assert lines_of(tmp_path / "merged2.jsonl") == lines_of(tmp_path / "merged.jsonl")


def test_merge_refuses_logs_of_different_targets(tuned, tmp_path):
    arm = tmp_path / "arm.jsonl"
    write_lines(arm, [new_header(get_target("arm"))])
    with pytest.raises(TuningLogError) as caught:
        logs.merge([tuned.path, arm], tmp_path / "merged.jsonl", out=lambda line: None)
    assert ARM_KEY in str(caught.value) and HOST_KEY in str(caught.value)
    assert not (tmp_path / "merged.jsonl").exists()


def test_verify_tuned_log(tuned):
    said = []
    assert logs.verify(tuned.path, out=said.append) == 0
    assert sorted(line.split()[1] for line in said if line.startswith("  ok ")) == \
        sorted(r["kernel"] for r in tuned.records)
    assert said[-1].startswith(f"{tuned.path}: 2 of 2 kernels match the untuned build")


def test_export_keeps_only_the_models_records(tuned, models, tmp_path):
    mine = logs.export(tuned.path, tmp_path / "a.jsonl", model=models.a, out=lambda line: None)
    assert set(mine.records) == {r["workload"] for r in tuned.records}
    assert lines_of(tmp_path / "a.jsonl") == lines_of(tuned.path)

    theirs = logs.export(tuned.path, tmp_path / "b.jsonl", model=models.b, out=lambda line: None)
    assert theirs.records == {}
    assert lines_of(tmp_path / "b.jsonl") == [tuned.header]

    everything = logs.export(tuned.path, tmp_path / "all.jsonl", out=lambda line: None)
    assert len(everything.records) == 2


def test_export_from_merged_logs_of_two_models(tuned, rpc_tuned, models, tmp_path):
    merged = tmp_path / "both.jsonl"
    logs.merge([tuned.path, rpc_tuned.path], merged, out=lambda line: None)
    assert len(lines_of(merged)) == 1 + len(tuned.records) + len(rpc_tuned.records)
    for model, wanted in ((models.a, tuned.records), (models.b, rpc_tuned.records)):
        exported = logs.export(merged, tmp_path / "out.jsonl", model=model, out=lambda line: None)
        assert set(exported.records) == {r["workload"] for r in wanted}


# -- RPC -------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc) -> None:
    """End a process started here and the workers it started (its own process group)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.fixture(scope="module")
def rpc_tracker(tmp_path_factory):
    """A real TVM tracker and one RPC server registered under ``RPC_KEY``, on 127.0.0.1."""
    root = tmp_path_factory.mktemp("rpc")
    port, server_port = _free_port(), _free_port()
    procs = []

    def start(args, name):
        log = open(root / f"{name}.log", "w")
        procs.append(subprocess.Popen([sys.executable, "-m", *args], stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True))
        return procs[-1]

    try:
        tracker = start(["tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port),
                         "--port-end", str(port + 1)], "tracker")
        deadline = time.monotonic() + 60
        while True:  # the port first: connect_tracker retries a refused port only every 5 s
            assert tracker.poll() is None, (root / "tracker.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the RPC tracker did not start"
                time.sleep(0.1)
        server = start(["tvm.exec.rpc_server", "--tracker", f"127.0.0.1:{port}", "--key", RPC_KEY,
                        "--host", "127.0.0.1", "--port", str(server_port), "--port-end", str(server_port + 1)],
                       "server")
        while RPC_KEY not in tvm.rpc.connect_tracker("127.0.0.1", port).summary().get("queue_info", {}):
            assert server.poll() is None, (root / "server.log").read_text()
            assert time.monotonic() < deadline, "the RPC server did not register with the tracker"
            time.sleep(0.2)
        yield types.SimpleNamespace(address=f"127.0.0.1:{port}", server_log=root / "server.log")
    finally:
        for proc in reversed(procs):
            _stop(proc)


@pytest.fixture(scope="module")
def rpc_tuned(rpc_tracker, models, tmp_path_factory):
    path = tmp_path_factory.mktemp("rpc-log") / "b.jsonl"
    progress = []
    summary = tune(models.b, "host", log=path, trials=6, rpc_tracker=rpc_tracker.address, rpc_key=RPC_KEY,
                   progress=progress.append)
    lines = lines_of(path)
    return types.SimpleNamespace(path=path, summary=summary, progress=progress, header=lines[0],
                                 records=lines[1:])


def test_tune_through_rpc_tracker(rpc_tuned, rpc_tracker):
    header, records, summary = rpc_tuned.header, rpc_tuned.records, rpc_tuned.summary
    assert header["target_key"] == HOST_KEY
    assert header["device"] == {"rpc_key": RPC_KEY, "tracker": rpc_tracker.address}
    assert len(records) == 1 == len(summary.results), rpc_tuned.progress
    assert 0 < summary.trials == sum(r["trials"] for r in records) <= 6
    for record in records:
        assert record["measured"]["runner"] == f"rpc:{RPC_KEY}"
        assert "threads" not in record["measured"]
        assert 0 < record["latency_us"] <= record["default_us"] < 1e6
        assert workload_key(parse_kernel(record["func"])) == record["workload"]
    # the kernels really ran on the RPC server
    assert rpc_tracker.server_log.read_text().count("load_module") >= summary.trials


def test_rpc_errors_are_user_errors(rpc_tracker, models, tmp_path, monkeypatch):
    import tvm.rpc.base

    log = tmp_path / "log.jsonl"
    with pytest.raises(UserInputError) as caught:
        tune(models.b, "host", log=log, trials=6, rpc_tracker=rpc_tracker.address, rpc_key="no-such-device",
             progress=lambda line: None)
    assert str(caught.value).startswith(f"RPC tracker {rpc_tracker.address} has no device with key "
                                        f"'no-such-device' (keys: {RPC_KEY})")

    # TVM retries a refused connection for 60 s; keep the test short
    monkeypatch.setattr(tvm.rpc.base, "connect_with_retry",
                        functools.partial(tvm.rpc.base.connect_with_retry, timeout=1, retry_period=0.2))
    nowhere = f"127.0.0.1:{_free_port()}"
    with pytest.raises(UserInputError, match=f"cannot reach the RPC tracker at {nowhere}"):
        tune(models.b, "host", log=log, trials=6, rpc_tracker=nowhere, rpc_key=RPC_KEY, progress=lambda line: None)
    with pytest.raises(UserInputError, match="expected HOST:PORT"):
        tune(models.b, "host", log=log, trials=6, rpc_tracker="localhost", rpc_key=RPC_KEY,
             progress=lambda line: None)
    with pytest.raises(UserInputError, match="go together"):
        tune(models.b, "host", log=log, trials=6, rpc_tracker=rpc_tracker.address, progress=lambda line: None)
    assert not log.exists()


# -- budgets ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("30m", 1800), ("1.5h", 5400), ("45", 45)])
def test_parse_duration(text, seconds):
    assert tuner.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["abc", "", "m", "10x"])
def test_parse_duration_refuses_garbage(text):
    with pytest.raises(UserInputError, match="expected a positive duration, e.g. 90s, 30m or 1.5h"):
        tuner.parse_duration(text)


@pytest.mark.parametrize("text", ["-5m", "inf", "nan"])
def test_parse_duration_refuses_negative_and_endless_budgets(text):
    # tune() turns the budget into a trial count with int(): inf and nan would crash there
    with pytest.raises(UserInputError):
        tuner.parse_duration(text)


def test_time_budget_without_trials(models, tmp_path):
    log = tmp_path / "budget.jsonl"
    start = time.monotonic()
    summary = tune(models.a, "host", log=log, time_budget="25s", progress=lambda line: None)
    wall = time.monotonic() - start
    assert wall < 90
    assert summary.seconds < 25 + 20  # the budget is checked between tasks
    assert summary.kernels == 6
    # the log exists and is valid, whatever the budget allowed
    tuning_log, rejected = read_log(log)
    assert rejected == [] and tuning_log.target_key == HOST_KEY
    assert len(tuning_log.records) == len(summary.results)
    assert all(0 < r["latency_us"] <= r["default_us"] for r in tuning_log.records.values())


def test_tune_needs_trials_or_budget(models, tmp_path):
    with pytest.raises(UserInputError, match=r"give --trials N or --time-budget"):
        tune(models.a, "host", log=tmp_path / "log.jsonl")
    assert not (tmp_path / "log.jsonl").exists()
