"""Tuning logs: edgecc's own record key and a portable file format.

MetaSchedule's ``JSONDatabase`` ignores the target when queried and recomputes
workload hashes on load, so a log shared between machines could silently apply a
schedule tuned for one device to another. edgecc keys every record itself::

    (workload key, canonical target key, TVM version, edgecc version)

- the **workload key** is the sha256 of the kernel's TVMScript with its attributes
  dropped: the same kernel gets the same key on any machine and in any run;
- the **target key** is the canonical target: arch, cpu, features, vector width
  (RVV VLEN), CUDA arch (:func:`target_key`).

A record is used only when all four match; nothing is used across targets.

File format (JSON lines, UTF-8). Line 1 is the header, every further line one record::

    {"edgecc_tuning_log": 1, "target": {...canonical target...}, "target_key": "x86_64/...",
     "device": {"cpu": "...", "cores": 2}, "versions": {"edgecc": "0.1.0", "tvm": "...", "tvm_ffi": "..."}}
    {"workload": "<sha256>", "kernel": "fused_conv2d_add_relu", "latency_us": 81.2,
     "default_us": 97.5, "trials": 32, "measured": {"runner": "local", "number": 3, "repeat": 3,
     "min_repeat_ms": 40, "statistic": "mean"}, "trace": [...MetaSchedule trace JSON...],
     "func": "<the kernel's TVMScript>"}

``latency_us`` is the tuned kernel's time and ``default_us`` the default rule's, both
measured by the same runner in the same session. ``func`` lets ``edgecc logs import``
and ``verify`` replay a trace without the model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
from pathlib import Path

from edgecc import __version__
from edgecc.errors import UserInputError

SCHEMA = 1
MAX_LOG_BYTES = 64 << 20  # an untrusted log bigger than this is refused unread
MAX_LINE_BYTES = 1 << 20
RECORD_FIELDS = {"workload": str, "kernel": str, "latency_us": (int, float), "default_us": (int, float),
                 "trials": int, "measured": dict, "trace": list, "func": str}


class TuningLogError(UserInputError):
    """A tuning log that cannot be read, or does not belong to this target or toolchain."""


NAMING_ATTRS = ("global_symbol", "edgecc.schedule", "tirx.is_scheduled")


def kernel_script(func) -> str:
    """The kernel as stored in a record: its TVMScript without the attributes that name it or
    say how it was scheduled (what the workload key hashes)."""
    for attr in NAMING_ATTRS:
        if func.attrs is not None and attr in func.attrs:
            func = func.without_attr(attr)
    return func.script()


def workload_key(func) -> str:
    """Stable key of a kernel: sha256 of :func:`kernel_script`."""
    return hashlib.sha256(kernel_script(func).encode()).hexdigest()


def parse_kernel(script: str):
    """A record's ``func`` back into a PrimFunc."""
    import tvm

    parsed = tvm.script.from_source(script)
    return parsed if isinstance(parsed, tvm.tirx.PrimFunc) else parsed["main"]


def canonical_target(preset) -> dict:
    """What a schedule depends on: arch, cpu, features, vector width, VLEN, CUDA arch."""
    llvm = preset.llvm
    return {"arch": preset.arch, "device": preset.device, "mcpu": llvm.get("mcpu", ""),
            "mattr": sorted(llvm.get("mattr", [])), "vector_bits": preset.vector_bits,
            "vlen": preset.vlen, "cuda_arch": preset.cuda_arch}


def target_key(target: dict) -> str:
    """One string per canonical target, e.g. ``x86_64/sapphirerapids/-/512``."""
    key = f"{target['arch']}/{target['mcpu']}/{','.join(target['mattr']) or '-'}/{target['vector_bits']}"
    if target.get("vlen"):
        key += f"/vlen{target['vlen']}"
    if target.get("cuda_arch"):
        key += f"/cuda-{target['cuda_arch']}"
    return key


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict:
    import tvm
    import tvm_ffi

    return {"edgecc": __version__, "tvm": tvm.__version__, "tvm_ffi": tvm_ffi.__version__}


def new_header(preset, device: dict | None = None) -> dict:
    target = canonical_target(preset)
    return {"edgecc_tuning_log": SCHEMA, "target": target, "target_key": target_key(target),
            "device": device or {"cpu": _cpu_name(), "cores": os.cpu_count()}, "versions": versions()}


