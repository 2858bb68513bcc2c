"""The results store: round trip, half-way failures, bad input, queries, concurrent writers."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.results.store import ResultStore, transaction


def make_result(model="mlp", target="x86_64", *, passed=True, minrt=5000, mean=100.0, err=2e-7,
                error=None) -> dict:
    return {
        "model": model, "target": target, "transport": "local", "passed": passed,
        "outputs": [
            {"name": "output0", "shape": [1, 10], "dtype": "float32", "max_abs_err": err,
             "max_rel_err": err * 10, "atol": 1e-5, "rtol": 1e-5, "passed": passed},
            {"name": "output1", "shape": [1, 2], "dtype": "float32", "max_abs_err": err / 2,
             "max_rel_err": err, "atol": 1e-5, "rtol": 1e-5, "passed": True},
        ],
        "latency_us": {"min": mean * 0.9, "mean": mean, "max": mean * 1.5},
        "iters": 10, "arena_bytes": 4096,
        "sizes": {"minrt_text": minrt, "runner_text": 30000, "kernels_text": 2100},
        "tvm_version": "0.27.0", "toolchain": "host gcc 12", "commit": "abc123", "error": error,
    }


def test_record_round_trip(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "r.sqlite")
    run_id = store.record(make_result(), device="host-1", batch="night-1")
    (row,) = store.runs()
    assert row.id == run_id
    assert (row.model, row.target, row.device, row.batch, row.commit) == ("mlp", "x86_64", "host-1", "night-1", "abc123")
    assert row.passed is True and row.error is None
    assert (row.latency_min_us, row.latency_mean_us, row.latency_max_us) == (90.0, 100.0, 150.0)
    assert (row.minrt_text, row.runner_text, row.kernels_text, row.arena_bytes) == (5000, 30000, 2100, 4096)
    assert (row.toolchain, row.tvm_version, row.iters) == ("host gcc 12", "0.27.0", 10)
    assert [o["name"] for o in row.outputs] == ["output0", "output1"]
    assert row.outputs[0]["shape"] == [1, 10] and row.outputs[0]["max_abs_err"] == 2e-7
    assert row.max_abs_err == 2e-7
    # The file is in WAL mode, so readers never block the writers.
    with sqlite3.connect(store.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_commit_argument_overrides_and_batch_defaults_to_day(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "r.sqlite")
    store.record(make_result(), commit="def456", date="2026-11-20T02:00:00Z")
    (row,) = store.runs()
    assert row.commit == "def456"
    assert row.batch == "2026-11-20"


def test_half_way_failure_keeps_what_was_measured(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "r.sqlite")
    # Built and measured, then the device died: sizes known, no latency, no outputs.
    result = {"model": "cnn", "target": "qemu-armv7", "transport": "qemu-user", "passed": False,
              "outputs": [], "latency_us": {}, "iters": 0, "arena_bytes": None,
              "sizes": {"minrt_text": 5800, "runner_text": 41000, "kernels_text": 9000},
              "tvm_version": "0.27.0", "toolchain": "host", "commit": "abc",
              "error": "minrt-run failed (exit status -9)"}
    store.record(result, device="armv7-1")
    (row,) = store.runs()
    assert row.passed is False
    assert row.error == "minrt-run failed (exit status -9)"
    assert (row.minrt_text, row.runner_text, row.kernels_text) == (5800, 41000, 9000)
    assert row.latency_mean_us is None and row.outputs == ()
    # A result that claims to pass but carries an error is stored as a failure.
    store.record({**make_result(), "error": "lost the connection"})
    assert store.runs()[-1].passed is False


def test_a_write_that_fails_half_way_leaves_nothing(tmp_path: Path) -> None:
    """Every write is one transaction (results.store.transaction): a statement that fails after
    another has run rolls both back; a block that ends commits."""
    store = ResultStore(tmp_path / "r.sqlite")
    row = "INSERT INTO device_health (device, state, failures, updated) VALUES (?, ?, 0, 'now')"
    with pytest.raises(sqlite3.IntegrityError), store._connect() as db, transaction(db):
        db.execute(row, ("board-1", "healthy"))
        db.execute(row, ("board-2", None))  # state is NOT NULL
    assert store.device_health() == []
    with store._connect() as db, transaction(db):
        db.execute(row, ("board-1", "healthy"))
    assert [r["device"] for r in store.device_health()] == ["board-1"]


def test_bad_results_are_refused_with_the_key_named(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "r.sqlite")
    with pytest.raises(HarnessError, match="'model'"):
        store.record({"target": "x86_64"})
    with pytest.raises(HarnessError, match="latency_us.mean"):
        store.record({**make_result(), "latency_us": {"mean": "fast"}})
    with pytest.raises(HarnessError, match=r"outputs\[0\].max_abs_err"):
        store.record({**make_result(), "outputs": [{"name": "o", "max_abs_err": [1]}]})
    assert store.runs() == []  # nothing half-written


def test_queries_for_the_dashboard(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "r.sqlite")
    for night, (commit, size) in enumerate([("c1", 5000), ("c2", 5040), ("c3", 5100)]):
        for model in ("mlp", "cnn"):
            store.record(make_result(model, "qemu-armv7", minrt=size, mean=100 + night,
                                     passed=not (night == 2 and model == "cnn")),
                         commit=commit, batch=f"n{night}")
    # A retried job: the latest attempt of a (model, target) in a batch is the one that counts.
    store.record(make_result("cnn", "qemu-armv7", minrt=5100, passed=True), commit="c3", batch="n2")

    assert store.batches() == ["n0", "n1", "n2"]
    assert store.targets() == ["qemu-armv7"] and store.models() == ["cnn", "mlp"]
    trend = store.size_trend("qemu-armv7")
    assert [(p["commit"], p["minrt_text"]) for p in trend] == [("c1", 5000), ("c2", 5040), ("c3", 5100)]
    lat = store.latency_trend("qemu-armv7", "mlp")
    assert [(p["batch"], p["mean"]) for p in lat] == [("n0", 100.0), ("n1", 101.0), ("n2", 102.0)]
    matrix = store.accuracy_matrix("n2")
    assert matrix[("cnn", "qemu-armv7")].passed is True
    assert len(store.runs(batch="n2", model="cnn")) == 2  # the failed attempt is still on record


WRITER = textwrap.dedent("""
    import sys
    from harness.results.store import ResultStore
    db, writer, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    store = ResultStore(db)
    print("ready", flush=True)
    sys.stdin.readline()  # "go": every writer starts its loop at the same moment
    for i in range(count):
        store.record({"model": f"w{writer}-{i}", "target": "x86_64", "passed": True,
                      "outputs": [{"name": "output0", "max_abs_err": i * 1e-9, "passed": True}],
                      "latency_us": {"min": 1, "mean": 2, "max": 3}}, device=f"writer-{writer}",
                     batch="concurrent")
