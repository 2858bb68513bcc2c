"""The user's path through the CLI (issue 21), through the real `python -m harness.cli`: one way
to name models, the same defaults everywhere, help and exit codes on every command, global
options anywhere, dynamic input shapes, tuning budgets and progress, quiet TVM, human units,
"emulated", mismatch details, kept outputs, `targets --json`, labelled firmware sizes."""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from harness import cli_options
from harness.build.toolchain import DEFAULT_TOOLCHAIN
from harness.cli import build_parser
from harness.config.targets import DEFAULT_TARGET
from harness.transport import transport_kinds

HARNESS = [sys.executable, "-m", "harness.cli"]
X = "serving_default/x:0"  # a TensorFlow-style input name: '/' and ':' are not file-safe


def harness(*args: str, timeout: float = 900, env: dict | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*HARNESS, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=cwd)


@pytest.fixture(scope="module")
def dynamic_model(tmp_path_factory) -> Path:
    """y = x @ W + b with x of shape [N, 16]: a batch dimension N, as exported models have."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal((16, 4)).astype(np.float32), "W"),
               numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "B")]
    graph = helper.make_graph(
        [helper.make_node("MatMul", [X, "W"], ["h"]), helper.make_node("Add", ["h", "B"], ["out/y:0"])], "dyn",
        [helper.make_tensor_value_info(X, TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("out/y:0", TensorProto.FLOAT, ["N", 4])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("dyn") / "dyn.onnx"
    onnx.save(model, path)
    return path


# -- one way to name things, the same defaults, help everywhere --------------------------------

MODEL_COMMANDS = ("run", "size", "compile", "build", "tune", "bench")


def _command(parser: argparse.ArgumentParser, *path: str) -> argparse.ArgumentParser:
    for name in path:
        parser = next(child for _, n, child in cli_options.subparsers(parser) if n == name)
    return parser


@pytest.mark.parametrize("command", [*MODEL_COMMANDS, "farm run"])
def test_a_model_is_positional_or_an_option_in_every_command(command):
    words = command.split()
    both = cli_options.finish(build_parser().parse_args([*words, "resnet8", "--model", "mlp", "--target", "x86_64"]))
    assert both.model == ["resnet8", "mlp"]
    one = cli_options.finish(build_parser().parse_args([*words, "--model", "resnet8"]))
    assert one.model == ["resnet8"]


@pytest.mark.parametrize("command", [*MODEL_COMMANDS, "farm run"])
def test_target_toolchain_and_transport_are_the_same_everywhere(command):
    parser = _command(build_parser(), *command.split())
    actions = {a.dest: a for a in parser._actions}
    if command != "farm run":  # the farm's --target is a repeatable selection
        assert actions["target"].default == DEFAULT_TARGET
    if command != "compile":  # compile runs no C compiler
        assert actions["toolchain"].default == DEFAULT_TOOLCHAIN, command
    if "transport" in actions:
        assert sorted(actions["transport"].choices) == sorted(transport_kinds())
    assert "input_shape" in actions or command == "size"


def test_every_option_has_help_and_every_command_lists_exit_codes():
    missing, no_codes = [], []
    for prog, parser in cli_options.walk(build_parser()):
        if "_job" in prog or "_device" in prog:
            continue  # internal worker entry points
        if "exit codes:" not in (parser.epilog or ""):
            no_codes.append(prog)
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{prog} {'/'.join(action.option_strings) or action.dest}")
    assert missing == [] and no_codes == []


def test_internal_subcommands_are_hidden_and_still_run():
    helped = harness("farm", "--help", timeout=120)
    assert helped.returncode == 0
    assert "_job" not in helped.stdout and "_device" not in helped.stdout and "==SUPPRESS==" not in helped.stdout
    assert "run" in helped.stdout and "health" in helped.stdout and "exit codes:" in helped.stdout
    # the farm's workers still reach them
    worker = harness("farm", "_device", "--help", timeout=120)
    assert worker.returncode == 0 and "--device" in worker.stdout


def test_global_options_before_or_after_the_subcommand(tmp_path):
    from harness.results.store import ResultStore

    store = ResultStore(tmp_path / "r.sqlite")
    long_model = "a_model_with_a_rather_long_name"
    store.record({"model": long_model, "target": "qemu-armv7", "transport": "qemu-user", "passed": True,
                  "latency_us": {"min": 2.5e6, "mean": 2587102.2, "max": 2.7e6}}, batch="b1")
    store.record({"model": "mlp", "target": "x86_64", "transport": "local", "passed": True,
                  "latency_us": {"min": 250.0, "mean": 254.0, "max": 260.0}, "sizes": {"minrt_text": 8281}},
                 batch="b1")
    after = harness("results", "list", "--results", str(store.path), "-q", timeout=120)
    before = harness("-q", "results", "--results", str(store.path), "list", timeout=120)
    assert after.returncode == 0, after.stderr
    assert after.stdout == before.stdout
    header, *rows = after.stdout.splitlines()
    assert header.split()[:4] == ["id", "batch", "model", "target"]
    # columns line up: each row's target starts where the header's does, long model name or not
    column = header.index("target")
    assert all(r[column:].split()[0] in ("qemu-armv7", "x86_64") for r in rows), after.stdout
    slow = next(r for r in rows if long_model in r)
    assert "2.59 s emulated" in slow  # qemu-user wall time, in seconds, labelled
    fast = next(r for r in rows if " mlp " in r)
    assert "254 us" in fast and "emulated" not in fast and "8,281 B" in fast


def test_bench_rounds_zero_is_one_line_exit_2():
    proc = harness("bench", "mlp", "--target", "x86_64", "--rounds", "0", "--no-store", timeout=120)
    assert proc.returncode == 2
    assert "--rounds: must be at least 1, got 0" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_bench_library_refuses_zero_rounds():
    from harness.bench.vs_onnxruntime import bench_models
    from harness.config.targets import load_target
    from harness.errors import HarnessError

    with pytest.raises(HarnessError, match="--rounds must be at least 1"):
        bench_models([], load_target("x86_64"), rounds=0)


def test_run_names_a_zoo_model_as_tune_does():
    """`harness run --model resnet8` and `harness tune resnet8` resolve through one resolver."""
    by_option = harness("compile", "--model", "lenet5", "--target", "x86_64", "-q")
    positional = harness("compile", "lenet5", "--target", "x86_64", "-q")
    assert by_option.returncode == 0 and positional.returncode == 0, by_option.stderr + positional.stderr
    assert by_option.stdout == positional.stdout and by_option.stdout.startswith("lenet5: ")
    unknown = harness("run", "--model", "nosuch", "--target", "x86_64", timeout=120)
    assert unknown.returncode == 2 and "zoo model" in unknown.stderr and "Traceback" not in unknown.stderr


# -- dynamic input shapes ---------------------------------------------------------------------


def test_a_dynamic_batch_is_refused_naming_the_option(dynamic_model):
    proc = harness("run", str(dynamic_model), "--target", "x86_64", "--toolchain", "host", timeout=300)
    assert proc.returncode == 2
    assert "non-static dimension 0 (N)" in proc.stderr and f"--input-shape {X}=1,16" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_input_shape_runs_the_model_and_keeps_its_outputs(dynamic_model, tmp_path):
    out = tmp_path / "outputs"
    proc = harness("run", str(dynamic_model), "--target", "x86_64", "--toolchain", "host",
                   "--input-shape", f"{X}=3,16", "--outputs", str(out), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = json.loads(proc.stdout)
    assert result["passed"] and result["input_shapes"] == {X: [3, 16]}
    kept = out / "dyn" / "out_y_0.npy"  # file-safe name of "out/y:0"
    assert result["output_files"] == {"out/y:0": str(kept)}
    assert np.load(kept).shape == (3, 4)


def test_input_shape_is_part_of_the_artifact_cache_key(dynamic_model):
    dirs = []
    for batch in (2, 5, 2):
        proc = harness("compile", str(dynamic_model), "--target", "x86_64", "--input-shape", f"{X}={batch},16", "-q")
        assert proc.returncode == 0, proc.stderr
        dirs.append(proc.stdout.split(": ", 1)[1].strip())
    assert dirs[0] != dirs[1] and dirs[0] == dirs[2]
    meta = json.loads((Path(dirs[1]) / "metadata.json").read_text())
    assert meta["inputs"][0]["shape"] == [5, 16] and meta["input_shapes"] == {X: [5, 16]}


@pytest.mark.parametrize("shape, message", [
    ("x=1,16", "not inputs of the model"),
    (f"{X}=1,16,1", "has 3 dimension(s)"),
    (f"{X}=1,8", "fixed at 16"),
    (f"{X}=1,a", "expected NAME=D1,D2"),
])
def test_a_wrong_input_shape_is_one_line(dynamic_model, shape, message):
    proc = harness("compile", str(dynamic_model), "--target", "x86_64", "--input-shape", shape, timeout=300)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_farm_runs_a_dynamic_model_named_positionally(dynamic_model, tmp_path):
    proc = harness("farm", "run", str(dynamic_model), "--target", "x86_64", "--toolchain", "host",
                   "--input-shape", f"{X}=2,16", "--iters", "2", "--out", str(tmp_path / "farm"),
                   "--results", str(tmp_path / "r.sqlite"))
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "1/1 passed" in proc.stdout


def test_farm_run_takes_the_tolerances_of_run(tmp_path):
    """`harness farm run --atol/--rtol` as `harness run` has them (farm refused them): tolerances
    of 0 fail mlp, whose outputs differ from the references by ~6e-8. `--out` relative, as in
    the README: the report's evidence paths are absolute, so a dashboard built elsewhere finds them."""
    proc = harness("farm", "run", "mlp", "--target", "x86_64", "--toolchain", "host", "--iters", "1",
                   "--atol", "0", "--rtol", "0", "--out", "farm", "--results", str(tmp_path / "r.sqlite"), cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr[-3000:]
    assert "0/1 passed" in proc.stdout
    # the FAIL row says why (its error column was empty for a mismatch)
    fail = next(line for line in proc.stdout.splitlines() if line.startswith("FAIL"))
    assert re.search(r"output \S+ vs \S+: \d+ of \d+ values differ \(max abs \S+, atol 0, rtol 0\)", fail), fail
    (report,) = (tmp_path / "farm").glob("*/farm-results.json")  # farm/<batch>/
    [job] = json.loads(report.read_text())["jobs"]
    kept = Path(job["attempts"][0]["evidence"]["dir"])
    assert kept.is_absolute() and (kept / "outputs.bin").is_file(), kept
    junit = report.with_suffix(".xml").read_text()
    assert re.search(r'<failure message="output \S+ vs \S+: \d+ of \d+ values differ', junit), junit[:2000]
    assert re.search(r"\"atol\": 0(\.0)?,", report.read_text())


# -- tuning: the budget is the total, progress is a line per batch -----------------------------


def test_tune_trials_is_the_total_and_progress_is_one_line_per_batch(tmp_path):
    proc = harness("tune", "mlp", "--target", "x86_64", "--toolchain", "host", "--trials", "8",
                   env={"MINRT_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    total = proc.stdout.strip().splitlines()[-1]
    assert total.startswith("8 trials in"), proc.stdout
    progress = [line for line in proc.stderr.splitlines() if re.search(r"\d+/\d+ trials, best", line)]
    assert progress and all("left" in line or "budget done" in line for line in progress), proc.stderr
    for noise in ("deploying runner", "iteration(s)", "inf s", "ID |", "Logging directory"):
        assert noise not in proc.stderr + proc.stdout, noise
    # meta_schedule's own tables are kept in the cache's logs
    kept = list((tmp_path / "cache" / "logs" / "tune" / "x86_64-mlp").rglob("*.log"))
    assert any("Logging directory" in p.read_text() or "ID |" in p.read_text() for p in kept), kept


# -- noise, units, "emulated" -----------------------------------------------------------------


def test_tvm_warnings_go_to_a_log_file_unless_verbose(tmp_path):
    cache = tmp_path / "cache"
    quiet = harness("compile", "mlp", "--target", "cortex-m4-qemu", env={"MINRT_CACHE": str(cache)})
    assert quiet.returncode == 0, quiet.stderr
    assert "llvm_instance.cc" not in quiet.stderr and "Warning" not in quiet.stderr
    assert "harness: compile mlp" in quiet.stderr  # the harness' own progress still shows
    assert "llvm_instance.cc" in (cache / "logs" / "tvm.log").read_text()
    verbose = harness("compile", "cnn", "--target", "cortex-m4-qemu", "-v", env={"MINRT_CACHE": str(cache)})
    assert verbose.returncode == 0 and "llvm_instance.cc" in verbose.stderr


@pytest.mark.parametrize("us, text", [(9.8, "9.8 us"), (254.0, "254 us"), (2587.1, "2.59 ms"),
                                      (2587102.2, "2.59 s"), (125e6, "125 s"), (None, "-"),
                                      # under 10 us too: 3 figures (a 0.271 us kernel was "0.3 us")
                                      (0.271, "0.271 us"), (5.678, "5.68 us"), (999.7, "1 ms"),
                                      (1.5e9, "1500 s")])
def test_durations_are_written_in_a_unit_chosen_by_size(us, text):
    from harness.formats.text import duration

    assert duration(us) == text


@pytest.mark.parametrize("value, text", [(1.4512, "1.45"), (13.62, "13.6"), (0.0237, "0.0237"), (0.0161, "0.0161"),
                                         (None, "-")])
def test_ratios_keep_three_figures(value, text):
    from harness.formats.text import ratio

    assert ratio(value) == text


def test_qemu_user_latency_is_labelled_emulated_and_outputs_kept(tmp_path):
    proc = harness("run", "mlp", "--target", "qemu-armv7", "--toolchain", "host", "--iters", "2",
                   "--outputs", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    head = proc.stdout.splitlines()[0]
    # two runs: the first (a cold start) timed apart, min/mean/max over the other
    assert re.search(r"latency mean .* over 1 run\(s\) after a first of [\d.]+ [mu]?s, emulated", head), head
    assert (tmp_path / "mlp" / "probs.npy").is_file()


def test_a_mismatch_names_how_many_values_differ_and_the_worst(tmp_path):
    proc = harness("run", "--model", "mlp", "--target", "x86_64", "--toolchain", "host", "--atol", "0",
                   "--rtol", "1e-9", "--iters", "2", "--outputs", str(tmp_path))
    lines = [line for line in proc.stdout.splitlines() if "MISMATCH" in line]
    if proc.returncode == 0:
        pytest.skip("mlp matched both references bit for bit on this host: no mismatch to report")
    assert proc.returncode == 1 and lines, proc.stdout
    for line in lines:
        assert " of 10 values differ, worst at [0, " in line and "expected " in line and ", got " in line
    assert (tmp_path / "mlp" / "probs.npy").is_file()  # kept on a mismatch too
    # the references are held to each other at the default tolerance, not at --atol 0: onnx and
    # onnxruntime (~1e-7 apart) agree, so no "disagree" warning and no Relax VM tiebreak
    assert "disagree" not in proc.stderr and "tvm-relax-vm" not in proc.stdout, proc.stderr + proc.stdout


# -- targets, sizes -----------------------------------------------------------------------------


def test_targets_json_and_ready_means_reachable():
    proc = harness("targets", "--json", timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = {r["target"]: r for r in json.loads(proc.stdout)}
    assert rows["x86_64"]["ready"] and not rows["x86_64"]["emulated"]
    assert rows["qemu-armv7"]["emulated"] and rows["rpi-qemu"]["emulated"]
    disco = rows["stm32f4-disco"]  # no board attached: its serial port is not there
    if Path("/dev/ttyUSB0").exists():
        pytest.skip("a serial device is attached at /dev/ttyUSB0: stm32f4-disco may be reachable")
    assert disco["status"] == "unreachable" and not disco["ready"] and "/dev/ttyUSB0" in disco["note"]
    assert rows["rpi"]["status"] == "needs"
    text = harness("targets", timeout=120).stdout
    assert text.splitlines()[0].split()[:3] == ["target", "status", "transport"]


def test_an_ssh_target_is_ready_only_when_its_address_answers(tmp_path):
    from harness.config.readiness import check_readiness
    from harness.config.targets import load_target

    target = load_target("rpi")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        assert check_readiness(target, address=f"pi@127.0.0.1:{port}").status == "ready"
    closed = check_readiness(target, address=f"pi@127.0.0.1:{port}")
    assert closed.status == "unreachable" and f"127.0.0.1:{port}" in closed.note


def test_firmware_size_labels_the_boards_memories():
    proc = harness("size", "--target", "cortex-m4-qemu", "--toolchain", "host", "mlp")
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("model mlp"))
    assert "(the board has flash 4,194,304 B, RAM 4,194,304 B)" in line, line


def test_bench_on_an_emulated_target_says_so():
    proc = harness("bench", "mlp", "--target", "qemu-armv7", "--toolchain", "host", "--rounds", "1",
                   "--iters", "2", "--no-store", "-q")
    assert proc.returncode == 0, proc.stderr[-3000:]
    header = proc.stdout.splitlines()[0].split()
    assert header[:4] == ["model", "threads", "minrt", "min"]  # the threads column: minrt and onnxruntime alike
    assert "minrt times on qemu-armv7 are emulated" in proc.stdout
    assert re.search(r"\d (us|ms|s) ", proc.stdout.splitlines()[1]), proc.stdout


def test_bench_progress_is_one_line_per_round_without_transport_steps():
    """Each round is one progress line; deploying, 'running N iteration(s)' and per-file copies
    are -v detail (they were printed for every round of every model)."""
    proc = harness("bench", "mlp", "--target", "x86_64", "--toolchain", "host", "--rounds", "2",
                   "--iters", "2", "--no-store")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [l for l in proc.stderr.splitlines() if "bench mlp round" in l][-1].startswith("harness: bench mlp round 2/2")
    for noise in ("deploying runner", "iteration(s)", "put minrt-run"):
        assert noise not in proc.stderr, (noise, proc.stderr)
    verbose = harness("bench", "mlp", "--target", "x86_64", "--toolchain", "host", "--rounds", "1",
                      "--iters", "2", "--no-store", "-v")
    assert verbose.returncode == 0 and "deploying runner and model to local" in verbose.stderr, verbose.stderr[-3000:]
