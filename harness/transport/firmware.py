"""Firmware transports: a microcontroller running minrt's firmware image, reached over its UART
with the framed protocol of harness/formats/frames.py (the same as `minrt-run --serial`).

- `qemu-firmware`: the image boots under `qemu-system-arm -M <machine> -icount shift=0` on this
  host; the UART is a Unix socket in a private directory (0700, the socket 0600), so only this
  user can reach the board console. `put` of an image (re)boots QEMU with it; a QEMU that died
  is booted again by the next call. Counts are emulated: with -icount shift=0 each instruction
  is 1 ns of virtual time, so SysTick ticks convert to instructions exactly.
- `firmware-serial`: a real board. `put` runs the target's `flash_command` (an argv; `{elf}` is
  replaced by the image's path, never through a shell), then the protocol runs on `url`.

There is no shell: `run` and `get` are refused with the reason. `run_model` checks graph.json
and params.bin against the image's manifest (the weights are in flash), then sends the graph's
sha256 (which selects the model inside the image), the inputs, RUN, GET; RUN's answer is the
binary timing record of harness/formats/frames.py, with the stack's measured peak.
"""

from __future__ import annotations

import json
import logging
import os
import select
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from harness.errors import DeviceError, RunnerError, TargetError
from harness.formats import frames, tensorfile
from harness.transport.base import CommandResult, TransportKind
from harness.transport.serial import SerialTransport

log = logging.getLogger(__name__)

BOOT_TIMEOUT_S = 10.0
#: how long QEMU may take to start and listen on its UART socket: it exits at once when it
#: cannot build the machine (said with its own words), so this bounds only a slow start, seconds
#: on a loaded host (liveness, not speed)
QEMU_LISTEN_TIMEOUT_S = 120.0


def load_manifest(elf: Path) -> dict[str, Any]:
    """The manifest harness.build.firmware writes beside an image (models, sha256s, footprint)."""
    path = Path(elf).with_name("manifest.json")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DeviceError(f"{elf}: not a firmware image built by harness.build.firmware (no readable {path.name}: {exc})") from None


