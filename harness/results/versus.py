"""Side-by-side figures of minrt and other runtimes (TFLite Micro, LiteRT, onnxruntime) on the
same model and target, in the results store (`ci/bench_tflm`).

One row per (model, target, runtime, metric): a value with its unit, or a note saying why
there is none ("minrt cannot run this model yet: ..."), and the other runtime's source
commits. Ratios minrt/other per model and target over batches feed the dashboard.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
from collections.abc import Mapping
from typing import Any

from harness.errors import HarnessError
from harness.results.store import ResultStore, _now, transaction

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS versus (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    batch TEXT NOT NULL,
    "commit" TEXT,
    date TEXT NOT NULL,
    target TEXT NOT NULL,
    model TEXT NOT NULL,
    runtime TEXT NOT NULL,
    metric TEXT NOT NULL,
    value REAL,
    unit TEXT,
    note TEXT,
    sources TEXT
);
CREATE INDEX IF NOT EXISTS versus_target_model ON versus(target, model, metric);
"""

COLUMNS = ("target", "model", "runtime", "metric", "value", "unit", "note", "sources")


def record_versus(store: ResultStore, rows: list[Mapping[str, Any]], *, commit: str | None = None,
                  batch: str | None = None, date: str | None = None) -> int:
    """Store one side-by-side run (rows with COLUMNS; `sources` a dict of commits); returns the
    number of rows written. All rows of one run share the batch (default: the UTC day)."""
    date = date or _now()
    batch = batch or date[:10]
    values = []
    for i, r in enumerate(rows):
        for key in ("target", "model", "runtime", "metric"):
            if not isinstance(r.get(key), str) or not r.get(key):
                raise HarnessError(f"results: versus row {i} needs a non-empty string '{key}'")
        value = r.get("value")
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)
                                  or not math.isfinite(value)):
            raise HarnessError(f"results: versus row {i} ({r['model']}, {r['metric']}): value {value!r} is not a number")
        if value is None and not r.get("note"):
            raise HarnessError(f"results: versus row {i} ({r['model']}, {r['metric']}): no value and no note saying why")
        sources = r.get("sources")
        values.append((batch, commit, date, r["target"], r["model"], r["runtime"], r["metric"], value,
                       r.get("unit"), r.get("note"), json.dumps(sources, sort_keys=True) if sources else None))
    cols = ", ".join(f'"{c}"' for c in ("batch", "commit", "date", *COLUMNS))
    with store._connect() as db:
        db.executescript(_SCHEMA)
        with transaction(db):
            db.executemany(f"INSERT INTO versus ({cols}) VALUES ({', '.join('?' * (3 + len(COLUMNS)))})", values)
    log.info("results: recorded %d side-by-side row(s) in batch %s", len(values), batch)
    return len(values)


def versus_rows(store: ResultStore, batch: str | None = None) -> list[dict[str, Any]]:
    with store._connect() as db:
        db.executescript(_SCHEMA)
        where, params = ("WHERE batch = ?", (batch,)) if batch else ("", ())
        rows = db.execute(f"SELECT * FROM versus {where} ORDER BY id", params).fetchall()
    return [dict(r) for r in rows]


def versus_ratios(store: ResultStore, against: str, metric: str) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """(target, model) -> per batch (oldest first): minrt's value, the other runtime's and the
    ratio minrt/other, for one metric; only batches where both have a value."""
    with store._connect() as db:
        db.executescript(_SCHEMA)
        rows = db.execute("SELECT batch, target, model, runtime, value, sources FROM versus "
                          "WHERE metric = ? AND runtime IN ('minrt', ?) AND value IS NOT NULL ORDER BY id",
                          (metric, against)).fetchall()
    latest: dict[tuple[str, str, str], dict[str, sqlite3.Row]] = {}
    order: list[str] = []
    for row in rows:
        if row["batch"] not in order:
            order.append(row["batch"])
        latest.setdefault((row["batch"], row["target"], row["model"]), {})[row["runtime"]] = row
    trend: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for (batch, target, model), pair in sorted(latest.items(), key=lambda kv: order.index(kv[0][0])):
        if "minrt" in pair and against in pair and pair[against]["value"]:
            mine, other = pair["minrt"]["value"], pair[against]["value"]
            trend.setdefault((target, model), []).append({
                "batch": batch, "minrt": mine, against: other, "ratio": mine / other,
                "sources": json.loads(pair[against]["sources"]) if pair[against]["sources"] else None})
    return trend
