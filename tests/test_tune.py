"""`harness tune` end to end with a tiny budget: meta_schedule candidates built with the
target's toolchain and timed by minrt-run through the target's transport (local on x86_64,
qemu-user on ARMv7), records in the cache's database, and compile/run using them (and
ignoring them under MINRT_NO_TUNING=1). Real budgets run in `harness tune`/`harness bench`,
not here."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import onnx
import pytest

from harness import REPO_ROOT
from harness.compile.model import compile_model
from harness.errors import HarnessError
from harness.models.examples import write_examples
from harness.run import run_on_target
from harness.config.targets import load_target
from harness.tune import funded_tasks, model_kernels, time_share, tune_model, tune_models
from harness.compile.tuning_db import TuningDatabase

KERNEL = "fused_matmul_add_relu"  # mlp's first dense layer: 64x32, a few hundred candidates a second


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    return write_examples(tmp_path_factory.mktemp("tune_models"), ["mlp"])["mlp"]


@pytest.fixture(scope="module")
def mlp_other_head(tmp_path_factory):
    """Another model whose first layer has mlp's shape (other weights), then a head of its own:
    one kernel workload shared with mlp, the others not."""
    from harness.models.examples import _GraphBuilder
    import numpy as np

    g = _GraphBuilder(seed=7)
    shape = g.const("flat_shape", np.array([1, 64], dtype=np.int64))
    x = g.node("Reshape", ["x", shape], "flat")
    x = g.node("Relu", [g.dense(x, "fc1", 64, 32)], "relu1")
    g.node("Sigmoid", [g.dense(x, "head", 32, 3)], "scores")
    path = tmp_path_factory.mktemp("tune_models_b") / "mlp_other_head.onnx"
    onnx.save(g.model("mlp_other_head", {"x": [1, 8, 8]}, {"scores": [1, 3]}), path)
    return path


def _defaults_measured_slower_than(database: TuningDatabase, record_us: float) -> None:
    """Make compile take the best record whichever won on the device: the database's measured
    default latencies (defaults.json) rewritten as twice the record's where they were faster."""
    defaults = database.path / "defaults.json"
    slower = {key: max(us, 2 * record_us) for key, us in json.loads(defaults.read_text()).items()}
    defaults.write_text(json.dumps(slower))


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

    # A record measured faster than the default is used, and says which it is. Whichever won
    # above, the record's path is taken here.
    _defaults_measured_slower_than(database, best.latency_us)
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


def test_the_budget_goes_to_kernels_by_weight_and_unused_time_moves_on():
    # 100 s among weights 100, 10, 1 with at least 5 s each: the third would get 0.9 s
    assert funded_tasks([100.0, 10.0, 1.0], 100.0, min_seconds=5.0) == 2
    assert funded_tasks([100.0, 10.0, 1.0], 1000.0, min_seconds=5.0) == 3
    assert funded_tasks([100.0], 4.0, min_seconds=5.0) == 0
    assert funded_tasks([], 100.0) == 0
    # a task's share is its weight among the tasks left; what the first left unused goes on
    assert time_share(60.0, 30.0, 40.0) == pytest.approx(45.0)
    assert time_share(50.0, 10.0, 10.0) == pytest.approx(50.0)  # the last one takes all that is left
    assert time_share(0.0, 10.0, 10.0) == 0.0


def test_budget_is_a_time_span():
    from harness.cli_options import time_span

    assert [time_span(t) for t in ("90", "90s", "10m", "1.5h", "2M")] == [90.0, 90.0, 600.0, 5400.0, 120.0]
    for bad in ("ten", "", "0", "-5m", "m", "nan", "infs"):
        with pytest.raises(argparse.ArgumentTypeError):
            time_span(bad)