class FirmwareTransport:
    """A board running a firmware image (the common part of both kinds). Its health check is
    `health()`: a framed HELLO to the front end, or for an emulated board with no image yet, a
    boot of its machine; never a shell command."""

    workdir = "/"
    name = "firmware"

    def __init__(self) -> None:
        self.elf: Path | None = None
        self.manifest: dict[str, Any] = {}
        self.icount_shift: int | None = None

    # -- what a board without a shell cannot do ---------------------------------------------
    def run(self, argv: Sequence[str], timeout: float) -> CommandResult:
        raise DeviceError(f"{self.name}: a firmware board has no shell to run {list(argv)[:1]}")

    def get(self, remote: str, local: Path) -> None:
        raise DeviceError(f"{self.name}: a firmware board has no files to get ({remote})")

    # -- flashing and the framed session -----------------------------------------------------
    def put(self, local: Path, remote: str = "") -> None:
        """Write a firmware image to the board (harness.run.execute puts the 'runner')."""
        manifest = load_manifest(Path(local))
        self.flash(Path(local))
        self.elf, self.manifest = Path(local), manifest

    def flash(self, elf: Path) -> None:
        raise NotImplementedError

    def line(self) -> SerialTransport:
        """The framed-protocol client (SerialTransport.exchange) on the board's UART."""
        raise NotImplementedError

    def ping(self, timeout: float = BOOT_TIMEOUT_S) -> str:
        """A framed HELLO to the front end: what it answered, as one line."""
        version, max_payload, ident = self.line().hello(timeout)
        return f"front end answered HELLO: {ident.strip()} (protocol {version}, payloads up to {max_payload} B)"

    def health(self, timeout: float = BOOT_TIMEOUT_S) -> str:
        """A device's health check (harness.farm.health): the board is flashed already and its
        front end answers on the line. Raises DeviceError when it does not."""
        return self.ping(timeout)

    def run_model(self, runner: str, graph: bytes, params: bytes, inputs: bytes, iters: int,
                  workspace: int, timeout: float, profile: bool = False,
                  threads: int | None = None) -> tuple[bytes, dict[str, Any]]:
        import hashlib

        del threads  # firmware is single-threaded

        if profile:
            log.warning("%s: the firmware front end has no per-kernel profile; timing the whole run only", self.name)
        if self.elf is None:
            raise DeviceError(f"{self.name}: no firmware image was put on the board")
        digest = hashlib.sha256(graph).hexdigest()
        model = next((m for m in self.manifest["models"] if m["graph_sha256"] == digest), None)
        if model is None:
            names = ", ".join(m["name"] for m in self.manifest["models"])
            raise RunnerError(f"{self.name}: the image holds no model with this graph.json (it holds {names})")
        if hashlib.sha256(params).hexdigest() != model["params_sha256"]:
            raise RunnerError(f"{self.name}: the image's weights for {model['name']} are not this params.bin")
        link = self.line()
        blobs = ((frames.Blob.GRAPH, bytes.fromhex(digest)), (frames.Blob.INPUTS, inputs))
        outputs, answer = link.session(blobs, iters, workspace, timeout)
        try:
            timing: dict[str, Any] = frames.parse_timing_record(answer)
        except frames.FrameError as exc:
            raise DeviceError(f"{self.name}: malformed RUN answer: {exc}") from None
        timing["model"] = model["name"]
        try:  # the outputs come raw, in the graph's order: named and shaped here
            outputs = tensorfile.dumps(tensorfile.from_raw(outputs, model["outputs"], f"{self.name} outputs"))
        except tensorfile.TensorFileError as exc:
            raise DeviceError(str(exc)) from None
        reserved = self.manifest.get("footprint", {}).get("ram", {}).get("stack")
        if reserved is not None and timing["stack_peak_bytes"] >= reserved:
            raise DeviceError(f"{self.name}: the stack overflowed its {reserved:,} bytes during the run "
                              "(rebuild the image: the probe's measurement was too low)")
        return outputs, self.counts(timing)

    def counts(self, timing: dict[str, Any]) -> dict[str, Any]:
        """Ticks -> emulated instructions (QEMU -icount) or cycles (a board's processor clock)."""
        return ticks_to_counts(timing, self.icount_shift)


def ticks_to_counts(timing: dict[str, Any], icount_shift: int | None) -> dict[str, Any]:
    """Add `counts` (min/mean/max) and `count_unit` to a timing with `<k>_ticks` and `tick_hz`:
    emulated instructions under QEMU -icount (`icount_shift` given), else processor cycles."""
    hz = int(timing.get("tick_hz", 0)) or 1
    if icount_shift is not None:
        # 2**shift ns of virtual time per instruction; SysTick ticks at hz
        per_tick = 1e9 / hz / (1 << icount_shift)
        unit = "emulated instructions"
    else:
        per_tick, unit = 1.0, "cycles"
    timing["counts"] = {k: round(float(timing[f"{k}_ticks"]) * per_tick)
                        for k in ("min", "mean", "max") if f"{k}_ticks" in timing}
    timing["count_unit"] = unit
    return timing


