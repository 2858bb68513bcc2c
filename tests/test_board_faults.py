"""The emulated board under faults, through the real CLI (issue 22): a board that freezes in the
middle of a run (its qemu process stopped with SIGSTOP: the connection stays up, nothing
answers), and a run interrupted by Ctrl-C or SIGTERM. Each must end promptly with one line
naming the device, and leave no work directory or runner on the board (/tmp/minrt.*)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from harness import REPO_ROOT

_WORKDIR = re.compile(r"/tmp/minrt\.[A-Za-z0-9]+")


def _board():
    """The shared board as it is now: a test before may have power-cycled it (new pid)."""
    from harness.device.board import ensure_board

    return ensure_board(instance="0")


@contextlib.contextmanager
def _frozen(board):
    """The board's qemu stopped (SIGSTOP) for the block, then continued: to its guest, time
    stood still; to the host, the SSH port and console socket stay open and answer nothing.
    A farm's recovery may power-cycle the board meanwhile (that qemu is then gone)."""
    os.kill(board.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(board.pid, signal.SIGCONT)


def _start_run(model: str, transport: str, iters: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    # -v: the device's "running N iteration(s)" line is a debug line; the test waits for it
    return subprocess.Popen([sys.executable, "-m", "harness.cli", "-v", "run", "--model", model, "--transport", transport,
                             "--toolchain", "host", "--iters", str(iters)],
                            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_until_running(proc: subprocess.Popen) -> tuple[str, str]:
    """Read the run's log until the device runs the model: (the log so far, its workdir)."""
    seen = []
    assert proc.stderr is not None
    for line in proc.stderr:
        seen.append(line)
        if "running" in line and "iteration(s)" in line:
            break
    log = "".join(seen)
    workdirs = _WORKDIR.findall(log)
    assert workdirs and proc.poll() is None, f"the run never reached the device:\n{log}"
    time.sleep(1.0)  # into the run itself
    return log, workdirs[-1]


def _left_on_board(board, workdir: str) -> str:
    """What is left of `workdir` on the board: the directory, and processes started in it."""
    with board.transport(workdir="/tmp") as dev:  # an explicit workdir: this check makes none
        result = dev.run(["sh", "-c", 'ls -d "$1" 2>/dev/null; ps | grep -F "$1" | grep -v grep', "sh", workdir],
                         timeout=30)
    return result.stdout.strip()


def test_a_frozen_board_is_noticed_by_the_heartbeat_and_cleaned_up_by_the_next_run(shared_board):
    """The board's qemu stopped (SIGSTOP) while minrt-run runs over SSH: the SSH heartbeat
    notices within HEARTBEAT_TIMEOUT_S (20 s), not at the 300 s run timeout; exit 3 with one
    line naming the device and the step; the next run, once the board is back, stops the old
    runner and removes its work directory. The old main waited for the run timeout."""
    from harness.transport.ssh import HEARTBEAT_TIMEOUT_S

    board = _board()
    proc = _start_run("dscnn", "ssh", iters=20000)
    _, workdir = _wait_until_running(proc)
    frozen = time.monotonic()
    with _frozen(board):
        _, err = proc.communicate(timeout=HEARTBEAT_TIMEOUT_S + 60)
    noticed = time.monotonic() - frozen
    assert proc.returncode == 3, err
    assert "Traceback" not in err, err
    (error,) = [line for line in err.splitlines() if "stopped answering" in line]
    assert f"127.0.0.1:{board.ssh_port}" in error and "minrt-run" in error and "heartbeat" in error, error
    assert noticed < HEARTBEAT_TIMEOUT_S + 30, f"a frozen board was noticed only after {noticed:.0f} s"
    # The board is back: the frozen run's runner still works in its directory...
    assert workdir in _left_on_board(board, workdir)
    # ...until the next session to the board stops it and removes the directory.
    again = subprocess.run([sys.executable, "-m", "harness.cli", "run", "--model", "mlp", "--toolchain", "host",
                            "--iters", "2"], cwd=REPO_ROOT, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
                           capture_output=True, text=True, timeout=600, check=False)
    assert again.returncode == 0, again.stderr
    assert f"removed {workdir}, left by an earlier session" in again.stderr
    assert _left_on_board(board, workdir) == ""


@pytest.mark.parametrize("transport, sig, code", [("serial", signal.SIGINT, 130), ("ssh", signal.SIGTERM, 143)])
def test_an_interrupted_board_run_exits_promptly_and_leaves_nothing_on_the_board(shared_board, transport, sig, code):
    """Ctrl-C during a serial-console run: the runner is told BYE, which it obeys in the middle
    of a RUN, so the shell is back at once and the work directory is removed (old main: 30 s
    to exit, the directory and the runner left on the board). SIGTERM during an SSH run is
    handled like Ctrl-C (old main: killed at once, status -15, the runner left running)."""
    proc = _start_run("dscnn", transport, iters=3000 if transport == "serial" else 20000)
    _, workdir = _wait_until_running(proc)
    proc.send_signal(sig)
    sent = time.monotonic()
    _, err = proc.communicate(timeout=120)
    took = time.monotonic() - sent
    print(f"{transport}: exited {took:.1f} s after {signal.Signals(sig).name}")
    assert proc.returncode == code, err
    assert "Traceback" not in err and "harness: interrupted" in err, err
    assert took < 15, f"took {took:.1f} s to exit after {signal.Signals(sig).name}"
    assert _left_on_board(_board(), workdir) == ""


def test_a_board_that_freezes_during_a_farm_job_is_a_device_fault(shared_board, tmp_path):
    """The same freeze under `harness farm run`: the job's attempt is "device-failed" with the
    heartbeat's error, the store counts one failure against the board, and the farm exits 3
    (no healthy device left to retry on). The job ends at the heartbeat, well before the run
    timeout; the farm's recovery (evidence, power cycle) follows."""
    from harness.results.store import ResultStore
    from harness.transport.ssh import HEARTBEAT_TIMEOUT_S

    inv = tmp_path / "inv.toml"
    inv.write_text('[[devices]]\nname = "board"\ntarget = "rpi-qemu"\n')
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    farm = subprocess.Popen([sys.executable, "-m", "harness.cli", "-v", "farm", "run", "--inventory", str(inv),
                             "--no-health-check", "--toolchain", "host", "--iters", "20000",
                             "--results", str(tmp_path / "r.sqlite"), "--out", str(out), "dscnn"],
                            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and farm.poll() is None:
        logs = "".join(p.read_text(errors="replace") for p in out.glob("*/logs/*.log"))  # out/<batch>/logs
        if "iteration(s)" in logs:
            break
        time.sleep(0.2)
    assert farm.poll() is None, farm.communicate()
    time.sleep(1.0)
    frozen = time.time()
    with _frozen(_board()):
        # the farm then collects evidence and power-cycles the board (a minute more)
        stdout, err = farm.communicate(timeout=HEARTBEAT_TIMEOUT_S + 240)
    assert farm.returncode == 3, stdout + err
    (report_file,) = out.glob("*/farm-results.json")
    report = json.loads(report_file.read_text())
    (attempt,) = report["jobs"][0]["attempts"]
    assert attempt["status"] == "device-failed" and "stopped answering" in attempt["error"], attempt
    assert attempt["ended"] - frozen < HEARTBEAT_TIMEOUT_S + 30, "the job noticed the freeze late"
    (health,) = [r for r in ResultStore(tmp_path / "r.sqlite").device_health() if r["device"] == "board"]
    assert health["failures"] == 1, health