def test_a_time_budget_bounds_the_whole_tuning(mlp, tmp_path, monkeypatch):
    """No trial limit, a 60 s budget from loading the model on, at least 15 s per searched
    kernel: only the heaviest kernel is worth a share (the next would get about a fifth of
    it); it is searched until its share is spent (the records measured so far stay), the
    others are not searched, and the call ends near the budget."""
    monkeypatch.setenv("MINRT_CACHE", str(tmp_path))
    monkeypatch.delenv("MINRT_NO_TUNING", raising=False)
    budget = 60.0
    started = time.monotonic()
    report = tune_models([mlp], load_target("x86_64"), trials=None, time_budget=budget, min_task_seconds=15.0,
                         trials_per_iter=2, population=16, threads=1)
    spent = time.monotonic() - started
    searched = [t for t in report.tasks if t.skipped is None]
    assert [t.name for t in searched] == [KERNEL], report.table()  # the heaviest
    # its default schedule was timed, its candidates measured and kept
    assert searched[0].default_us and searched[0].trials >= 1 and searched[0].records >= searched[0].trials
    unfunded = {"too light for the time budget", "time budget"}
    assert all(t.skipped in unfunded and t.trials == 0 for t in report.tasks[1:]), report.table()
    # meta_schedule's loop has no deadline: the search stops at the next batch after the share
    # ends, so the bound is the budget plus one batch of 2 tiny candidates (generous on a
    # loaded machine); without the stop it would run 10**6 trials.
    assert report.seconds <= spent and spent < budget + 30, report.table()
    assert f"(budget {budget:.0f} s)" in report.table()
    for why in unfunded:  # one line per reason, not a row per kernel
        n = sum(1 for t in report.tasks if t.skipped == why)
        assert (f"{n} kernel(s) not searched: {why}" in report.table()) == (n > 0), report.table()


def test_a_record_measured_against_another_default_waits_for_tune_to_compare(mlp, tmp_path, monkeypatch):
    """A record beat the default rules of its day; when the rules change, compile keeps the new
    default (naming the record) until `harness tune` has timed that default against it. The
    rule change is made real by dropping the database's measured defaults (defaults.json):
    what a database measured under older rules looks like to compile."""
    monkeypatch.setenv("MINRT_CACHE", str(tmp_path))
    monkeypatch.delenv("MINRT_NO_TUNING", raising=False)
    target = load_target("x86_64")
    tune_model(mlp, target, trials=8, kernels=[KERNEL], trials_per_iter=8, threads=1)
    database = TuningDatabase.for_target(target)
    funcs, _ = model_kernels(mlp, target)
    best = database.best(funcs[KERNEL], None)
    (database.path / "defaults.json").unlink()

    chosen = compile_model(mlp, target).metadata["schedules"][KERNEL]
    assert chosen["source"] == "default" and chosen["stale_record"] == best.record_id, chosen
    assert "default_us" not in chosen

    again = tune_model(mlp, target, trials=8, kernels=[KERNEL], trials_per_iter=8, threads=1)
    [task] = again.tasks
    assert task.skipped == "already tuned" and task.default_us and task.default_us > 0
    chosen = compile_model(mlp, target).metadata["schedules"][KERNEL]
    assert "stale_record" not in chosen and chosen["default_us"] == pytest.approx(task.default_us)
    assert chosen["source"] == ("tuned" if best.latency_us < task.default_us else "default"), chosen


def test_kernel_shapes_shared_by_models_are_tuned_once_and_reused(mlp, mlp_other_head, tmp_path, monkeypatch):
    monkeypatch.setenv("MINRT_CACHE", str(tmp_path))
    monkeypatch.delenv("MINRT_NO_TUNING", raising=False)
    target = load_target("x86_64")
    both = tune_models([mlp, mlp_other_head], target, trials=8, kernels=[KERNEL], trials_per_iter=8, threads=1)
    [task] = both.tasks  # one task for the two models' kernels of one shape
    assert task.uses == 2 and task.trials >= 1 and task.name == f"mlp/{KERNEL}"
    # The other kernels of the two models differ, each its own task.
    funcs_a, _ = model_kernels(mlp, target)
    funcs_b, _ = model_kernels(mlp_other_head, target)
    everything = tune_models([mlp, mlp_other_head], target, trials=1, time_budget=None)
    assert len(everything.tasks) == len(funcs_a) + len(funcs_b) - 1

    # compile finds the record for the second model's kernel too: the same record
    database = TuningDatabase.for_target(target)
    record_a, record_b = database.best(funcs_a[KERNEL], None), database.best(funcs_b[KERNEL], None)
    assert record_a is not None and record_b is not None and record_a.record_id == record_b.record_id
    chosen = compile_model(mlp_other_head, target).metadata["schedules"][KERNEL]
    assert chosen.get("record") == record_a.record_id or chosen.get("best_record_us") == pytest.approx(record_a.latency_us)
    # and tuning the second model alone later finds the kernel tuned already
    alone = tune_model(mlp_other_head, target, trials=8, kernels=[KERNEL], trials_per_iter=8, threads=1)
    assert [t.skipped for t in alone.tasks] == ["already tuned"]


CONV = "fused_conv2d1_add1_relu1"  # cnn's second conv: 8 -> 16 channels, 3x3, on 6x6