def boot_and_read(machine: str, elf: Path, until: bytes, timeout: float, icount_shift: int | None = None) -> str:
    """Boot an image that reports on its UART by itself (no framed protocol) under
    qemu-system-arm on `machine`, read that UART (stdio) until `until` appears, stop QEMU and
    return the text. With `icount_shift`, QEMU runs with -icount (SysTick counts instructions)."""
    if shutil.which("qemu-system-arm") is None:
        raise DeviceError("qemu-system-arm is not installed (apt-get install qemu-system-arm, or run ci/setup)")
    argv = ["qemu-system-arm", "-M", machine, *(["-icount", f"shift={icount_shift}"] if icount_shift is not None else []),
            "-nographic", "-monitor", "none", "-serial", "stdio", "-kernel", str(elf)]
    log.info("booting %s", " ".join(argv))
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    text = b""
    deadline = time.monotonic() + timeout
    try:
        assert proc.stdout is not None
        while until not in text:
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.poll() is not None and proc.stderr else ""
                raise DeviceError(f"{elf.name} on QEMU {machine} did not print {until.decode(errors='replace')!r} "
                                  f"within {timeout:.0f} s (output {text[-300:]!r}) {err.strip()[:300]}")
            ready, _, _ = select.select([proc.stdout], [], [], min(left, 0.5))
            if ready:
                text += os.read(proc.stdout.fileno(), 65536)
    finally:
        proc.kill()
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()
    return text.decode(errors="replace")


