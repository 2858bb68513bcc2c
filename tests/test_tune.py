"""`harness tune` end to end with a tiny budget: meta_schedule candidates built with the
target's toolchain and timed by minrt-run through the target's transport (local on x86_64,
qemu-user on ARMv7), records in the cache's database, and compile/run using them (and
ignoring them under MINRT_NO_TUNING=1). Real budgets run in `harness tune`/`harness bench`,
not here."""

from __future__ import annotations

import json
import socket
import time

import pytest

from harness.compile.model import compile_model
from harness.errors import HarnessError
from harness.models.examples import write_examples
from harness.run import run_on_target
from harness.config.targets import load_target
from harness.tune import model_kernels, tune_model
from harness.compile.tuning_db import TuningDatabase

KERNEL = "fused_matmul_add_relu"  # mlp's first dense layer: 64x32, a few hundred candidates a second


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    return write_examples(tmp_path_factory.mktemp("tune_models"), ["mlp"])["mlp"]


@pytest.mark.parametrize("target_name, trials", [("x86_64", 16), ("qemu-armv7", 8)])
def test_tune_then_compile_and_run_use_the_best_record(mlp, tmp_path, monkeypatch, target_name, trials):
    monkeypatch.setenv("MINRT_CACHE", str(tmp_path))
    monkeypatch.delenv("MINRT_NO_TUNING", raising=False)
    target = load_target(target_name)
    report = tune_model(mlp, target, trials=trials, kernels=[KERNEL], trials_per_iter=8)
    [task] = report.tasks
    assert task.name == KERNEL and task.trials >= 1 and task.best_us and task.best_us > 0
    database = TuningDatabase.for_target(target)
    assert database.exists() and task.records >= task.trials

    # The session timed the default schedule too; compile keeps whichever ran faster.
    assert task.default_us and task.default_us > 0
    funcs, _ = model_kernels(mlp, target)
    best = database.best(funcs[KERNEL], None)
    chosen = compile_model(mlp, target).metadata["schedules"][KERNEL]
    if best.latency_us < task.default_us:
        assert chosen["source"] == "tuned" and chosen["default_us"] == pytest.approx(task.default_us)
    else:
        assert chosen["source"] == "default" and chosen["best_record_us"] == pytest.approx(best.latency_us)
    # the report's table says which one compile uses
    row = next(line for line in report.table().splitlines() if line.startswith(KERNEL))
    assert ("default schedule kept: no record beat it" in row) == (chosen["source"] == "default"), row

    # Without a default measurement the best record is used, and says which it is.
    (database.path / "defaults.json").unlink()
    artifact = compile_model(mlp, target)
    meta = artifact.metadata
    assert meta["tuned_kernels"] == [KERNEL]
    used = meta["schedules"][KERNEL]
    assert used["record"] == best.record_id and used["latency_us"] == pytest.approx(task.best_us)
    assert all(v["source"] == "default" for k, v in meta["schedules"].items() if k != KERNEL)

    # The tuned kernel runs on the device and matches the references.
    result = run_on_target(mlp, target, iters=2, seed=5)
    assert result.error is None and result.passed, json.dumps(result.outputs, indent=1)

    # MINRT_NO_TUNING=1: the same model compiles with default schedules only, as another artifact.
    monkeypatch.setenv("MINRT_NO_TUNING", "1")
    plain = compile_model(mlp, target)
    assert plain.dir != artifact.dir and plain.metadata["tuned_kernels"] == []


def test_tuning_resumes_and_records_travel_as_a_file(mlp, tmp_path, monkeypatch):
    monkeypatch.setenv("MINRT_CACHE", str(tmp_path / "a"))
    monkeypatch.delenv("MINRT_NO_TUNING", raising=False)
    target = load_target("x86_64")
    first = tune_model(mlp, target, trials=8, kernels=[KERNEL], trials_per_iter=8)
    again = tune_model(mlp, target, trials=8, kernels=[KERNEL], trials_per_iter=8)
    assert first.tasks[0].trials >= 1
    assert again.tasks[0].trials == 0 and again.tasks[0].skipped == "already tuned"

    exported = tmp_path / "records.json"
    n = TuningDatabase.for_target(target).export(exported)
    assert n == first.tasks[0].records

    monkeypatch.setenv("MINRT_CACHE", str(tmp_path / "b"))
    fresh = TuningDatabase.for_target(target)
    assert not fresh.exists()
    assert fresh.import_file(exported) == n
    assert fresh.import_file(exported) == 0  # merging twice adds nothing
    assert (fresh.path / "defaults.json").read_text() == (TuningDatabase(tmp_path / "a" / fresh.path.relative_to(tmp_path / "b")).path / "defaults.json").read_text()
    schedule = compile_model(mlp, target).metadata["schedules"][KERNEL]
    assert schedule["source"] == "tuned" or schedule["best_record_us"] >= schedule["default_us"]

    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something else"}')
    with pytest.raises(HarnessError, match="not a tuning records file"):
        fresh.import_file(bad)


def test_a_dead_device_is_a_clear_bounded_error(mlp, tmp_path, monkeypatch):
    monkeypatch.setenv("MINRT_CACHE", str(tmp_path))
    with socket.socket() as s:  # a port on loopback that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(HarnessError):
        tune_model(mlp, load_target("rpi"), trials=8, kernels=[KERNEL], transport="ssh",
                   host=f"root@127.0.0.1:{port}")
    assert time.monotonic() - started < 120


def test_time_budget_stops_before_the_next_kernel(mlp, tmp_path, monkeypatch):
    monkeypatch.setenv("MINRT_CACHE", str(tmp_path))
    report = tune_model(mlp, load_target("x86_64"), trials=8, time_budget=1e-6)
    assert report.tasks and all(t.trials == 0 and t.skipped == "time budget" for t in report.tasks)


def test_a_corrupt_defaults_file_is_ignored_when_writing_too(tmp_path, caplog):
    """defaults.json (measured latencies of default schedules) is a cache: a torn or edited
    file is ignored and rewritten, when recording as when reading (recording used to crash)."""
    import tvm
    from tvm import te

    a = te.placeholder((4,), name="a")
    b = te.compute((4,), lambda i: a[i] + 1.0, name="b")
    kernel = tvm.IRModule({"main": te.create_prim_func([a, b])})
    database = TuningDatabase(tmp_path / "db")
    database.path.mkdir(parents=True)
    for torn in ('{"abc": 1.', "[1, 2]"):
        (database.path / "defaults.json").write_text(torn)
        assert database.default_latency(kernel) is None
        database.set_default_latency(kernel, 12.5)
        assert database.default_latency(kernel) == 12.5
        assert "defaults.json" in caplog.text
        caplog.clear()
