"""The emulated ARMv7 board that stands in for a Raspberry Pi: a real Linux kernel, a real SSH
server and a real serial console, under `qemu-system-arm -M virt` (the image it boots is
built by harness.device.board_image).

Board (one running qemu): serial console on a unix socket (0600, in the board's 0700 run
directory: it is a root shell, so only this user may open it, unlike a loopback TCP port),
SSH forwarded from a 127.0.0.1 port, guest network restricted (no traffic leaves the host).
It boots with `cores` CPUs (`-smp`; QEMU runs them on host threads of their own, MTTCG, where
the host supports it), the number a target's `board_cores` asks for or the recipe's.
Its state (pid, ports, cores) is kept in `cache_dir()/boards/run/<name>-<instance>/state.json`, so a
board booted by one harness command is reused by the next; `ensure_board` boots a new one when
it died; `restart_board` is its power cycle.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from harness.cache import cache_dir, private_dir
from harness.errors import DeviceError, TargetError
from harness.transport import check_board_cores

log = logging.getLogger(__name__)
from harness.device.board_image import READY_MARKER, RECIPES, BoardImage, BoardRecipe, build_board_image, locked, recipe_for

# -- running the board ------------------------------------------------------------------------


class SSHParams(NamedTuple):
    host: str
    port: int
    user: str
    key_file: Path
    known_hosts_file: Path


_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pid_running(pid: int) -> bool:
    """True when `pid` exists and is not a zombie (a killed qemu whose parent did not reap it)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our own dead child
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