@dataclasses.dataclass
class TuningLog:
    """One log file: its header (target, device, versions) and its best record per workload."""

    path: Path | None
    header: dict
    records: dict = dataclasses.field(default_factory=dict)  # workload key -> record dict

    @property
    def target_key(self) -> str:
        return self.header["target_key"]

    def describe(self) -> str:
        v = self.header["versions"]
        return f"{self.target_key} (edgecc {v['edgecc']}, TVM {v['tvm']})"

    def add(self, record: dict) -> bool:
        """Keep ``record`` if it is the first or the fastest for its workload, or the first searched
        one (``trials`` > 0) after a default-only record; returns whether kept."""
        old = self.records.get(record["workload"])
        searched_over_default = old is not None and old["trials"] == 0 and record["trials"] > 0
        if old is not None and old["latency_us"] <= record["latency_us"] and not searched_over_default:
            return False
        self.records[record["workload"]] = record
        return True

    def append(self, record: dict) -> None:
        """Add a record and append it to the file at once (a stopped tuning run resumes from it)."""
        if self.add(record) and self.path is not None:
            if not self.path.exists():
                self.write(self.path)
                return
            with self.path.open("a") as f:
                f.write(json.dumps(record, separators=(",", ":")) + "\n")

    def write(self, path: Path) -> None:
        """Write header and records (best per workload), atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w") as f:
            f.write(json.dumps(self.header, separators=(",", ":")) + "\n")
            for record in sorted(self.records.values(), key=lambda r: r["kernel"]):
                f.write(json.dumps(record, separators=(",", ":")) + "\n")
        os.replace(tmp, path)

    def compatible_with(self, other_header: dict) -> str | None:
        """Why records of a log with ``other_header`` cannot be used with this one, or None."""
        if other_header["target_key"] != self.target_key:
            return f"it was tuned for {other_header['target_key']}, not {self.target_key}"
        for tool in ("edgecc", "tvm"):
            mine, theirs = self.header["versions"][tool], other_header["versions"][tool]
            if mine != theirs:
                return f"it was tuned with {tool} {theirs}, this is {tool} {mine}"
        return None


def _check_header(header, where: str) -> dict:
    if not isinstance(header, dict) or header.get("edgecc_tuning_log") is None:
        raise TuningLogError(f"{where}: not an edgecc tuning log (line 1 has no 'edgecc_tuning_log' header)")
    if header["edgecc_tuning_log"] != SCHEMA:
        raise TuningLogError(f"{where}: log schema {header['edgecc_tuning_log']!r}; this edgecc reads schema {SCHEMA}")
    target = header.get("target")
    if not isinstance(target, dict) or not isinstance(header.get("versions"), dict) \
            or not all(isinstance(header["versions"].get(k), str) for k in ("edgecc", "tvm")):
        raise TuningLogError(f"{where}: header lacks its target or tool versions")
    try:
        if target_key(target) != header.get("target_key"):
            raise TuningLogError(f"{where}: header's target_key does not match its target")
    except (KeyError, TypeError, AttributeError):
        raise TuningLogError(f"{where}: header's target is malformed") from None
    return header


def check_record(record) -> str | None:
    """Why a record line is malformed (schema and sizes), or None."""
    if not isinstance(record, dict):
        return "not a JSON object"
    for field, kind in RECORD_FIELDS.items():
        if not isinstance(record.get(field), kind) or isinstance(record.get(field), bool):
            return f"field '{field}' missing or not {getattr(kind, '__name__', 'a number')}"
    if len(record["workload"]) != 64 or any(c not in "0123456789abcdef" for c in record["workload"]):
        return "workload is not a sha256 hex key"
    if not 0 < record["latency_us"] < 1e9 or not 0 < record["default_us"] < 1e9:
        return "latency out of range"
    if len(record["trace"]) != 2 or not isinstance(record["trace"][0], list):
        return "trace is not a MetaSchedule trace"
    if "knobs" in record:  # optional: a hand-written kernel's spec (edgecc.schedules.knobs)
        try:
            knobs = json.loads(record["knobs"])
            if not (isinstance(knobs, dict) and isinstance(knobs.get("kind"), str)
                    and isinstance(knobs.get("args"), dict) and isinstance(knobs.get("knobs"), dict)):
                raise ValueError
        except (TypeError, ValueError):
            return "knobs is not a kernel spec (kind, args, knobs)"
    return None


def read_log(path: str | os.PathLike, strict: bool = True) -> tuple[TuningLog, list[tuple[int, str]]]:
    """Read a log file. Malformed record lines raise with ``strict``, else are returned as
    ``(line number, reason)`` rejections (``edgecc logs import``)."""
    path = Path(path)
    if not path.is_file():
        raise TuningLogError(f"tuning log '{path}' does not exist")
    if path.stat().st_size > MAX_LOG_BYTES:
        raise TuningLogError(f"{path}: {path.stat().st_size} bytes, over the {MAX_LOG_BYTES >> 20} MB limit")
    rejected = []
    with path.open("rb") as f:
        lines = f.read().split(b"\n")
    try:
        header = json.loads(lines[0])
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise TuningLogError(f"{path}: line 1 is not JSON; not an edgecc tuning log") from None
    log = TuningLog(path, _check_header(header, str(path)))
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        reason = None
        if len(line) > MAX_LINE_BYTES:
            reason = f"line of {len(line)} bytes, over {MAX_LINE_BYTES}"
        else:
            try:
                record = json.loads(line)
                reason = check_record(record)
            except (json.JSONDecodeError, UnicodeDecodeError):
                reason = "not JSON (truncated?)"
        if reason is not None:
            if strict:
                raise TuningLogError(f"{path}:{number}: malformed record: {reason}")
            rejected.append((number, reason))
            continue
        log.add(record)
    return log, rejected


def log_files(paths) -> list[Path]:
    """The files behind ``--tuning-log`` arguments: files as given, directories' ``*.jsonl``."""
    files = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            files.extend(sorted(path.rglob("*.jsonl")))
        elif path.is_file():
            files.append(path)
        else:
            raise TuningLogError(f"tuning log '{path}' does not exist")
    return files
