"""Every example model on the emulated ARMv7 board (`rpi-qemu`, the default target), over SSH
and over the serial console, compared with the host reference; and recovery of the board
after a run is cut short."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from harness.run import run_on_target
from harness.config.targets import load_target
from harness.models import mlperf_tiny

EXAMPLES = ["mlp", "cnn", "dscnn", "residual", "concat", "batchnorm", "multi_io"]


@pytest.mark.parametrize("transport", ["ssh", "serial"])
@pytest.mark.parametrize("model", EXAMPLES)
def test_example_on_the_board(shared_board, example_models, model, transport):
    result = run_on_target(example_models[model], load_target("rpi-qemu"), transport=transport,
                           toolchain="host", iters=3, seed=2)
    assert result.error is None, result.error
    assert result.passed, json.dumps(result.outputs, indent=1)
    assert result.transport == transport
    assert all(o["max_abs_err"] <= 1e-5 for o in result.outputs)
    # the on-device latency is reported
    assert result.iters == 3 and result.latency_us["mean"] > 0


def test_int8_mlperf_model_on_the_board_matches_tflite_micro(shared_board, tmp_path):
    """A full-integer .tflite model (MLPerf Tiny's autoencoder, the quickest) over SSH, judged
    against TFLM's interpreter: bit exact."""
    why = mlperf_tiny.available()
    if why:
        pytest.skip(why)
    model = mlperf_tiny.write_mlperf_tiny(tmp_path, ["mlperf-ad"])["mlperf-ad"]
    result = run_on_target(model, load_target("rpi-qemu"), toolchain="host", iters=1)
    assert result.error is None, result.error
    assert result.passed, json.dumps(result.outputs, indent=1)
    (out,) = result.outputs
    assert (out["reference"], out["dtype"], out["differing"]) == ("tflite-micro", "int8", 0), out


def test_cli_main_job_on_the_default_target(shared_board, example_models):
    """`harness run` with no --target runs on the emulated board, on all its cores (no
    --threads: the device's), and prints the comparison."""
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "run", "--model", "mlp",
                           "--toolchain", "host"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "mlp on rpi-qemu (ssh): PASS" in proc.stdout
    cores = load_target("rpi-qemu").transport.options["board_cores"]
    assert f", {cores} threads\n" in proc.stdout, proc.stdout
    assert "vs onnx-reference" in proc.stdout and "1 of 1 model(s) passed on rpi-qemu" in proc.stdout


def test_killing_the_board_mid_run_fails_cleanly_and_the_board_comes_back(shared_board, example_models,
                                                                          device_running):
    """A board that dies during a run ends it with an error naming the device, not a hang;
    the next run boots a new board and passes."""
    from harness.device.board import board_status, ensure_board

    target = load_target("rpi-qemu")
    # the board as it is now: a test before may have power-cycled it (test_board_faults' frozen
    # farm job does), leaving the fixture's pid that of a qemu already gone
    pid = ensure_board(instance="0").pid
    killed_at: list[float] = []
    finished = threading.Event()

    def kill_when_running() -> None:
        # Once the run reached the device (a kill 1.5 s after the start, on a loaded host,
        # could land before the SSH connection: the run then booted a new board and passed),
        # and a moment into the run, which lasts far longer (20,000 iterations).
        device_running.wait(600)
        time.sleep(1.0)
        if not finished.is_set():
            os.kill(pid, signal.SIGKILL)
            killed_at.append(time.monotonic())

    killer = threading.Thread(target=kill_when_running, daemon=True)
    killer.start()
    result = run_on_target(example_models["dscnn"], target, toolchain="host", iters=20000)
    ended = time.monotonic()
    finished.set()
    device_running.set()  # a killer still waiting gives up (killed_at stays empty)
    killer.join()
    assert killed_at, f"the run ended before it reached the device: {result.error}"
    assert not result.passed and result.error, result
    assert ended - killed_at[0] < 120  # not a hang: the run ends long before its timeout
    assert "127.0.0.1" in result.error  # names the device
    assert board_status(instance="0")["state"] == "down"
    again = run_on_target(example_models["mlp"], target, toolchain="host", iters=2)
    assert again.passed, again.error
    assert ensure_board(instance="0").pid != pid


def test_peak_rss_is_reported_on_every_linux_target_and_says_whose(shared_board, example_models):
    """Peak RSS of minrt-run on x86_64 and on the emulated board (its Linux counts the guest
    process: at least the weights and the arena, which minrt touches), and under qemu-user the
    qemu-user process's, labelled so (the guest's own is not known there). The board read
    4 KiB before: its 6.1 kernel adds a thread's RSS to VmHWM only every 64 page faults."""
    from harness.results.report import format_result
    from harness.transport import PEAK_RSS_OF_QEMU_USER, PEAK_RSS_OF_RUNNER

    for target, whose in (("x86_64", PEAK_RSS_OF_RUNNER), ("rpi-qemu", PEAK_RSS_OF_RUNNER),
                          ("qemu-armv7", PEAK_RSS_OF_QEMU_USER)):
        result = run_on_target(example_models["mlp"], load_target(target), toolchain="host", iters=2)
        assert result.passed, result.error
        fp = result.footprint
        assert fp["peak_rss_of"] == whose, (target, fp)
        assert fp["peak_rss_kb"] * 1024 >= fp["flash_weights"] + fp["arena_bytes"], (target, fp)
        line = format_result(result.to_dict()).splitlines()[0]
        assert f", peak RSS {fp['peak_rss_kb']:,} KiB" in line, line
        assert (PEAK_RSS_OF_QEMU_USER in line) == (whose == PEAK_RSS_OF_QEMU_USER), line
