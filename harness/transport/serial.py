"""Serial transport: a device reached only through its console line (pyserial).

Two layers share the one line:
- the console's shell (busybox ash on the emulated board, any POSIX sh on a real device):
  `run` types a command wrapped in unique start/end markers and reads back stdout, stderr and
  the exit status; `put`/`get` move files as base64 text through the shell and verify them
  with sha256sum.
- the framed binary protocol of `minrt-run --serial` (harness/formats/frames.py): `run_model` starts
  the runner on the console and sends the model and inputs, runs it, and reads the outputs
  and timing back, with CRC-checked frames, retransmission and bounded timeouts.

The shell session runs with `stty -echo`: busybox's line editor then reads plain lines (no
ESC[6n cursor queries, no echo), which halves the traffic and keeps the output clean. Markers
are printed by `printf '%s%s'` from two halves so an echoed command line never matches them.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import logging
import lzma
import re
import secrets
import select
import shlex
import socket
import stat
import time
from pathlib import Path, PurePosixPath
from typing import Any, Mapping, Sequence

import serial

from harness.formats import frames
from harness.errors import DeviceError, RunnerError, TargetError
from harness.transport.base import CommandResult, TransportKind
from harness.transport.workdirs import WorkdirRecords, remove_command

log = logging.getLogger(__name__)

_ESCAPES = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")
#: busybox's shell reads at most ~1 KiB per input line: a command line stays below this.
MAX_LINE = 1000
_B64_LINE = 76
#: raw bytes per base64 here-document: its text (32 KiB) fits in the tty's 64 KiB input
#: buffer even when the shell is slow to read, so nothing is dropped on a console with no
#: flow control.
_PUT_BLOCK = 24 * 1024
#: a runner that hears no valid request this long exits and gives the shell back (serial.c)
_RUNNER_IDLE_S = 15
#: the runner sends BUSY every second while it runs; this long without one means it is gone
BUSY_GRACE_S = 3.5
#: a runner told BYE because the host gives up (Ctrl-C) exits within about a second (at its
#: next BUSY during a RUN, else after its 1 s linger): the host waits this long for its shell
ABANDON_S = 5.0
#: how long close() tries to get a shell back after a session cut short, to remove the workdir
CLOSE_SYNC_S = 5.0


def _line_safe_bye() -> bytes:
    """A BYE frame with no byte a shell's line editor acts on (newline, ^C, ^D, ^U, ESC...):
    typed into a shell it is one line of garbage that a following ^C discards."""
    for seq in range(1, 256):
        wire = frames.encode(frames.Frame(frames.Kind.BYE, seq, b""))
        if all(0x20 <= b < 0x7F or b >= 0x80 or b in (0x00, frames.Kind.BYE) for b in wire):
            return wire
    raise AssertionError("no BYE frame without control characters")


_LINE_SAFE_BYE = _line_safe_bye()


class _Timeout(DeviceError):
    """Nothing expected arrived in time (as opposed to a line that failed)."""


class UnixConsole:
    """A console on a unix socket (`unix:///path`: the emulated board's), with the part of
    pyserial's interface the transport uses: non-blocking read, write with a timeout,
    fileno for select. pyserial has no unix-socket URL."""

    def __init__(self, path: str, write_timeout: float = 30.0) -> None:
        self.path = path
        self.write_timeout = write_timeout
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.settimeout(10.0)
            self._sock.connect(path)
        except OSError:
            self._sock.close()
            raise
        self.is_open = True

    def read(self, size: int) -> bytes:
        """What is waiting, up to `size` bytes; b"" when nothing is (like timeout=0)."""
        ready, _, _ = select.select([self._sock], [], [], 0)
        if not ready:
            return b""
        data = self._sock.recv(size)
        if not data:
            raise serial.SerialException(f"{self.path}: the console socket was closed")
        return data

    def write(self, data: bytes) -> int:
        self._sock.settimeout(self.write_timeout)
        self._sock.sendall(data)
        return len(data)

    def flush(self) -> None:
        pass

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self.is_open = False
        self._sock.close()


def open_console(url: str, baudrate: int) -> Any:
    """pyserial's port for a device, a pty, or a pyserial URL; UnixConsole for unix://PATH."""
    if url.startswith("unix://"):
        return UnixConsole(url[len("unix://"):])
    return serial.serial_for_url(url, baudrate=baudrate, timeout=0, write_timeout=30)


class SerialTransport:
    """A console line, e.g. `unix:///path/console.sock` (the emulated board), `/dev/ttyUSB0`,
    a pty path, `socket://HOST:PORT` or `loop://`. The port is opened at once: pyserial
    drops bytes that were waiting before open()."""

    def __init__(
        self,
        url: str,
        workdir: str | None = None,
        *,
        baudrate: int = 115200,
        ack_timeout: float = 1.0,
        retries: int = 8,
        chunk: int = frames.MAX_PAYLOAD - frames.BLOB_CHUNK.size,
        sync_timeout: float = 30.0,
        startup_timeout: float = 15.0,
        transfer_timeout: float = 300.0,
    ) -> None:
        self.url = url
        self.name = f"serial {url}"
        # No workdir given: a private one made by the first sync (mktemp -d, 0700), removed
        # on close, so no other user of the device can prepare it or swap minrt-run in.
        self._private_workdir = workdir is None
        self._workdir = workdir or ""
        self.ack_timeout = ack_timeout
        self.retries = retries
        self.chunk = min(chunk, frames.MAX_PAYLOAD - frames.BLOB_CHUNK.size)
        self.sync_timeout = sync_timeout
        self.startup_timeout = startup_timeout
        self.transfer_timeout = transfer_timeout
        self.stats: dict[str, int] = {"retransmissions": 0, "naks": 0}
        self._rx = bytearray()
        self._synced = False
        self._seq = 0
        self._unxz: bool | None = None
        self._records = WorkdirRecords(self.name)
        try:
            self._port = open_console(url, baudrate)
        except (serial.SerialException, ValueError, OSError) as exc:
            raise DeviceError(f"serial {url}: cannot open the console: {exc}") from None

    # -- raw line I/O ------------------------------------------------------------------------

    def _write(self, data: bytes, step: str) -> None:
        try:
            self._port.write(data)
            self._port.flush()
        except (serial.SerialException, OSError) as exc:
            self._synced = False
            raise DeviceError(f"serial {self.url}: {step}: cannot write to the console: {exc}") from None

    def _read(self, wait: float) -> bytes:
        """Whatever arrives within `wait` seconds (returns as soon as something does)."""
        try:
            data = self._port.read(65536)
            if data or wait <= 0:
                return data
            try:
                select.select([self._port.fileno()], [], [], wait)
            except (AttributeError, OSError, ValueError, serial.SerialException, NotImplementedError):
                time.sleep(min(wait, 0.005))  # loop:// has no file descriptor
            return self._port.read(65536)
        except (serial.SerialException, OSError) as exc:
            self._synced = False
            raise DeviceError(f"serial {self.url}: the console line failed: {exc}") from None

    def _read_until(self, pattern: re.Pattern[bytes], deadline: float, step: str) -> re.Match[bytes]:
        while True:
            match = pattern.search(self._rx)
            if match:
                return match
            left = deadline - time.monotonic()
            if left <= 0:
                self._synced = False
                tail = bytes(self._rx[-200:])
                raise _Timeout(
                    f"serial {self.url}: {step}: no answer within the timeout (last bytes seen: {tail!r})"
                )
            self._rx += self._read(min(left, 0.2))

    # -- the shell ---------------------------------------------------------------------------

    @staticmethod
    def _marker(token: str, tag: str, status: bool = False) -> tuple[str, re.Pattern[bytes]]:
        """A shell snippet that prints a marker line (with the last exit status when
        `status`), and the regex that finds it."""
        if status:
            snippet = f"printf '\\n%s%s %s\\n' __MINRT_ {token}{tag} \"$?\""
        else:
            snippet = f"printf '\\n%s%s\\n' __MINRT_ {token}{tag}"
        return snippet, re.compile(rb"__MINRT_" + f"{token}{tag}".encode() + rb"( -?[0-9]+)?\r?\n")

    @property
    def workdir(self) -> str:
        if not self._workdir:
            self._sync()
        return self._workdir

    def _sync(self, timeout: float | None = None) -> None:
        """Bring the console to a known state: a shell that answers, no echo, in workdir.

        When the shell does not answer, interrupts what runs (^C: only then, a shell still
        starting up would die of it), and keeps trying while a runner left over from a failed
        session still holds the line in raw mode (it exits after 15 s idle), for `timeout`
        seconds (default: sync_timeout)."""
        timeout = self.sync_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        if self._workdir:
            wd = shlex.quote(self._workdir)
            enter = f"mkdir -p {wd} && cd {wd}" if not self._private_workdir else f"cd {wd}"
        else:
            enter = ('__d=$(mktemp -d /tmp/minrt.XXXXXXXX) && chmod 700 "$__d" && cd "$__d" && '
                     "printf '\\n__MINRT_WD %s\\n' \"$__d\"")
        made_now = False
        for attempt in itertools.count():
            token = secrets.token_hex(6)
            snippet, pattern = self._marker(token, "Y")
            self._rx.clear()
            # From the second try on: a BYE for a runner a failed session left holding the
            # line (it obeys even in the middle of a RUN), then ^C for a shell, which throws
            # the BYE's bytes away with the rest of its line.
            self._write(_LINE_SAFE_BYE + b"\x03\n" if attempt else b"\n", "sync")
            time.sleep(0.1)
            self._write(f"stty -echo; {enter}; {snippet}\n".encode(), "sync")
            try:
                found = self._read_until(pattern, min(deadline, time.monotonic() + 3.0), "sync")
                if not self._workdir:
                    made = re.search(rb"__MINRT_WD (/tmp/minrt\.[A-Za-z0-9]+)\r?\n", self._rx[: found.start()])
                    if made is None:
                        raise DeviceError(f"serial {self.url}: cannot create a private work directory "
                                          "with mktemp -d on the device")
                    self._workdir = made.group(1).decode()
                    self._records.record(self._workdir)
                    made_now = True
            except _Timeout:
                if time.monotonic() >= deadline:
                    raise DeviceError(
                        f"serial {self.url}: no shell answers on the console after "
                        f"{timeout:g} s (is the device booted and at a shell prompt?)"
                    ) from None
                continue
            # let the prompt that follows arrive, then forget it
            time.sleep(0.05)
            self._read(0)
            self._rx.clear()
            self._synced = True
            log.debug("serial %s: shell ready", self.url)
            if made_now:
                self._remove_leftovers()
            return

    def _remove_leftovers(self) -> None:
        """Remove the work directories earlier sessions left on this device (it froze, or
        the harness was killed), and stop what still runs in them."""
        def remove(workdir: str) -> str | None:
            result = self._shell(remove_command(workdir), 30)
            return None if result.returncode == 0 else result.stderr.strip()

        self._records.remove_stale(remove)

    def _shell(self, command: str, timeout: float, heredoc: str | None = None) -> CommandResult:
        if not self._synced:
            self._sync()
        token = secrets.token_hex(6)
        start, start_re = self._marker(token, "S")
        mid, mid_re = self._marker(token, "E")
        end, end_re = self._marker(token, "X", status=True)
        errfile = shlex.quote(f"{self._workdir}/.stderr")
        # stdin from /dev/null: a command must not eat the console's next input (a here-doc
        # inside the command still feeds it)
        line = f"{start}; {{ {command} ; }} </dev/null 2>{errfile}; __rc=$?; {mid}; cat {errfile}; (exit $__rc); {end}\n"
        if len(line) > MAX_LINE:
            raise DeviceError(
                f"serial {self.url}: command line of {len(line)} characters is longer than the "
                f"console shell reads ({MAX_LINE}): {command[:60]}..."
            )
        if heredoc is not None:
            line += heredoc
        self._rx.clear()
        self._write(line.encode(), "run")
        deadline = time.monotonic() + timeout
        try:
            s = self._read_until(start_re, deadline, f"'{command[:60]}'")
            e = self._read_until(mid_re, deadline, f"'{command[:60]}'")
            x = self._read_until(end_re, deadline, f"'{command[:60]}'")
        except KeyboardInterrupt:
            self._synced = False  # a command (a here-document) may still run: close() interrupts it
            raise
        except _Timeout:
            self._write(b"\x03", "interrupt")  # stop the command; the next call re-syncs
            raise DeviceError(
                f"serial {self.url}: '{command[:60]}' did not finish within {timeout:g} s"
            ) from None
        stdout = self._clean(self._rx[s.end() : e.start()])
        stderr = self._clean(self._rx[e.end() : x.start()])
        returncode = int(x.group(1) or -1)
        del self._rx[: x.end()]
        return CommandResult(returncode, stdout, stderr)

    @staticmethod
    def _clean(raw: bytes) -> str:
        text = _ESCAPES.sub(b"", bytes(raw)).replace(b"\r\n", b"\n")
        if text.endswith(b"\n"):
            text = text[:-1]  # the newline the end marker printed first
        return text.decode("utf-8", "replace")

    def _path(self, remote: str) -> str:
        path = PurePosixPath(remote)
        return str(path if path.is_absolute() else PurePosixPath(self.workdir) / path)

    # -- Transport ---------------------------------------------------------------------------

    def run(self, argv: Sequence[str], timeout: float) -> CommandResult:
        command = " ".join(shlex.quote(a) for a in argv)
        log.debug("serial %s$ %s", self.url, command)
        return self._shell(command, timeout)

    def put(self, local: Path, remote: str) -> None:
        """Send a file as base64 text through the shell, xz-compressed when the device can
        unpack it (a console moves a few KiB/s), and verify its SHA-256 on the device. A file
        already there with the same SHA-256 is not sent again."""
        data = Path(local).read_bytes()
        dest = self._path(remote)
        qdest = shlex.quote(dest)
        want = hashlib.sha256(data).hexdigest()
        mode = "755" if Path(local).stat().st_mode & stat.S_IXUSR else "644"
        have = self._shell(f"sha256sum {qdest}", 60)
        if have.returncode == 0 and have.stdout.split()[:1] == [want]:
            log.info("serial %s: %s is already on the device", self.url, dest)
            self._check(self._shell(f"chmod {mode} {qdest}", 30), "put")
            return
        packed, unpack = data, None
        if self._has_unxz():
            packed = lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)
            if len(packed) < len(data) * 0.9:
                unpack = "unxz -c"
            else:
                packed = data
        part = shlex.quote(dest + ".part")
        log.info("serial %s: sending %s (%d bytes, %d on the line) to %s", self.url, Path(local).name,
                 len(data), len(packed) * 4 // 3, dest)
        started = time.monotonic()
        deadline = started + self.transfer_timeout
        self._check(self._shell(f"mkdir -p {shlex.quote(str(PurePosixPath(dest).parent))} && : > {part}", 30), "put")
        eof = f"__MINRT_EOF_{secrets.token_hex(4)}"
        for offset in range(0, len(packed), _PUT_BLOCK):
            text = base64.b64encode(packed[offset : offset + _PUT_BLOCK]).decode()
            lines = "\n".join(text[i : i + _B64_LINE] for i in range(0, len(text), _B64_LINE))
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeviceError(f"serial {self.url}: put {dest}: not done within {self.transfer_timeout:g} s")
            self._check(self._shell(f"base64 -d >> {part} <<'{eof}'", left, heredoc=f"{lines}\n{eof}\n"), "put")
            log.debug("serial %s: put %s: %d/%d bytes", self.url, dest, offset + _PUT_BLOCK, len(packed))
        final = part
        if unpack:
            final = shlex.quote(dest + ".unpacked")
            self._check(self._shell(f"{unpack} {part} > {final} && rm -f {part}", 120), "put: unpack")
        result = self._check(self._shell(f"sha256sum {final} && chmod {mode} {final} && mv {final} {qdest}", 60), "put")
        if result.stdout.split()[:1] != [want]:
            raise DeviceError(f"serial {self.url}: put {dest}: checksum mismatch after transfer "
                              f"(device {result.stdout.strip()[:64]!r}, host {want})")
        log.info("serial %s: %s sent in %.1f s", self.url, dest, time.monotonic() - started)

    def _has_unxz(self) -> bool:
        if self._unxz is None:
            self._unxz = self._shell("command -v unxz", 30).returncode == 0
        return self._unxz

    def get(self, remote: str, local: Path) -> None:
        src = shlex.quote(self._path(remote))
        result = self._check(self._shell(f"sha256sum {src} && base64 {src}", self.transfer_timeout), "get")
        digest, _, text = result.stdout.partition("\n")
        try:
            data = base64.b64decode("".join(text.split()), validate=True)
        except ValueError:
            raise DeviceError(f"serial {self.url}: get {remote}: the console garbled the file") from None
        if hashlib.sha256(data).hexdigest() != digest.split()[0]:
            raise DeviceError(f"serial {self.url}: get {remote}: checksum mismatch after transfer")
        Path(local).write_bytes(data)

    def close_line(self) -> None:
        """Close the serial line and nothing else: no shell's goodbye (work directory removal,
        `stty echo`), for a line with no shell behind it (a firmware's UART)."""
        self._port.close()

    def close(self) -> None:
        """Remove the private workdir (stopping what still runs in it) and give the console
        its echo back. After a session cut short the shell is first got back, for at most
        CLOSE_SYNC_S; a device that does not answer keeps the workdir until the next session."""
        if self._port.is_open:
            if self._private_workdir and self._workdir:
                workdir = self._workdir
                try:
                    if not self._synced:
                        self._sync(CLOSE_SYNC_S)
                    self._workdir = ""
                    if self._shell(remove_command(workdir), 30).returncode == 0:
                        self._records.forget(workdir)
                except DeviceError as exc:
                    log.info("serial %s: could not remove %s: %s", self.url, workdir, exc)
                self._workdir = ""
            try:
                if self._synced:
                    self._write(b"stty echo\n", "close")
            except DeviceError:
                pass
            self._port.close()

    def __enter__(self) -> "SerialTransport":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check(self, result: CommandResult, step: str) -> CommandResult:
        if result.returncode != 0:
            raise DeviceError(f"serial {self.url}: {step}: exit {result.returncode}: {result.stderr.strip()[:300]}")
        return result

    # -- the framed protocol -----------------------------------------------------------------

    def hello(self, timeout: float) -> tuple[int, int, str]:
        """A framed HELLO to a front end already serving this line (a firmware board): its
        (protocol version, largest payload, identification). The ping of a health check."""
        link = _Link(self, time.monotonic() + timeout)
        try:
            return frames.parse_hello(link.request(frames.Kind.HELLO, bytes([frames.VERSION])).payload)
        except frames.FrameError as exc:
            raise DeviceError(f"serial {self.url}: malformed HELLO answer: {exc}") from None


    def run_model(
        self,
        runner: str,
        graph: bytes,
        params: bytes,
        inputs: bytes,
        iters: int,
        workspace: int,
        timeout: float,
        profile: bool = False,
        threads: int | None = None,
    ) -> tuple[bytes, dict[str, Any]]:
        """Run a model through `<runner> --serial` started on the console's shell (the framed
        protocol carries no per-kernel profile: `profile` only logs that it is not there): returns
        (outputs blob in NDArray-list format, timing dict). Raises RunnerError when the runner
        answers with an error (it refused the model or its inputs, or a kernel failed: the
        model's problem, which a farm does not retry on another device), DeviceError when the
        runner cannot start or exits badly, the line is too noisy to get a frame through, or
        the device stops answering; the whole call is bounded by `timeout` seconds."""
        if profile:
            log.warning("serial %s: no per-kernel profile over the framed protocol (use the SSH "
                        "or file transports for --profile)", self.url)
        if not self._synced:
            self._sync()
        deadline = time.monotonic() + timeout
        token = secrets.token_hex(6)
        start, start_re = self._marker(token, "S")
        end, end_re = self._marker(token, "X", status=True)
        self._rx.clear()
        self._write(f"{start}; {shlex.quote(self._path(runner))} --serial; {end}\n".encode(), "run_model")
        serving = False  # the runner's first frame came: it holds the line in raw mode
        try:
            started = min(deadline, time.monotonic() + self.startup_timeout)
            s = self._read_until(start_re, started, "start the runner")
            del self._rx[: s.end()]
            # the runner's first frame, or the shell's word that it could not start
            first = self._read_until(re.compile(re.escape(frames.MAGIC) + b"|" + end_re.pattern), started,
                                     "the runner's first frame")
            if first.group(0) != frames.MAGIC:
                said = self._clean(self._rx[: first.start()]).strip()
                raise DeviceError(f"serial {self.url}: runner exited with status {int(first.group(1))} "
                                  f"before its serial session: {said[-300:]}")
            serving = True
            early = bytes(self._rx)
            self._rx.clear()
            result = self.exchange(graph, params, inputs, iters, workspace, deadline - time.monotonic(), early)
            # the runner restores the terminal and exits: its status follows on the shell
            x = self._read_until(end_re, time.monotonic() + _RUNNER_IDLE_S + 5, "runner exit")
            status = int(x.group(1) or -1)
            self._rx.clear()
            if status != 0:
                raise DeviceError(f"serial {self.url}: runner exited {status} after the session")
        except (DeviceError, RunnerError):
            self._synced = False  # the next call re-syncs the shell (waits out a stuck runner)
            raise
        except KeyboardInterrupt:
            self._synced = False
            if serving:
                self._abandon(end_re)
            raise
        return result

    def _abandon(self, end_re: re.Pattern[bytes]) -> None:
        """The host gives up on a runner's session (Ctrl-C): BYE, which the runner obeys
        even in the middle of a RUN, then its shell back, so close() can remove the workdir
        at once instead of waiting for the run and the runner's idle timeout (~30 s)."""
        log.info("serial %s: stopping the runner", self.url)
        self._seq = self._seq % 255 + 1
        try:
            self._write(frames.encode(frames.Frame(frames.Kind.BYE, self._seq, b"")), "BYE")
            self._read_until(end_re, time.monotonic() + ABANDON_S, "runner exit")
        except DeviceError as exc:
            log.info("serial %s: the runner did not stop: %s", self.url, exc)
            return
        self._rx.clear()
        self._synced = True

    def exchange(
        self,
        graph: bytes,
        params: bytes,
        inputs: bytes,
        iters: int,
        workspace: int,
        timeout: float,
        early: bytes = b"",
    ) -> tuple[bytes, dict[str, Any]]:
        """The framed session with a runner already serving this line (`run_model` starts
        one on the shell; a device may also run `minrt-run --serial /dev/ttyX` by itself).
        `early` holds bytes read from the line before the call."""
        blobs = ((frames.Blob.GRAPH, graph), (frames.Blob.PARAMS, params), (frames.Blob.INPUTS, inputs))
        outputs, answer = self.session(blobs, iters, workspace, timeout, early)
        try:
            timing = json.loads(answer.decode())
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise DeviceError(f"serial {self.url}: runner's timing is not JSON: {answer[:100]!r}") from None
        return outputs, timing

    def session(
        self,
        blobs: Sequence[tuple[frames.Blob, bytes]],
        iters: int,
        workspace: int,
        timeout: float,
        early: bytes = b"",
    ) -> tuple[bytes, bytes]:
        """One framed session: HELLO, PUT each blob, RUN, GET the outputs, BYE. Returns the
        outputs blob and RUN's answer as the device sent it (minrt-run: a JSON line; the
        firmware: frames.TIMING_RECORD)."""
        if not (1 <= iters <= frames.MAX_ITERS and 0 <= workspace < 2**32):
            raise ValueError(f"iters {iters} / workspace {workspace} out of range for the serial protocol")
        link = _Link(self, time.monotonic() + timeout)
        link.pending = link.decoder.feed(early)
        try:
            link.await_announcement(min(link.deadline, time.monotonic() + self.startup_timeout))
            version, max_payload, ident = frames.parse_hello(
                link.request(frames.Kind.HELLO, bytes([frames.VERSION])).payload
            )
            if version != frames.VERSION:
                raise DeviceError(f"serial {self.url}: runner speaks protocol {version}, the harness {frames.VERSION}")
            chunk = min(self.chunk, max_payload - frames.BLOB_CHUNK.size)
            log.info("serial %s: %s: sending %s", self.url, ident or "device",
                     " + ".join(f"{len(data)} bytes of {blob.name.lower()}" for blob, data in blobs))
            for blob, data in blobs:
                for offset in range(0, max(len(data), 1), chunk):
                    piece = data[offset : offset + chunk]
                    link.request(frames.Kind.PUT, frames.put_payload(blob, offset, len(data), piece))
            log.debug("serial %s: running %d iteration(s)", self.url, iters)
            answer = link.request(frames.Kind.RUN, frames.run_payload(iters, workspace)).payload
            outputs = bytearray()
            total = None
            while total is None or len(outputs) < total:
                reply = link.request(frames.Kind.GET, frames.get_payload(frames.Blob.OUTPUTS, len(outputs), max_payload - 4))
                total, data = frames.parse_get(reply.payload)
                if not data and len(outputs) < total:
                    raise DeviceError(f"serial {self.url}: runner sent an empty outputs chunk at byte {len(outputs)}")
                outputs += data
            try:
                link.request(frames.Kind.BYE, b"")
            except DeviceError as exc:
                # the results are in hand; a runner that missed BYE exits after 15 s idle
                log.warning("serial %s: BYE not acknowledged (%s)", self.url, exc)
        except frames.FrameError as exc:
            raise DeviceError(f"serial {self.url}: malformed response from the runner: {exc}") from None
        finally:
            self.stats["retransmissions"] += link.retransmissions
            self.stats["naks"] += link.naks
        log.info("serial %s: run done (%d retransmissions, %d NAKs, %d bytes of noise skipped)", self.url,
                 link.retransmissions, link.naks, link.decoder.stats.skipped_bytes)
        return bytes(outputs), answer


class _Link:
    """Stop-and-wait requests over one runner session."""

    def __init__(self, transport: SerialTransport, deadline: float) -> None:
        self.t = transport
        self.deadline = deadline
        self.decoder = frames.Decoder()
        self.pending: list[frames.Frame] = []
        self.retransmissions = 0
        self.naks = 0

    def _frames(self, wait: float) -> list[frames.Frame]:
        if not self.pending:
            self.pending = self.decoder.feed(self.t._read(wait))
        got, self.pending = self.pending, []
        return [f for f in got if f.from_device]  # frames without the bit are our own echo

    def await_announcement(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            for f in self._frames(min(0.2, max(0.0, deadline - time.monotonic()))):
                if f.kind == frames.Kind.HELLO:
                    return
        raise DeviceError(
            f"serial {self.t.url}: the runner did not start its serial session "
            f"(no HELLO within {self.t.startup_timeout:g} s; skipped {self.decoder.stats.skipped_bytes} bytes)"
        )

    def request(self, kind: frames.Kind, payload: bytes) -> frames.Frame:
        """Send a request until its response arrives: `retries` tries of `ack_timeout` each,
        all within the session deadline. While the device says BUSY (a RUN executing, once a
        second) the host waits without resending, as long as BUSY keeps coming."""
        t = self.t
        t._seq = t._seq % 255 + 1  # 1..255: seq 0 is the device's own announcement
        seq = t._seq
        wire = frames.encode(frames.Frame(kind, seq, payload))
        attempt = 0
        for attempt in range(t.retries):
            if attempt:
                self.retransmissions += 1
                log.debug("serial %s: resending %s seq %d (try %d)", t.url, kind.name, seq, attempt + 1)
            t._write(wire, kind.name)
            until = min(self.deadline, time.monotonic() + t.ack_timeout)
            resend = False
            while not resend and time.monotonic() < until:
                for f in self._frames(min(0.2, max(0.0, until - time.monotonic()))):
                    if f.seq != seq:
                        continue  # a late answer to an earlier try, or an announcement
                    if f.kind == frames.Kind.NAK:
                        self.naks += 1
                        resend = True
                    elif f.kind == frames.Kind.BUSY:
                        until = min(self.deadline, time.monotonic() + BUSY_GRACE_S)
                    elif f.kind == frames.Kind.ERROR:
                        # the runner answered and refused the model or a request: not the device's fault
                        raise RunnerError(f"serial {t.url}: runner: {frames.parse_error(f.payload)[1]}")
                    elif f.kind in (frames.Kind.ACK, frames.Kind.HELLO):
                        return f
                if self.decoder.take_damaged():
                    resend = True  # our answer came back damaged: ask again now
            if time.monotonic() >= self.deadline:
                st = self.decoder.stats
                raise DeviceError(
                    f"serial {t.url}: {kind.name} not answered within the run's timeout "
                    f"({st.bad_crc} damaged frames, {st.skipped_bytes} bytes of noise)"
                )
        st = self.decoder.stats
        raise DeviceError(
            f"serial {t.url}: no valid answer to {kind.name} (after {attempt + 1} tries; "
            f"{st.bad_crc} damaged frames, {st.bad_header} bad headers, {st.skipped_bytes} bytes of noise): "
            "the device stopped answering or the line is too noisy"
        )


def _open_serial(options: Mapping[str, Any], address: str | None, trust_on_first_use: bool) -> SerialTransport:
    url = address or options.get("url")
    if not url:
        raise TargetError("this target needs a serial port: pass --host /dev/ttyUSB0 or a pyserial URL")
    return SerialTransport(url, workdir=options.get("workdir"),
                           baudrate=int(options.get("baudrate", 115200)))


TRANSPORT_KINDS = (
    TransportKind("serial", "over a serial console", _open_serial, address="SERIAL-PORT-OR-URL",
                  board=True, options={"url": str, "workdir": str, "baudrate": int}),
)