def test_a_convolution_is_tuned_by_register_tiles_near_the_rule(tmp_path, monkeypatch):
    """A convolution's tuning measures the default rule's neighbours (other register tiles,
    the other weight packing), records each as a trace in the database, and the record compile
    picks reproduces the schedule: the model runs and matches the references with it."""
    from harness.compile.kernels import default_schedule, kernel_target
    from harness.compile.schedule import conv_tile_variants

    monkeypatch.setenv("MINRT_CACHE", str(tmp_path))
    monkeypatch.delenv("MINRT_NO_TUNING", raising=False)
    cnn = write_examples(tmp_path / "models", ["cnn"])["cnn"]
    target = load_target("x86_64")
    funcs, _ = model_kernels(cnn, target)
    scheduled, rule = default_schedule(funcs[CONV], kernel_target(target), target)
    variants = conv_tile_variants(rule)
    assert rule.tile is not None and variants and len(variants) <= 8
    assert variants[0] == type(rule.tile)(rule.tile.vectors, rule.tile.pixels, not rule.tile.packed)
    assert all((v.vectors, v.pixels) != (rule.tile.vectors, rule.tile.pixels) for v in variants[1:])
    # a variant is another schedule of the same kernel; a tile that does not divide is refused
    other, _ = default_schedule(funcs[CONV], kernel_target(target), target, tile=variants[-1])
    assert other.script() != scheduled.script()
    with pytest.raises(ValueError):
        default_schedule(funcs[CONV], kernel_target(target), target,
                         tile=type(rule.tile)(rule.tile.vectors, 1000, False))

    report = tune_model(cnn, target, trials=4, kernels=[CONV], threads=1)
    [task] = report.tasks
    assert task.trials == 4 and task.records == 4 and task.default_us  # 4 tiles, no search
    database = TuningDatabase.for_target(target)
    best = database.best(funcs[CONV], None)
    assert best is not None and best.latency_us == pytest.approx(task.best_us)
    _defaults_measured_slower_than(database, best.latency_us)  # compile then takes the best record
    used = compile_model(cnn, target).metadata["schedules"][CONV]
    assert used["source"] == "tuned" and used["record"] == best.record_id
    result = run_on_target(cnn, target, iters=2, seed=3)
    assert result.error is None and result.passed, json.dumps(result.outputs, indent=1)


def test_sigterm_while_meta_schedule_searches_stops_tuning_and_keeps_the_records(mlp, tmp_path):
    """SIGTERM to a real `harness tune` the moment meta_schedule starts its second kernel's
    search (after the first kernel's records were stored): exit 143 with one "stopping" line
    and "interrupted (SIGTERM)", no process of its own left, and the first kernel's records
    still in the database. Before, the CLI's KeyboardInterrupt was raised inside TVM's C++:
    at this moment tune died of SIGSEGV (std::terminate, no message) in 2 of 5 tries, and
    elsewhere it waited for the search's next call into Python."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), MINRT_CACHE=str(tmp_path))
    env.pop("MINRT_NO_TUNING", None)
    tune = subprocess.Popen([sys.executable, "-m", "harness.cli", "tune", str(mlp), "--target", "x86_64",
                             "--toolchain", "host", "--trials", "40"], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        seen = []
        for line in tune.stderr:  # the first kernel's search, then the second one's start
            seen.append(line)
            if re.search(r"tune \[2/\d+\] \S+: \d+ trials \(", line):
                break
        assert tune.poll() is None, "".join(seen)
        tune.send_signal(signal.SIGTERM)
        _, rest = tune.communicate(timeout=120)  # liveness: it must end, not how fast
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(tune.pid, signal.SIGKILL)
    err = "".join(seen) + rest
    assert tune.returncode == 128 + signal.SIGTERM, err
    assert "tune: SIGTERM: stopping; the records measured so far stay in" in err, err
    # the search winds down and the CLI reports the signal; on a loaded machine TVM's C++ may
    # outlast the grace period, and then tune exits at once, saying so (same code, records kept)
    last = err.rstrip().splitlines()[-1]
    assert last == "harness: interrupted (SIGTERM)" or "; exiting now (records kept in" in last, err
    assert "Traceback" not in err and "internal error" not in err, err
    left = subprocess.run(["ps", "-o", "pid=,args=", "-s", str(tune.pid)], capture_output=True, text=True).stdout
    assert left.strip() == "", f"processes of the tuning session left: {left}"
    database = TuningDatabase.for_target(load_target("x86_64"), tmp_path)
    records = [json.loads(line) for line in database.records_file.read_text().splitlines() if line.strip()]
    assert records, "the first kernel's records were lost"
