"""Tuning log format, record key and search-space pieces (no measurement)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import tvm
from tvm import te

from edgecc.errors import UserInputError
from edgecc.schedules import cpu, fp32_lanes, schedule_cpu
from edgecc.targets import get_target
from edgecc.tuning import tuner
from edgecc.tuning.log import (TuningLog, TuningLogError, canonical_target, check_record, new_header,
                               read_log, target_key, workload_key)
from edgecc.tuning.space import MutateCategorical, cpu_spaces
from tvm.s_tir import Schedule


def _matmul(n=64, k=128, m=96):
    a = te.placeholder((n, k), name="a")
    b = te.placeholder((k, m), name="b")
    r = te.reduce_axis((0, k), "r")
    c = te.compute((n, m), lambda i, j: te.sum(a[i, r] * b[r, j], axis=r), name="c")
    return te.create_prim_func([a, b, c]).with_attr("global_symbol", "main")


def test_workload_key_is_stable_and_ignores_names():
    f = _matmul()
    assert workload_key(f) == workload_key(_matmul())
    assert workload_key(f.with_attr("global_symbol", "fused_matmul7")) == workload_key(f)
    assert workload_key(_matmul(m=80)) != workload_key(f)


def test_target_keys_differ_per_target():
    keys = {target_key(canonical_target(get_target(name))) for name in ("host", "arm", "arm-a76", "riscv", "riscv-vlen128")}
    assert len(keys) == 5
    assert target_key(canonical_target(get_target("riscv"))).endswith("/vlen256")


def _write(path, lines):
    path.write_text("\n".join(json.dumps(x) if not isinstance(x, str) else x for x in lines) + "\n")
    return path


def test_read_log_refuses_bad_headers(tmp_path):
    with pytest.raises(TuningLogError, match="line 1 is not JSON"):
        read_log(_write(tmp_path / "a.jsonl", ["{not json"]))
    with pytest.raises(TuningLogError, match="not an edgecc tuning log"):
        read_log(_write(tmp_path / "b.jsonl", [{"hello": 1}]))
    header = new_header(get_target("host"))
    with pytest.raises(TuningLogError, match="schema"):
        read_log(_write(tmp_path / "c.jsonl", [dict(header, edgecc_tuning_log=99)]))
    with pytest.raises(TuningLogError, match="target_key does not match"):
        read_log(_write(tmp_path / "d.jsonl", [dict(header, target_key="aarch64/x/-/128")]))
    with pytest.raises(TuningLogError, match="does not exist"):
        read_log(tmp_path / "missing.jsonl")


def _record(**changes):
    record = {"workload": "a" * 64, "kernel": "k", "latency_us": 10.0, "default_us": 12.0, "trials": 4,
              "measured": {"runner": "local"}, "trace": [[], []], "func": "# from tvm.script ..."}
    record.update(changes)
    return record


def test_check_record_reasons():
    assert check_record(_record()) is None
    assert "workload" in check_record(_record(workload="xyz"))
    assert "latency" in check_record(_record(latency_us=-1.0))
    assert "trials" in check_record(_record(trials="many"))
    assert "trace" in check_record(_record(trace=[1, 2, 3]))
    assert check_record([1]) == "not a JSON object"


def test_strict_read_names_the_line_and_lenient_read_rejects_it(tmp_path):
    header = new_header(get_target("host"))
    path = _write(tmp_path / "log.jsonl", [header, _record(), '{"workload": "trunc'])
    with pytest.raises(TuningLogError, match=r"log.jsonl:3: malformed record: not JSON"):
        read_log(path)
    log, rejected = read_log(path, strict=False)
    assert list(log.records) == ["a" * 64] and rejected == [(3, "not JSON (truncated?)")]


def test_log_keeps_the_fastest_record_and_refuses_other_targets(tmp_path):
    log = TuningLog(tmp_path / "x.jsonl", new_header(get_target("host")))
    log.append(_record(latency_us=10.0))
    log.append(_record(latency_us=12.0))
    log.append(_record(latency_us=8.0))
    reread, _ = read_log(tmp_path / "x.jsonl")
    assert reread.records["a" * 64]["latency_us"] == 8.0
    why = log.compatible_with(new_header(get_target("arm")))
    assert "tuned for aarch64" in why
    other = new_header(get_target("host"))
    other["versions"] = dict(other["versions"], tvm="0.26.0")
    assert "tvm 0.26.0" in log.compatible_with(other)


def test_searched_record_replaces_a_default_only_one(tmp_path):
    """A conv alternative recorded at its default (0 trials) is searched on a rerun; the
    searched record takes its place even when the search found nothing faster."""
    log = TuningLog(tmp_path / "x.jsonl", new_header(get_target("host")))
    log.append(_record(latency_us=10.0, default_us=10.0, trials=0))
    log.append(_record(latency_us=10.5, default_us=10.5, trials=12))
    log.append(_record(latency_us=11.0, default_us=11.0, trials=0))  # a later default-only one: slower, dropped
    reread, _ = read_log(tmp_path / "x.jsonl")
    assert reread.records["a" * 64]["trials"] == 12 and reread.records["a" * 64]["latency_us"] == 10.5


def test_allocate_spreads_trials_by_latency_share():
    tasks = [tuner.Task(name, name, None, calls, default_us=us)
             for name, calls, us in (("big", 1, 600.0), ("twice", 2, 150.0), ("tiny", 1, 5.0))]
    tuner.allocate(tasks, 100)
    trials = {t.name: t.trials for t in tasks}
    assert trials["big"] == 66 and trials["twice"] == 33 and trials["tiny"] == 0  # 0.5 < MIN_TRIALS


def test_parse_duration():
    assert tuner.parse_duration("90s") == 90 and tuner.parse_duration("30m") == 1800
    assert tuner.parse_duration("1.5h") == 5400 and tuner.parse_duration("12") == 12
    with pytest.raises(UserInputError):
        tuner.parse_duration("soon")


def test_default_choices_are_the_default_schedule():
    """The sampled space's default decisions give the default rule's loop nest."""
    host = get_target("host")
    f = _matmul()
    plain = Schedule(f)
    schedule_cpu(plain, fp32_lanes(host))
    sampled = Schedule(f)
    schedule_cpu(sampled, fp32_lanes(host), choices=cpu.Choices(sample=True))
    sampled_text = sampled.mod.script()
    assert '"pragma_auto_unroll_max_step": 0' in sampled_text  # unroll depth: default 0, a no-op
    assert re.sub(r"T\.serial\((\d+), annotations=\{[^}]*\}\)", r"range(\1)", sampled_text) == plain.mod.script()


def test_spaces_and_mutation():
    host = get_target("host")
    spaces = cpu_spaces(host)(Schedule(_matmul()))
    # matmul: channel blocks outside or inside the row tiles (its 16 KB weight block per tile
    # stays in L1: no split reduction)
    assert len(spaces) == 2
    trace = spaces[0].trace
    mutated = MutateCategorical().apply(trace)
    before = {i.outputs[0].name if i.outputs else "": int(d) for i, d in trace.decisions.items()}
    after = {i.outputs[0].name if i.outputs else "": int(d) for i, d in mutated.decisions.items()}
    assert sum(before[k] != after[k] for k in before) == 1
    sch = Schedule(_matmul())
    mutated.apply_to_schedule(sch, remove_postproc=True)
    lib = tvm.compile(sch.mod, target=host.tvm_target())
    a, b = np.random.rand(64, 128).astype("float32"), np.random.rand(128, 96).astype("float32")
    c = tvm.runtime.tensor(np.zeros((64, 96), "float32"))
    lib["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(b), c)
    np.testing.assert_allclose(c.numpy(), a @ b, rtol=1e-5)
    for space in spaces:  # each at its default decisions
        lib = tvm.compile(space.mod, target=host.tvm_target())
        c = tvm.runtime.tensor(np.zeros((64, 96), "float32"))
        lib["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(b), c)
        np.testing.assert_allclose(c.numpy(), a @ b, rtol=1e-5)
