"""The results store: every run's sizes, accuracy and latency in one SQLite file.

One file, WAL mode and a busy timeout, so several processes (farm workers, a nightly job, a
developer's `harness run`) can write at once without losing a row. Each write is one short
`BEGIN IMMEDIATE` transaction on its own connection: no connection is shared between threads.

A run belongs to a *batch*: one farm run, one night, one `harness run --results`. A batch's
*kind* is its name without the trailing time stamp or number ("nightly-20261204T0100Z" is a
nightly, "run-..." a one-off run, "farm-..." a farm run): the dashboard and its check compare a
batch with the last batch of the same kind that ran on a target it ran on ("last night vs the
night before"), never with a one-off run in between. Within a batch the latest row per
(model, target) counts, so a job retried on another device is judged by its retry while the
failed attempt stays on record.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import re
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping

from harness.errors import HarnessError
from harness.formats.text import json_text

log = logging.getLogger(__name__)

DEFAULT_DB_NAME = "results.sqlite"
BUSY_TIMEOUT_MS = 60_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    batch TEXT NOT NULL,
    "commit" TEXT,
    date TEXT NOT NULL,
    target TEXT NOT NULL,
    model TEXT NOT NULL,
    transport TEXT,
    device TEXT,
    passed INTEGER NOT NULL,
    error TEXT,
    latency_min_us REAL,
    latency_mean_us REAL,
    latency_max_us REAL,
    iters INTEGER,
    arena_bytes INTEGER,
    minrt_text INTEGER,
    runner_text INTEGER,
    kernels_text INTEGER,
    toolchain TEXT,
    tvm_version TEXT
);
CREATE INDEX IF NOT EXISTS runs_batch ON runs(batch);
CREATE INDEX IF NOT EXISTS runs_target_model ON runs(target, model);
CREATE TABLE IF NOT EXISTS outputs (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    name TEXT NOT NULL,
    shape TEXT,
    dtype TEXT,
    max_abs_err REAL,
    max_rel_err REAL,
    atol REAL,
    rtol REAL,
    passed INTEGER
);
CREATE INDEX IF NOT EXISTS outputs_run ON outputs(run_id);
CREATE TABLE IF NOT EXISTS profiles (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    node INTEGER NOT NULL,
    name TEXT NOT NULL,
    kernel TEXT,
    us REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS profiles_run ON profiles(run_id);
CREATE TABLE IF NOT EXISTS device_health (
    device TEXT PRIMARY KEY,
    target TEXT,
    state TEXT NOT NULL,
    failures INTEGER NOT NULL,
    reason TEXT,
    since TEXT,
    updated TEXT NOT NULL,
    evidence TEXT
);
CREATE TABLE IF NOT EXISTS farm_reports (
    batch TEXT PRIMARY KEY,
    path TEXT NOT NULL
);
"""

#: device_health.state values: a healthy device takes jobs, a quarantined one does not until
#: `harness farm clear DEVICE`.
HEALTHY, QUARANTINED = "healthy", "quarantined"
#: A run's footprint (RunResult.footprint): the arena by part, peak process memory, weights
#: in flash. Added after the first schema: old stores get them on open (ALTER TABLE).
FOOTPRINT_COLUMNS = (
    "arena_graph", "arena_activations", "arena_workspace", "arena_weight_copies",
    "peak_rss_kb", "flash_weights",
)
#: Latency of targets that count instead of timing (firmware: emulated instructions or
#: cycles per inference, RunResult.latency_counts), in `count_unit`.
COUNT_COLUMNS = ("latency_min_count", "latency_mean_count", "latency_max_count")
#: Columns added after the first schema (ALTER TABLE on open), with their SQL types: the
#: footprint, minrt's .text built with MINRT_NO_MESSAGES (RunResult.sizes), the counts.
LATER_COLUMNS = {**{c: "INTEGER" for c in FOOTPRINT_COLUMNS}, "minrt_text_no_messages": "INTEGER",
                 **{c: "REAL" for c in COUNT_COLUMNS}, "count_unit": "TEXT"}

