"""Device health for the farm: checking a device, power-cycling it, collecting evidence.

Each step runs in its own process (`harness farm _device`) with a hard timeout, so a device
that hangs (a frozen board, a half-open SSH connection) costs the farm at most that timeout
and never a scheduler thread. What the farm does with the answers (recovery, quarantine) is
in harness.farm; the state it keeps is in harness.results (`device_health`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.farm.inventory import Device, device_target

log = logging.getLogger(__name__)

#: Lines of console output and of `dmesg` kept as evidence of a failure.
EVIDENCE_LINES = 80


@dataclass(frozen=True)
class StepResult:
    ok: bool
    detail: str  # why it failed, or what was done


def _board_of(device: Device) -> tuple[str, str] | None:
    """(board name, instance) when the device is an emulated board."""
    options = device_target(device).transport.options
    if "board" not in options:
        return None
    return str(options["board"]), str(options.get("board_instance", "0"))


def check_device(device: Device) -> StepResult:
    """Open the device's transport and run its health check on it: the device's health_check
    argv (default `true`) in its shell, or on a firmware board, which has no shell, a framed
    HELLO to its front end (an emulated one with no image: a boot of its machine)."""
    from harness.device.open import open_transport
    from harness.errors import HarnessError
    from harness.transport import transport_kind
    from harness.transport.firmware import FirmwareTransport

    target = device_target(device)
    argv = list(device.health_check or ("true",))
    board = _board_of(device)
    if board is not None:
        from harness.device.board import board_status

        state = board_status(*board)["state"]  # looks, never boots: bringing it up is a power cycle
        if state != "up":
            return StepResult(False, f"emulated board {board[0]}-{board[1]} is {state}")
    try:
        with open_transport(target, host=device.address) as transport:
            if isinstance(transport, FirmwareTransport):
                return StepResult(True, f"healthy: {transport.health()}")
            if not device.health_check and transport_kind(target.transport.kind).on_host:
                return StepResult(True, "healthy (this host)")  # opening it checked what it needs
            result = transport.run(argv, timeout=60)
    except HarnessError as exc:
        return StepResult(False, str(exc).splitlines()[0])
    if result.returncode != 0:
        out = (result.stderr.strip() or result.stdout.strip())[:200]
        return StepResult(False, f"health check {argv} exited {result.returncode}: {out}")
    return StepResult(True, "healthy")


def power_cycle_device(device: Device, timeout: float) -> StepResult:
    """The device's power-cycle command on this host, or the emulated board's hard restart."""
    if device.power_cycle:
        try:
            proc = subprocess.run(list(device.power_cycle), capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return StepResult(False, f"power cycle {list(device.power_cycle)}: {exc}")
        if proc.returncode != 0:
            return StepResult(False, f"power cycle {list(device.power_cycle)} exited {proc.returncode}: "
                                     f"{(proc.stderr.strip() or proc.stdout.strip())[:200]}")
        return StepResult(True, f"power-cycled with {list(device.power_cycle)}")
    board = _board_of(device)
    if board is None:
        return StepResult(False, "cannot be power-cycled (no power_cycle command in the inventory)")
    from harness.device.board import restart_board
    from harness.errors import HarnessError

    try:
        restart_board(*board)
    except HarnessError as exc:
        return StepResult(False, f"board restart failed: {str(exc).splitlines()[0]}")
    return StepResult(True, f"emulated board {board[0]}-{board[1]} restarted")


def _tail(text: str, lines: int = EVIDENCE_LINES) -> str:
    return "\n".join(text.splitlines()[-lines:])


def collect_evidence(device: Device, out_dir: Path) -> dict[str, str]:
    """What the device can still tell after a failure, written into out_dir: the console of an
    emulated board, and `dmesg` over a shell transport. Returns {name: file path}."""
    from harness.device.open import open_transport
    from harness.errors import HarnessError

    out_dir.mkdir(parents=True, exist_ok=True)
    found: dict[str, str] = {}
    board = _board_of(device)
    if board is not None:
        from harness.device.board import board_status

        console = board_status(*board).get("console_log")
        if console and Path(console).is_file():
            path = out_dir / "console.txt"
            path.write_text(_tail(Path(console).read_text(errors="replace")))
            found["console"] = str(path)
    target = device_target(device)
    if target.transport.kind in ("ssh", "serial"):
        path = out_dir / "dmesg.txt"
        try:
            with open_transport(target, host=device.address) as transport:
                result = transport.run(["dmesg"], timeout=30)
            path.write_text(_tail(result.stdout) if result.returncode == 0
                            else f"dmesg exited {result.returncode}: {result.stderr.strip()}")
        except HarnessError as exc:
            path.write_text(f"could not collect dmesg: {exc}")
        found["dmesg"] = str(path)
    return found


# -- the step process -----------------------------------------------------------------------

STEPS = ("check", "power-cycle", "evidence")


def run_step(step: str, device: Device, timeout: float, evidence_dir: Path | None = None) -> StepResult:
    """Run `step` for `device` in a worker process bounded by `timeout` seconds."""
    argv = [sys.executable, "-m", "harness.cli", "farm", "_device", step, "--device",
            json.dumps(device.to_dict()), "--timeout", str(timeout)]
    if evidence_dir is not None:
        argv += ["--evidence", str(evidence_dir)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return StepResult(False, f"{step} did not finish within {timeout:g} s")
    try:
        answer: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return StepResult(bool(answer["ok"]), str(answer["detail"]))
    except (ValueError, IndexError, KeyError):
        return StepResult(False, f"{step} failed (exit {proc.returncode}): {(err.strip() or out.strip())[-300:]}")


def step_main(args: argparse.Namespace) -> int:
    """`harness farm _device STEP --device JSON`: one step, its answer as a JSON line."""
    device = Device.from_dict(json.loads(args.device))
    if args.step == "check":
        result = check_device(device)
    elif args.step == "power-cycle":
        result = power_cycle_device(device, args.timeout)
    else:
        files = collect_evidence(device, Path(args.evidence))
        result = StepResult(True, json.dumps(files))
    print(json.dumps({"ok": result.ok, "detail": result.detail}), flush=True)
    return 0