""")


def test_concurrent_writers_from_several_processes_lose_nothing(tmp_path: Path) -> None:
    db = tmp_path / "r.sqlite"
    ResultStore(db)  # schema exists before the race starts
    writers, count = 6, 60
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(db), str(w), str(count)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for w in range(writers)]
    # Started together once all are ready, not at a wall-clock moment 1.5 s ahead: on a loaded
    # host a writer still importing then began after others had finished, and did not interleave.
    for p in procs:
        assert p.stdout.readline() == "ready\n", p.communicate(timeout=120)[1]
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    store = ResultStore(db)
    rows = store.runs(batch="concurrent")
    assert len(rows) == writers * count
    assert {r.model for r in rows} == {f"w{w}-{i}" for w in range(writers) for i in range(count)}
    # Every run kept its own output row.
    assert all(len(r.outputs) == 1 and r.outputs[0]["max_abs_err"] == int(r.model.split("-")[1]) * 1e-9
               for r in rows)
    # The writers really did interleave (otherwise this test proves nothing about concurrency).
    order = [r.device for r in rows]
    switches = sum(1 for a, b in zip(order, order[1:]) if a != b)
    assert switches > writers


def test_results_command_lists_runs_and_batches(tmp_path: Path, capsys) -> None:
    from harness.cli import main as harness_main

    def main(argv: list[str]) -> int:
        return harness_main(["results", *argv])

    store = ResultStore(tmp_path / "r.sqlite")
    store.record(make_result("mlp"), device="host-1", batch="n1")
    store.record(make_result("cnn", passed=False, error="minrt-run failed (run error)"), batch="n2")
    assert main(["--results", str(store.path), "batches"]) == 0
    assert capsys.readouterr().out.split() == ["n1", "n2"]
    assert main(["--results", str(store.path), "list"]) == 0  # the latest batch by default
    out = capsys.readouterr().out
    assert "cnn" in out and "FAIL" in out and "minrt-run failed (run error)" in out and "mlp" not in out
    assert main(["--results", str(store.path), "list", "--batch", "n1", "--json"]) == 0
    import json

    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["model"] == "mlp" and row["device"] == "host-1" and row["minrt_text"] == 5000
    assert main(["--results", str(tmp_path / "nope.sqlite"), "list"]) == 2
    assert "no results store at" in capsys.readouterr().err


def test_size_trend_keeps_one_point_per_batch_when_a_commit_repeats(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "r.sqlite")
    store.record(make_result(minrt=5000), commit="c1", batch="n1")
    store.record(make_result(minrt=5400), commit="c1", batch="n2")  # same commit, new toolchain
    store.record(make_result(minrt=5410), commit="c2", batch="n3")
    trend = store.size_trend("x86_64")
    assert [(p["label"], p["minrt_text"]) for p in trend] == [("c1 #1", 5000), ("c1 #2", 5400), ("c2", 5410)]
