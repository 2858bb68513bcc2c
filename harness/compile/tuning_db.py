"""The tuning database of `harness tune`: per target, meta_schedule's JSON records of the
kernels' schedules measured on the device, and each kernel's default-schedule latency.

It lives in the cache (`<cache>/tuning/<target>-<hash of its TVM target>/`), keyed by
meta_schedule's structural workload hash; harness.compile looks every kernel up here (the
search that fills it is harness.tune). `MINRT_NO_TUNING=1` makes compile ignore it. The
database can be exported as one file and imported (merged) elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.cache import cache_dir, content_hash
from harness.errors import HarnessError
from harness.config.targets import Target

log = logging.getLogger(__name__)

WORKLOADS = "workloads.json"
RECORDS = "records.json"
#: The default schedule's latency per kernel, measured by the same runner in each session, so
#: compile can keep the default when no record beats it.
DEFAULTS = "defaults.json"
#: Version of the exported file format (one JSON object with both tables).
EXPORT_FORMAT = "minrt-tuning-1"


def tuning_disabled() -> bool:
    """True when `MINRT_NO_TUNING` is set to anything but "" or "0"."""
    return os.environ.get("MINRT_NO_TUNING", "") not in ("", "0")


@dataclass
class TunedKernel:
    func: Any  # the scheduled PrimFunc
    latency_us: float
    record_id: str  # a short hash of the record's trace, to say which record was used


class TuningDatabase:
    """The tuning records of one target: meta_schedule's JSONDatabase files in a directory."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @classmethod
    def for_target(cls, target: Target, cache: Path | None = None) -> "TuningDatabase":
        root = Path(cache) if cache is not None else cache_dir()
        return cls(root / "tuning" / f"{target.name}-{content_hash([target.tvm_target_key], 8)}")

    @property
    def workloads_file(self) -> Path:
        return self.path / WORKLOADS

    @property
    def records_file(self) -> Path:
        return self.path / RECORDS

    def exists(self) -> bool:
        return self.records_file.is_file() and self.records_file.stat().st_size > 0

    def digest(self) -> str:
        """A hash of the records (what compile's cache key depends on); "empty" when none."""
        if not self.exists():
            return "empty"
        h = hashlib.sha256()
        for f in (self.workloads_file, self.records_file, self.path / DEFAULTS):
            h.update(f.read_bytes() if f.is_file() else b"")
        return h.hexdigest()[:16]

    def open(self) -> Any:
        """meta_schedule's JSONDatabase over the files (created when missing)."""
        from tvm.s_tir import meta_schedule as ms

        self.path.mkdir(parents=True, exist_ok=True)
        return ms.database.JSONDatabase(path_workload=str(self.workloads_file),
                                        path_tuning_record=str(self.records_file),
                                        allow_missing=True)

    def best(self, func: Any, ktarget: Any) -> TunedKernel | None:
        """The best measured schedule for this PrimFunc, or None when there is no record."""
        if not self.exists():
            return None
        mod = workload(func)
        db = self._opened()
        if not db.has_workload(mod):
            return None
        record = db.query_tuning_record(mod, ktarget, "main")
        if record is None or not record.run_secs:
            return None
        from tvm import s_tir

        sch = s_tir.Schedule(mod)
        record.trace.apply_to_schedule(sch, remove_postproc=False)
        latency = min(float(s) for s in record.run_secs) * 1e6
        return TunedKernel(func=sch.mod["main"], latency_us=latency,
                           record_id=hashlib.sha256(str(record.trace).encode()).hexdigest()[:12])

    def _opened(self) -> Any:
        # One JSONDatabase per compile: reading the files is the slow part.
        if getattr(self, "_db", None) is None:
            self._db = self.open()
        return self._db

    @staticmethod
    def _default_key(scheduled: Any) -> str:
        return hashlib.sha256(scheduled.script().encode()).hexdigest()[:24]

    def _defaults(self) -> dict[str, float]:
        """defaults.json: kernel key -> measured latency (us); empty when there is none, or
        when it is not such an object (a torn write, an edit): a cache, remeasured on demand."""
        path = self.path / DEFAULTS
        if not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            log.warning("tuning database %s: ignoring an unreadable %s (%s)", self.path, DEFAULTS, exc)
            return {}
        if not isinstance(data, dict):
            log.warning("tuning database %s: ignoring %s, a JSON %s, not an object", self.path, DEFAULTS,
                        type(data).__name__)
            return {}
        return data

    def default_latency(self, scheduled: Any) -> float | None:
        """The measured latency of this default-scheduled kernel, if a session measured it."""
        return self._defaults().get(self._default_key(scheduled))

    def set_default_latency(self, scheduled: Any, latency_us: float) -> None:
        path = self.path / DEFAULTS
        self.path.mkdir(parents=True, exist_ok=True)
        data = self._defaults()
        data[self._default_key(scheduled)] = latency_us
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, path)

    def export(self, out: Path) -> int:
        """Write every record (and its workload) as one file; returns the number of records."""
        if not self.exists():
            raise HarnessError(f"no tuning records in {self.path}")
        workloads = [json.loads(line) for line in self.workloads_file.read_text().splitlines() if line.strip()]
        records = [json.loads(line) for line in self.records_file.read_text().splitlines() if line.strip()]
        defaults = self._defaults()
        Path(out).write_text(json.dumps({"format": EXPORT_FORMAT, "workloads": workloads, "records": records,
                                         "defaults": defaults}) + "\n")
        return len(records)

    def import_file(self, src: Path) -> int:
        """Merge the records of an exported file into this database; returns how many were new."""
        src = Path(src)
        try:
            data = json.loads(src.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise HarnessError(f"{src}: not a tuning records file: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
            raise HarnessError(f"{src}: not a tuning records file (format is not '{EXPORT_FORMAT}')")
        workloads, records = data.get("workloads"), data.get("records")
        if not isinstance(workloads, list) or not isinstance(records, list):
            raise HarnessError(f"{src}: 'workloads' and 'records' must be lists")
        self.path.mkdir(parents=True, exist_ok=True)
        mine_w = [line for line in (self.workloads_file.read_text().splitlines() if self.workloads_file.is_file() else []) if line.strip()]
        mine_r = [line for line in (self.records_file.read_text().splitlines() if self.records_file.is_file() else []) if line.strip()]
        index = {json.dumps(json.loads(w), sort_keys=True): i for i, w in enumerate(mine_w)}
        remap: dict[int, int] = {}
        new_w: list[str] = []
        for i, w in enumerate(workloads):
            key = json.dumps(w, sort_keys=True)
            if key not in index:
                index[key] = len(mine_w) + len(new_w)
                new_w.append(json.dumps(w))
            remap[i] = index[key]
        seen = {json.dumps(json.loads(r)[1], sort_keys=True) + str(json.loads(r)[0]) for r in mine_r}
        new_r: list[str] = []
        for r in records:
            if not (isinstance(r, list) and len(r) == 2 and isinstance(r[0], int) and r[0] in remap):
                raise HarnessError(f"{src}: a record is not [workload index, record]")
            item = [remap[r[0]], r[1]]
            key = json.dumps(item[1], sort_keys=True) + str(item[0])
            if key not in seen:
                seen.add(key)
                new_r.append(json.dumps(item))
        defaults = data.get("defaults") or {}
        if not isinstance(defaults, dict):
            raise HarnessError(f"{src}: 'defaults' must be an object")
        defaults_file = self.path / DEFAULTS
        mine_d = self._defaults()
        merged = {**{k: float(v) for k, v in defaults.items()}, **mine_d}  # this machine's own measurement wins
        if merged != mine_d:
            defaults_file.write_text(json.dumps(merged, indent=1, sort_keys=True) + "\n")
        with self.workloads_file.open("a") as f:
            f.writelines(line + "\n" for line in new_w)
        with self.records_file.open("a") as f:
            f.writelines(line + "\n" for line in new_r)
        return len(new_r)

    def clear(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def workload(func: Any) -> Any:
    """The IRModule meta_schedule keys a kernel by (what tuning and compile both look up)."""
    from tvm.s_tir.meta_schedule.tune_context import _normalize_mod

    return _normalize_mod(func)
