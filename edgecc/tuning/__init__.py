"""Auto-tuning per target, and tuning logs people can share.

- :func:`tune` searches a model's kernels with MetaSchedule (XGBoost cost model) in a space
  built from edgecc's default rules, and appends the best schedules to a log.
- :class:`TuningRecords` is what a build reads from ``--tuning-log`` files: only records whose
  workload, target, TVM and edgecc versions all match are used.
- :mod:`.log` defines the record key and the file format; :mod:`.logs` the ``edgecc logs`` tools.
"""

from __future__ import annotations

from pathlib import Path

from edgecc.tuning.log import (TuningLog, TuningLogError, log_files, new_header, read_log,
                               workload_key)


class TuningRecords:
    """The records of some tuning logs that a build for ``preset`` may use.

    A log named explicitly that was tuned for another target or toolchain is refused with
    the reason; inside a directory, such logs are skipped and listed in :attr:`notes`."""

    def __init__(self, paths, preset):
        self.notes: list[str] = []
        self.records: dict[str, dict] = {}
        self._kernels: dict[str, dict | None] = {}
        self._failed: dict[str, str] = {}
        self.convs: dict[str, dict] = {}  # 3x3 conv signature -> Winograd/direct latencies and choice
        mine = TuningLog(None, new_header(preset, device={}))
        explicit = {Path(p) for p in paths if Path(p).is_file()}
        for path in log_files(paths):
            log, _ = read_log(path)
            why = mine.compatible_with(log.header)
            if why:
                if path in explicit:
                    raise TuningLogError(f"tuning log {path} cannot be used for target {preset.name} "
                                         f"({mine.target_key}): {why}")
                self.notes.append(f"skipped {path}: {why}")
                continue
            for record in log.records.values():
                if record["workload"] not in self.records or \
                        record["latency_us"] < self.records[record["workload"]]["latency_us"]:
                    self.records[record["workload"]] = dict(record, log=str(path))

    def peek(self, func) -> dict | None:
        """The record for a kernel, if any (without counting it as used)."""
        return self.records.get(workload_key(func))

    def knob_records(self, spec) -> list[dict]:
        """Records of a hand-written kernel's candidates: same kind and arguments as ``spec``
        (:class:`edgecc.schedules.knobs.Spec`), any knobs."""
        from edgecc.schedules.knobs import Spec

        found = []
        for record in self.records.values():
            if "knobs" in record and spec.same_kernel(Spec.from_json(record["knobs"])):
                found.append(record)
        return found

    def lookup(self, kernel: str, func) -> dict | None:
        record = self.records.get(workload_key(func))
        self._kernels[kernel] = record
        return record

    def used(self, kernel: str, record: dict) -> None:
        self._kernels[kernel] = record

    def failed(self, kernel: str, reason: str) -> None:
        self._kernels[kernel] = None
        self._failed[kernel] = reason

    def report(self) -> dict:
        """For the manifest: which kernels came from which record, how many fell back."""
        used = {k: r for k, r in self._kernels.items() if r is not None}
        return {"from_log": len(used), "fallback": len(self._kernels) - len(used),
                "replay_failed": dict(self._failed), "notes": list(self.notes),
                "conv_algorithms": dict(sorted(self.convs.items())),
                "kernels": {k: {"workload": r["workload"], "latency_us": r["latency_us"],
                                "default_us": r["default_us"], "log": r["log"]} for k, r in sorted(used.items())}}


def tune(*args, **kwargs):
    """See :func:`edgecc.tuning.tuner.tune`."""
    from edgecc.tuning.tuner import tune as _tune

    return _tune(*args, **kwargs)


__all__ = ["TuningRecords", "TuningLog", "TuningLogError", "read_log", "tune", "workload_key"]