def _listening(path: str) -> bool:
    """Whether something accepts connections on the Unix socket at `path`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:  # refused: bound, not yet listening
            return False
    return True


class QemuFirmware(FirmwareTransport):
    def __init__(self, machine: str, icount_shift: int = 0) -> None:
        super().__init__()
        if shutil.which("qemu-system-arm") is None:
            raise DeviceError("qemu-system-arm is not installed (apt-get install qemu-system-arm, or run ci/setup)")
        self.machine = machine
        self.icount_shift = icount_shift
        self.name = f"qemu {machine}"
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir: str | None = None
        self._line: SerialTransport | None = None
        self._booted: Path | None = None

    def flash(self, elf: Path) -> None:
        if self._booted != elf or not self.alive():
            self.boot(elf)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def boot(self, elf: Path | None) -> None:
        """Start QEMU with the image `elf`, or with none paused (-S: the machine is built and
        its UART listens, no instruction runs: the health check of a board with no image)."""
        self.shutdown()
        self._dir = tempfile.mkdtemp(prefix="minrt-uart-")  # mode 0700
        path = os.path.join(self._dir, "uart")
        argv = ["qemu-system-arm", "-M", self.machine, "-icount", f"shift={self.icount_shift}",
                "-nographic", "-monitor", "none", "-nodefaults",
                "-chardev", f"socket,id=uart,path={path},server=on,wait=off", "-serial", "chardev:uart",
                *(["-kernel", str(elf)] if elf is not None else ["-S"])]
        log.info("%s: booting %s", self.name, elf if elf is not None else "the machine, no image")
        log.debug("%s", " ".join(argv))
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + QEMU_LISTEN_TIMEOUT_S
        # the socket file appears at bind(), a moment before QEMU listens on it: wait for both
        while not (os.path.exists(path) and _listening(path)):
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                self.shutdown()
                raise DeviceError(f"{self.name}: QEMU did not start: {err.strip()[:300]}")
            if time.monotonic() > deadline:
                self.shutdown()
                raise DeviceError(f"{self.name}: QEMU did not start: its UART socket did not listen within "
                                  f"{QEMU_LISTEN_TIMEOUT_S:g} s (QEMU_LISTEN_TIMEOUT_S)")
            time.sleep(0.02)
        os.chmod(path, 0o600)
        # the shell layer of SerialTransport is never used (workdir given: no sync). QEMU binds
        # the socket a moment before it listens: a refused connection is tried again.
        while True:
            try:
                self._line = SerialTransport(f"unix://{path}", workdir="/", startup_timeout=BOOT_TIMEOUT_S)
                break
            except DeviceError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.shutdown()
                    raise
                time.sleep(0.05)
        self._booted = elf

    def health(self, timeout: float = BOOT_TIMEOUT_S) -> str:
        """With an image put: booted if it is not running, then pinged (HELLO). Without one (a
        farm's check before a job: the job builds and puts its own image) the check is a boot:
        QEMU builds the machine and its UART listens, then it is stopped."""
        if self.elf is not None:
            self.flash(self.elf)
            return self.ping(timeout)
        self.boot(None)
        time.sleep(0.2)  # a machine that cannot be built makes QEMU exit at once
        alive = self.alive()
        code = self.proc.poll() if self.proc is not None else None
        self.shutdown()
        if not alive:
            raise DeviceError(f"{self.name}: QEMU exited (status {code}) right after starting the machine")
        return f"QEMU started {self.machine} (paused, no image: each job boots its own)"

    def line(self) -> SerialTransport:
        if not self.alive() or self._line is None:
            if self.elf is None:
                raise DeviceError(f"{self.name}: no firmware image")
            log.warning("%s: QEMU is not running; booting the image again", self.name)
            self.boot(self.elf)
        assert self._line is not None
        return self._line

    def run_model(self, *args: Any, **kwargs: Any) -> tuple[bytes, dict[str, Any]]:
        try:
            return super().run_model(*args, **kwargs)
        except DeviceError as exc:
            if self.proc is not None:
                try:  # the socket closes a moment before the process is reaped
                    self.proc.wait(timeout=1)
                except subprocess.TimeoutExpired:
                    pass
            if not self.alive():
                code = self.proc.returncode if self.proc else None
                self._line = None
                raise DeviceError(f"{self.name}: QEMU exited (status {code}) during the run: {exc}") from None
            raise

    def shutdown(self) -> None:
        if self._line is not None:
            self._line.close_line()  # not close(): that would type `stty echo` at a firmware
            self._line = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            if self.proc.stderr:
                self.proc.stderr.close()
            self.proc = None
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        self._booted = None

    def close(self) -> None:
        self.shutdown()


class SerialFirmware(FirmwareTransport):
    """A real board: flashed by a command, then spoken to over a serial port (untested here)."""

    def __init__(self, url: str, flash_command: Sequence[str], baudrate: int = 115200) -> None:
        super().__init__()
        self.url = url
        self.flash_command = list(flash_command)
        self.baudrate = baudrate
        self.name = f"board on {url}"
        self._serial: SerialTransport | None = None

    def flash(self, elf: Path) -> None:
        if not self.flash_command:
            raise TargetError("this firmware target has no flash_command in [transport]")
        argv = [a.replace("{elf}", str(elf)) for a in self.flash_command]
        log.info("%s: flashing: %s", self.name, argv)
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DeviceError(f"{self.name}: flash command {argv[0]} failed: {exc}") from None
        if done.returncode:
            raise DeviceError(f"{self.name}: flash command exited {done.returncode}: {done.stderr.strip()[-300:]}")

    def line(self) -> SerialTransport:
        if self._serial is None:
            self._serial = SerialTransport(self.url, workdir="/", baudrate=self.baudrate)
        return self._serial

    def close(self) -> None:
        if self._serial is not None:
            self._serial.close_line()
            self._serial = None


def _open_qemu(options: Mapping[str, Any], address: str | None, trust_on_first_use: bool) -> QemuFirmware:
    if address:
        raise TargetError("a qemu-firmware target runs on this host: it takes no --host")
    return QemuFirmware(str(options.get("machine", "mps2-an386")), int(options.get("icount_shift", 0)))


def _open_serial(options: Mapping[str, Any], address: str | None, trust_on_first_use: bool) -> SerialFirmware:
    url = address or options.get("url")
    if not url:
        raise TargetError("this firmware target needs a serial port: pass --host /dev/ttyUSB0 or a pyserial URL")
    return SerialFirmware(str(url), list(options.get("flash_command", [])), int(options.get("baudrate", 115200)))


TRANSPORT_KINDS = (
    TransportKind("qemu-firmware", "firmware under qemu-system-arm on this host, over its UART", _open_qemu,
                  options={"machine": str, "icount_shift": int}, needs=("qemu-system-arm",),
                  emulator=True),
    TransportKind("firmware-serial", "firmware on a board flashed by a command, over a serial port",
                  _open_serial, address="SERIAL-PORT-OR-URL",
                  options={"url": str, "baudrate": int, "flash_command": list}),
)