@dataclass
class Board:
    """One emulated board: a qemu-system-arm process, its console socket and SSH port."""

    image: BoardImage
    run_dir: Path
    ssh_port: int = 0
    console_socket: Path | None = None
    pid: int | None = None
    user: str = "root"
    cores: int = 1
    _proc: subprocess.Popen | None = field(default=None, repr=False, compare=False)
    # The SSH connection that proved a fresh boot ready, kept for the caller who asked for it
    # (ensure_board(keep_connection=True)) instead of a second connection right after.
    _ready_connection: Any = field(default=None, repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def known_hosts(self) -> Path:
        return self.run_dir / "known_hosts"

    @property
    def console_log(self) -> Path:
        return self.run_dir / "console.log"

    @property
    def state_file(self) -> Path:
        return self.run_dir / "state.json"

    @property
    def console_url(self) -> str:
        """The serial console for harness.transport.serial (`unix://` + the socket path)."""
        return f"unix://{self.console_socket}"

    def _new_console_socket(self) -> Path:
        """The console socket's path: in the 0700 run directory, or, when that path is too
        long for a unix socket (108 bytes), in a fresh 0700 directory of its own."""
        path = self.run_dir / "console.sock"
        if len(str(path).encode()) < 100:
            return path
        return Path(tempfile.mkdtemp(prefix="minrt-console-")) / "console.sock"

    def ssh_params(self) -> SSHParams:
        return SSHParams("127.0.0.1", self.ssh_port, self.user, self.image.client_key,
                         self.known_hosts)

    def take_connection(self) -> Any:
        """The open SSHTransport (with a private work directory) that proved this boot ready,
        once, when it was kept (ensure_board(keep_connection=True)); else None."""
        connection, self._ready_connection = self._ready_connection, None
        return connection

    def transport(self, workdir: str | None = None, connect_timeout: float = 15.0):
        """An SSHTransport to this board (host key verified against the image's key)."""
        from harness.transport.ssh import SSHTransport

        host, port, user, key, known = self.ssh_params()
        return SSHTransport(host, port=port, user=user, key_filename=key, known_hosts=known,
                            allow_agent=False, workdir=workdir, connect_timeout=connect_timeout)

    def is_running(self) -> bool:
        if self.pid is None:
            return False
        if self._proc is not None:
            return self._proc.poll() is None
        if not _pid_running(self.pid):
            return False
        # The pid may have been reused: make sure it is our qemu for this run directory.
        try:
            cmdline = Path(f"/proc/{self.pid}/cmdline").read_bytes()
        except OSError:
            return False
        return str(self.console_log).encode() in cmdline

    def console_tail(self, lines: int = 15) -> str:
        try:
            text = self.console_log.read_text(errors="replace")
        except OSError:
            return "(no console output)"
        tail = [line for line in _ESCAPES.sub("", text).splitlines() if line.strip()][-lines:]
        return "\n".join(tail) or "(no console output)"

    # -- start ---------------------------------------------------------------------------------

    def start(self, timeout: float = 240.0, keep_connection: bool = False) -> None:
        """Boot the board and wait until its console says READY and SSH answers
        (`keep_connection`: the connection that proved it is kept for take_connection)."""
        if shutil.which("qemu-system-arm") is None:
            raise DeviceError("qemu-system-arm is not installed (apt-get install qemu-system-arm)")
        private_dir(self.run_dir)
        self.known_hosts.write_text("")
        self.console_socket = self._new_console_socket()
        for attempt in range(3):  # a port picked as free may be taken before qemu binds it
            self.ssh_port = _free_port()
            with contextlib.suppress(FileNotFoundError):
                self.console_socket.unlink()
            if self._spawn_and_wait(timeout, keep_connection):
                return
            log.info("board %s: a port was taken, retrying with others (%d)", self.name, attempt + 1)
        raise DeviceError(f"board {self.name}: qemu could not bind its ports:\n{self._qemu_log()}")

    def _qemu_argv(self) -> list[str]:
        recipe = self.image.recipe
        return [
            "qemu-system-arm", "-M", recipe.machine, "-cpu", recipe.cpu,
            "-m", str(recipe.memory_mib), "-smp", str(self.cores),
            "-kernel", str(self.image.kernel), "-initrd", str(self.image.initrd),
            "-append", "console=ttyAMA0 panic=-1 quiet",
            "-display", "none", "-monitor", "none", "-nodefaults", "-no-reboot",
            "-chardev", f"socket,id=console,path={self.console_socket},"
                        f"server=on,wait=off,logfile={self.console_log}",
            "-serial", "chardev:console",
            "-netdev", f"user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22",
            "-device", "virtio-net-device,netdev=net0",
            "-device", "virtio-rng-device",
        ]

    def _qemu_log(self) -> str:
        try:
            return (self.run_dir / "qemu.log").read_text(errors="replace").strip()[-2000:]
        except OSError:
            return ""

    def _spawn_and_wait(self, timeout: float, keep_connection: bool = False) -> bool:
        """Start qemu and wait for readiness; False when qemu could not bind a port."""
        host_line = f"[127.0.0.1]:{self.ssh_port} {self.image.host_public_key}\n"
        self.known_hosts.write_text(host_line)
        log.info("board %s: booting with %d core(s) (serial console on %s, SSH on 127.0.0.1:%d)",
                 self.name, self.cores, self.console_socket, self.ssh_port)
        started = time.monotonic()
        with contextlib.suppress(FileNotFoundError):
            self.console_log.unlink()  # the READY marker of an earlier boot must not count
        with open(self.run_dir / "qemu.log", "wb") as qemu_log:
            # A session of its own: the board outlives this harness command (see ensure_board).
            self._proc = subprocess.Popen(self._qemu_argv(), stdin=subprocess.DEVNULL,
                                          stdout=qemu_log, stderr=qemu_log,
                                          start_new_session=True)
        self.pid = self._proc.pid
        deadline = started + timeout
        waiting_for = "the console READY marker"
        last_error = ""
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                qemu_log_text = self._qemu_log()
                if "Could not set up host forwarding" in qemu_log_text \
                        or "Address already in use" in qemu_log_text:
                    return False
                self.pid = None
                raise DeviceError(
                    f"board {self.name}: qemu exited with status {code} while waiting for "
                    f"{waiting_for}.\nqemu: {qemu_log_text or '(nothing)'}\n"
                    f"Last console lines:\n{self.console_tail()}")
            if waiting_for.startswith("the console"):
                if self.console_socket is not None and self.console_socket.exists() \
                        and self.console_socket.stat().st_mode & 0o077:
                    os.chmod(self.console_socket, 0o600)  # qemu made it with the umask's mode
                if READY_MARKER in self.console_log.read_text(errors="replace") \
                        if self.console_log.exists() else False:
                    log.info("board %s: console ready after %.1f s, waiting for SSH",
                             self.name, time.monotonic() - started)
                    waiting_for = f"SSH on 127.0.0.1:{self.ssh_port}"
                    continue
                time.sleep(0.2)
                continue
            if not _ssh_answers(self.ssh_port, timeout=2.0):  # no banner yet: not worth a try
                last_error = f"no SSH banner on 127.0.0.1:{self.ssh_port}"
                time.sleep(0.5)
                continue
            try:
                dev = self.transport(connect_timeout=min(10.0, max(1.0, deadline - time.monotonic())))
                try:
                    result = dev.run(["uname", "-m"], timeout=10)
                except BaseException:
                    dev.close()
                    raise
                if keep_connection:
                    dev.connect_timeout = 15.0  # a run's short steps get the usual bound, not the probe's
                    self._ready_connection = dev
                else:
                    dev.close()
                log.info("board %s: up in %.1f s (%s)", self.name, time.monotonic() - started,
                         result.stdout.strip())
                self._save_state()
                return True
            except DeviceError as exc:
                last_error = str(exc)
                time.sleep(0.5)
        self._kill()
        raise DeviceError(
            f"board {self.name}: {waiting_for} did not come up within {timeout:g} s"
            f"{f' (last error: {last_error})' if last_error else ''}.\n"
            f"Last console lines:\n{self.console_tail()}")

    def _save_state(self) -> None:
        state = {"pid": self.pid, "ssh_port": self.ssh_port, "console_socket": str(self.console_socket),
                 "image": str(self.image.dir), "user": self.user, "cores": self.cores}
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(self.state_file)

    @classmethod
    def from_state(cls, image: BoardImage, run_dir: Path) -> "Board | None":
        """The board recorded in run_dir, if it was booted from `image` (running or not)."""
        try:
            state = json.loads((run_dir / "state.json").read_text())
        except (OSError, ValueError):
            return None
        if state.get("image") != str(image.dir):
            return None
        socket_path = state.get("console_socket")  # absent: booted with a TCP console
        return cls(image, run_dir, ssh_port=state["ssh_port"],
                   console_socket=Path(socket_path) if socket_path else None,
                   pid=state["pid"], user=state.get("user", "root"),
                   cores=state.get("cores", 1))  # absent: booted before boards had several

    # -- stop ----------------------------------------------------------------------------------

    def stop(self, timeout: float = 30.0) -> None:
        """Power the board off (poweroff over SSH), killing qemu if it does not stop in time."""
        if self.is_running():
            log.info("board %s: powering off", self.name)
            try:
                with self.transport(connect_timeout=min(timeout, 10.0)) as dev:
                    # the whole `timeout`, not a few seconds: on a loaded host the command may
                    # take seconds to reach the emulated board (a 5 s bound could give up before
                    # sending it, and qemu was then killed instead of powered off); once it
                    # runs, the connection drops at once
                    dev.run(["poweroff", "-f"], timeout=timeout)
            except DeviceError:
                pass  # expected: the connection drops as the board powers off
            if not self._wait_exit(timeout):
                log.info("board %s: did not power off in %g s, killing qemu", self.name, timeout)
            self._kill()
        self.pid = None
        if self.console_socket is not None:
            with contextlib.suppress(FileNotFoundError):
                self.console_socket.unlink()
            if self.console_socket.parent.name.startswith("minrt-console-"):
                with contextlib.suppress(OSError):
                    self.console_socket.parent.rmdir()
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()

    def _wait_exit(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.is_running():
                return True
            time.sleep(0.1)
        return False

    def _kill(self) -> None:
        if self.pid is None or not self.is_running():
            return
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)
            if self._wait_exit(wait):
                return

    def __enter__(self) -> "Board":
        if not self.is_running():
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _ssh_answers(port: int, timeout: float = 5.0) -> bool:
    """The forwarded port gives an SSH banner (qemu accepts the TCP connection even when the
    guest is gone, so a bare connect proves nothing)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            return s.recv(8).startswith(b"SSH-")
    except OSError:
        return False


def _run_dir(name: str, instance: str, cache: Path | None) -> Path:
    """The board's state directory. Both names become part of a path, so both are checked
    first: a name must be a known image, an instance plain characters (no '/' or '..')."""
    if name not in RECIPES:
        raise TargetError(f"unknown board '{name}' (known: {', '.join(RECIPES)})")
    if not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*", instance) or ".." in instance:
        raise TargetError(f"board instance name '{instance}' may use only letters, digits, . _ - "
                          "(and may not start with '.')")
    return (cache or cache_dir()) / "boards" / "run" / f"{name}-{instance}"


def ensure_board(name: str = "qemu-virt-armv7", instance: str = "0", cache: Path | None = None,
                 boot_timeout: float = 240.0, keep_connection: bool = False,
                 cores: int | None = None) -> Board:
    """A running board: the one recorded for (name, instance) if it still answers (and has
    `cores` CPUs, when given), else a freshly booted one with `cores` (None: the recipe's),
    building the image first if needed. `keep_connection`: a fresh boot's readiness check
    keeps its SSH connection for Board.take_connection (the caller then owns it), so the
    first run on a new board connects once."""
    recipe = recipe_for(name)
    if cores is not None:
        check_board_cores(cores, f"board {name}-{instance}: cores")
    image = build_board_image(cache, recipe)
    run_dir = _run_dir(name, instance, cache)
    with locked(run_dir / "lock"):
        board = Board.from_state(image, run_dir)
        if board is not None and board.is_running() and _ssh_answers(board.ssh_port) \
                and board.console_socket is not None and board.console_socket.exists():
            if cores is None or board.cores == cores:
                log.info("board %s: reusing the running board (pid %d, %d core(s), SSH on "
                         "127.0.0.1:%d)", board.name, board.pid, board.cores, board.ssh_port)
                return board
            log.info("board %s: running with %d core(s), %d asked for: booting it again",
                     board.name, board.cores, cores)
        if board is not None:
            board._kill()  # recorded but dead, not answering or other cores: make room
        else:
            stale = _stale_board(name, run_dir)
            if stale is not None:
                stale._kill()
        board = Board(image, run_dir, cores=recipe.cores if cores is None else cores)
        board.start(boot_timeout, keep_connection)
        return board


def _stale_board(name: str, run_dir: Path) -> Board | None:
    """The board recorded in run_dir, whatever image it runs (maybe an older one)."""
    try:
        state = json.loads((run_dir / "state.json").read_text())
        image = BoardImage(recipe_for(name), Path(state["image"]))
    except (OSError, ValueError, KeyError, DeviceError):
        return None
    return Board.from_state(image, run_dir)


def board_status(name: str = "qemu-virt-armv7", instance: str = "0",
                 cache: Path | None = None) -> dict:
    """What `harness board status` prints: state, pid, ports, image (no build, no boot)."""
    run_dir = _run_dir(name, instance, cache)
    board = _stale_board(name, run_dir)
    if board is None:
        return {"board": run_dir.name, "state": "down"}
    running = board.is_running()
    return {"board": run_dir.name,
            "state": "up" if running and _ssh_answers(board.ssh_port) else
                     ("not answering" if running else "down"),
            "pid": board.pid, "cores": board.cores, "ssh": f"127.0.0.1:{board.ssh_port}",
            "serial": board.console_url, "image": str(board.image.dir),
            "console_log": str(board.console_log)}


def stop_board(name: str = "qemu-virt-armv7", instance: str = "0",
               cache: Path | None = None) -> bool:
    """Power off the recorded board; True if one was running."""
    run_dir = _run_dir(name, instance, cache)
    with locked(run_dir / "lock"):
        board = _stale_board(name, run_dir)
        if board is None:
            return False
        running = board.is_running()
        board.stop()
        return running


def restart_board(name: str = "qemu-virt-armv7", instance: str = "0", cache: Path | None = None,
                  boot_timeout: float = 240.0) -> Board:
    """Power-cycle the board: cut it off at once (no orderly poweroff: a frozen or stuck
    board would not answer one), then boot it again with the cores it had."""
    run_dir = _run_dir(name, instance, cache)
    cores = None
    with locked(run_dir / "lock"):
        board = _stale_board(name, run_dir)
        if board is not None:
            cores = board.cores
        if board is not None and board.is_running():
            log.info("board %s: power cycle (killing qemu pid %d)", board.name, board.pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(board.pid, signal.SIGKILL)  # works on a stopped (SIGSTOP) process too
            board._wait_exit(10.0)
    return ensure_board(name, instance, cache, boot_timeout, cores=cores)


__all__ = ["BoardRecipe", "BoardImage", "Board", "SSHParams", "build_board_image",
           "ensure_board", "board_status", "stop_board", "restart_board", "recipe_for", "READY_MARKER"]