#: Columns of `outputs` added later: which reference executor the output was compared with.
LATER_OUTPUT_COLUMNS = {"reference": "TEXT"}

RUN_COLUMNS = (
    "id", "batch", "commit", "date", "target", "model", "transport", "device", "passed", "error",
    "latency_min_us", "latency_mean_us", "latency_max_us", "iters", "arena_bytes",
    "minrt_text", "runner_text", "kernels_text", "toolchain", "tvm_version", *LATER_COLUMNS,
)


@dataclass(frozen=True)
class RunRow:
    """One stored run (a row of `runs`), with its per-output accuracy rows."""

    id: int
    batch: str
    commit: str | None
    date: str
    target: str
    model: str
    transport: str | None
    device: str | None
    passed: bool
    error: str | None
    latency_min_us: float | None
    latency_mean_us: float | None
    latency_max_us: float | None
    iters: int | None
    arena_bytes: int | None
    minrt_text: int | None
    runner_text: int | None
    kernels_text: int | None
    toolchain: str | None
    tvm_version: str | None
    outputs: tuple[dict[str, Any], ...] = ()
    arena_graph: int | None = None
    arena_activations: int | None = None
    arena_workspace: int | None = None
    arena_weight_copies: int | None = None
    peak_rss_kb: int | None = None
    flash_weights: int | None = None
    minrt_text_no_messages: int | None = None
    latency_min_count: float | None = None
    latency_mean_count: float | None = None
    latency_max_count: float | None = None
    count_unit: str | None = None

    def latency(self) -> tuple[float | None, float, float | None, str] | None:
        """(min, mean, max, unit) per inference: in "us", or in a counting target's count_unit
        ("emulated instructions"); None when the run measured neither."""
        if self.latency_mean_us is not None:
            return self.latency_min_us, self.latency_mean_us, self.latency_max_us, "us"
        if self.latency_mean_count is not None:
            return (self.latency_min_count, self.latency_mean_count, self.latency_max_count,
                    self.count_unit or "counts")
        return None

    @property
    def max_abs_err(self) -> float | None:
        errs = [o["max_abs_err"] for o in self.outputs if o.get("max_abs_err") is not None]
        return max(errs) if errs else None


def latency_number(value: float, unit: str) -> str:
    """A latency figure with its unit: "120 us", "2.59 ms", "0.271 us", "1,141,720 emulated
    instructions" (one decimal of us wrote 0.27 -> 0.36 us as "0.3 -> 0.4")."""
    from harness.formats.text import duration

    return duration(value) if unit == "us" else f"{value:,.0f} {unit}"


def latency_text(row: RunRow) -> str:
    """A run's mean latency in a unit chosen by its size ("120.0 us", "2.59 s", "2.59 s
    emulated" when an emulator measured it, "1,141,720 emulated instructions"), "-"."""
    from harness.formats.text import EMULATED, count, duration

    latency = row.latency()
    if latency is None:
        return "-"
    _, mean, _, unit = latency
    if unit != "us":
        return count(mean, unit)
    return duration(mean) + (f" {EMULATED}" if emulated_run(row.target, row.transport) else "")


@functools.lru_cache(maxsize=64)
def emulated_run(target: str, transport: str | None) -> bool:
    """Whether a stored run's target and transport are an emulator (False for a target whose
    file is gone: nothing to tell)."""
    from harness.config.readiness import is_emulated
    from harness.config.targets import load_target

    try:
        return is_emulated(load_target(target), transport)
    except HarnessError:
        return False


_BATCH_STAMP = re.compile(r"[-_.]?(\d{4}-?\d{2}-?\d{2}([T_-]?\d{2}:?\d{2}(:?\d{2}(\.\d+)?)?Z?)?|\d+)(-\d+)?$")


def batch_kind(batch: str) -> str:
    """What kind of batch a name says: "nightly" for nightly-20261204T010203Z, "run" for
    run-..., "night" for night-2; a bare date (the old per-day default) is "day"."""
    return _BATCH_STAMP.sub("", batch) or "day"


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _num(value: Any, kind: type, what: str) -> Any:
    """A number from a result dict, None when missing; a wrong type is an error naming the key."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise HarnessError(f"results: '{what}' must be a number, got {value!r}")
    return kind(value)


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write on `db` (a ResultStore._connect connection): `BEGIN IMMEDIATE`, committed when
    the block ends, rolled back when it raises."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


class ResultStore:
    """The SQLite file at `path` (created with its schema on first use)."""

    def __init__(self, path: Path | str):
        """Open (or create) the store; a path that is not one (a directory, another file, a
        truncated database) is a HarnessError naming it, before any work is done."""
        self.path = Path(path)
        if self.path.is_dir():
            raise HarnessError(f"results store {self.path}: is a directory; give a file path (e.g. {self.path / 'results.sqlite'})")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._connect() as db:
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(_SCHEMA)
                have = {r["name"] for r in db.execute("PRAGMA table_info(runs)")}
                have_out = {r["name"] for r in db.execute("PRAGMA table_info(outputs)")}
                for table, col, kind in [*(("runs", c, k) for c, k in LATER_COLUMNS.items() if c not in have),
                                         *(("outputs", c, k) for c, k in LATER_OUTPUT_COLUMNS.items()
                                           if c not in have_out)]:
                    try:
                        db.execute(f"ALTER TABLE {table} ADD COLUMN {col} {kind}")
                    except sqlite3.OperationalError as exc:  # another process added it first
                        if "duplicate column" not in str(exc):
                            raise
        except sqlite3.DatabaseError as exc:
            raise HarnessError(f"results store {self.path}: not a results store (SQLite: {exc})") from None
        except OSError as exc:
            raise HarnessError(f"results store {self.path}: cannot create it: {exc.strerror or exc}") from None

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        try:
            db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            db.row_factory = sqlite3.Row
            yield db
        finally:
            db.close()

    # -- writing ---------------------------------------------------------------------------

    def record(
        self,
        result: Mapping[str, Any],
        *,
        device: str | None = None,
        commit: str | None = None,
        batch: str | None = None,
        date: str | None = None,
    ) -> int:
        """Store one run (the RunResult JSON shape) and return its id.

        Any field may be missing or null: a run that failed half-way keeps what it measured,
        and `error` says why it stopped. `commit` overrides the result's own; `batch` defaults
        to the UTC day of `date` (itself defaulting to now).
        """
        for key in ("model", "target"):
            if not isinstance(result.get(key), str) or not result.get(key):
                raise HarnessError(f"results: a run needs a non-empty string '{key}', got {result.get(key)!r}")
        date = date or _now()
        batch = batch or date[:10]
        latency = result.get("latency_us") or {}
        counts = result.get("latency_counts") or {}
        sizes = result.get("sizes") or {}
        footprint = result.get("footprint") or {}
        outputs = result.get("outputs") or []
        error = result.get("error")
        passed = bool(result.get("passed")) and error is None
        row = {
            "batch": batch,
            "commit": commit if commit is not None else result.get("commit"),
            "date": date,
            "target": result["target"],
            "model": result["model"],
            "transport": result.get("transport"),
            "device": device,
            "passed": int(passed),
            "error": None if error is None else str(error),
            "latency_min_us": _num(latency.get("min"), float, "latency_us.min"),
            "latency_mean_us": _num(latency.get("mean"), float, "latency_us.mean"),
            "latency_max_us": _num(latency.get("max"), float, "latency_us.max"),
            "iters": _num(result.get("iters"), int, "iters"),
            "arena_bytes": _num(result.get("arena_bytes"), int, "arena_bytes"),
            "minrt_text": _num(sizes.get("minrt_text"), int, "sizes.minrt_text"),
            "runner_text": _num(sizes.get("runner_text"), int, "sizes.runner_text"),
            "kernels_text": _num(sizes.get("kernels_text"), int, "sizes.kernels_text"),
            "minrt_text_no_messages": _num(sizes.get("minrt_text_no_messages"), int,
                                           "sizes.minrt_text_no_messages"),
            **{f"latency_{k}_count": _num(counts.get(k), float, f"latency_counts.{k}")
               for k in ("min", "mean", "max")},
            "count_unit": (result.get("count_unit") or None) if counts else None,
            "toolchain": result.get("toolchain"),
            "tvm_version": result.get("tvm_version"),
            **{c: _num(footprint.get(c), int, f"footprint.{c}") for c in FOOTPRINT_COLUMNS},
        }
        out_rows = []
        for i, out in enumerate(outputs):
            if not isinstance(out, Mapping):
                raise HarnessError(f"results: outputs[{i}] must be an object, got {out!r}")
            out_rows.append((
                str(out.get("name", f"output{i}")),
                json.dumps(out.get("shape")),
                out.get("dtype"),
                _num(out.get("max_abs_err"), float, f"outputs[{i}].max_abs_err"),
                _num(out.get("max_rel_err"), float, f"outputs[{i}].max_rel_err"),
                _num(out.get("atol"), float, f"outputs[{i}].atol"),
                _num(out.get("rtol"), float, f"outputs[{i}].rtol"),
                None if out.get("passed") is None else int(bool(out.get("passed"))),
                None if out.get("reference") is None else str(out["reference"]),
            ))
        profile_rows = []
        for i, p in enumerate(result.get("profile") or []):
            if not isinstance(p, Mapping) or not isinstance(p.get("name"), str):
                raise HarnessError(f"results: profile[{i}] must be an object with a name, got {p!r}")
            profile_rows.append((_num(p.get("node"), int, f"profile[{i}].node"), p["name"], p.get("kernel"),
                                 _num(p.get("us"), float, f"profile[{i}].us")))
        cols = ", ".join(f'"{c}"' for c in row)
        marks = ", ".join("?" for _ in row)
        with self._connect() as db, transaction(db):
            cur = db.execute(f"INSERT INTO runs ({cols}) VALUES ({marks})", tuple(row.values()))
            run_id = int(cur.lastrowid)
            db.executemany(
                "INSERT INTO outputs (run_id, name, shape, dtype, max_abs_err, max_rel_err, atol, rtol, passed,"
                " reference) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(run_id, *o) for o in out_rows],
            )
            db.executemany("INSERT INTO profiles (run_id, node, name, kernel, us) VALUES (?, ?, ?, ?, ?)",
                           [(run_id, *p) for p in profile_rows])
        log.info("results: recorded run %d (%s on %s, %s)", run_id, row["model"], row["target"],
                 "passed" if passed else "failed")
        return run_id

    def profile(self, run_id: int) -> list[dict[str, Any]]:
        """A run's kernel profile (harness run --profile), slowest first."""
        with self._connect() as db:
            rows = db.execute("SELECT node, name, kernel, us FROM profiles WHERE run_id = ? ORDER BY us DESC",
                              (run_id,)).fetchall()
        return [{"node": r[0], "name": r[1], "kernel": r[2], "us": r[3]} for r in rows]

    # -- device health ---------------------------------------------------------------------

    def device_health(self, device: str | None = None) -> list[dict[str, Any]]:
        """The recorded health of `device` (a name: every record of that name; or a health key
        "name@digest", see harness.farm.inventory.Device.health_key), or of every device, as
        dicts of the columns; "device" is the name, "key" the record's key."""
        cols = ("device", "target", "state", "failures", "reason", "since", "updated", "evidence")
        escaped = (device or "").replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        where, params = ("WHERE device = ? OR device LIKE ? ESCAPE '\\'", (device, escaped + "@%")) \
            if device else ("", ())
        with self._connect() as db:
            rows = db.execute(f"SELECT {', '.join(cols)} FROM device_health {where} ORDER BY device",
                              params).fetchall()
        found = [dict(zip(cols, r)) for r in rows]
        for row in found:
            row["key"] = row["device"]
            row["device"] = row["key"].partition("@")[0]
        return found

    def set_device_health(self, device: str, *, target: str | None, state: str, failures: int,
                          reason: str | None, evidence: str | None = None) -> None:
        """Record a device's health; `since` is when it entered `state`."""
        if state not in (HEALTHY, QUARANTINED):
            raise HarnessError(f"results: device state must be {HEALTHY} or {QUARANTINED}, got {state!r}")
        now = _now()
        with self._connect() as db, transaction(db):
            old = db.execute("SELECT state, since FROM device_health WHERE device = ?", (device,)).fetchone()
            since = old[1] if old and old[0] == state else now
            db.execute("INSERT OR REPLACE INTO device_health (device, target, state, failures, reason, "
                       "since, updated, evidence) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (device, target, state, failures, reason, since, now, evidence))

    def record_farm_report(self, batch: str, path: Path | str) -> None:
        """Remember where a farm wrote its report (farm-results.json), so the dashboard finds
        the batch's evidence without being told `--farm-out`."""
        with self._connect() as db:
            db.execute("INSERT OR REPLACE INTO farm_reports (batch, path) VALUES (?, ?)",
                       (batch, str(Path(path).resolve())))

    def farm_reports(self) -> list[Path]:
        """The farm reports recorded by record_farm_report, oldest batch first."""
        with self._connect() as db:
            return [Path(r[0]) for r in db.execute("SELECT path FROM farm_reports ORDER BY batch")]

    def clear_device(self, device: str) -> bool:
        """Return quarantined device(s) of this name or health key to service (failures reset);
        False if none was quarantined."""
        rows = [r for r in self.device_health(device) if r["state"] == QUARANTINED]
        for row in rows:
            self.set_device_health(row["key"], target=row["target"], state=HEALTHY, failures=0,
                                   reason=f"cleared by hand (was: {row['reason']})")
        return bool(rows)

    # -- reading ---------------------------------------------------------------------------

    def _rows(self, where: str = "", params: tuple = ()) -> list[RunRow]:
        cols = ", ".join(f'"{c}"' for c in RUN_COLUMNS)
        with self._connect() as db:
            runs = db.execute(f"SELECT {cols} FROM runs {where} ORDER BY id", params).fetchall()
            ids = [r["id"] for r in runs]
            outputs: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
            if ids:
                # Chunked: SQLite caps the number of bound parameters.
                for start in range(0, len(ids), 500):
                    chunk = ids[start:start + 500]
                    q = ",".join("?" for _ in chunk)
                    for o in db.execute(f"SELECT * FROM outputs WHERE run_id IN ({q}) ORDER BY rowid", chunk):
                        d = dict(o)
                        d["shape"] = json.loads(d["shape"]) if d["shape"] else None
                        d["passed"] = None if d["passed"] is None else bool(d["passed"])
                        outputs[d.pop("run_id")].append(d)
        result = []
        for r in runs:
            d = dict(r)
            d["passed"] = bool(d["passed"])
            result.append(RunRow(**d, outputs=tuple(outputs[d["id"]])))
        return result

    def runs(self, *, batch: str | None = None, target: str | None = None,
             model: str | None = None) -> list[RunRow]:
        """Every stored run matching the filters, oldest first."""
        clauses, params = [], []
        for col, value in (("batch", batch), ("target", target), ("model", model)):
            if value is not None:
                clauses.append(f"{col} = ?")
                params.append(value)
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        return self._rows(where, tuple(params))

    def batches(self) -> list[str]:
        """Batch names, oldest first (by their first run)."""
        with self._connect() as db:
            rows = db.execute("SELECT batch FROM runs GROUP BY batch ORDER BY MIN(id)").fetchall()
        return [r[0] for r in rows]

    def batch_targets(self, batch: str) -> set[str]:
        with self._connect() as db:
            return {r[0] for r in db.execute("SELECT DISTINCT target FROM runs WHERE batch = ?", (batch,))}

    def previous_batch(self, batch: str) -> str | None:
        """The batch `batch` is compared with: the last one before it of the same kind
        (batch_kind) that ran on at least one of its targets; None if there is none."""
        batches = self.batches()
        if batch not in batches:
            return None
        kind, targets = batch_kind(batch), self.batch_targets(batch)
        for earlier in reversed(batches[:batches.index(batch)]):
            if batch_kind(earlier) == kind and self.batch_targets(earlier) & targets:
                return earlier
        return None

    def latest(self, batch: str) -> dict[tuple[str, str], RunRow]:
        """The run that counts for each (model, target) of a batch: its latest attempt."""
        latest: dict[tuple[str, str], RunRow] = {}
        for row in self.runs(batch=batch):
            latest[(row.model, row.target)] = row
        return latest

    def targets(self) -> list[str]:
        with self._connect() as db:
            return [r[0] for r in db.execute("SELECT DISTINCT target FROM runs ORDER BY target")]

    def models(self) -> list[str]:
        with self._connect() as db:
            return [r[0] for r in db.execute("SELECT DISTINCT model FROM runs ORDER BY model")]

    def size_trend(self, target: str) -> list[dict[str, Any]]:
        """minrt/runner/kernels .text of a target per batch (oldest first), with the batch's
        commit: the latest run of the batch that measured minrt. `label` is the commit, with the
        number of the measurement added when one commit was measured in several batches."""
        points = []
        for row in self.runs(target=target):
            if row.minrt_text is None:
                continue
            if points and points[-1]["batch"] == row.batch:
                points.pop()  # a later run of the same batch replaces it
            points.append({"batch": row.batch, "commit": row.commit, "date": row.date,
                           "minrt_text": row.minrt_text, "runner_text": row.runner_text,
                           "kernels_text": row.kernels_text,
                           "minrt_text_no_messages": row.minrt_text_no_messages})
        commits = [p["commit"] for p in points]
        seen: dict[str | None, int] = {}
        for p in points:
            seen[p["commit"]] = seen.get(p["commit"], 0) + 1
            repeated = p["commit"] is None or commits.count(p["commit"]) > 1
            p["label"] = f"{p['commit'] or 'no commit'} #{seen[p['commit']]}" if repeated else p["commit"]
        return points

    def footprint_trend(self, target: str, model: str) -> list[dict[str, Any]]:
        """A model's footprint on a target per batch, oldest first: RAM (the arena by part,
        peak RSS) and flash (minrt, runner, kernels, weights), from the run that counts."""
        points = []
        for batch in self.batches():
            row = self.latest(batch).get((model, target))
            if row is None or row.arena_bytes is None:
                continue
            points.append({"batch": batch, "commit": row.commit, "arena_bytes": row.arena_bytes,
                           **{c: getattr(row, c) for c in FOOTPRINT_COLUMNS},
                           "minrt_text": row.minrt_text, "runner_text": row.runner_text,
                           "kernels_text": row.kernels_text, "transport": row.transport})
        return points

    def latency_trend(self, target: str, model: str) -> list[dict[str, Any]]:
        """Mean/min/max latency per batch for one model on one target, oldest batch first, with
        its unit: "us", or a counting target's count_unit ("emulated instructions")."""
        points = []
        for batch in self.batches():
            row = self.latest(batch).get((model, target))
            latency = row.latency() if row is not None else None
            if latency is not None:
                low, mean, high, unit = latency
                points.append({"batch": batch, "commit": row.commit, "min": low, "mean": mean,
                               "max": high, "unit": unit})
        return points

    def accuracy_matrix(self, batch: str) -> dict[tuple[str, str], RunRow]:
        """(model, target) -> the run that counts in `batch` (passed, errors, max_abs_err)."""
        return self.latest(batch)


def default_store_path() -> Path:
    from harness.cache import cache_dir

    return cache_dir() / DEFAULT_DB_NAME


# -- command line -------------------------------------------------------------------------


def configure_parser(p: argparse.ArgumentParser) -> None:
    """`harness results [--results DB] {batches,list}`."""
    p.add_argument("--results", help="results store (default: <cache>/results.sqlite)")
    sub = p.add_subparsers(dest="results_command", required=True)
    sub.add_parser("batches", help="list the batches (nights, farm runs), oldest first")
    ls = sub.add_parser("list", help="list stored runs")
    ls.add_argument("--batch", help="only this batch (default: the latest)")
    ls.add_argument("--target", help="only runs on this target")
    ls.add_argument("--model", help="only runs of this model")
    ls.add_argument("--json", action="store_true", help="one JSON object per run")
    p.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    import dataclasses

    path = Path(args.results) if args.results else default_store_path()
    if not path.exists():
        raise HarnessError(f"results: no results store at {path}")
    store = ResultStore(path)
    if args.results_command == "batches":
        for batch in store.batches():
            print(batch)
        return 0
    batches = store.batches()
    batch = args.batch or (batches[-1] if batches else None)
    rows = store.runs(batch=batch, target=args.target, model=args.model)
    if args.json:
        for row in rows:
            print(json_text(dataclasses.asdict(row)))
        return 0
    print(runs_table(rows))
    return 0


def runs_table(rows: list[RunRow]) -> str:
    """Stored runs under a header, columns as wide as their content; latencies in a unit
    chosen by their size, "emulated" on those an emulator measured."""
    from harness.formats.text import table

    body = [[row.id, row.batch, row.model, row.target, row.device or "-", "PASS" if row.passed else "FAIL",
             latency_text(row), f"{row.minrt_text:,} B" if row.minrt_text else "-",
             row.error.splitlines()[0][:80] if row.error else ""] for row in rows]
    if not body:
        return "results: no runs match"
    return table(["id", "batch", "model", "target", "device", "result", "mean latency", "minrt .text", "error"],
                 body, right=(0, 6, 7))


# -- benchmarks (harness bench) ---------------------------------------------------------------

_BENCH_SCHEMA = """
CREATE TABLE IF NOT EXISTS bench (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    batch TEXT NOT NULL,
    "commit" TEXT,
    date TEXT NOT NULL,
    target TEXT NOT NULL,
    model TEXT NOT NULL,
    minrt_min_us REAL,
    minrt_median_us REAL,
    ort_min_us REAL,
    ort_median_us REAL,
    ratio_min REAL,
    ratio_median REAL,
    tuned_kernels INTEGER,
    kernels INTEGER,
    workspace_bytes INTEGER,
    compile_seconds REAL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS bench_target_model ON bench(target, model);
"""

BENCH_COLUMNS = ("minrt_min_us", "minrt_median_us", "ort_min_us", "ort_median_us", "ratio_min",
                 "ratio_median", "tuned_kernels", "kernels", "workspace_bytes", "compile_seconds", "error",
                 "threads", "litert_min_us", "litert_median_us", "litert_ratio_min", "litert_ratio_median",
                 "output_check")
#: columns added after the bench table's first schema, with their types: threads (the threads
#: every runtime ran on; rows from before it ran on one), LiteRT as a second baseline (rows from
#: before it have none) and the check of minrt's outputs
_BENCH_ADDED = {"threads": "INTEGER", "litert_min_us": "REAL", "litert_median_us": "REAL",
                "litert_ratio_min": "REAL", "litert_ratio_median": "REAL", "output_check": "TEXT"}
#: the baselines `harness bench` measures minrt against -> the prefix of their ratio columns
BENCH_BASELINES = {"onnxruntime": "", "litert": "litert_"}


def _bench_schema(db: sqlite3.Connection) -> None:
    """The bench table, with the columns added after its first schema (_BENCH_ADDED)."""
    db.executescript(_BENCH_SCHEMA)
    have = {r["name"] for r in db.execute("PRAGMA table_info(bench)")}
    for column, kind in _BENCH_ADDED.items():
        if column in have:
            continue
        try:
            db.execute(f"ALTER TABLE bench ADD COLUMN {column} {kind}")
        except sqlite3.OperationalError as exc:  # another process added it first
            if "duplicate column" not in str(exc):
                raise


def record_bench(store: ResultStore, rows: list[Mapping[str, Any]], *, commit: str | None = None,
                 batch: str | None = None, date: str | None = None) -> int:
    """Store one benchmark run (harness.bench.vs_onnxruntime.ModelBench.to_dict() per model); returns the
    number of rows written. All rows of one run share the batch (default: bench-<UTC time>,
    each run its own, so a run before tuning and one after both stay)."""
    date = date or _now()
    if batch is None:
        batch = base = "bench-" + re.sub(r"[-:]", "", date[:19]) + "Z"
        taken, n = set(bench_batches(store)), 1
        while batch in taken:  # two runs within one second
            n += 1
            batch = f"{base}-{n}"
    values = []
    for i, r in enumerate(rows):
        for key in ("model", "target"):
            if not isinstance(r.get(key), str) or not r.get(key):
                raise HarnessError(f"results: bench row {i} needs a non-empty string '{key}'")
        kinds = {"tuned_kernels": int, "kernels": int, "workspace_bytes": int, "threads": int}
        values.append((batch, commit, date, r["target"], r["model"],
                       *(r.get(c) if c in ("error", "output_check") else _num(r.get(c), kinds.get(c, float), c)
                         for c in BENCH_COLUMNS)))
    cols = ", ".join(f'"{c}"' for c in ("batch", "commit", "date", "target", "model", *BENCH_COLUMNS))
    marks = ", ".join("?" for _ in range(5 + len(BENCH_COLUMNS)))
    with store._connect() as db:
        _bench_schema(db)
        with transaction(db):
            db.executemany(f"INSERT INTO bench ({cols}) VALUES ({marks})", values)
    log.info("results: recorded %d benchmark row(s) in batch %s", len(values), batch)
    return len(values)


def bench_trend(store: ResultStore, target: str, threads: int = 1,
                baseline: str = "onnxruntime") -> dict[str, list[dict[str, Any]]]:
    """Per model, the ratio minrt / `baseline` (BENCH_BASELINES) per batch on one target at one
    thread count (the latest row of each batch), oldest batch first; with the geometric mean
    over the models of each batch under the key "geomean"."""
    import math

    if baseline not in BENCH_BASELINES:
        raise HarnessError(f"results: no bench baseline '{baseline}' (known: {', '.join(BENCH_BASELINES)})")
    prefix = BENCH_BASELINES[baseline]
    with store._connect() as db:
        _bench_schema(db)
        rows = db.execute(
            f'SELECT batch, "commit", model, {prefix}ratio_min AS ratio_min, {prefix}ratio_median AS ratio_median, '
            f"tuned_kernels FROM bench WHERE target = ? AND COALESCE(threads, 1) = ? AND error IS NULL "
            f"AND {prefix}ratio_min IS NOT NULL ORDER BY id", (target, threads)).fetchall()
    latest: dict[tuple[str, str], sqlite3.Row] = {}
    order: list[str] = []
    for row in rows:
        if row["batch"] not in order:
            order.append(row["batch"])
        latest[(row["batch"], row["model"])] = row
    trend: dict[str, list[dict[str, Any]]] = {}
    for (batch, model), row in sorted(latest.items(), key=lambda kv: order.index(kv[0][0])):
        trend.setdefault(model, []).append({"batch": batch, "commit": row["commit"], "ratio_min": row["ratio_min"],
                                            "ratio_median": row["ratio_median"], "tuned_kernels": row["tuned_kernels"]})
    geo = []
    for batch in order:
        ratios = [r["ratio_min"] for (b, _), r in latest.items() if b == batch]
        geo.append({"batch": batch, "commit": None, "ratio_min": math.exp(sum(map(math.log, ratios)) / len(ratios)),
                    "ratio_median": None, "tuned_kernels": None})
    if geo:
        trend["geomean"] = geo
    return trend


def bench_batches(store: ResultStore) -> list[str]:
    """Benchmark batches, oldest first."""
    with store._connect() as db:
        db.executescript(_BENCH_SCHEMA)
        return [r[0] for r in db.execute("SELECT batch FROM bench GROUP BY batch ORDER BY MIN(id)").fetchall()]


def bench_targets(store: ResultStore) -> list[str]:
    with store._connect() as db:
        _bench_schema(db)
        return [r[0] for r in db.execute("SELECT DISTINCT target FROM bench ORDER BY target").fetchall()]
